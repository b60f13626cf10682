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

use super::ceiling::{Pattern, Phase};
use super::load::{Sends, group_message, group_round, hold, push_rate, steady};
use super::measure::{
    CpuMeter, EdgeRss, Latencies, MemorySampler, clients_rss_kib, connection_result,
    count_received_pushes, edge_results, users_reached,
};
use super::pool::{ClientPlan, WorkerPool, connect_all, start_workers, worker_count};
use super::report::{LatencySummary, Machine, plot_latency};
use super::result::{
    CeilingResult, Compared, ConnectionResult, CpuPerEvent, CpuResult, PushResult, StormResult,
    TargetCheck, VsCeiling, WsBenchResult,
};
use super::scenario::{DEFAULT_RECIPIENTS_PER_EVENT, Scenario, WsBenchOptions};
use super::storm::StormLoad;
use super::syscalls::{WriteCounter, WriteSyscalls};
use super::target::Target;
use super::worker::{Events, LatencySource};

/// Runs a scenario and writes `<out_dir>/<scenario>.json` and `.svg`: the target set
/// up, the workers started and their connections subscribed, the load run, the workers'
/// reports merged, and (push-rate, or `--ceiling`) the ceiling measured with the same
/// connections once the deployment is stopped; the result written.
pub async fn run(scenario: Scenario, options: &WsBenchOptions) -> anyhow::Result<WsBenchResult> {
    let size = RunSize::of(scenario, options)?;
    if scenario == Scenario::ReconnectStorm {
        super::storm::check_options(options)?;
    }
    let with_ceiling = with_ceiling(scenario, options)?;
    super::system::raise_open_file_limit();
    let run_dir = create_run_dir(&options.out_dir, scenario)?;
    let mut machine = Machine::read();
    let memory = MemorySampler::start();

    let mut target = Target::set_up(scenario, options, &run_dir).await?;
    let mut rss = EdgeRss {
        baseline: target.edge_rss_kib(),
        ..EdgeRss::default()
    };
    let user_prefix = format!("b{}-u", fanout_app::tools::random_hex(4));
    let specs = client_plan(scenario, options, &size, &target, &user_prefix).worker_specs();
    let mut pool = start_workers(&specs, &run_dir).await?;

    // The CPU each process spends on the connections (connect-storm) or the load.
    let cpu_meter = CpuMeter::of(&target);
    let cpu_before_connecting = cpu_meter.read(&pool);
    connect_all(&mut pool, scenario.name(), size.connections).await?;
    // Let allocations settle (first pings, buffers) before the RSS is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss.subscribed = target.edge_rss_kib();
    let clients_rss = clients_rss_kib(&pool);

    // The edges' write syscalls over the load, where frames per write is compared.
    let edge_write_counter = if with_ceiling {
        let pids: Vec<u32> = target.edges.iter().filter_map(|edge| edge.pid).collect();
        Some(WriteCounter::start(&pids, &run_dir.join("edge-perf.csv")).await)
    } else {
        None
    };
    let cpu_before = if scenario == Scenario::ConnectStorm {
        cpu_before_connecting
    } else {
        cpu_meter.read(&pool)
    };
    let mut load = run_load(
        scenario,
        options,
        &size,
        &mut pool,
        &mut target,
        &user_prefix,
    )
    .await?;
    target.check_alive()?;
    match load.rss_held.take() {
        Some(held) => {
            rss.end = held;
            rss.after_message = Some(target.edge_rss_kib());
        }
        None => rss.end = target.edge_rss_kib(),
    }
    let mut cpu = cpu_meter.read(&pool).used_since(&cpu_before, &cpu_meter);
    let edge_write_calls = match edge_write_counter {
        Some(counter) => Some(counter.stop().await),
        None => None,
    };
    let reports = pool.finish().await?;
    machine.load_at_end = super::report::load_average();

    let connections = connection_result(&reports, size.connections);
    let latencies = Latencies::merge(&reports, &load.sends)?;
    let mut pushes = load.pushes;
    count_received_pushes(&reports, &mut pushes);
    if scenario == Scenario::ScaleOut {
        // Count 1 of every user is the group message's.
        pushes.reached = Some(users_reached(&reports, size.connections, 1));
    }
    let (mut edges, mut rss_per_connection_bytes) =
        edge_results(&target, size.connections, &rss).await;
    let memory = memory.stop(clients_rss, size.connections);
    let description = target.description.clone();
    // Stops the deployment the bench started, if it did: the ceiling has the machine
    // to itself.
    drop(target);

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
    let (unit, events) = events_of(scenario, &connections, &pushes, reconnect_storm.as_ref());
    cpu.per_event = CpuPerEvent::of(&cpu, unit, events);
    let edge_writes = edge_write_calls.map(|calls| calls.with_frames(pushes.received));
    let ceiling = if with_ceiling {
        let ceiling_dir = run_dir.join("ceiling");
        std::fs::create_dir_all(&ceiling_dir)?;
        let phase = Phase {
            pattern: match scenario {
                Scenario::GroupMessage => Pattern::GroupMessage,
                _ => Pattern::PushRate,
            },
            connections: size.connections,
            workers: Some(size.workers),
            protocol: options.protocol_of(scenario),
            rate: push_rate_of(options),
            duration: size.duration,
            messages: options.messages,
            connect_concurrency: options.connect_concurrency,
            run_dir: &ceiling_dir,
        };
        Some(super::ceiling::measure(&phase).await?)
    } else {
        None
    };
    let vs_ceiling = ceiling.as_ref().map(|ceiling| {
        vs_ceiling(
            &cpu,
            &pushes,
            &latency,
            edge_writes.as_ref(),
            &ceiling.result,
        )
    });
    let mut series = vec![
        (plotted_label, &plotted),
        ("connect → authenticated", &latencies.handshake),
    ];
    if let Some(ceiling) = &ceiling {
        series.push(("ceiling: frame stamp → client receive", &ceiling.latency));
    }
    let result = WsBenchResult {
        scenario: scenario.name(),
        target: description,
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
        memory,
        cpu,
        edge_writes,
        ceiling: ceiling.as_ref().map(|ceiling| ceiling.result.clone()),
        vs_ceiling,
        check,
        reconnect_storm,
        result_file: result_path.display().to_string(),
        plot_file: plot_path.display().to_string(),
    };
    write_result(&result, &series, &result_path, &plot_path)?;
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

/// Whether the run measures the ceiling too: push-rate unless `--ceiling=false`,
/// group-message with `--ceiling`.
fn with_ceiling(scenario: Scenario, options: &WsBenchOptions) -> anyhow::Result<bool> {
    match (scenario, options.ceiling) {
        (Scenario::PushRate, ceiling) => Ok(ceiling.unwrap_or(true)),
        (Scenario::GroupMessage, ceiling) => Ok(ceiling.unwrap_or(false)),
        (_, Some(true)) => anyhow::bail!(
            "--ceiling is for push-rate and group-message, not {}",
            scenario.name()
        ),
        (_, _) => Ok(false),
    }
}

/// push-rate's count records per second: `--rate`, its default, or `None` for
/// `--rate 0` (as fast as the producer goes).
fn push_rate_of(options: &WsBenchOptions) -> Option<u64> {
    match options.rate {
        None => Some(super::scenario::DEFAULT_PUSH_RATE),
        Some(0) => None,
        Some(rate) => Some(rate),
    }
}

/// The scenario's events, which CPU is stated per: what they are, and how many.
fn events_of(
    scenario: Scenario,
    connections: &ConnectionResult,
    pushes: &PushResult,
    storm: Option<&StormResult>,
) -> (&'static str, u64) {
    match scenario {
        Scenario::GroupMessage | Scenario::Steady | Scenario::Stream | Scenario::ScaleOut => {
            ("user event", pushes.expected.unwrap_or(0))
        }
        Scenario::PushRate => ("push delivered", pushes.received),
        Scenario::ReconnectStorm => (
            "stream event produced",
            storm.map_or(0, |storm| storm.produced),
        ),
        Scenario::ConnectStorm => ("connection subscribed", connections.subscribed),
        Scenario::Idle => ("none", 0),
    }
}

/// The edges' figures against the ceiling's.
fn vs_ceiling(
    cpu: &CpuResult,
    pushes: &PushResult,
    latency: &LatencySummary,
    writes: Option<&WriteSyscalls>,
    ceiling: &CeilingResult,
) -> VsCeiling {
    let per_push =
        |seconds: f64| (pushes.received > 0).then(|| seconds * 1e6 / pushes.received as f64);
    let positive = |value: f64| (value > 0.0).then_some(value);
    VsCeiling {
        pushes_per_second: Compared::of(
            positive(pushes.per_second),
            positive(ceiling.pushes.per_second),
        ),
        server_cpu_us_per_push: Compared::of(
            per_push(cpu.edges.iter().sum()),
            ceiling.cpu.server_us_per_push,
        ),
        clients_cpu_us_per_push: Compared::of(
            per_push(cpu.clients),
            ceiling.cpu.clients_us_per_push,
        ),
        frames_per_write_syscall: Compared::of(
            writes.and_then(|writes| writes.frames_per_write_syscall),
            ceiling.writes.frames_per_write_syscall,
        ),
        frames_per_syscw: Compared::of(
            writes.and_then(|writes| writes.frames_per_syscw),
            ceiling.writes.frames_per_syscw,
        ),
        latency_p50_ms: Compared::of(
            (latency.samples > 0).then_some(latency.p50_ms),
            (ceiling.latency.samples > 0).then_some(ceiling.latency.p50_ms),
        ),
        latency_p99_ms: Compared::of(
            (latency.samples > 0).then_some(latency.p99_ms),
            (ceiling.latency.samples > 0).then_some(ceiling.latency.p99_ms),
        ),
    }
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
        let workers = worker_count(connections, options.workers)?;
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

/// What the clients of a scenario do, and against which edges.
fn client_plan<'a>(
    scenario: Scenario,
    options: &WsBenchOptions,
    size: &RunSize,
    target: &'a Target,
    user_prefix: &'a str,
) -> ClientPlan<'a> {
    ClientPlan {
        connections: size.connections,
        workers: size.workers,
        edge_urls: target.edges.iter().map(|edge| edge.url.clone()).collect(),
        protocol: options.protocol_of(scenario),
        partner: &target.partner,
        secret: &target.secret,
        user_prefix,
        connect_concurrency: if scenario == Scenario::ConnectStorm {
            0
        } else {
            options.connect_concurrency
        },
        latency: if scenario == Scenario::PushRate {
            LatencySource::CountIsSendTime
        } else {
            LatencySource::Receipts
        },
        events: match scenario {
            Scenario::Stream => Events::Measured,
            Scenario::ReconnectStorm => Events::Resumed,
            _ if options.events => Events::Subscribed,
            _ => Events::Off,
        },
        churn: super::worker::Churn::Off,
    }
}

/// What a scenario's load sent (to turn receipts into latencies) and produced.
struct Load {
    sends: Sends,
    pushes: PushResult,
    /// reconnect-storm's load and restart.
    storm: Option<StormLoad>,
    /// scale-out: each edge's RSS once the connections were held, before the group
    /// message.
    rss_held: Option<Vec<Option<u64>>>,
}

/// Runs the scenario's load on the subscribed connections: hold them (idle; scale-out,
/// then one group message to everyone), nothing (connect-storm: the connecting was the
/// load), or produce.
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
    let mut rss_held = None;
    let users = size.connections;
    let kafka = || {
        target
            .kafka
            .clone()
            .with_context(|| format!("{} needs Kafka", scenario.name()))
    };
    match scenario {
        Scenario::Idle => hold(pool, size.duration).await?,
        Scenario::ScaleOut => {
            hold(pool, size.duration).await?;
            // The connections' RSS: the group message then puts every user's count and
            // stream event in every edge, connected there or not.
            rss_held = Some(target.edge_rss_kib());
            group_round(
                pool,
                &kafka()?,
                target,
                user_prefix,
                users,
                options
                    .recipients_per_event
                    .unwrap_or(DEFAULT_RECIPIENTS_PER_EVENT),
                &mut sends,
                &mut pushes,
            )
            .await?;
        }
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
                push_rate_of(options),
                &mut pushes,
            )
            .await?;
        }
    }
    Ok(Load {
        sends,
        pushes,
        storm,
        rss_held,
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
            metric: "all subscribed, the group message to all; RSS per connection (bytes)",
            target: "all subscribed, all reached, <= 4096".to_owned(),
            measured: bytes,
            met: all_subscribed && pushes.reached == Some(connections.requested) && bytes <= 4096.0,
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
