//! `fanout bench overload`: an edge at its `max_connections` when a storm of clients
//! hits it. How fast the refused get the documented answer (HTTP 503 to the upgrade,
//! on `/cable` and `/realtime` alike: docs/realtime.md), and whether the connected
//! keep receiving: their push latency before the storm and during it, and their final
//! counts against what was sent.
//!
//! The edge (with ingest and router, on the embedded Kafka) runs with
//! `max_connections = --max-connections`; as many count clients fill it. A steady
//! rate of messages to their users runs for `--before-seconds`, then the storm's
//! clients (half `/cable`, half `/realtime`; [`crate::worker::Churn::Refused`]) start
//! connecting again and again while the messages go on for `--storm-seconds`. Checked
//! at the end ([`OverloadResult::checks`]): every storm attempt was refused with 503
//! (none let in, none answered otherwise), the edge counted each refusal, no connected
//! client was dropped, and each one's final count equals the messages sent to its user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::unix_micros;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{Sends, steady, wait_quiet};
use crate::pool::{ClientPlan, connect_all, start_workers, worker_count};
use crate::report::{LatencySummary, Machine, load_average};
use crate::result::PushResult;
use crate::soak::Check;
use crate::target::{LocalDeployment, LocalOptions, Target};
use crate::worker::{
    Churn, Events, LatencySource, Protocol, WorkerReport, WorkerSpec, new_histogram,
};

/// Storm clients per source address: each attempt takes a new port of its address.
const STORM_CLIENTS_PER_SOURCE_ADDRESS: u64 = 16;

/// The edge's counter of refusals, and the label of a refusal at `max_connections`.
const LIMITED_METRIC: &str = "fanout_edge_limited_total";
const NODE_CONNECTIONS_LABEL: &str = r#"limit="node_connections""#;

/// Options of `fanout bench overload`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct OverloadOptions {
    /// The edge's `max_connections`, and the count clients that fill it.
    #[arg(long, default_value_t = 2000)]
    pub max_connections: u64,
    /// Clients of the storm, half on `/cable` and half on `/realtime`, each connecting
    /// again and again while it lasts.
    #[arg(long, default_value_t = 2000)]
    pub storm_clients: u64,
    /// Longest wait between a storm client's attempts (uniformly random below it).
    #[arg(long, default_value_t = 1000)]
    pub retry_max_ms: u64,
    /// Seconds of messages before the storm.
    #[arg(long, default_value_t = 20.0)]
    pub before_seconds: f64,
    /// Seconds of messages during the storm.
    #[arg(long, default_value_t = 20.0)]
    pub storm_seconds: f64,
    /// Messages per second to random users of the connected clients.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Partitions of the topics the bench creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Where `overload.json` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What the storm's attempts got, on one protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    pub protocol: Protocol,
    pub clients: u64,
    /// Attempts answered HTTP 503.
    pub refused: u64,
    /// Attempts let in (the edge over its limit).
    pub accepted: u64,
    /// Attempts that ended any other way, by kind.
    pub other: Vec<(String, u64)>,
    /// From an attempt's start (before its TCP connect) to the 503.
    pub time_to_refusal: LatencySummary,
    pub refused_per_second: f64,
}

/// The connected clients' pushes over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub messages: u64,
    /// Produce → client receive of the counts caused by the phase's messages.
    pub latency: LatencySummary,
}

/// The result of `fanout bench overload`, written as `overload.json`.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadResult {
    pub scenario: &'static str,
    pub options: OverloadOptions,
    pub target: String,
    pub machine: Machine,
    pub before_storm: Phase,
    pub during_storm: Phase,
    pub refusals: Vec<Refusals>,
    /// The edge's `node_connections` refusals, from its /metrics.
    pub edge_refusals_counted: Option<u64>,
    pub connected_clients: u64,
    /// Connected clients dropped or failed.
    pub connected_failed: u64,
    pub counts_right: u64,
    pub counts_wrong: u64,
    pub examples: Vec<String>,
    pub checks: Vec<Check>,
    pub result_file: String,
}

impl OverloadResult {
    /// A few lines for a human.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "overload: edge at max_connections {}, storm of {} clients; load {:.2} → {:.2}",
            self.options.max_connections,
            self.options.storm_clients,
            self.machine.load_at_start,
            self.machine.load_at_end
        )];
        for refusals in &self.refusals {
            lines.push(format!(
                "  {:?}: {} refused ({:.0}/s), {} let in, other {:?}; time to 503 p50 {:.2} ms, p99 {:.2} ms",
                refusals.protocol,
                refusals.refused,
                refusals.refused_per_second,
                refusals.accepted,
                refusals.other,
                refusals.time_to_refusal.p50_ms,
                refusals.time_to_refusal.p99_ms
            ));
        }
        for (name, phase) in [
            ("before the storm", &self.before_storm),
            ("during the storm", &self.during_storm),
        ] {
            lines.push(format!(
                "  push latency {name}: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
                phase.latency.p50_ms, phase.latency.p99_ms, phase.latency.samples
            ));
        }
        for check in &self.checks {
            lines.push(format!(
                "  [{}] {}: {}",
                if check.met { "ok" } else { "FAILED" },
                check.invariant,
                check.detail
            ));
        }
        lines.join("\n")
    }
}

/// Runs the overload scenario and writes `<out_dir>/overload.json`.
pub async fn run(options: &OverloadOptions) -> anyhow::Result<OverloadResult> {
    anyhow::ensure!(
        options.max_connections > 0,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(
        options.storm_clients >= 2,
        "--storm-clients must be at least 2"
    );
    anyhow::ensure!(options.rate > 0, "--rate must be at least 1");
    crate::system::raise_open_file_limit();
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = crate::system::run_dir(&options.out_dir, "overload");
    std::fs::create_dir_all(&run_dir)?;
    let mut machine = Machine::read();
    let max_connections = usize::try_from(options.max_connections)?;
    let deployment = LocalDeployment::start_with(
        &LocalOptions {
            edges: 1,
            pipeline: true,
            partitions: options.partitions,
            user_partitions: None,
            brokers: None,
            kafka_client: &[],
            api: None,
            run_dir: &run_dir,
        },
        |config| config.edge.max_connections = max_connections,
    )
    .await?;
    let description = format!(
        "local: embedded Kafka (librdkafka mock) in the bench process, {} partitions, one edge with max_connections = {}, ingest and router processes",
        options.partitions, options.max_connections
    );
    let mut target = Target {
        description: description.clone(),
        edges: deployment.edges.clone(),
        kafka: Some(KafkaSettings::new(deployment.brokers.clone())),
        topics: deployment.topics.clone(),
        partner: deployment.partner.clone(),
        secret: deployment.secret.clone(),
        local: Some(deployment),
    };
    let kafka = KafkaSettings::new(
        target
            .local
            .as_ref()
            .map(|local| local.brokers.clone())
            .context("no deployment")?,
    );
    let edge = target.edges.first().cloned().context("no edge")?;
    let run_id = fanout_app::tools::random_hex(4);
    let user_prefix = format!("o{run_id}-u");
    let storm_prefix = format!("o{run_id}-storm-");

    // The edge filled to its limit.
    let specs = ClientPlan {
        connections: options.max_connections,
        workers: worker_count(options.max_connections, None)?,
        edge_urls: vec![edge.url.clone()],
        protocol: Protocol::Cable,
        partner: &target.partner,
        secret: &target.secret,
        user_prefix: &user_prefix,
        connect_concurrency: 256,
        latency: LatencySource::Receipts,
        events: Events::Off,
        churn: Churn::Off,
    }
    .worker_specs();
    let mut pool = start_workers(&specs, &run_dir).await?;
    connect_all(&mut pool, "overload", options.max_connections).await?;
    let connected = pool.totals();
    anyhow::ensure!(
        connected.subscribed == options.max_connections,
        "overload: only {} of {} clients subscribed below the limit ({} failed; see {})",
        connected.subscribed,
        options.max_connections,
        connected.failed,
        run_dir.display()
    );

    // The storm's clients, tokens minted, waiting for `connect`.
    let storm_specs = storm_specs(options, &edge.url, &target, &storm_prefix, specs.len())?;
    let storm_dir = run_dir.join("storm");
    std::fs::create_dir_all(&storm_dir)?;
    let mut storm = start_workers(&storm_specs, &storm_dir).await?;

    let mut sends = Sends::default();
    let mut before = PushResult::default();
    steady(
        &mut pool,
        &kafka,
        &target,
        &user_prefix,
        options.max_connections,
        options.rate,
        Duration::from_secs_f64(options.before_seconds),
        options.seed,
        &mut sends,
        &mut before,
    )
    .await?;
    let refusals_before = edge_refusals(&edge.admin).await;
    let storm_started_us = unix_micros();
    storm.broadcast("connect").await?;
    let mut during = PushResult::default();
    steady(
        &mut pool,
        &kafka,
        &target,
        &user_prefix,
        options.max_connections,
        options.rate,
        Duration::from_secs_f64(options.storm_seconds),
        options.seed.wrapping_add(1),
        &mut sends,
        &mut during,
    )
    .await?;
    let produced = before.produced + during.produced;
    wait_quiet(
        &mut pool,
        Some(produced),
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await?;
    let storm_reports = storm.finish().await?;
    let storm_seconds = unix_micros().saturating_sub(storm_started_us) as f64 / 1e6;
    let refusals_after = edge_refusals(&edge.admin).await;
    target.check_alive()?;
    let reports = pool.finish().await?;
    machine.load_at_end = load_average();
    drop(target);

    let refusals = [Protocol::Cable, Protocol::Realtime]
        .into_iter()
        .map(|protocol| refusals_of(protocol, &storm_specs, &storm_reports, storm_seconds))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (before_latency, during_latency) = latencies(&reports, &sends, storm_started_us)?;
    let edge_refusals_counted = refusals_after
        .zip(refusals_before)
        .map(|(after, before)| after.saturating_sub(before));
    let (counts_right, counts_wrong, examples) = final_counts(&reports, &sends, &user_prefix);
    let connected_failed = reports
        .iter()
        .map(|report| report.progress.failed)
        .sum::<u64>();
    let mut result = OverloadResult {
        scenario: "overload",
        options: options.clone(),
        target: description,
        machine,
        before_storm: Phase {
            seconds: before.produce_seconds,
            messages: before.produced,
            latency: LatencySummary::of(&before_latency),
        },
        during_storm: Phase {
            seconds: during.produce_seconds,
            messages: during.produced,
            latency: LatencySummary::of(&during_latency),
        },
        refusals,
        edge_refusals_counted,
        connected_clients: options.max_connections,
        connected_failed,
        counts_right,
        counts_wrong,
        examples,
        checks: Vec::new(),
        result_file: options.out_dir.join("overload.json").display().to_string(),
    };
    result.checks = checks(&result, before.produce_failures + during.produce_failures);
    std::fs::write(&result.result_file, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result.result_file))?;
    Ok(result)
}

/// The storm's workers: half the clients on `/cable`, half on `/realtime`, each on
/// source addresses of their own (every attempt takes a new port).
fn storm_specs(
    options: &OverloadOptions,
    edge_url: &str,
    target: &Target,
    prefix: &str,
    first_worker: usize,
) -> anyhow::Result<Vec<WorkerSpec>> {
    let cable = options.storm_clients / 2;
    let mut specs = Vec::new();
    for (protocol, clients) in [
        (Protocol::Cable, cable),
        (Protocol::Realtime, options.storm_clients - cable),
    ] {
        let protocol_prefix = format!("{prefix}{protocol:?}-").to_lowercase();
        let plan = ClientPlan {
            connections: clients,
            workers: worker_count(clients, None)?,
            edge_urls: vec![edge_url.to_owned()],
            protocol,
            partner: &target.partner,
            secret: &target.secret,
            user_prefix: &protocol_prefix,
            connect_concurrency: 0,
            latency: LatencySource::Receipts,
            events: Events::Off,
            churn: Churn::Refused {
                retry_max_ms: options.retry_max_ms,
            },
        };
        for mut spec in plan.worker_specs() {
            spec.worker = first_worker + specs.len();
            let run_octet = spec
                .source_addresses
                .first()
                .map_or(1, |address| address.octets()[1]);
            let addresses = spec.connections.div_ceil(STORM_CLIENTS_PER_SOURCE_ADDRESS);
            spec.source_addresses = crate::system::source_addresses(
                run_octet,
                spec.worker,
                usize::try_from(addresses).unwrap_or(1),
            );
            spec.per_source_address = STORM_CLIENTS_PER_SOURCE_ADDRESS;
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// The edge's count of refusals at `max_connections`, from its /metrics.
async fn edge_refusals(admin: &Option<String>) -> Option<u64> {
    let admin = admin.as_ref()?;
    let (_, text) = crate::system::http_get(admin, "/metrics").await.ok()?;
    text.lines()
        .filter(|line| line.starts_with(LIMITED_METRIC) && line.contains(NODE_CONNECTIONS_LABEL))
        .find_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .or(Some(0))
}

/// The storm's attempts on `protocol`, from the reports of its workers.
fn refusals_of(
    protocol: Protocol,
    specs: &[WorkerSpec],
    reports: &[WorkerReport],
    seconds: f64,
) -> anyhow::Result<Refusals> {
    let mut histogram = new_histogram()?;
    let mut refusals = Refusals {
        protocol,
        clients: 0,
        refused: 0,
        accepted: 0,
        other: Vec::new(),
        time_to_refusal: LatencySummary::of(&histogram),
        refused_per_second: 0.0,
    };
    for (spec, report) in specs.iter().zip(reports) {
        if spec.protocol != protocol {
            continue;
        }
        refusals.clients += spec.connections;
        // Counted from the times, not the progress counter: the clients go on while
        // their worker writes its report, and the two are read at different moments.
        refusals.refused += report
            .churn
            .refused_us
            .iter()
            .map(|(_, count)| count)
            .sum::<u64>();
        refusals.accepted += report.progress.churn.accepted;
        for (kind, count) in &report.churn.other {
            crate::worker::tally_error(&mut refusals.other, kind, *count, 8);
        }
        for (value, count) in &report.churn.refused_us {
            histogram.saturating_record_n(*value, *count);
        }
    }
    refusals.time_to_refusal = LatencySummary::of(&histogram);
    refusals.refused_per_second = refusals.refused as f64 / seconds.max(1e-9);
    Ok(refusals)
}

/// Produce → receive of every count the connected clients got, split by whether its
/// message was sent before the storm started or after.
fn latencies(
    reports: &[WorkerReport],
    sends: &Sends,
    storm_started_us: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut before = new_histogram()?;
    let mut during = new_histogram()?;
    for (user, count, received_us) in reports.iter().flat_map(|report| &report.receipts) {
        let Some(sent_us) = sends.sent_at(*user, *count) else {
            continue;
        };
        let histogram = if sent_us < storm_started_us {
            &mut before
        } else {
            &mut during
        };
        histogram.saturating_record(received_us.saturating_sub(sent_us).max(1));
    }
    Ok((before, during))
}

/// Each connected client's last count (counts only grow here: the largest received)
/// against the messages sent to its user; (right, wrong, a few wrong ones).
fn final_counts(
    reports: &[WorkerReport],
    sends: &Sends,
    user_prefix: &str,
) -> (u64, u64, Vec<String>) {
    let mut last: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut clients = Vec::new();
    for report in reports {
        for (user, count, _) in &report.receipts {
            let entry = last.entry(*user).or_default();
            *entry = (*entry).max(*count);
        }
        clients.push(report.progress.subscribed);
    }
    let users: u64 = clients.iter().sum();
    let mut right = 0;
    let mut wrong = 0;
    let mut examples = Vec::new();
    for user in 0..users {
        let expected = sends
            .per_user
            .get(&user)
            .map_or(0, |sent| sent.len() as u64);
        let got = last.get(&user).copied().unwrap_or(0);
        if got == expected {
            right += 1;
        } else {
            wrong += 1;
            if examples.len() < 10 {
                examples.push(format!("{user_prefix}{user}: count {got}, sent {expected}"));
            }
        }
    }
    (right, wrong, examples)
}

fn checks(result: &OverloadResult, produce_failures: u64) -> Vec<Check> {
    let refused: u64 = result
        .refusals
        .iter()
        .map(|refusals| refusals.refused)
        .sum();
    let accepted: u64 = result
        .refusals
        .iter()
        .map(|refusals| refusals.accepted)
        .sum();
    let other: u64 = result
        .refusals
        .iter()
        .flat_map(|refusals| refusals.other.iter().map(|(_, count)| count))
        .sum();
    let every_protocol_refused = result
        .refusals
        .iter()
        .all(|refusals| refusals.clients == 0 || refusals.refused > 0);
    vec![
        Check {
            invariant: "every storm attempt was refused with HTTP 503, on both protocols",
            met: refused > 0 && every_protocol_refused && accepted == 0 && other == 0,
            detail: format!("{refused} refused, {accepted} let in, {other} answered otherwise"),
        },
        // The workers stop with attempts in flight: the edge may have refused up to one
        // per storm client that its client never read.
        Check {
            invariant: "the edge counted every refusal (fanout_edge_limited_total, node_connections)",
            met: result.edge_refusals_counted.is_some_and(|counted| {
                counted >= refused && counted <= refused + result.options.storm_clients
            }),
            detail: format!(
                "{:?} counted, {refused} refusals received, {} storm clients",
                result.edge_refusals_counted, result.options.storm_clients
            ),
        },
        Check {
            invariant: "no connected client was dropped",
            met: result.connected_failed == 0,
            detail: format!(
                "{} of {} failed",
                result.connected_failed, result.connected_clients
            ),
        },
        Check {
            invariant: "every connected client's final count equals the messages sent to it",
            met: result.counts_wrong == 0
                && result.counts_right == result.connected_clients
                && produce_failures == 0,
            detail: format!(
                "{} right, {} wrong of {}; {produce_failures} produce failures; {:?}",
                result.counts_right, result.counts_wrong, result.connected_clients, result.examples
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn final_counts_are_each_users_largest_count_against_its_messages() {
        let mut report = WorkerReport::default();
        report.progress.subscribed = 3;
        report.receipts = vec![(0, 1, 10), (0, 2, 20), (2, 1, 30)];
        let mut sends = Sends::default();
        sends.per_user.insert(0, vec![1, 2]);
        sends.per_user.insert(2, vec![3, 4]);
        let (right, wrong, examples) = final_counts(&[report], &sends, "u");
        // User 0 right, user 1 (nothing sent, nothing received) right, user 2 short.
        assert_eq!((right, wrong), (2, 1));
        assert_eq!(examples, vec!["u2: count 1, sent 2".to_owned()]);
    }

    #[test]
    fn latencies_split_at_the_storms_start() {
        let report = WorkerReport {
            receipts: vec![(0, 1, 1_500), (0, 2, 3_000), (1, 1, 9_000)],
            ..WorkerReport::default()
        };
        let mut sends = Sends::default();
        sends.per_user.insert(0, vec![1_000, 2_500]);
        sends.per_user.insert(1, vec![8_000]);
        let (before, during) = latencies(&[report], &sends, 2_000).unwrap();
        assert_eq!((before.len(), during.len()), (1, 2));
        assert_eq!(before.max(), 500);
        assert_eq!(during.max(), 1_000);
    }
}
