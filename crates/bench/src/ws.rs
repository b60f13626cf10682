//! The WebSocket scenarios of `fanout bench`.
//!
//! Every scenario opens its connections through worker processes ([`super::worker`]),
//! waits until all are subscribed, runs its load, then collects the workers' reports.
//! Latency is produce → client receive, on one machine clock: events (or, for
//! `push-rate`, count records) are stamped with their send time when produced, and
//! each client notes when the count they caused arrived.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;

use super::load::{Sends, group_message, hold, push_rate, steady};
use super::measure::{
    CpuMeter, EdgeRss, Latencies, connection_result, count_received_pushes, edge_results,
};
use super::pool::{WorkerPool, progress_bar};
use super::report::{LatencySummary, Machine, plot_latency};
use super::result::{ConnectionResult, PushResult, TargetCheck, WsBenchResult};
use super::scenario::{Scenario, WsBenchOptions};
use super::storm::StormLoad;
use super::target::Target;
use super::worker::{Events, LatencySource, WorkerSpec};

/// `push-rate`'s default count records per second: above what one edge delivers here
/// (so it is saturated and coalesces), below the producer's own maximum, which would
/// take the CPU the edge needs (`--rate 0`).
pub const DEFAULT_PUSH_RATE: u64 = 200_000;

/// Most connections one worker holds: the open-file limit is 20000 per process.
pub const MAX_CONNECTIONS_PER_WORKER: u64 = 18_000;
/// Connections per source address (an address has about 28k ephemeral ports).
const CONNECTIONS_PER_SOURCE_ADDRESS: u64 = 8_000;

/// Runs a scenario and writes `<out_dir>/<scenario>.json` and `.svg`: the target set
/// up, the workers started and their connections subscribed, the load run, the workers'
/// reports merged, the result written.
pub async fn run(scenario: Scenario, options: &WsBenchOptions) -> anyhow::Result<WsBenchResult> {
    let size = RunSize::of(scenario, options)?;
    if scenario == Scenario::ReconnectStorm {
        super::storm::check_options(options)?;
    }
    super::system::raise_open_file_limit();
    let run_dir = create_run_dir(&options.out_dir, scenario)?;
    let mut machine = Machine::read();

    let mut target = Target::set_up(scenario, options, &run_dir).await?;
    let mut rss = EdgeRss {
        baseline: target.edge_rss_kib(),
        ..EdgeRss::default()
    };
    let user_prefix = format!("b{}-u", fanout_app::tools::random_hex(4));
    let specs = worker_specs(scenario, options, &size, &target, &user_prefix);
    let mut pool = start_workers(&specs, &run_dir).await?;

    // The CPU each process spends on the connections (connect-storm) or the load.
    let cpu_meter = CpuMeter::of(&target);
    let cpu_before_connecting = cpu_meter.read(&pool);
    connect_all(&mut pool, scenario, size.connections).await?;
    // Let allocations settle (first pings, buffers) before the RSS is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss.subscribed = target.edge_rss_kib();

    let cpu_before = if scenario == Scenario::ConnectStorm {
        cpu_before_connecting
    } else {
        cpu_meter.read(&pool)
    };
    let load = run_load(
        scenario,
        options,
        &size,
        &mut pool,
        &mut target,
        &user_prefix,
    )
    .await?;
    target.check_alive()?;
    rss.end = target.edge_rss_kib();
    let mut cpu = cpu_meter.read(&pool).used_since(&cpu_before);
    let reports = pool.finish().await?;
    machine.load_at_end = super::report::load_average();

    let connections = connection_result(&reports, size.connections);
    let latencies = Latencies::merge(&reports, &load.sends)?;
    let mut pushes = load.pushes;
    count_received_pushes(&reports, &mut pushes);
    let (mut edges, mut rss_per_connection_bytes) =
        edge_results(&target, size.connections, &rss).await;

    let result_path = output_file(&options.out_dir, scenario, "json");
    let plot_path = output_file(&options.out_dir, scenario, "svg");
    let latency = LatencySummary::of(&latencies.push);
    let mut check = target_check(
        scenario,
        &connections,
        &latency,
        &pushes,
        rss_per_connection_bytes,
    );
    let mut reconnect_storm = None;
    let mut plotted = latencies.push.clone();
    let mut plotted_label = "produce → client receive";
    if let Some(storm) = load.storm {
        // The edge at the end is another process than at the start, with the window:
        // its RSS is not the connections' (the window's is in the storm's result).
        rss_per_connection_bytes = None;
        for edge in &mut edges {
            edge.rss_per_connection_bytes = None;
        }
        cpu.edges = vec![storm.edge_cpu_seconds];
        let (storm, recovery) = super::storm::result(storm, &reports, connections.subscribed)?;
        check = Some(super::storm::check(&storm));
        plotted = recovery;
        plotted_label = "edge ready → client recovered";
        reconnect_storm = Some(storm);
    }
    let result = WsBenchResult {
        scenario: scenario.name(),
        target: target.description.clone(),
        protocol: options.protocol_of(scenario),
        workers: specs.len(),
        duration_seconds: size.duration.as_secs_f64(),
        machine,
        connections,
        handshake_latency: LatencySummary::of(&latencies.handshake),
        latency,
        pushes,
        per_message: latencies
            .per_message
            .iter()
            .map(LatencySummary::of)
            .collect(),
        edges,
        rss_per_connection_bytes,
        cpu,
        check,
        reconnect_storm,
        result_file: result_path.display().to_string(),
        plot_file: plot_path.display().to_string(),
    };
    write_result(
        &result,
        &[
            (plotted_label, &plotted),
            ("connect → authenticated", &latencies.handshake),
        ],
        &result_path,
        &plot_path,
    )?;
    // Stops the deployment the bench started, if it did.
    drop(target);
    if let Some(storm) = &result.reconnect_storm {
        let clients = &storm.clients;
        anyhow::ensure!(
            clients.gaps == 0 && clients.repeats == 0,
            "{}: clients saw {} events missing and {} repeated (see {}):\n{}",
            scenario.name(),
            clients.gaps,
            clients.repeats,
            result.result_file,
            super::result::summary(&result)
        );
    }
    Ok(result)
}

/// How many connections, over how many worker processes, and how long the load runs.
struct RunSize {
    connections: u64,
    workers: usize,
    duration: Duration,
}

impl RunSize {
    /// The options' figures, or the scenario's defaults.
    fn of(scenario: Scenario, options: &WsBenchOptions) -> anyhow::Result<Self> {
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
        Ok(Self {
            connections,
            workers,
            duration,
        })
    }
}

/// Creates the output directory and, in it, the run's directory for child configs and
/// logs.
fn create_run_dir(out_dir: &Path, scenario: Scenario) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let run_dir = super::system::run_dir(out_dir, scenario.name());
    std::fs::create_dir_all(&run_dir)?;
    Ok(run_dir)
}

/// What each worker process does: worker `w` holds users `w * per_worker..`, each
/// connection on its own source port of a few 127.x.y.z addresses.
fn worker_specs(
    scenario: Scenario,
    options: &WsBenchOptions,
    size: &RunSize,
    target: &Target,
    user_prefix: &str,
) -> Vec<WorkerSpec> {
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
    let events = match scenario {
        Scenario::Stream => Events::Measured,
        Scenario::ReconnectStorm => Events::Resumed,
        _ if options.events => Events::Subscribed,
        _ => Events::Off,
    };
    let connections = size.connections;
    let per_worker = connections.div_ceil(size.workers as u64);
    let run_octet: u8 = rand::rng().random_range(1..=254);
    (0..size.workers)
        .map(|worker| {
            let first_user = worker as u64 * per_worker;
            let count = per_worker.min(connections.saturating_sub(first_user));
            WorkerSpec {
                worker,
                edge_urls: target.edges.iter().map(|edge| edge.url.clone()).collect(),
                protocol: options.protocol_of(scenario),
                partner: target.partner.clone(),
                secret: target.secret.clone(),
                user_prefix: user_prefix.to_owned(),
                first_user,
                connections: count,
                source_addresses: super::system::source_addresses(
                    run_octet,
                    worker,
                    usize::try_from(count.div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS)).unwrap_or(1),
                ),
                per_source_address: CONNECTIONS_PER_SOURCE_ADDRESS,
                connect_concurrency,
                latency: latency_source,
                events,
            }
        })
        .filter(|spec| spec.connections > 0)
        .collect()
}

/// Starts the worker processes and waits until each has minted its tokens.
async fn start_workers(specs: &[WorkerSpec], run_dir: &Path) -> anyhow::Result<WorkerPool> {
    let mut pool = WorkerPool::spawn(specs, run_dir).await?;
    pool.wait(Duration::from_secs(120), None, |pool| {
        pool.ready == pool.specs
    })
    .await
    .context("waiting for the workers to mint tokens")?;
    Ok(pool)
}

/// Tells every worker to connect its clients and waits until each connection is
/// subscribed or has failed.
async fn connect_all(
    pool: &mut WorkerPool,
    scenario: Scenario,
    connections: u64,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// What a scenario's load sent (to turn receipts into latencies) and produced.
struct Load {
    sends: Sends,
    pushes: PushResult,
    /// reconnect-storm's load and restart.
    storm: Option<StormLoad>,
}

/// Runs the scenario's load on the subscribed connections: hold them (idle,
/// scale-out), nothing (connect-storm: the connecting was the load), or produce.
async fn run_load(
    scenario: Scenario,
    options: &WsBenchOptions,
    size: &RunSize,
    pool: &mut WorkerPool,
    target: &mut Target,
    user_prefix: &str,
) -> anyhow::Result<Load> {
    let mut sends = Sends::default();
    let mut pushes = PushResult::default();
    let mut storm = None;
    let users = size.connections;
    let kafka = || {
        target
            .kafka
            .clone()
            .with_context(|| format!("{} needs Kafka", scenario.name()))
    };
    match scenario {
        Scenario::Idle | Scenario::ScaleOut => hold(pool, size.duration).await?,
        Scenario::ReconnectStorm => {
            let kafka = kafka()?;
            let load = super::storm::run_load(
                pool,
                &kafka,
                target,
                user_prefix,
                users,
                options,
                size.duration,
            )
            .await?;
            storm = Some(load);
        }
        Scenario::ConnectStorm => {}
        Scenario::GroupMessage | Scenario::Stream => {
            let default_data = if scenario == Scenario::Stream {
                1024
            } else {
                0
            };
            group_message(
                pool,
                &kafka()?,
                target,
                user_prefix,
                users,
                options.messages,
                options.data_bytes.unwrap_or(default_data),
                &mut sends,
                &mut pushes,
            )
            .await?;
        }
        Scenario::Steady => {
            steady(
                pool,
                &kafka()?,
                target,
                user_prefix,
                users,
                options.rate.unwrap_or(20_000),
                size.duration,
                options.seed,
                &mut sends,
                &mut pushes,
            )
            .await?;
        }
        Scenario::PushRate => {
            push_rate(
                pool,
                &kafka()?,
                target,
                user_prefix,
                users,
                size.duration,
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
    Ok(Load {
        sends,
        pushes,
        storm,
    })
}

/// The scenario's target figure, and whether the run met it.
/// reconnect-storm's check is made from its clients' recoveries ([`super::storm::check`]).
fn target_check(
    scenario: Scenario,
    connections: &ConnectionResult,
    latency: &LatencySummary,
    pushes: &PushResult,
    rss_per_connection_bytes: Option<f64>,
) -> Option<TargetCheck> {
    let all_subscribed = connections.subscribed == connections.requested;
    match scenario {
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
        Scenario::GroupMessage | Scenario::Stream => Some(TargetCheck {
            metric: "produce → every socket p99 (ms)",
            target: "<= 100".to_owned(),
            measured: latency.p99_ms,
            met: latency.samples > 0 && latency.p99_ms <= 100.0,
        }),
        Scenario::Steady => Some(TargetCheck {
            metric: "produce → socket p99 (ms)",
            target: "<= 10".to_owned(),
            measured: latency.p99_ms,
            met: latency.samples > 0 && latency.p99_ms <= 10.0,
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
            measured: connections.handshakes_per_second,
            met: all_subscribed && connections.handshakes_per_second >= 10_000.0,
        }),
        Scenario::ReconnectStorm => None,
    }
}

/// `<out_dir>/<scenario>.<extension>`.
fn output_file(out_dir: &Path, scenario: Scenario, extension: &str) -> PathBuf {
    out_dir.join(format!("{}.{extension}", scenario.name()))
}

/// Writes the latency plot of `series` and the result JSON.
fn write_result(
    result: &WsBenchResult,
    series: &[(&str, &hdrhistogram::Histogram<u64>)],
    result_path: &Path,
    plot_path: &Path,
) -> anyhow::Result<()> {
    let title = format!(
        "fanout bench {}: {} connections, {} edge(s)",
        result.scenario,
        result.connections.requested,
        result.edges.len()
    );
    plot_latency(plot_path, &title, series)?;
    std::fs::write(result_path, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    Ok(())
}
