//! SIGKILL, for real: ingest and two routers run as `fanout` processes against the
//! embedded Kafka (over TCP, in the test process) and are killed with SIGKILL at seeded
//! random moments, at least ten times, while a stream of 100k events flows; each is
//! restarted at once.
//! After the last restart every user's count at the edge equals an independent recount
//! of the produced events: none lost, none doubled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fanout_tests::scenarios::{StreamShape, random_stream, recount, wait_for_counts};
use fanout_tests::*;
use futures::StreamExt;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use tokio::process::{Child, Command};

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");
const EVENTS: usize = 100_000;
const MIN_KILLS: usize = 10;
const MAX_KILLS: usize = 40;

/// One role's process, restarted after each kill.
struct Process {
    role: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(role: &'static str, config: &Path, log: PathBuf) -> Self {
        let mut process = Self {
            role,
            config: config.to_owned(),
            log,
            child: None,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(FANOUT)
            .args([self.role, "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("TEST_KILLS_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, then a fresh process.
    async fn kill_and_restart(&mut self, pause: Duration) {
        let mut child = self.child.take().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "{} had exited by itself; see {}",
            self.role,
            self.log.display()
        );
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        tokio::time::sleep(pause).await;
        self.spawn();
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "{} exited; see {}",
            self.role,
            self.log.display()
        );
    }
}

fn write_config(dir: &Path, cluster: &TestCluster) -> PathBuf {
    let config = &cluster.config;
    let topics = &config.topics;
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
# A killed member's partitions move after its session times out.
consumer = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }}

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

[listen]
admin = "127.0.0.1:0"
"#,
        brokers = config.kafka.brokers,
        message_events = topics.message_events,
        user_events = topics.user_events,
        router_state = topics.router_state,
        unread_counts = topics.unread_counts,
        dead_letter = topics.dead_letter,
        ingest_group = config.ingest.group_id,
        router_group = config.router.group_id,
    );
    let path = dir.join("fanout.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_repeated_sigkills_of_ingest_and_routers() {
    sigkills(|partners| TestCluster::start(4, partners)).await;
}

// Not on tansu: with tansu 0.6 (SQLite engine as well as in-memory), after some
// SIGKILLs of group members one user-events partition was assigned to no member for
// as long as we watched (18 minutes; both routers ready, neither fetching it), so
// counts never converged. It passed once in two runs. The router crash, graceful
// handover and broker restart scenarios do run on tansu (tests/real_broker.rs).

async fn sigkills(start_cluster: impl FnOnce(&[TestPartner]) -> TestCluster) {
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(7_100_000);
    let shape = StreamShape::wide(&["p1", "p2"], 300, 60);
    let events = std::env::var("TEST_KILLS_EVENTS")
        .ok()
        .and_then(|events| events.parse().ok())
        .unwrap_or(EVENTS);
    let stream = random_stream(&shape, seed, events);
    let expected = recount(&stream);

    let partners: Vec<TestPartner> = shape
        .partners
        .iter()
        .map(|code| TestPartner::new(code))
        .collect();
    let cluster = start_cluster(&partners);
    let dir = std::env::temp_dir().join(format!(
        "fanout-kills-{}-{}",
        std::process::id(),
        fanout_app::tools::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = write_config(&dir, &cluster);
    let edge = start_edge(&cluster.config).await;

    let mut processes = vec![
        Process::start("ingest", &config_path, dir.join("ingest.log")),
        Process::start("router", &config_path, dir.join("router-a.log")),
        Process::start("router", &config_path, dir.join("router-b.log")),
    ];

    // The stream flows from its own task, many records in flight at once.
    let records: Vec<(String, Vec<u8>)> = stream
        .iter()
        .map(|event| (event.event_id.clone(), event.encode_to_vec()))
        .collect();
    let producing = {
        let producer = cluster.producer();
        let topic = cluster.config.topics.message_events.clone();
        tokio::spawn(async move {
            let sends = futures::stream::iter(records.into_iter().map(move |(key, payload)| {
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&payload),
                            DEADLINE,
                        )
                        .await
                        .map_err(|(error, _)| error)
                        .unwrap();
                }
            }))
            .buffer_unordered(256);
            sends.collect::<Vec<()>>().await;
        })
    };

    // Kill at random moments while it flows, at least MIN_KILLS times.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = Vec::new();
    // Killing goes on while the stream flows, up to a bound (a slow broker, busy
    // machine must not make it endless); then the stream is left to finish.
    while kills.len() < MIN_KILLS || (!producing.is_finished() && kills.len() < MAX_KILLS) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let victim = rng.random_range(0..processes.len());
        let pause = Duration::from_millis(rng.random_range(0..500));
        processes[victim].kill_and_restart(pause).await;
        kills.push(processes[victim].role);
    }
    producing.await.unwrap();

    wait_for_counts(
        &edge,
        &cluster.config,
        &expected,
        &format!("seed {seed}, kills {kills:?}, logs in {}", dir.display()),
    )
    .await;
    for process in &mut processes {
        process.assert_running();
    }
    assert!(kills.len() >= MIN_KILLS);
    assert!(
        kills.contains(&"ingest") && kills.contains(&"router"),
        "both roles were killed: {kills:?}"
    );
    edge.running.stop().await;
}
