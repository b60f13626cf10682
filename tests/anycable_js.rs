//! The unmodified `@anycable/web` client from npm (AnyCable's extended protocol,
//! `actioncable-v1-ext-json`) in Node, away longer than the edge's history window: on
//! its return it is told `reject_history` and never given part of what it missed, and
//! the live events follow. Its recovery across dropped connections, edge restarts and
//! another edge, in Node and in headless Chromium, is in
//! crates/fanout/tests/anycable_recovery.rs (against `fanout edge` processes).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use fanout_tests::anycable::{Client, Runtime, produce_numbered};
use fanout_tests::node::ensure_node_modules;
use fanout_tests::proxy::TcpProxy;
use fanout_tests::*;

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
    produce_numbered(&cluster, "jane", 1..=3).await;
    client
        .until("3 events", |seen| seen.messages.len() >= 3)
        .await;

    // Away: 20 events, of which the window keeps the last 5.
    proxy.refuse(true);
    proxy.cut();
    produce_numbered(&cluster, "jane", 4..=23).await;
    wait_for_stream_position(&edge, "acme/jane", 23).await;
    proxy.refuse(false);
    client
        .until("the history rejected", |seen| {
            seen.infos.contains(&"history_not_found".to_owned())
        })
        .await;
    produce_numbered(&cluster, "jane", 24..=26).await;
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
