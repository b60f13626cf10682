//! The official `@rails/actioncable` client from npm, run by Node, against a running
//! edge: it connects with the JWT in the query, subscribes `PartnerChannel` and sees
//! the count change as events are produced. npm installs the client (from
//! tests/js/package-lock.json) if it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use fanout_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Installs the npm packages the client needs unless they are there already.
fn ensure_node_modules() {
    let dir = js_dir();
    if dir
        .join("node_modules/@rails/actioncable/package.json")
        .exists()
        && dir.join("node_modules/ws/package.json").exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
        .current_dir(&dir)
        .status()
        .expect("npm must be installed to run the official ActionCable client");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_actioncable_client_sees_the_count_change() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let edge = start_edge(config).await;
    let producer = cluster.producer();

    let url = format!(
        "ws://{}/cable?jwt={}&partner=acme",
        edge.address,
        partner.token("jane")
    );
    let mut child = Command::new("node")
        .arg(js_dir().join("cable_client.mjs"))
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the official ActionCable client");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_event = async || -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the client reported nothing before the deadline")
            .unwrap()
            .expect("the client exited early");
        serde_json::from_str(&line).unwrap()
    };
    let count = |n: u64| serde_json::json!({"event": "received", "data": {"type": "unread_count", "count": n}});

    assert_eq!(
        next_event().await,
        serde_json::json!({"event": "connected", "protocol": "actioncable-v1-json"})
    );
    assert_eq!(next_event().await, count(0));
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    assert_eq!(next_event().await, count(1));
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 2, "sam", &["jane"]),
    )
    .await;
    assert_eq!(next_event().await, count(2));
    produce_event(
        &producer,
        config,
        &event::conversation_read("acme", "c1", 2, "jane"),
    )
    .await;
    assert_eq!(next_event().await, count(0));

    // Closing stdin makes the client disconnect and exit cleanly.
    drop(child.stdin.take());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    ingest.stop().await;
    router.stop().await;
    edge.running.stop().await;
}
