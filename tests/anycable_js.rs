//! The unmodified `@anycable/web` client from npm, speaking AnyCable's extended protocol
//! (`actioncable-v1-ext-json`), in Node (tests/js/anycable_client.mjs) and in headless
//! Chromium (tests/js/anycable_page.html), subscribed to a user's RoomChannel while that
//! user's events flow. Between the client and the edges sits a TCP proxy. The client
//! loses its connection three ways: the proxy drops it (the client restores its session
//! by `sid` on the same edge), the edge restarts (a new edge on the same port, which has
//! read the window back from Kafka), and the proxy drops it and sends the reconnect to a
//! second edge (which never saw the session). Each time it reconnects and recovers by
//! itself, and in the end it has every produced event exactly once, in order: the
//! oracle is the list of events the test produced. Away longer than the window, it is
//! told `reject_history` and never given part of what it missed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use fanout_tests::node::{NodeScript, ensure_chromium, ensure_node_modules, js_dir};
use fanout_tests::proxy::TcpProxy;
use fanout_tests::*;
use serde_json::Value;

/// Events produced for the watched user after the last disruption of the recovery
/// test.
const EVENTS_AFTER: u64 = 25;

/// How the client is run.
#[derive(Clone, Copy)]
enum Runtime {
    Node,
    Chromium(SocketAddr),
}

impl Runtime {
    fn spawn(self, url: &str, pubsub_token: &str) -> NodeScript {
        match self {
            Self::Node => NodeScript::spawn("anycable_client.mjs", &[url, pubsub_token]),
            Self::Chromium(page) => {
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("url", url)
                    .append_pair("token", pubsub_token)
                    .finish();
                NodeScript::spawn("browser_run.mjs", &[&format!("http://{page}/?{query}")])
            }
        }
    }
}

/// Serves tests/js/anycable_page.html, the shared client code and the npm packages'
/// own modules (which the page's import map names) on a loopback port.
async fn serve_anycable_page() -> SocketAddr {
    async fn file(
        path: std::path::PathBuf,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
        let kind = match path.extension().and_then(|extension| extension.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js" | "mjs") => "text/javascript; charset=utf-8",
            _ => "application/octet-stream",
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, kind)], bytes),
            Err(_) => (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, kind)],
                Vec::new(),
            ),
        }
    }
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| file(js_dir().join("anycable_page.html"))),
        )
        .route(
            "/anycable_watch.js",
            axum::routing::get(|| file(js_dir().join("anycable_watch.js"))),
        )
        .route(
            "/node_modules/{*path}",
            axum::routing::get(
                |axum::extract::Path(path): axum::extract::Path<String>| async move {
                    let relative = Path::new(&path);
                    if relative
                        .components()
                        .any(|part| !matches!(part, Component::Normal(_)))
                    {
                        return file("/nonexistent".into()).await;
                    }
                    file(js_dir().join("node_modules").join(relative)).await
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// What the client's application saw.
#[derive(Default)]
struct Seen {
    /// `data.n` of each message, in order.
    messages: Vec<u64>,
    /// The offset and epoch the client was told for each message.
    positions: Vec<(u64, String)>,
    streams: std::collections::BTreeSet<String>,
    /// `info` types (history_received, history_not_found, ...).
    infos: Vec<String>,
    /// `restored` of each cable connect.
    connects: Vec<bool>,
}

/// A client and what it reported so far.
struct Client {
    script: NodeScript,
    seen: Seen,
}

impl Client {
    fn start(runtime: Runtime, url: &str, pubsub_token: &str) -> Self {
        Self {
            script: runtime.spawn(url, pubsub_token),
            seen: Seen::default(),
        }
    }

    /// Reads reports until `done` holds of what was seen; the page's errors fail.
    async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(report) = tokio::time::timeout(left, self.script.next_event()).await else {
                let seen = &self.seen;
                panic!(
                    "timed out waiting for {what}: {} messages (last {:?}), infos {:?}, connects {:?}",
                    seen.messages.len(),
                    seen.messages.last(),
                    seen.infos,
                    seen.connects
                );
            };
            self.take(report);
        }
    }

    fn take(&mut self, report: Value) {
        assert_ne!(report["source"], "page", "the page failed: {report}");
        let seen = &mut self.seen;
        match report["event"].as_str() {
            Some("message") => {
                assert_eq!(report["name"], "message.created", "{report}");
                seen.messages.push(report["data"]["n"].as_u64().unwrap());
                seen.positions.push((
                    report["offset"]
                        .as_u64()
                        .expect("an offset with the message"),
                    report["epoch"].as_str().expect("an epoch").to_owned(),
                ));
                seen.streams
                    .insert(report["stream"].as_str().expect("a stream_id").to_owned());
            }
            Some("info") => seen.infos.push(report["type"].as_str().unwrap().to_owned()),
            Some("connect") => seen.connects.push(report["restored"] == true),
            Some("disconnect" | "subscribed") => {}
            _ => panic!("unexpected report {report}"),
        }
    }

    fn received(&self) -> usize {
        self.seen.messages.len()
    }
}

/// Produces messages `from..=to` for `user`, one every `pace`.
fn produce_paced(
    cluster: &TestCluster,
    user: &'static str,
    from: u64,
    to: u64,
    pace: Duration,
) -> tokio::task::JoinHandle<()> {
    let producer = cluster.producer();
    let config = cluster.config.clone();
    tokio::spawn(async move {
        for seq in from..=to {
            produce_event(
                &producer,
                &config,
                &event::numbered("acme", "c1", seq, user),
            )
            .await;
            tokio::time::sleep(pace).await;
        }
    })
}

/// Produces messages 1, 2, ... for `user`, one every `pace`, until `stop` is set;
/// returns the last one produced.
fn produce_until(
    cluster: &TestCluster,
    user: &'static str,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let producer = cluster.producer();
    let config = cluster.config.clone();
    tokio::spawn(async move {
        let mut seq = 0;
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            produce_event(
                &producer,
                &config,
                &event::numbered("acme", "c1", seq, user),
            )
            .await;
            tokio::time::sleep(pace).await;
        }
        seq
    })
}

async fn recovers_every_event_across_drops_restarts_and_edges(runtime: Runtime) {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    // The official client waits 1.5 to 9 seconds before it reconnects (its default
    // backoff); the window holds what flows meanwhile.
    config.edge.history.max_events_per_user = 1000;
    let config = &config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let first = start_edge(config).await;
    let second = start_edge(config).await;
    let proxy = TcpProxy::start(first.address).await;
    let url = format!("ws://{}/cable?partner=acme", proxy.address);
    let mut client = Client::start(runtime, &url, &partner.stream_token("jane"));
    client
        .until("the first connect", |seen| !seen.connects.is_empty())
        .await;
    // The events flow from here to the end, whatever happens to the connection.
    let stop = Arc::new(AtomicBool::new(false));
    let producing = produce_until(&cluster, "jane", Duration::from_millis(40), stop.clone());

    // 1. The network drops the connection: the client restores its session on the same
    // edge and asks for what it missed.
    let history = |seen: &Seen| {
        seen.infos
            .iter()
            .filter(|info| *info == "history_received")
            .count()
    };
    client
        .until("40 events", |seen| seen.messages.len() >= 40)
        .await;
    // The first subscribe asked for history too (since the client started).
    let answered = history(&client.seen);
    assert_eq!(proxy.cut(), 1, "one connection to cut");
    client
        .until("a restored session", |seen| seen.connects.contains(&true))
        .await;
    client
        .until("its history", |seen| history(seen) > answered)
        .await;

    // 2. The edge restarts: the new one reads the window back from Kafka before it is
    // ready, and the client, whose session it does not know, subscribes again with
    // its position.
    let received = client.received();
    client
        .until("10 more events", |seen| {
            seen.messages.len() >= received + 10
        })
        .await;
    let answered = history(&client.seen);
    let address = first.address;
    first.running.stop().await;
    let restarted = start_edge_at(config, address).await;
    client
        .until("history from the restarted edge", |seen| {
            history(seen) > answered
        })
        .await;

    // 3. The network drops it again and the next connection reaches another edge.
    let received = client.received();
    client
        .until("10 more events", |seen| {
            seen.messages.len() >= received + 10
        })
        .await;
    let answered = history(&client.seen);
    proxy.set_upstream(second.address);
    proxy.cut();
    client
        .until("history from the other edge", |seen| {
            history(seen) > answered
        })
        .await;

    let received = client.received();
    client
        .until("more events", |seen| {
            seen.messages.len() >= received + EVENTS_AFTER as usize
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    let last = producing.await.unwrap();
    client
        .until("every event", |seen| seen.messages.len() >= last as usize)
        .await;
    // A moment more: anything extra would be a repeat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .script
        .expect_no_event_for(Duration::from_millis(300))
        .await;

    let Seen {
        messages,
        positions,
        streams,
        infos,
        connects,
    } = &client.seen;
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(messages, &expected, "every event once, in order");
    let offsets: Vec<u64> = positions.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, expected, "offsets 1..n");
    let epochs: std::collections::BTreeSet<&str> =
        positions.iter().map(|(_, epoch)| epoch.as_str()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    assert_eq!(streams.len(), 1, "one stream: {streams:?}");
    assert!(
        !infos.contains(&"history_not_found".to_owned()),
        "never rejected: {infos:?}"
    );
    assert!(connects.len() >= 4, "four connections: {connects:?}");
    assert_eq!(
        restarted.node.metrics.stream_resume_count("resumed"),
        1,
        "the restarted edge resumed the client's stream"
    );
    assert_eq!(second.node.metrics.stream_resume_count("resumed"), 1);
    assert_eq!(second.node.metrics.session_restore_count("unknown"), 1);
    client.script.finish().await;
    for stages in [ingest, router, restarted.running, second.running] {
        stages.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycable_web_in_node_recovers_every_event_across_drops_restarts_and_edges() {
    ensure_node_modules();
    recovers_every_event_across_drops_restarts_and_edges(Runtime::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycable_web_in_chromium_recovers_every_event_across_drops_restarts_and_edges() {
    ensure_node_modules();
    ensure_chromium();
    let page = serve_anycable_page().await;
    recovers_every_event_across_drops_restarts_and_edges(Runtime::Chromium(page)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycable_web_away_longer_than_the_window_is_rejected_never_given_a_part() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    config.edge.history.max_events_per_user = 5;
    let (ingest, _) = start_ingest(&config);
    let (router, _) = start_router(&config);
    let edge = start_edge(&config).await;
    let proxy = TcpProxy::start(edge.address).await;
    let url = format!("ws://{}/cable?partner=acme", proxy.address);
    let mut client = Client::start(Runtime::Node, &url, &partner.stream_token("jane"));
    client
        .until("the first connect", |seen| !seen.connects.is_empty())
        .await;
    produce_paced(&cluster, "jane", 1, 3, Duration::ZERO)
        .await
        .unwrap();
    client
        .until("3 events", |seen| seen.messages.len() >= 3)
        .await;

    // Away: 20 events, of which the window keeps the last 5.
    proxy.refuse(true);
    proxy.cut();
    produce_paced(&cluster, "jane", 4, 23, Duration::ZERO)
        .await
        .unwrap();
    wait_for_stream_position(&edge, "acme/jane", 23).await;
    proxy.refuse(false);
    client
        .until("the history rejected", |seen| {
            seen.infos.contains(&"history_not_found".to_owned())
        })
        .await;
    produce_paced(&cluster, "jane", 24, 26, Duration::ZERO)
        .await
        .unwrap();
    client
        .until("live events", |seen| seen.messages.contains(&26))
        .await;
    assert_eq!(
        client.seen.messages,
        [1, 2, 3, 24, 25, 26],
        "no part of 4..=23"
    );
    assert_eq!(
        edge.node.metrics.stream_resume_count("reset_beyond_window"),
        1
    );
    client.script.finish().await;
    for stages in [ingest, router, edge.running] {
        stages.stop().await;
    }
}
