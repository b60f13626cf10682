//! The WebSocket scenarios of `fanout bench`.
//!
//! Every scenario opens its connections through worker processes ([`super::worker`]),
//! waits until all are subscribed, runs its load, then collects the workers' reports.
//! Latency is produce → client receive, on one machine clock: events (or, for
//! `push-rate`, count records) are stamped with their send time when produced, and
//! each client notes when the count they caused arrived.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::{KafkaSettings, Topics};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng as _;
use serde::Serialize;

use super::load::{Sends, group_message, hold, push_rate, steady};
use super::pool::WorkerPool;
use super::report::{LatencySummary, Machine, plot_latency};
use super::target::{
    EdgeTarget, LocalDeployment, LocalOptions, cpu_seconds, http_get, metric_value, rss_kib,
};
use super::worker::{LatencySource, Protocol, WorkerSpec, new_histogram};

/// The named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N connections subscribed and held: the edge's RSS per connection.
    Idle,
    /// One message to every connected user: produce → every socket.
    GroupMessage,
    /// A steady rate of changes spread over the connected users.
    Steady,
    /// Count records written straight to unread-counts as fast as the producer can:
    /// pushes delivered per second, router not in the loop.
    PushRate,
    /// N clients connecting at once: authenticated handshakes per second.
    ConnectStorm,
    /// Several edge processes, N connections over all of them.
    ScaleOut,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::GroupMessage => "group-message",
            Self::Steady => "steady",
            Self::PushRate => "push-rate",
            Self::ConnectStorm => "connect-storm",
            Self::ScaleOut => "scale-out",
        }
    }

    fn default_connections(self) -> u64 {
        match self {
            Self::Idle => 19_000,
            Self::GroupMessage | Self::ConnectStorm => 10_000,
            Self::Steady => 15_000,
            Self::PushRate => 2_000,
            Self::ScaleOut => 60_000,
        }
    }

    fn default_duration(self) -> Duration {
        match self {
            Self::Idle | Self::ScaleOut => Duration::from_secs(5),
            Self::Steady => Duration::from_secs(30),
            Self::PushRate => Duration::from_secs(10),
            Self::GroupMessage | Self::ConnectStorm => Duration::ZERO,
        }
    }

    /// Scenarios whose events go through ingest and router.
    fn needs_pipeline(self) -> bool {
        matches!(self, Self::GroupMessage | Self::Steady)
    }
}

/// A deployment already running, instead of one the bench starts: named by
/// `--edge-url`; without it the other fields are not used.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExternalTarget {
    /// A running edge (`ws://host:port`; repeat for several) instead of starting one.
    #[arg(long = "edge-url")]
    pub edge_urls: Vec<String>,
    /// The pid of each running edge, in `--edge-url` order, to read its RSS.
    #[arg(long = "edge-pid")]
    pub edge_pids: Vec<u32>,
    /// The running deployment's Kafka (needed by group-message, steady, push-rate).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The running deployment's partner code.
    #[arg(long)]
    pub partner: Option<String>,
    /// That partner's signing secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// The running deployment's topic prefix, if any.
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

impl ExternalTarget {
    /// Whether the run measures a running deployment (`--edge-url` given).
    fn is_named(&self) -> bool {
        !self.edge_urls.is_empty()
    }
}

/// Options of the WebSocket scenarios. Without `--edge-url` the bench starts what it
/// needs itself: an embedded Kafka, edge processes, and ingest and router processes.
#[derive(Debug, Clone, clap::Args)]
pub struct WsBenchOptions {
    /// Connections (default: the scenario's).
    #[arg(long)]
    pub connections: Option<u64>,
    /// Client worker processes (default: one per 15000 connections; at most 18000 each).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long, value_enum, default_value_t = Protocol::Cable)]
    pub protocol: Protocol,
    /// How long the load runs (idle, scale-out: how long connections are held).
    #[arg(long)]
    pub duration_seconds: Option<f64>,
    /// steady: changes per second (default 20000). push-rate: count records per
    /// second (default 200000; 0: as fast as the producer goes).
    #[arg(long)]
    pub rate: Option<u64>,
    /// group-message: messages sent, one after the other, each to every user.
    #[arg(long, default_value_t = 5)]
    pub messages: u64,
    /// Edge processes to start (scale-out: 4, others: 1).
    #[arg(long)]
    pub edges: Option<usize>,
    /// Partitions of the topics the bench creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Connections being set up at once per worker (connect-storm: all at once).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Where `<scenario>.json`, `<scenario>.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub external: ExternalTarget,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `push-rate`'s default count records per second: above what one edge delivers here
/// (so it is saturated and coalesces), below the producer's own maximum, which would
/// take the CPU the edge needs (`--rate 0`).
pub const DEFAULT_PUSH_RATE: u64 = 200_000;

/// Most connections one worker holds: the open-file limit is 20000 per process.
pub const MAX_CONNECTIONS_PER_WORKER: u64 = 18_000;
/// Connections per source address (an address has about 28k ephemeral ports).
const CONNECTIONS_PER_SOURCE_ADDRESS: u64 = 8_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionResult {
    pub requested: u64,
    pub authenticated: u64,
    pub subscribed: u64,
    pub failed: u64,
    pub errors: Vec<(String, u64)>,
    /// From the first `connect` to the last welcome/authresponse.
    pub authenticate_seconds: f64,
    /// Authenticated handshakes per second over `authenticate_seconds`.
    pub handshakes_per_second: f64,
    /// From the first `connect` to the last subscription confirmed with its count.
    pub subscribe_seconds: f64,
    pub subscribed_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PushResult {
    /// Pushes the run should cause if none were coalesced (`None`: not known).
    pub expected: Option<u64>,
    pub received: u64,
    /// From the first push received to the last.
    pub seconds: f64,
    pub per_second: f64,
    /// Events (or count records) produced, and how fast.
    pub produced: u64,
    pub produce_seconds: f64,
    pub produced_per_second: f64,
    pub produce_failures: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeResult {
    pub url: String,
    pub pid: Option<u32>,
    pub connections: u64,
    pub rss_baseline_kib: Option<u64>,
    /// Right after every connection was subscribed.
    pub rss_subscribed_kib: Option<u64>,
    /// At the end of the run.
    pub rss_end_kib: Option<u64>,
    /// (end RSS - baseline) / connections.
    pub rss_per_connection_bytes: Option<f64>,
    /// `fanout_edge_pushes_total` at the end (subscribe counts included).
    pub edge_pushes_total: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuResult {
    pub wall_seconds: f64,
    /// Each edge process (local edges, or `--edge-pid`).
    pub edges: Vec<f64>,
    /// Ingest and router processes together (local, group-message and steady).
    pub ingest_and_router: f64,
    /// The bench process: the embedded Kafka and the producer.
    pub bench_and_kafka: f64,
    /// The client worker processes together.
    pub clients: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub metric: &'static str,
    pub target: String,
    pub measured: f64,
    pub met: bool,
}

/// The result of a WebSocket scenario, written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct WsBenchResult {
    pub scenario: &'static str,
    pub target: String,
    pub protocol: Protocol,
    pub workers: usize,
    pub duration_seconds: f64,
    pub machine: Machine,
    pub connections: ConnectionResult,
    /// Connect start → welcome (or authresponse), per connection.
    pub handshake_latency: LatencySummary,
    /// Produce → client receive, per push.
    pub latency: LatencySummary,
    pub pushes: PushResult,
    /// `group-message`: latency of each message's pushes, in order.
    pub per_message: Vec<LatencySummary>,
    pub edges: Vec<EdgeResult>,
    /// Over all edges: sum of RSS growth / sum of connections.
    pub rss_per_connection_bytes: Option<f64>,
    /// CPU seconds each process used during the load (after every connection was
    /// subscribed), and the load's wall-clock seconds: where the 2 cores went.
    pub cpu: CpuResult,
    pub check: Option<TargetCheck>,
    pub result_file: String,
    pub plot_file: String,
}

/// Where the load goes: edges, Kafka, and the credentials to mint tokens.
pub(super) struct Target {
    pub(super) description: String,
    pub(super) edges: Vec<EdgeTarget>,
    pub(super) kafka: Option<KafkaSettings>,
    pub(super) topics: Topics,
    pub(super) partner: String,
    pub(super) secret: String,
    pub(super) local: Option<LocalDeployment>,
}

async fn target(
    scenario: Scenario,
    options: &WsBenchOptions,
    run_dir: &std::path::Path,
) -> anyhow::Result<Target> {
    if options.external.is_named() {
        let external = &options.external;
        let partner = external
            .partner
            .clone()
            .context("--partner is required with --edge-url")?;
        let secret = external
            .secret
            .clone()
            .context("--secret is required with --edge-url")?;
        let needs_kafka = scenario.needs_pipeline() || scenario == Scenario::PushRate;
        anyhow::ensure!(
            !needs_kafka || external.brokers.is_some(),
            "--brokers is required for {} with --edge-url",
            scenario.name()
        );
        let edges = external
            .edge_urls
            .iter()
            .enumerate()
            .map(|(index, url)| EdgeTarget {
                url: url.clone(),
                admin: None,
                pid: external.edge_pids.get(index).copied(),
            })
            .collect();
        return Ok(Target {
            description: format!("running deployment ({})", external.edge_urls.join(", ")),
            edges,
            kafka: external.brokers.clone().map(KafkaSettings::new),
            topics: external
                .topic_prefix
                .as_deref()
                .map_or_else(Topics::default, Topics::with_prefix),
            partner,
            secret,
            local: None,
        });
    }
    let edges = match scenario {
        Scenario::ScaleOut => options.edges.unwrap_or(4),
        _ => options.edges.unwrap_or(1),
    };
    anyhow::ensure!(edges >= 1, "--edges must be at least 1");
    let local = LocalDeployment::start(&LocalOptions {
        edges,
        pipeline: scenario.needs_pipeline(),
        partitions: options.partitions,
        run_dir,
    })
    .await?;
    Ok(Target {
        description: format!(
            "local: embedded Kafka (librdkafka mock) in the bench process, {edges} edge process(es){}",
            if scenario.needs_pipeline() {
                ", ingest and router processes"
            } else {
                ""
            }
        ),
        edges: local.edges.clone(),
        kafka: Some(KafkaSettings::new(local.kafka.bootstrap_servers())),
        topics: local.topics.clone(),
        partner: local.partner.clone(),
        secret: local.secret.clone(),
        local: Some(local),
    })
}

/// Runs a scenario and writes `<out_dir>/<scenario>.json` and `.svg`.
pub async fn run(scenario: Scenario, options: &WsBenchOptions) -> anyhow::Result<WsBenchResult> {
    let connections = options
        .connections
        .unwrap_or_else(|| scenario.default_connections());
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    let workers = options
        .workers
        .unwrap_or_else(|| usize::try_from(connections.div_ceil(15_000)).unwrap_or(1));
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        connections.div_ceil(workers as u64) <= MAX_CONNECTIONS_PER_WORKER,
        "{connections} connections need at least {} workers (at most {MAX_CONNECTIONS_PER_WORKER} each: the open-file limit)",
        connections.div_ceil(MAX_CONNECTIONS_PER_WORKER)
    );
    let duration = options.duration_seconds.map_or_else(
        || scenario.default_duration(),
        |seconds| Duration::from_secs_f64(seconds.max(0.0)),
    );
    super::target::raise_open_file_limit();
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = super::target::run_dir(&options.out_dir, scenario.name());
    std::fs::create_dir_all(&run_dir)?;
    let mut machine = Machine::read();

    let mut target = target(scenario, options, &run_dir).await?;
    let baselines: Vec<Option<u64>> = target
        .edges
        .iter()
        .map(|edge| edge.pid.and_then(|pid| rss_kib(pid).ok()))
        .collect();
    let run_id = fanout_app::tools::random_hex(4);
    let user_prefix = format!("b{run_id}-u");
    let latency_source = if scenario == Scenario::PushRate {
        LatencySource::CountIsSendTime
    } else {
        LatencySource::Receipts
    };
    let connect_concurrency = if scenario == Scenario::ConnectStorm {
        0
    } else {
        options.connect_concurrency
    };
    let per_worker = connections.div_ceil(workers as u64);
    let run_octet: u8 = rand::rng().random_range(1..=254);
    let specs: Vec<WorkerSpec> = (0..workers)
        .map(|worker| {
            let first_user = worker as u64 * per_worker;
            let count = per_worker.min(connections.saturating_sub(first_user));
            WorkerSpec {
                worker,
                edge_urls: target.edges.iter().map(|edge| edge.url.clone()).collect(),
                protocol: options.protocol,
                partner: target.partner.clone(),
                secret: target.secret.clone(),
                user_prefix: user_prefix.clone(),
                first_user,
                connections: count,
                source_addresses: super::target::source_addresses(
                    run_octet,
                    worker,
                    usize::try_from(count.div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS)).unwrap_or(1),
                ),
                per_source_address: CONNECTIONS_PER_SOURCE_ADDRESS,
                connect_concurrency,
                latency: latency_source,
            }
        })
        .filter(|spec| spec.connections > 0)
        .collect();
    let mut pool = WorkerPool::spawn(&specs, &run_dir).await?;
    pool.wait(Duration::from_secs(120), None, |pool| {
        pool.ready == pool.specs
    })
    .await
    .context("waiting for the workers to mint tokens")?;

    // The CPU each process spends on the connections (connect-storm) or the load.
    let edge_pids: Vec<Option<u32>> = target.edges.iter().map(|edge| edge.pid).collect();
    let pipeline_pids = target
        .local
        .as_ref()
        .map(LocalDeployment::pipeline_pids)
        .unwrap_or_default();
    let cpu_snapshot = |pool: &WorkerPool| CpuSnapshot {
        at: Instant::now(),
        edges: edge_pids
            .iter()
            .map(|pid| pid.and_then(cpu_seconds).unwrap_or(0.0))
            .collect(),
        pipeline: pipeline_pids
            .iter()
            .filter_map(|pid| cpu_seconds(*pid))
            .sum(),
        bench: cpu_seconds(std::process::id()).unwrap_or(0.0),
        clients: pool.pids.iter().filter_map(|pid| cpu_seconds(*pid)).sum(),
    };
    // Connect.
    let storm_cpu_before = cpu_snapshot(&pool);
    let bar = progress_bar(connections, "subscribed");
    pool.broadcast("connect").await?;
    pool.wait(Duration::from_secs(300), Some(&bar), |pool| {
        let totals = pool.totals();
        bar.set_position(totals.subscribed);
        bar.set_message(format!("failed {}", totals.failed));
        totals.subscribed + totals.failed >= connections
    })
    .await?;
    bar.finish_and_clear();
    let connected = pool.totals();
    eprintln!(
        "{}: {} of {connections} connections subscribed ({} failed)",
        scenario.name(),
        connected.subscribed,
        connected.failed
    );
    // Let allocations settle (first pings, buffers) before the RSS is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscribed_rss: Vec<Option<u64>> = target
        .edges
        .iter()
        .map(|edge| edge.pid.and_then(|pid| rss_kib(pid).ok()))
        .collect();

    let cpu_before = if scenario == Scenario::ConnectStorm {
        storm_cpu_before
    } else {
        cpu_snapshot(&pool)
    };
    let mut sends = Sends::default();
    let mut pushes = PushResult::default();
    let users = connections;
    match scenario {
        Scenario::Idle | Scenario::ScaleOut => hold(&mut pool, duration).await?,
        Scenario::ConnectStorm => {}
        Scenario::GroupMessage => {
            let kafka = target.kafka.clone().context("group-message needs Kafka")?;
            group_message(
                &mut pool,
                &kafka,
                &target,
                &user_prefix,
                users,
                options.messages,
                &mut sends,
                &mut pushes,
            )
            .await?;
        }
        Scenario::Steady => {
            let kafka = target.kafka.clone().context("steady needs Kafka")?;
            steady(
                &mut pool,
                &kafka,
                &target,
                &user_prefix,
                users,
                options.rate.unwrap_or(20_000),
                duration,
                options.seed,
                &mut sends,
                &mut pushes,
            )
            .await?;
        }
        Scenario::PushRate => {
            let kafka = target.kafka.clone().context("push-rate needs Kafka")?;
            push_rate(
                &mut pool,
                &kafka,
                &target,
                &user_prefix,
                users,
                duration,
                match options.rate {
                    None => Some(DEFAULT_PUSH_RATE),
                    Some(0) => None,
                    Some(rate) => Some(rate),
                },
                &mut pushes,
            )
            .await?;
        }
    }
    if let Some(local) = target.local.as_mut() {
        local.check_alive()?;
    }
    let end_rss: Vec<Option<u64>> = target
        .edges
        .iter()
        .map(|edge| edge.pid.and_then(|pid| rss_kib(pid).ok()))
        .collect();
    let cpu_after = cpu_snapshot(&pool);
    let cpu = CpuResult {
        wall_seconds: cpu_after.at.duration_since(cpu_before.at).as_secs_f64(),
        edges: cpu_after
            .edges
            .iter()
            .zip(&cpu_before.edges)
            .map(|(after, before)| after - before)
            .collect(),
        ingest_and_router: cpu_after.pipeline - cpu_before.pipeline,
        bench_and_kafka: cpu_after.bench - cpu_before.bench,
        clients: cpu_after.clients - cpu_before.clients,
    };
    let reports = pool.finish().await?;
    machine.load_at_end = super::report::load_average();

    // Merge the workers' reports.
    let mut latency = new_histogram()?;
    let mut handshake = new_histogram()?;
    let mut connection_result = ConnectionResult {
        requested: connections,
        ..ConnectionResult::default()
    };
    let started_us = reports
        .iter()
        .map(|report| report.connect_started_us)
        .filter(|started| *started > 0)
        .min()
        .unwrap_or(0);
    let mut last_authenticated_us = 0;
    let mut last_subscribed_us = 0;
    let mut first_push_us = u64::MAX;
    let mut last_push_us = 0;
    let mut per_message = (0..sends.rounds.len())
        .map(|_| new_histogram())
        .collect::<anyhow::Result<Vec<_>>>()?;
    for report in &reports {
        connection_result.authenticated += report.progress.authenticated;
        connection_result.subscribed += report.progress.subscribed;
        connection_result.failed += report.progress.failed;
        for (error, count) in &report.errors {
            match connection_result
                .errors
                .iter_mut()
                .find(|(known, _)| known == error)
            {
                Some(entry) => entry.1 += count,
                None => connection_result.errors.push((error.clone(), *count)),
            }
        }
        last_authenticated_us = last_authenticated_us.max(report.last_authenticated_us);
        last_subscribed_us = last_subscribed_us.max(report.last_subscribed_us);
        if report.first_push_us > 0 {
            first_push_us = first_push_us.min(report.first_push_us);
        }
        last_push_us = last_push_us.max(report.last_push_us);
        for (value, count) in &report.latency_us {
            latency.saturating_record_n((*value).max(1), *count);
        }
        for (value, count) in &report.handshake_us {
            handshake.saturating_record_n((*value).max(1), *count);
        }
        for (user, count, received_us) in &report.receipts {
            if let Some(sent_us) = sends.sent_at(*user, *count) {
                let micros = received_us.saturating_sub(sent_us).max(1);
                latency.saturating_record(micros);
                if let Some(round) = usize::try_from(*count)
                    .ok()
                    .and_then(|count| per_message.get_mut(count.wrapping_sub(1)))
                {
                    round.saturating_record(micros);
                }
            }
        }
    }
    let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let rate = |count: u64, seconds: f64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    connection_result.authenticate_seconds = seconds(started_us, last_authenticated_us);
    connection_result.handshakes_per_second = rate(
        connection_result.authenticated,
        connection_result.authenticate_seconds,
    );
    connection_result.subscribe_seconds = seconds(started_us, last_subscribed_us);
    connection_result.subscribed_per_second = rate(
        connection_result.subscribed,
        connection_result.subscribe_seconds,
    );
    pushes.received = reports.iter().map(|report| report.progress.pushes).sum();
    if last_push_us > 0 && first_push_us < u64::MAX {
        pushes.seconds = seconds(first_push_us, last_push_us);
        pushes.per_second = rate(pushes.received, pushes.seconds);
    }

    let mut edges = Vec::new();
    let edge_count = target.edges.len() as u64;
    let (mut growth_bytes, mut growth_connections) = (0.0, 0_u64);
    for (index, edge) in target.edges.iter().enumerate() {
        let index_u64 = index as u64;
        // Connection i goes to edge i % edges.
        let on_edge = (0..connections)
            .skip(usize::try_from(index_u64).unwrap_or(0))
            .step_by(usize::try_from(edge_count).unwrap_or(1))
            .count() as u64;
        let baseline = baselines[index];
        let end = end_rss[index];
        let per_connection = match (baseline, end) {
            (Some(baseline), Some(end)) if on_edge > 0 => {
                let bytes = (end.saturating_sub(baseline) * 1024) as f64;
                growth_bytes += bytes;
                growth_connections += on_edge;
                Some(bytes / on_edge as f64)
            }
            _ => None,
        };
        let edge_pushes_total = match &edge.admin {
            Some(admin) => http_get(admin, "/metrics")
                .await
                .ok()
                .and_then(|(_, body)| metric_value(&body, "fanout_edge_pushes_total")),
            None => None,
        };
        edges.push(EdgeResult {
            url: edge.url.clone(),
            pid: edge.pid,
            connections: on_edge,
            rss_baseline_kib: baseline,
            rss_subscribed_kib: subscribed_rss[index],
            rss_end_kib: end,
            rss_per_connection_bytes: per_connection,
            edge_pushes_total,
        });
    }
    let rss_per_connection_bytes =
        (growth_connections > 0).then(|| growth_bytes / growth_connections as f64);
    let latency_summary = LatencySummary::of(&latency);
    let handshake_summary = LatencySummary::of(&handshake);
    let all_subscribed = connection_result.subscribed == connections;
    let check = match scenario {
        Scenario::Idle => rss_per_connection_bytes.map(|bytes| TargetCheck {
            metric: "RSS per subscribed connection (bytes)",
            target: "<= 4096".to_owned(),
            measured: bytes,
            met: all_subscribed && bytes <= 4096.0,
        }),
        Scenario::ScaleOut => rss_per_connection_bytes.map(|bytes| TargetCheck {
            metric: "all subscribed; RSS per connection (bytes)",
            target: "all subscribed, <= 4096".to_owned(),
            measured: bytes,
            met: all_subscribed && bytes <= 4096.0,
        }),
        Scenario::GroupMessage => Some(TargetCheck {
            metric: "produce → every socket p99 (ms)",
            target: "<= 100".to_owned(),
            measured: latency_summary.p99_ms,
            met: latency_summary.samples > 0 && latency_summary.p99_ms <= 100.0,
        }),
        Scenario::Steady => Some(TargetCheck {
            metric: "produce → socket p99 (ms)",
            target: "<= 10".to_owned(),
            measured: latency_summary.p99_ms,
            met: latency_summary.samples > 0 && latency_summary.p99_ms <= 10.0,
        }),
        Scenario::PushRate => Some(TargetCheck {
            metric: "pushes delivered per second",
            target: ">= 500000".to_owned(),
            measured: pushes.per_second,
            met: pushes.per_second >= 500_000.0,
        }),
        Scenario::ConnectStorm => Some(TargetCheck {
            metric: "authenticated handshakes per second",
            target: ">= 10000".to_owned(),
            measured: connection_result.handshakes_per_second,
            met: all_subscribed && connection_result.handshakes_per_second >= 10_000.0,
        }),
    };
    let result_file = options.out_dir.join(format!("{}.json", scenario.name()));
    let plot_file = options.out_dir.join(format!("{}.svg", scenario.name()));
    let title = format!(
        "fanout bench {}: {connections} connections, {} edge(s)",
        scenario.name(),
        target.edges.len()
    );
    plot_latency(
        &plot_file,
        &title,
        &[
            ("produce → client receive", &latency),
            ("connect → authenticated", &handshake),
        ],
    )?;
    let result = WsBenchResult {
        scenario: scenario.name(),
        target: target.description.clone(),
        protocol: options.protocol,
        workers: specs.len(),
        duration_seconds: duration.as_secs_f64(),
        machine,
        connections: connection_result,
        handshake_latency: handshake_summary,
        latency: latency_summary,
        pushes,
        per_message: per_message.iter().map(LatencySummary::of).collect(),
        edges,
        rss_per_connection_bytes,
        cpu,
        check,
        result_file: result_file.display().to_string(),
        plot_file: plot_file.display().to_string(),
    };
    std::fs::write(&result_file, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_file.display()))?;
    drop(target);
    Ok(result)
}

struct CpuSnapshot {
    at: Instant,
    edges: Vec<f64>,
    pipeline: f64,
    bench: f64,
    clients: f64,
}

/// A human summary of a result.
pub fn summary(result: &WsBenchResult) -> String {
    let mut lines = vec![format!(
        "fanout bench {} ({}, {} workers, {:?})",
        result.scenario, result.target, result.workers, result.protocol
    )];
    let connections = &result.connections;
    lines.push(format!(
        "connections: {}/{} subscribed, {} failed; {:.0} handshakes/s, {:.0} subscribed/s",
        connections.subscribed,
        connections.requested,
        connections.failed,
        connections.handshakes_per_second,
        connections.subscribed_per_second
    ));
    for (error, count) in &connections.errors {
        lines.push(format!("  {count} × {error}"));
    }
    lines.push(format!(
        "handshake latency: {}",
        result.handshake_latency.line()
    ));
    if result.pushes.received > 0 || result.pushes.produced > 0 {
        lines.push(format!(
            "pushes: {} received ({} expected) in {:.2} s = {:.0}/s; produced {} at {:.0}/s",
            result.pushes.received,
            result
                .pushes
                .expected
                .map_or_else(|| "?".to_owned(), |expected| expected.to_string()),
            result.pushes.seconds,
            result.pushes.per_second,
            result.pushes.produced,
            result.pushes.produced_per_second
        ));
        lines.push(format!("push latency: {}", result.latency.line()));
    }
    for (index, message) in result.per_message.iter().enumerate() {
        lines.push(format!("  message {}: {}", index + 1, message.line()));
    }
    for edge in &result.edges {
        if let (Some(baseline), Some(end)) = (edge.rss_baseline_kib, edge.rss_end_kib) {
            lines.push(format!(
                "edge {}: {} connections, RSS {} KiB → {} KiB = {:.0} bytes/connection",
                edge.url,
                edge.connections,
                baseline,
                end,
                edge.rss_per_connection_bytes.unwrap_or(0.0)
            ));
        }
    }
    let cpu = &result.cpu;
    lines.push(format!(
        "CPU seconds over {:.1} s of load: edges {:?}, ingest+router {:.1}, bench+Kafka {:.1}, clients {:.1}",
        cpu.wall_seconds,
        cpu.edges
            .iter()
            .map(|seconds| (seconds * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        cpu.ingest_and_router,
        cpu.bench_and_kafka,
        cpu.clients
    ));
    if let Some(check) = &result.check {
        lines.push(format!(
            "target: {} {} — measured {:.2}: {}",
            check.metric,
            check.target,
            check.measured,
            if check.met { "MET" } else { "MISSED" }
        ));
    }
    lines.push(format!(
        "wrote {} and {}",
        result.result_file, result.plot_file
    ));
    lines.join("\n")
}

pub(super) fn progress_bar(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar
}
