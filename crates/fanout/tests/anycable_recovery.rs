//! The unmodified `@anycable/web` client from npm, speaking AnyCable's extended protocol
//! (`actioncable-v1-ext-json`), in Node and in headless Chromium, subscribed to a user's
//! RoomChannel while that user's events flow, against two `fanout edge` processes (on
//! the embedded Kafka, over TCP) behind a TCP proxy. The client loses its connection
//! three ways: the proxy drops it (the client restores its session by `sid` on the same
//! edge); the edge process is restarted, SIGKILLed in Node's run (a crash: no goodbye)
//! and SIGTERMed in Chromium's (a drain: `disconnect` with `reconnect`), and the new
//! process on the same port reads the window back from Kafka before it is ready; and
//! the proxy drops it and sends the reconnect to the other edge process, which never
//! saw the session. Each time the client reconnects and recovers by itself, and in the
//! end it has every produced event exactly once, in order: the oracle is the list of
//! events the test produced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_tests::anycable::{
    Client, Runtime, Seen, histories, produce_until, serve_anycable_page,
};
use fanout_tests::node::{ensure_chromium, ensure_node_modules};
use fanout_tests::process::{Fanout, FanoutProcess, temp_dir, wait_for_metric, write_config};
use fanout_tests::proxy::TcpProxy;
use fanout_tests::*;

const FANOUT: Fanout = Fanout(env!("CARGO_BIN_EXE_fanout"));

/// Events produced for the watched user after the last disruption.
const EVENTS_AFTER: usize = 25;

/// How the first edge process is restarted.
#[derive(Clone, Copy)]
enum Restart {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a drain, every client told to come back.
    Term,
}

/// A `fanout edge` process on a port of its own, which a restart keeps.
struct EdgeProcess {
    config: PathBuf,
    log: PathBuf,
    address: SocketAddr,
    admin: SocketAddr,
    process: FanoutProcess,
}

impl EdgeProcess {
    async fn start(config: &fanout_app::config::Config, dir: &Path, name: &str) -> Self {
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = config.clone();
        config.listen.edge = address.to_string();
        config.listen.admin = "127.0.0.1:0".to_owned();
        let path = dir.join(format!("{name}.toml"));
        write_config(&config, &path);
        let log = dir.join(format!("{name}.log"));
        let mut process = Self::spawn(&path, &log);
        let admin = process.wait_ready().await;
        Self {
            config: path,
            log,
            address,
            admin,
            process,
        }
    }

    fn spawn(config: &Path, log: &Path) -> FanoutProcess {
        let args = [
            "--log-format",
            "json",
            "edge",
            "--config",
            config.to_str().unwrap(),
        ];
        FANOUT.start_logging_to(&args, &[("RUST_LOG", "info")], log)
    }

    /// Stops the process as `restart` says and starts a new one on the same port;
    /// returns once the new one is ready.
    async fn restart(&mut self, restart: Restart) {
        match restart {
            Restart::Kill => self.process.kill().await,
            Restart::Term => {
                self.process.signal("TERM");
                self.process.wait_exit().await;
            }
        }
        self.process = Self::spawn(&self.config, &self.log);
        self.admin = self.process.wait_ready().await;
    }
}

async fn recovers_every_event_across_drops_restarts_and_edges(runtime: Runtime, restart: Restart) {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    // The official client waits 1.5 to 9 seconds before it reconnects (its default
    // backoff); the window holds what flows meanwhile.
    config.edge.history.max_events_per_user = 1000;
    let config = &config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let dir = temp_dir("anycable-recovery");
    let mut first = EdgeProcess::start(config, &dir, "edge-a").await;
    let second = EdgeProcess::start(config, &dir, "edge-b").await;
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
    client
        .until("40 events", |seen| seen.messages.len() >= 40)
        .await;
    // The first subscribe asked for history too (since the client started).
    let answered = client.histories();
    assert_eq!(proxy.cut(), 1, "one connection to cut");
    client
        .until("a restored session", |seen| seen.connects.contains(&true))
        .await;
    client
        .until("its history", |seen| histories(seen) > answered)
        .await;

    // 2. The edge process restarts: the new one reads the window back from Kafka
    // before it is ready, and the client, whose session it does not know, subscribes
    // again with its position.
    client.more(10).await;
    let answered = client.histories();
    first.restart(restart).await;
    client
        .until("history from the restarted edge", |seen| {
            histories(seen) > answered
        })
        .await;

    // 3. The network drops it again and the next connection reaches the other edge.
    client.more(10).await;
    let answered = client.histories();
    proxy.set_upstream(second.address);
    proxy.cut();
    client
        .until("history from the other edge", |seen| {
            histories(seen) > answered
        })
        .await;

    client.more(EVENTS_AFTER).await;
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
    // The restarted edge resumed the client's stream; the other did too, not knowing
    // its sid.
    wait_for_metric(
        first.admin,
        r#"fanout_edge_stream_resumes_total{result="resumed"} 1"#,
    )
    .await;
    wait_for_metric(
        second.admin,
        r#"fanout_edge_stream_resumes_total{result="resumed"} 1"#,
    )
    .await;
    wait_for_metric(
        second.admin,
        r#"fanout_edge_session_restores_total{result="unknown"} 1"#,
    )
    .await;
    client.script.finish().await;
    for stages in [ingest, router] {
        stages.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycable_web_in_node_recovers_every_event_across_drops_a_crashed_edge_and_another_edge() {
    ensure_node_modules();
    recovers_every_event_across_drops_restarts_and_edges(Runtime::Node, Restart::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycable_web_in_chromium_recovers_every_event_across_drops_a_drained_edge_and_another_edge()
 {
    ensure_node_modules();
    ensure_chromium();
    let page = serve_anycable_page().await;
    recovers_every_event_across_drops_restarts_and_edges(Runtime::Chromium(page), Restart::Term)
        .await;
}
