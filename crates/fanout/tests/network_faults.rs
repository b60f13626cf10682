//! Network faults, for real: ingest, routers and an edge run as `fanout` processes,
//! each on a test host of its own (a Linux network namespace joined to the test's by
//! veth pairs, `tests/src/netns.rs`), against the embedded Kafka in the test process.
//! Faults hit the links between the stages and the broker:
//!
//! - a router's link cut (`ip link set ... down`) for 30 s while events flow;
//! - 200 ms of latency each way, stalls and dropped connections on the edge's link;
//! - one of two routers partitioned from the broker while the other keeps running.
//!
//! Each test shows that nothing exits, that readiness and metrics show the fault where
//! a stage can tell (a cut router's `/readyz` goes not-ready and comes back; its
//! `fanout_router_kafka_errors_total` grows; the edge's grows when its connections are
//! dropped), that work resumes by itself, and that in the end every user's count at
//! the edge (asked over ActionCable, as a client would) equals an independent recount
//! of the produced events, and `/realtime` clients that stayed connected throughout got
//! exactly the events an independent oracle computes: none lost, none repeated.
//!
//! Why the embedded broker and a relay: the tests need a broker they can start in a
//! second and whose group coordinator handles rebalances well (tansu's does not, see
//! `process_kills.rs`); librdkafka's mock cluster, in this process, listens on and
//! advertises `127.0.0.1:PORT` in the test's namespace (the broker's host). In each
//! stage's namespace a relay (socat) listens on that same address on the namespace's
//! own loopback and forwards over the stage's data link to a fault proxy
//! (`tests/src/fault_proxy.rs`) on the far end of the link, which forwards to the
//! broker. So every Kafka byte of a stage crosses its own veth (a cut is a real cut:
//! the stage's connections hang, as on a real network) and its own fault proxy (for
//! latency, stalls and dropped connections, which the kernel's missing `netem` cannot
//! give). A second link per host, never faulted, carries its admin port and its
//! WebSocket clients, so the test watches `/readyz` and `/metrics` through a cut.
//!
//! Run as root (CI does): `cargo test -p fanout --test network_faults`. iproute2 and
//! socat are installed from Debian if missing. A machine where namespaces cannot be
//! made fails the tests, saying why; they never skip. `RUST_LOG` for the stage
//! processes: `TEST_NETFAULTS_LOG` (default `info`); their logs are in the directory
//! named in a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_app::config::Config;
use fanout_schema::v1;
use fanout_tests::fault_proxy::FaultProxy;
use fanout_tests::netns::{TestHost, TestNet};
use fanout_tests::process::{Fanout, FanoutProcess, http_get, temp_dir, write_config};
use fanout_tests::scenarios::{StreamShape, event_key, random_stream, recount};
use fanout_tests::streams::{Watcher, assert_streams, produced_events, stream_oracle};
use fanout_tests::*;
use futures::StreamExt;
use prost::Message as _;
use rdkafka::producer::FutureRecord;

const FANOUT: Fanout = Fanout(env!("CARGO_BIN_EXE_fanout"));
/// Events per phase; three phases per test. Modest: the point is the faults.
const PHASE_EVENTS: usize = 1_000;
/// How long a router's link stays cut.
const CUT: Duration = Duration::from_secs(30);

/// A stage process on a test host of its own, its Kafka traffic through a fault proxy.
struct Stage {
    /// Fields drop in order: the process, then its proxy, then its host.
    process: FanoutProcess,
    proxy: FaultProxy,
    host: TestHost,
    admin: SocketAddr,
    name: String,
}

impl Stage {
    async fn start(
        net: &mut TestNet,
        cluster: &TestCluster,
        config: &Config,
        role: &str,
        name: &str,
        dir: &Path,
    ) -> Self {
        let broker: SocketAddr = cluster.config.kafka.brokers.parse().unwrap();
        let host = net.host(broker);
        let proxy = FaultProxy::start(host.broker_side, broker).await;
        let mut config = config.clone();
        config.listen.admin = host.mgmt_listen();
        config.listen.edge = host.mgmt_listen();
        config.listen.api = host.mgmt_listen();
        let config_path = dir.join(format!("{name}.toml"));
        write_config(&config, &config_path);
        let level = std::env::var("TEST_NETFAULTS_LOG").unwrap_or_else(|_| "info".to_owned());
        let args = [
            "--log-format",
            "json",
            role,
            "--config",
            config_path.to_str().unwrap(),
        ];
        let mut process = FANOUT.start_in_netns(
            &host.netns,
            &args,
            &[("RUST_LOG", &level)],
            &dir.join(format!("{name}.log")),
        );
        let admin = process.wait_ready().await;
        Self {
            process,
            proxy,
            host,
            admin,
            name: name.to_owned(),
        }
    }

    /// `/readyz`'s status, `None` if the admin port did not answer.
    async fn readyz(&self) -> Option<u16> {
        http_get(&self.admin.to_string(), "/readyz")
            .await
            .map(|(status, _)| status)
    }

    async fn wait_readyz(&self, what: &str, wanted: impl Fn(Option<u16>) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let status = self.readyz().await;
            if wanted(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}'s /readyz never {what} (last: {status:?}): {}",
                self.name,
                self.process.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum of the samples of `metric` on `/metrics`.
    async fn metric(&self, metric: &str) -> f64 {
        let (_, body) = http_get(&self.admin.to_string(), "/metrics")
            .await
            .unwrap_or_else(|| panic!("{}'s /metrics did not answer", self.name));
        sum_of(&body, metric)
    }

    async fn wait_metric(&self, metric: &str, what: &str, wanted: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let value = self.metric(metric).await;
            if wanted(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}'s {metric} never {what} (last: {value})",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Partitions of each `partitions assigned` log line from line `from` on.
    fn assignments_since(&self, from: usize) -> Vec<BTreeSet<i64>> {
        self.process
            .json_logs()
            .into_iter()
            .skip(from)
            .filter(|event| event["message"] == "partitions assigned")
            .map(|event| parse_partitions(&event["partitions"]))
            .collect()
    }

    fn log_lines(&self) -> usize {
        self.process.stderr_lines().len()
    }
}

/// `partitions = ?[..]` as logged: a debug-formatted list of partition numbers.
fn parse_partitions(field: &serde_json::Value) -> BTreeSet<i64> {
    let text = match field {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|number| !number.is_empty())
        .map(|number| number.parse().unwrap())
        .collect()
}

/// The sum of the samples of `metric` (any labels) in a Prometheus text body.
fn sum_of(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name_and_labels, value) = line.rsplit_once(' ')?;
            let name = name_and_labels.split('{').next()?;
            (name == metric).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The config every stage starts from: the cluster's, with group sessions short enough
/// for a test (a partitioned member's partitions move after 6 s), and an edge that
/// keeps every event a watcher could need.
fn stage_config(cluster: &TestCluster) -> Config {
    let mut config = cluster.config.clone();
    // A cut link drops packets without a word: librdkafka notices only when a request
    // goes unanswered for `socket.timeout.ms` (60 s by default, longer than the cut).
    config
        .kafka
        .client
        .insert("socket.timeout.ms".to_owned(), "10000".to_owned());
    let consumer = &mut config.kafka.consumer;
    consumer.insert("session.timeout.ms".to_owned(), "6000".to_owned());
    consumer.insert("heartbeat.interval.ms".to_owned(), "1000".to_owned());
    config.edge.max_stream_queue = 1_000_000;
    config.edge.history.max_events_per_user = 100_000;
    config
}

/// The events of one test: a random stream (messages, reads naming users to notify,
/// deletes, notifications, duplicates) of three phases.
struct Events {
    shape: StreamShape,
    stream: Vec<v1::MessageEvent>,
    seed: u64,
}

impl Events {
    fn new(seed: u64) -> Self {
        let shape = StreamShape::wide(&["p1", "p2"], 40, 16);
        let stream = random_stream(&shape, seed, 3 * PHASE_EVENTS);
        Self {
            shape,
            stream,
            seed,
        }
    }

    fn phase(&self, phase: usize) -> &[v1::MessageEvent] {
        &self.stream[phase * PHASE_EVENTS..(phase + 1) * PHASE_EVENTS]
    }

    /// The recount of phases `0..phases`.
    fn counts_after(&self, phases: usize) -> BTreeMap<String, u64> {
        recount(&self.stream[..phases * PHASE_EVENTS])
    }
}

/// Produces `events`, many in flight at once, each keyed by its conversation (so each
/// conversation's events stay in order), straight to the broker (the test's producer is
/// on the broker's host: no fault on its way).
async fn produce(cluster: &TestCluster, events: &[v1::MessageEvent]) {
    let producer = cluster.producer();
    let topic = cluster.config.topics.message_events.clone();
    let records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|event| (event_key(event), event.encode_to_vec()))
        .collect();
    futures::stream::iter(records.iter().map(|(key, payload)| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(FutureRecord::to(&topic).key(key).payload(payload), DEADLINE)
                .await
                .map_err(|(error, _)| error)
                .unwrap();
        }
    }))
    .buffer_unordered(256)
    .collect::<Vec<()>>()
    .await;
}

/// Each user's count as the edge at `edge` tells a client that subscribes now.
async fn cable_counts(
    edge: SocketAddr,
    partners: &[TestPartner],
    keys: impl Iterator<Item = &String>,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for key in keys {
        let (code, user) = key.split_once('/').unwrap();
        let partner = partners
            .iter()
            .find(|partner| partner.code == code)
            .unwrap();
        let mut client = CableClient::connect(edge, code, &partner.token(user)).await;
        let frame = client.welcome_and_subscribe().await;
        let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
        let count = frame["message"]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("a count frame: {frame}"));
        counts.insert(key.clone(), count);
    }
    counts
}

/// Waits until every user's count at the edge is `expected`.
async fn wait_for_cable_counts(
    edge: SocketAddr,
    partners: &[TestPartner],
    expected: &BTreeMap<String, u64>,
    context: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    loop {
        let actual = cable_counts(edge, partners, expected.keys()).await;
        if actual == *expected {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let differing: Vec<String> = expected
                .iter()
                .filter(|(key, count)| actual.get(*key) != Some(*count))
                .map(|(key, count)| format!("{key}: expected {count}, edge {:?}", actual[key]))
                .collect();
            panic!(
                "counts of {} users at the edge differ from the recount ({context}):\n{}",
                differing.len(),
                differing.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One test's world: the cluster, its hosts' network, a log directory, the events.
struct World {
    cluster: TestCluster,
    partners: Vec<TestPartner>,
    net: TestNet,
    dir: PathBuf,
    config: Config,
    events: Events,
}

impl World {
    fn new(name: &str, seed: u64) -> Self {
        let events = Events::new(seed);
        let partners = events.shape.test_partners();
        let cluster = TestCluster::start(4, &partners);
        let net = TestNet::new();
        let config = stage_config(&cluster);
        Self {
            cluster,
            partners,
            net,
            dir: temp_dir(name),
            config,
            events,
        }
    }

    async fn stage(&mut self, role: &str, name: &str) -> Stage {
        Stage::start(
            &mut self.net,
            &self.cluster,
            &self.config,
            role,
            name,
            &self.dir,
        )
        .await
    }

    /// `/realtime` clients of 10 users of each partner, on the edge, that never
    /// reconnect.
    async fn watchers(&self, edge: SocketAddr) -> Vec<Watcher> {
        let mut watchers = Vec::new();
        for partner in &self.partners {
            for user in self.events.shape.users.iter().take(10) {
                watchers
                    .push(Watcher::start(edge, &partner.code, user, &partner.token(user)).await);
            }
        }
        watchers
    }

    fn context(&self) -> String {
        format!("seed {}, logs in {}", self.events.seed, self.dir.display())
    }

    /// The end of every test: counts and streams equal the oracles; every stage still
    /// runs and is ready; every watcher kept its one connection.
    async fn assert_exact(
        &self,
        edge: SocketAddr,
        watchers: &[Watcher],
        stages: &mut [&mut Stage],
    ) {
        let context = self.context();
        wait_for_cable_counts(edge, &self.partners, &self.events.counts_after(3), &context).await;
        let expected = stream_oracle(&produced_events(&self.cluster.config));
        assert_streams(watchers, &expected, &context).await;
        for watcher in watchers {
            assert!(
                !watcher.task.is_finished(),
                "{}'s connection ended ({context})",
                watcher.key
            );
        }
        for stage in stages {
            stage.process.assert_running();
            stage
                .wait_readyz("ready at the end", |status| status == Some(200))
                .await;
        }
    }
}

/// The edge's client address, from its log.
async fn edge_address(edge: &mut Stage) -> SocketAddr {
    edge.process
        .logged_address("edge accepting WebSocket connections")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routers_link_cut_for_30_s_stalls_it_and_it_resumes_by_itself() {
    let mut world = World::new("netfaults-cut", 7_200_000);
    let mut ingest = world.stage("ingest", "ingest").await;
    let mut router = world.stage("router", "router").await;
    let mut edge = world.stage("edge", "edge").await;
    let edge_at = edge_address(&mut edge).await;
    let watchers = world.watchers(edge_at).await;

    produce(&world.cluster, world.events.phase(0)).await;
    wait_for_cable_counts(
        edge_at,
        &world.partners,
        &world.events.counts_after(1),
        &world.context(),
    )
    .await;
    let errors_before = router.metric("fanout_router_kafka_errors_total").await;

    // The cut: the router's connections hang, its reconnects get nowhere.
    router.host.data.cut();
    let cut_at = tokio::time::Instant::now();
    produce(&world.cluster, world.events.phase(1)).await;
    router
        .wait_readyz("went not-ready during the cut", |status| {
            status.is_some_and(|status| status != 200)
        })
        .await;
    router
        .wait_metric(
            "fanout_router_kafka_errors_total",
            "counted the cut",
            |errors| errors > errors_before,
        )
        .await;
    tokio::time::sleep_until(cut_at + CUT).await;
    router.process.assert_running();
    router.host.data.mend();

    router
        .wait_readyz("came back after the cut", |status| status == Some(200))
        .await;
    produce(&world.cluster, world.events.phase(2)).await;
    world
        .assert_exact(
            edge_at,
            &watchers,
            &mut [&mut ingest, &mut router, &mut edge],
        )
        .await;
    // Caught up: the router's lag, as its metrics tell it, comes back to nothing.
    router
        .wait_metric(
            "fanout_router_consumer_lag_records",
            "came back to 0",
            |lag| lag == 0.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_stalls_and_dropped_connections_on_the_edges_link_lose_nothing() {
    let mut world = World::new("netfaults-edge", 7_300_000);
    let mut ingest = world.stage("ingest", "ingest").await;
    let mut router = world.stage("router", "router").await;
    let mut edge = world.stage("edge", "edge").await;
    let edge_at = edge_address(&mut edge).await;
    let watchers = world.watchers(edge_at).await;

    // 200 ms each way on every Kafka byte of the edge's from now on.
    edge.proxy.set_latency(Duration::from_millis(200));
    produce(&world.cluster, world.events.phase(0)).await;
    wait_for_cable_counts(
        edge_at,
        &world.partners,
        &world.events.counts_after(1),
        &world.context(),
    )
    .await;

    // Stalls: nothing forwarded for 5 s, twice, while events flow.
    let half = PHASE_EVENTS / 2;
    for part in [
        &world.events.phase(1)[..half],
        &world.events.phase(1)[half..],
    ] {
        edge.proxy.set_stalled(true);
        produce(&world.cluster, part).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        edge.process.assert_running();
        edge.proxy.set_stalled(false);
    }

    // Dropped connections: every Kafka connection of the edge's closed at once.
    let errors_before = edge.metric("fanout_edge_kafka_errors_total").await;
    let dropped = edge.proxy.drop_connections();
    assert!(dropped > 0, "the edge had Kafka connections to drop");
    edge.wait_metric(
        "fanout_edge_kafka_errors_total",
        "counted the dropped connections",
        |errors| errors > errors_before,
    )
    .await;
    produce(&world.cluster, world.events.phase(2)).await;
    world
        .assert_exact(
            edge_at,
            &watchers,
            &mut [&mut ingest, &mut router, &mut edge],
        )
        .await;
    assert!(
        edge.proxy.open_connections() > 0,
        "the edge connected again through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_partitioned_from_the_broker_hands_over_and_rejoins() {
    let mut world = World::new("netfaults-partition", 7_400_000);
    let mut ingest = world.stage("ingest", "ingest").await;
    let mut router_a = world.stage("router", "router-a").await;
    let mut router_b = world.stage("router", "router-b").await;
    let mut edge = world.stage("edge", "edge").await;
    let edge_at = edge_address(&mut edge).await;
    let watchers = world.watchers(edge_at).await;

    produce(&world.cluster, world.events.phase(0)).await;
    wait_for_cable_counts(
        edge_at,
        &world.partners,
        &world.events.counts_after(1),
        &world.context(),
    )
    .await;
    wait_until("both routers to hold partitions", || {
        [&router_a, &router_b].iter().all(|router| {
            router
                .assignments_since(0)
                .last()
                .is_some_and(|last| !last.is_empty())
        })
    })
    .await;

    // A is partitioned from the broker; B goes on.
    let a_errors_before = router_a.metric("fanout_router_kafka_errors_total").await;
    router_a.host.data.cut();
    let b_lines = router_b.log_lines();
    produce(&world.cluster, world.events.phase(1)).await;
    // Every user's count is right while A is still cut: B took over A's partitions
    // (after the session timeout) and processed their events.
    wait_for_cable_counts(
        edge_at,
        &world.partners,
        &world.events.counts_after(2),
        &format!("while router-a is cut; {}", world.context()),
    )
    .await;
    let b_holds: BTreeSet<i64> = router_b
        .assignments_since(b_lines)
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        b_holds,
        (0..4).collect(),
        "router-b holds every partition while router-a is cut"
    );
    router_a
        .wait_readyz("went not-ready while partitioned", |status| {
            status.is_some_and(|status| status != 200)
        })
        .await;
    router_a
        .wait_metric(
            "fanout_router_kafka_errors_total",
            "counted the partition",
            |errors| errors > a_errors_before,
        )
        .await;
    router_a.process.assert_running();

    // A comes back and rejoins: it is assigned partitions again.
    let a_lines = router_a.log_lines();
    router_a.host.data.mend();
    let router_a = &mut router_a;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !router_a
        .assignments_since(a_lines)
        .iter()
        .any(|partitions| !partitions.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "router-a never rejoined: {}",
            router_a.process.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce(&world.cluster, world.events.phase(2)).await;
    world
        .assert_exact(
            edge_at,
            &watchers,
            &mut [&mut ingest, router_a, &mut router_b, &mut edge],
        )
        .await;
}
