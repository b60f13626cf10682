//! SIGTERM and SIGINT, for real: ingest, router and edge run as `fanout` processes
//! against the embedded Kafka (over TCP, in the test process), clients connected and
//! counts flowing. On the signal each stops accepting, drains and exits 0 within
//! `shutdown.grace_ms`: the edge's clients are told `server_restart`, and ingest's and
//! the router's committed offsets cover every record they processed (automatic commits
//! are pushed out of the way, so only the shutdown's commit can account for them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");
const GOODBYE: &str = r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#;

/// A role's process, its JSON log lines collected as they come.
struct Role {
    name: &'static str,
    child: Child,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Role {
    fn start(name: &'static str, config: &Path) -> Self {
        let mut command = Command::new(FANOUT);
        command
            .args(["--log-format", "json", name, "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("FANOUT_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        tokio::spawn({
            let logs = logs.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event = serde_json::from_str(&line).unwrap_or_else(
                        |_| serde_json::json!({ "message": line, "not_json": true }),
                    );
                    logs.lock().unwrap().push(event);
                }
            }
        });
        Self { name, child, logs }
    }

    fn logs_text(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn logged(&self, message: &str) -> Option<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|event| event["message"] == message)
            .cloned()
    }

    /// The address field of the log line `message`, once it is logged.
    async fn logged_address(&mut self, message: &str) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(event) = self.logged(message) {
                return event["address"].as_str().unwrap().parse().unwrap();
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "{} exited: {}",
                self.name,
                self.logs_text()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never logged {message:?}: {}",
                self.name,
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) {
        let admin = self.logged_address("admin port listening").await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while http_status(admin, "/readyz").await != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never ready: {}",
                self.name,
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit and checks it was clean and logged as such.
    async fn assert_exits_cleanly(&mut self, signal: &str) {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit: {}", self.name, self.logs_text()))
            .unwrap();
        // Let the log reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            self.name,
            self.logs_text()
        );
        assert!(
            self.logged(&format!("{signal}: shutting down")).is_some(),
            "{}",
            self.logs_text()
        );
        assert!(self.logged("stopped").is_some(), "{}", self.logs_text());
        let logs = self.logs.lock().unwrap();
        assert!(
            logs.iter().all(|event| event["level"] != "ERROR"),
            "{} logged an error: {}",
            self.name,
            self.logs_text()
        );
    }
}

/// The status of a plain HTTP GET, or `None` if the port does not answer.
async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn write_config(
    dir: &Path,
    cluster: &TestCluster,
    partner: &TestPartner,
    drain_window_ms: u64,
    grace_ms: u64,
) -> std::path::PathBuf {
    let config = &cluster.config;
    let topics = &config.topics;
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"

# Only the shutdown's commit may account for the processed records.
[kafka.consumer]
"auto.commit.interval.ms" = "3600000"
"session.timeout.ms" = "6000"

[topics]
message_events = "{message_events}"
user_events = "{user_events}"
router_state = "{router_state}"
unread_counts = "{unread_counts}"
dead_letter = "{dead_letter}"

[ingest]
group_id = "{ingest_group}"

[router]
group_id = "{router_group}"

[edge]
drain_window_ms = {drain_window_ms}

[edge.partners.{partner}]
secrets = [{{ secret = "{secret}" }}]

[listen]
edge = "127.0.0.1:0"
admin = "127.0.0.1:0"

[shutdown]
grace_ms = {grace_ms}
"#,
        brokers = config.kafka.brokers,
        message_events = topics.message_events,
        user_events = topics.user_events,
        router_state = topics.router_state,
        unread_counts = topics.unread_counts,
        dead_letter = topics.dead_letter,
        ingest_group = config.ingest.group_id,
        router_group = config.router.group_id,
        partner = partner.code,
        secret = partner.secret,
    );
    let path = dir.join("fanout.toml");
    std::fs::write(&path, text).unwrap();
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
    let dir = std::env::temp_dir().join(format!(
        "fanout-shutdown-{}-{}",
        std::process::id(),
        fanout_app::tools::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = write_config(&dir, &cluster, &partner, 1000, 30_000);

    let mut ingest = Role::start("ingest", &config_path);
    let mut router = Role::start("router", &config_path);
    let mut edge = Role::start("edge", &config_path);
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
    let edge_lines_before = edge.logs.lock().unwrap().len();
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
    let edge_lines = edge.logs.lock().unwrap().len() - edge_lines_before;
    assert!(
        edge_lines < pushed / 2,
        "{edge_lines} edge log lines for {pushed} pushes: {}",
        edge.logs_text()
    );

    // Ingest and router: finish what is in flight, commit, exit 0.
    ingest.signal("TERM");
    router.signal("INT");
    ingest.assert_exits_cleanly("SIGTERM").await;
    router.assert_exits_cleanly("SIGINT").await;
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
    edge.assert_exits_cleanly("SIGTERM").await;
}

/// The other way out: a drain that cannot finish (ingest's output is refused by the
/// broker, retried forever) is cut off at `shutdown.grace_ms` with an error naming the
/// stage, and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_grace_is_logged_and_exits_nonzero() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let partner = TestPartner::new("p1");
    let cluster = TestCluster::start(1, std::slice::from_ref(&partner));
    let dir = std::env::temp_dir().join(format!(
        "fanout-grace-{}-{}",
        std::process::id(),
        fanout_app::tools::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = write_config(&dir, &cluster, &partner, 500, 2000);

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

    let mut ingest = Role::start("ingest", &config_path);
    let admin = ingest.logged_address("admin port listening").await;
    // Consumed, its user event in flight and never acknowledged.
    wait_for_metric(admin, r#"fanout_ingest_events_total{result="accepted"} 1"#).await;
    ingest.signal("TERM");
    let status = tokio::time::timeout(DEADLINE, ingest.child.wait())
        .await
        .unwrap_or_else(|_| panic!("ingest did not exit: {}", ingest.logs_text()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
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

async fn wait_for_metric(admin: SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut body = String::new();
        if let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await {
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let _ = stream.read_to_string(&mut body).await;
            }
        }
        if body.lines().any(|sample| sample == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never showed {line}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
