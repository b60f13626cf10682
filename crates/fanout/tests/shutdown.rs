//! SIGTERM and SIGINT, for real: ingest, router and edge run as `fanout` processes
//! against the embedded Kafka (over TCP, in the test process), clients connected and
//! counts flowing. On the signal each stops accepting, drains and exits 0 within
//! `shutdown.grace_ms`: the edge's clients are told `server_restart`, and ingest's and
//! the router's committed offsets cover every record they processed (automatic commits
//! are pushed out of the way, so only the shutdown's commit can account for them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use fanout_app::config::Listen;
use fanout_tests::process::{Fanout, FanoutProcess, temp_dir, wait_for_metric, write_config};
use fanout_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

const FANOUT: Fanout = Fanout(env!("CARGO_BIN_EXE_fanout"));
const GOODBYE: &str = r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#;

/// `fanout <role>` with JSON logs at info.
fn start_role(role: &str, config: &Path) -> FanoutProcess {
    let config = config.to_str().unwrap();
    FANOUT.start(
        &["--log-format", "json", role, "--config", config],
        &[("RUST_LOG", "info")],
    )
}

/// Waits for the exit and checks it was clean and logged as such.
async fn assert_exits_cleanly(role: &mut FanoutProcess, signal: &str) {
    let status = role.wait_exit().await;
    assert!(
        status.success(),
        "{} exited with {status}: {}",
        role.name(),
        role.logs_text()
    );
    assert!(
        role.logged(&format!("{signal}: shutting down")).is_some(),
        "{}",
        role.logs_text()
    );
    assert!(role.logged("stopped").is_some(), "{}", role.logs_text());
    assert!(
        role.json_logs()
            .iter()
            .all(|event| event["level"] != "ERROR"),
        "{} logged an error: {}",
        role.name(),
        role.logs_text()
    );
}

/// The cluster's config with the given drain window and grace, on free ports.
fn write_role_config(
    dir: &Path,
    cluster: &TestCluster,
    drain_window_ms: u64,
    grace_ms: u64,
) -> PathBuf {
    let mut config = cluster.config.clone();
    // Only the shutdown's commit may account for the processed records.
    let consumer = &mut config.kafka.consumer;
    consumer.insert("auto.commit.interval.ms".to_owned(), "3600000".to_owned());
    consumer.insert("session.timeout.ms".to_owned(), "6000".to_owned());
    config.edge.drain_window_ms = drain_window_ms;
    config.listen = Listen {
        edge: "127.0.0.1:0".to_owned(),
        api: "127.0.0.1:0".to_owned(),
        admin: "127.0.0.1:0".to_owned(),
    };
    config.shutdown.grace_ms = grace_ms;
    let path = dir.join("fanout.toml");
    write_config(&config, &path);
    path
}

/// Per partition of `topic`: the group's committed offset and the high watermark.
fn committed_and_ends(
    cluster: &TestCluster,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = cluster
        .config
        .kafka
        .client_config(&[("group.id", group)])
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, DEADLINE).unwrap();
    (0..partitions)
        .map(|partition| {
            let offset = committed
                .find_partition(topic, partition)
                .and_then(|element| element.offset().to_raw())
                .unwrap_or(-1);
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, DEADLINE)
                .unwrap();
            (offset, high)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_drain_commit_and_exit_zero() {
    const PARTITIONS: i32 = 2;
    const MESSAGES: u64 = 10;
    let partner = TestPartner::new("p1");
    let cluster = TestCluster::start(PARTITIONS, std::slice::from_ref(&partner));
    let config_path = write_role_config(&temp_dir("shutdown"), &cluster, 1000, 30_000);

    let mut ingest = start_role("ingest", &config_path);
    let mut router = start_role("router", &config_path);
    let mut edge = start_role("edge", &config_path);
    let edge_address = edge
        .logged_address("edge accepting WebSocket connections")
        .await;
    for role in [&mut ingest, &mut router, &mut edge] {
        role.wait_ready().await;
    }

    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for user in users {
        let mut client =
            CableClient::connect(edge_address, &partner.code, &partner.token(user)).await;
        assert_eq!(client.welcome_and_subscribe().await, count_frame(0));
        clients.push(client);
    }
    let edge_lines_before = edge.stderr_lines().len();
    let producer = cluster.producer();
    for seq in 1..=MESSAGES {
        let conversation = if seq % 2 == 0 { "c1" } else { "c2" };
        let message = event::created(&partner.code, conversation, seq, "dave", &users);
        produce_event(&producer, &cluster.config, &message).await;
    }
    for client in &mut clients {
        loop {
            let frame = client.next_frame().await.expect("a count");
            if frame == count_frame(MESSAGES) {
                break;
            }
        }
    }

    // One line per notable event, none per frame: the pushes were not logged.
    let pushed = MESSAGES as usize * users.len();
    let edge_lines = edge.stderr_lines().len() - edge_lines_before;
    assert!(
        edge_lines < pushed / 2,
        "{edge_lines} edge log lines for {pushed} pushes: {}",
        edge.logs_text()
    );

    // Ingest and router: finish what is in flight, commit, exit 0.
    ingest.signal("TERM");
    router.signal("INT");
    assert_exits_cleanly(&mut ingest, "SIGTERM").await;
    assert_exits_cleanly(&mut router, "SIGINT").await;
    let config = &cluster.config;
    for (group, topic) in [
        (&config.ingest.group_id, &config.topics.message_events),
        (&config.router.group_id, &config.topics.user_events),
    ] {
        let offsets = committed_and_ends(&cluster, group, topic, PARTITIONS);
        assert!(
            offsets.iter().map(|(_, high)| high).sum::<i64>() > 0,
            "{topic} has records"
        );
        for (partition, (committed, high)) in offsets.iter().enumerate() {
            // A partition that never had a record has nothing to commit.
            let committed = if *high == 0 {
                (*committed).max(0)
            } else {
                *committed
            };
            assert_eq!(
                committed, *high,
                "{group} committed {committed} of {topic}/{partition}, whose end is {high}"
            );
        }
    }

    // Edge: stops accepting, tells every client to come back, exits 0.
    edge.signal("TERM");
    let mut first = true;
    for client in &mut clients {
        assert_eq!(client.next_frame().await.as_deref(), Some(GOODBYE));
        if first {
            // The listener closes before the first goodbye is sent.
            assert!(
                tokio::net::TcpStream::connect(edge_address).await.is_err(),
                "the edge still accepts connections while draining"
            );
            first = false;
        }
        assert_eq!(client.next_frame().await, None, "closed after the goodbye");
    }
    assert_exits_cleanly(&mut edge, "SIGTERM").await;
}

/// The other way out: a drain that cannot finish (ingest's output is refused by the
/// broker, retried forever) is cut off at `shutdown.grace_ms` with an error naming the
/// stage, and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_grace_is_logged_and_exits_nonzero() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let partner = TestPartner::new("p1");
    let cluster = TestCluster::start(1, std::slice::from_ref(&partner));
    let config_path = write_role_config(&temp_dir("grace"), &cluster, 500, 2000);

    // The input is in Kafka; from now on every produce request fails (retriably).
    let producer = cluster.producer();
    let message = event::created(&partner.code, "c1", 1, "dave", &["alice"]);
    produce_event(&producer, &cluster.config, &message).await;
    cluster
        .embedded()
        .with_cluster(|kafka| {
            kafka.request_errors(
                RDKafkaApiKey::Produce,
                &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
            );
        })
        .unwrap();

    let mut ingest = start_role("ingest", &config_path);
    let admin = ingest.logged_address("admin port listening").await;
    // Consumed, its user event in flight and never acknowledged.
    wait_for_metric(admin, r#"fanout_ingest_events_total{result="accepted"} 1"#).await;
    ingest.signal("TERM");
    let status = ingest.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", ingest.logs_text());
    let error = ingest
        .logged("shutdown grace passed before every stage stopped; exiting anyway")
        .unwrap_or_else(|| panic!("no error logged: {}", ingest.logs_text()));
    assert_eq!(error["level"], "ERROR");
    assert_eq!(error["grace_ms"], 2000);
    assert!(
        error["still_running"].as_str().unwrap().contains("ingest"),
        "{error}"
    );
}
