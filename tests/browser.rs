//! A real browser: headless Chromium (Debian's `chromium`, installed with apt-get if it
//! is missing) opens a page served by this test that runs the official ActionCable
//! client's browser build on `/cable` (PartnerChannel with the token in the URL, or
//! RoomChannel with a pubsub_token and no token in the URL) and a plain `WebSocket` on
//! `/realtime`, each connection opened if the test gives it a token.
//! tests/js/browser_run.mjs drives Chromium with playwright-core and relays what the
//! page sees as JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::http::header;
use fanout_tests::node::{BySource, NodeScript, ensure_chromium, ensure_node_modules, js_dir};
use fanout_tests::*;
use serde_json::{Value, json};

/// Serves the test page and the official client's browser build on a loopback port.
async fn serve_test_page() -> SocketAddr {
    let page = std::fs::read_to_string(js_dir().join("browser_page.html")).unwrap();
    let client_path =
        js_dir().join("node_modules/@rails/actioncable/app/assets/javascripts/actioncable.esm.js");
    let client = std::fs::read_to_string(&client_path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", client_path.display()));
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page)
            }),
        )
        .route(
            "/actioncable.esm.js",
            axum::routing::get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    client,
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The page's reports, by source (`cable`, `room`, `realtime`): the connections' events
/// interleave in any order, and each is checked in its own order. The page's own errors
/// fail the test.
struct PageEvents(BySource);

impl PageEvents {
    /// Opens `page_url` in headless Chromium.
    fn open(page_url: &str) -> Self {
        let runner = NodeScript::spawn("browser_run.mjs", &[page_url]);
        Self(BySource::new(runner, "source").failing_on("page"))
    }

    async fn next(&mut self, source: &str) -> Value {
        self.0.next(source).await
    }

    /// Has the page send `frame` on its `/realtime` socket.
    async fn realtime_send(&mut self, frame: Value) {
        self.0.script.send(&json!({"realtime_send": frame})).await;
    }

    async fn next_realtime_frame(&mut self) -> Value {
        let event = self.next("realtime").await;
        assert_eq!(event["event"], "frame", "{event}");
        event["frame"].clone()
    }

    /// What the page's application got on the ActionCable connection `source`.
    async fn next_received(&mut self, source: &str) -> Value {
        let event = self.next(source).await;
        assert_eq!(event["event"], "received", "{event}");
        event["data"].clone()
    }

    /// Closes the browser; no report may be left unread.
    async fn close(self) {
        self.0.finish().await;
    }
}

fn cable_connected() -> Value {
    json!({"event": "connected", "protocol": "actioncable-v1-json", "reconnected": false})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_and_realtime_in_headless_chromium_see_the_count_change() {
    ensure_node_modules();
    ensure_chromium();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let metrics = &edge.node.metrics;
    let producer = cluster.producer();

    let page_address = serve_test_page().await;
    let page_url = format!(
        "http://{page_address}/?edge={}&partner=acme&token={}&realtime_token={}",
        edge.address,
        partner.token("jane"),
        partner.token("jane")
    );
    let mut page = PageEvents::open(&page_url);
    let cable_count =
        |n: u64| json!({"event": "received", "data": {"type": "unread_count", "count": n}});

    // Both connections get the count now.
    assert_eq!(page.next("cable").await, cable_connected());
    assert_eq!(page.next("cable").await, cable_count(0));
    assert_eq!(
        page.next_realtime_frame().await,
        json!({"type": "authresponse", "success": true, "id": 1})
    );
    assert_eq!(
        page.next_realtime_frame().await,
        json!({"type": "unread_count", "count": 0})
    );
    page.realtime_send(json!({"type": "get_unread_count", "id": "r-1"}))
        .await;
    assert_eq!(
        page.next_realtime_frame().await,
        json!({"type": "unread_count", "count": 0, "id": "r-1"})
    );
    // Both are the browser's, on this edge.
    assert_eq!(metrics.open_connections("cable"), 1);
    assert_eq!(metrics.open_connections("realtime"), 1);

    // A new message: both connections get the new count.
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    assert_eq!(page.next("cable").await, cable_count(1));
    assert_eq!(
        page.next_realtime_frame().await,
        json!({"type": "unread_count", "count": 1})
    );
    page.realtime_send(json!({"type": "get_unread_count", "id": 2}))
        .await;
    assert_eq!(
        page.next_realtime_frame().await,
        json!({"type": "unread_count", "count": 1, "id": 2})
    );

    // Closing the browser closes both connections.
    page.close().await;
    wait_until("the browser's connections to close", || {
        metrics.open_connections("cable") == 0 && metrics.open_connections("realtime") == 0
    })
    .await;

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_in_headless_chromium_gets_room_channel_events_and_a_receipt_without_jwt() {
    ensure_node_modules();
    ensure_chromium();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let metrics = &edge.node.metrics;
    let producer = cluster.producer();

    // Only the RoomChannel connection: `/cable?partner=acme`, its pubsub_token jane's.
    let page_address = serve_test_page().await;
    let page_url = format!(
        "http://{page_address}/?edge={}&partner=acme&room_token={}",
        edge.address,
        partner.stream_token("jane")
    );
    let mut page = PageEvents::open(&page_url);
    assert_eq!(page.next("room").await, cable_connected());
    assert_eq!(metrics.open_connections("cable"), 1);
    let mut jane = StreamCheck::new();

    // sam writes to jane: the page gets the partner's data as it was put in.
    let hello = json!({
        "content": "<script>alert(1)</script> \u{e9}t\u{e9}",
        "sender": {"id": 42, "name": "Sam", "thumbnail": ""},
        "content_attributes": {"in_reply_to": null, "tags": ["a", "b"]},
        "score": -0.125,
    });
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 1, "sam", &["jane"]), &hello),
    )
    .await;
    jane.next(
        &page.next_received("room").await,
        json!({"event": "message.created", "data": hello, "conversation_id": "c1", "seq": 1,
            "message_id": "m1", "sender": "sam", "unread_count": 1}),
    );

    // jane answers from another device; her stream has her message too.
    let answer = json!({"content": "Hi sam"});
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 2, "jane", &["sam"]), &answer),
    )
    .await;
    jane.next(
        &page.next_received("room").await,
        json!({"event": "message.created", "data": answer, "conversation_id": "c1", "seq": 2,
            "message_id": "m2", "sender": "jane", "unread_count": 1}),
    );

    // sam reads jane's message and names her to be told: the page gets the receipt.
    let read = json!({"status": "read"});
    produce_event(
        &producer,
        config,
        &event::notifying(
            event::with_data(event::message_read("acme", "c1", 2, "sam"), &read),
            &["jane"],
        ),
    )
    .await;
    jane.next(
        &page.next_received("room").await,
        json!({"event": "message.read", "data": read, "conversation_id": "c1", "seq": 2,
            "message_id": "m2", "reader": "sam", "unread_count": 1}),
    );

    page.close().await;
    wait_until("the browser's connection to close", || {
        metrics.open_connections("cable") == 0
    })
    .await;
    pipeline.stop().await;
}
