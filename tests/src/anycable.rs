//! An `@anycable/web` client (the npm package, unmodified) driven from a test, in Node
//! (tests/js/anycable_client.mjs) or in headless Chromium (tests/js/anycable_page.html
//! through tests/js/browser_run.mjs), and what its application saw; and streams of
//! numbered messages for it to check (`event::numbered`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use serde_json::Value;

use crate::node::{NodeScript, js_dir};
use crate::{DEADLINE, TestCluster, event, produce_event};

/// How the client is run.
#[derive(Clone, Copy)]
pub enum Runtime {
    Node,
    Chromium(SocketAddr),
}

impl Runtime {
    pub fn spawn(self, url: &str, pubsub_token: &str) -> NodeScript {
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
pub async fn serve_anycable_page() -> SocketAddr {
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
pub struct Seen {
    /// `data.n` of each message, in order.
    pub messages: Vec<u64>,
    /// The offset and epoch the client was told for each message.
    pub positions: Vec<(u64, String)>,
    pub streams: std::collections::BTreeSet<String>,
    /// `info` types (history_received, history_not_found, ...).
    pub infos: Vec<String>,
    /// `restored` of each cable connect.
    pub connects: Vec<bool>,
}

/// A client and what it reported so far.
pub struct Client {
    pub script: NodeScript,
    pub seen: Seen,
}

impl Client {
    pub fn start(runtime: Runtime, url: &str, pubsub_token: &str) -> Self {
        Self {
            script: runtime.spawn(url, pubsub_token),
            seen: Seen::default(),
        }
    }

    /// Reads reports until `done` holds of what was seen; the page's errors fail.
    pub async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
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

    /// Waits for `count` more messages than it has now.
    pub async fn more(&mut self, count: usize) {
        let received = self.received();
        self.until(&format!("{count} more events"), |seen| {
            seen.messages.len() >= received + count
        })
        .await;
    }

    /// The `history_received` infos its application got so far.
    pub fn histories(&self) -> usize {
        histories(&self.seen)
    }

    pub fn received(&self) -> usize {
        self.seen.messages.len()
    }
}

/// Produces messages `seqs` for `user`, one after the other.
pub async fn produce_numbered(
    cluster: &TestCluster,
    user: &str,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let producer = cluster.producer();
    for seq in seqs {
        produce_event(
            &producer,
            &cluster.config,
            &event::numbered("acme", "c1", seq, user),
        )
        .await;
    }
}

/// Produces messages 1, 2, ... for `user`, one every `pace`, until `stop` is set;
/// returns the last one produced.
pub fn produce_until(
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

/// The `history_received` infos in `seen`: each a history request answered in full.
pub fn histories(seen: &Seen) -> usize {
    seen.infos
        .iter()
        .filter(|info| *info == "history_received")
        .count()
}
