//! A real browser: headless Chromium (Debian's `chromium`, installed with apt-get if it
//! is missing) opens a page served by this test that runs the official ActionCable
//! client's browser build on `/cable` and a plain `WebSocket` on `/realtime`, for the
//! same user. tests/js/browser_run.mjs drives Chromium with playwright-core and relays
//! what the page sees as JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use axum::http::header;
use fanout_tests::node::{NodeScript, ensure_node_modules, js_dir};
use fanout_tests::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed with apt-get (as root) if it is missing. Never a browser
/// build downloaded by npm: this machine reaches only package registries.
fn ensure_chromium() {
    let works = || {
        std::process::Command::new(CHROMIUM)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if works() {
        return;
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("running `id -u`");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "{CHROMIUM} is missing, and installing Debian's chromium needs root: \
         run `apt-get install chromium` as root"
    );
    let lock_path = std::env::temp_dir().join("fanout-chromium-install.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    if !works() {
        let install = || {
            std::process::Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium"])
                .status()
        };
        if !install().is_ok_and(|status| status.success()) {
            let updated = std::process::Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .expect("apt-get must be there to install chromium");
            assert!(updated.success(), "apt-get update failed");
            assert!(
                install().unwrap().success(),
                "apt-get install chromium failed"
            );
        }
        assert!(works(), "{CHROMIUM} --version fails after installing it");
    }
    lock.unlock().unwrap();
}

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

/// The page's reports, by source (`cable`, `realtime`): the two connections' events
/// interleave in any order, and each is checked in its own order.
struct PageEvents {
    runner: NodeScript,
    pending: HashMap<String, VecDeque<Value>>,
}

impl PageEvents {
    async fn next(&mut self, source: &str) -> Value {
        if let Some(event) = self.pending.get_mut(source).and_then(VecDeque::pop_front) {
            return event;
        }
        loop {
            let mut event = self.runner.next_event().await;
            let event_source = event["source"].as_str().unwrap_or_default().to_owned();
            assert_ne!(event_source, "page", "the page failed: {event}");
            event.as_object_mut().unwrap().remove("source");
            if event_source == source {
                return event;
            }
            self.pending
                .entry(event_source)
                .or_default()
                .push_back(event);
        }
    }

    /// Has the page send `frame` on its `/realtime` socket.
    async fn realtime_send(&mut self, frame: Value) {
        self.runner.send(&json!({"realtime_send": frame})).await;
    }

    async fn next_realtime_frame(&mut self) -> Value {
        let event = self.next("realtime").await;
        assert_eq!(event["event"], "frame", "{event}");
        event["frame"].clone()
    }
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
    let mut page = PageEvents {
        runner: NodeScript::spawn("browser_run.mjs", &[&page_url]),
        pending: HashMap::new(),
    };
    let cable_count =
        |n: u64| json!({"event": "received", "data": {"type": "unread_count", "count": n}});

    // Both connections get the count now.
    assert_eq!(
        page.next("cable").await,
        json!({"event": "connected", "protocol": "actioncable-v1-json", "reconnected": false})
    );
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
    page.runner.finish().await;
    wait_until("the browser's connections to close", || {
        metrics.open_connections("cable") == 0 && metrics.open_connections("realtime") == 0
    })
    .await;
    for (source, events) in &page.pending {
        assert!(events.is_empty(), "unexpected {source} events: {events:?}");
    }

    pipeline.stop().await;
}
