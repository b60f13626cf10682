//! What a WebSocket scenario measured: the edges' RSS and every process's CPU time,
//! read from /proc, and the workers' reports merged into connection counts, push
//! rates and latency histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::load::Sends;
use super::pool::WorkerPool;
use super::result::{ConnectionResult, CpuResult, EdgeResult, MemoryResult, PushResult};
use super::system::{
    cpu_seconds, http_get, machine_busy_seconds, memory_used_kib, metric_value, rss_kib,
};
use super::target::Target;
use super::worker::{WorkerReport, new_histogram, tally_error};

/// Each edge's RSS in KiB (`None`: no pid, or unreadable) at three points of a run.
#[derive(Default)]
pub(crate) struct EdgeRss {
    pub(crate) baseline: Vec<Option<u64>>,
    /// Right after every connection was subscribed.
    pub(crate) subscribed: Vec<Option<u64>>,
    pub(crate) end: Vec<Option<u64>>,
    /// scale-out: after its group message, which `end` is read before.
    pub(crate) after_message: Option<Vec<Option<u64>>>,
}

/// How often [`MemorySampler`] reads /proc/meminfo.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The machine's memory in use ([`memory_used_kib`]) at the start and at its highest
/// over a run, read every [`MEMORY_SAMPLE_INTERVAL`] until stopped.
pub(crate) struct MemorySampler {
    total_kib: u64,
    at_start_kib: u64,
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    pub(crate) fn start() -> Self {
        let (total_kib, at_start_kib) = memory_used_kib().unwrap_or((0, 0));
        let peak_kib = Arc::new(AtomicU64::new(at_start_kib));
        let task = {
            let peak_kib = peak_kib.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MEMORY_SAMPLE_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if let Some((_, used)) = memory_used_kib() {
                        peak_kib.fetch_max(used, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            total_kib,
            at_start_kib,
            peak_kib,
            task,
        }
    }

    /// Stops sampling; with the client workers' RSS (read once every connection was
    /// subscribed) over `connections`.
    pub(crate) fn stop(self, clients_rss_kib: Option<u64>, connections: u64) -> MemoryResult {
        self.task.abort();
        if let Some((_, used)) = memory_used_kib() {
            self.peak_kib.fetch_max(used, Ordering::Relaxed);
        }
        MemoryResult {
            total_kib: self.total_kib,
            used_at_start_kib: self.at_start_kib,
            used_peak_kib: self.peak_kib.load(Ordering::Relaxed),
            clients_rss_kib,
            clients_rss_per_connection_bytes: clients_rss_kib
                .filter(|_| connections > 0)
                .map(|kib| (kib * 1024) as f64 / connections as f64),
        }
    }
}

/// The worker processes' RSS added up, in KiB (`None` if none could be read).
pub(crate) fn clients_rss_kib(pool: &WorkerPool) -> Option<u64> {
    let readings: Vec<u64> = pool
        .pids
        .iter()
        .filter_map(|pid| rss_kib(*pid).ok())
        .collect();
    (!readings.is_empty()).then(|| readings.iter().sum())
}

/// The processes whose CPU time a result splits out.
pub(crate) struct CpuMeter {
    edge_pids: Vec<Option<u32>>,
    /// Ingest and router, when the bench started them.
    ingest_pids: Vec<u32>,
    router_pids: Vec<u32>,
}

/// CPU seconds each process had used at an instant.
pub(crate) struct CpuSnapshot {
    at: Instant,
    edges: Vec<f64>,
    ingest: f64,
    router: f64,
    bench: f64,
    clients: f64,
    machine_busy: Option<f64>,
}

impl CpuMeter {
    pub(crate) fn of(target: &Target) -> Self {
        let pids_of = |role: &str| {
            target
                .local
                .as_ref()
                .map(|local| local.pids_of(role))
                .unwrap_or_default()
        };
        Self {
            edge_pids: target.edges.iter().map(|edge| edge.pid).collect(),
            ingest_pids: pids_of("ingest"),
            router_pids: pids_of("router"),
        }
    }

    /// CPU seconds each process has used so far.
    pub(crate) fn read(&self, pool: &WorkerPool) -> CpuSnapshot {
        let sum = |pids: &[u32]| pids.iter().filter_map(|pid| cpu_seconds(*pid)).sum();
        CpuSnapshot {
            at: Instant::now(),
            edges: self
                .edge_pids
                .iter()
                .map(|pid| pid.and_then(cpu_seconds).unwrap_or(0.0))
                .collect(),
            ingest: sum(&self.ingest_pids),
            router: sum(&self.router_pids),
            bench: cpu_seconds(std::process::id()).unwrap_or(0.0),
            clients: sum(&pool.pids),
            machine_busy: machine_busy_seconds(),
        }
    }

    /// Whether the run has ingest and router processes of its own.
    fn has_pipeline(&self) -> bool {
        !self.ingest_pids.is_empty() || !self.router_pids.is_empty()
    }
}

impl CpuSnapshot {
    /// The CPU seconds each process of `meter` used from `before` to this snapshot.
    pub(crate) fn used_since(&self, before: &Self, meter: &CpuMeter) -> CpuResult {
        let ingest = self.ingest - before.ingest;
        let router = self.router - before.router;
        let pipeline = meter.has_pipeline();
        let wall_seconds = self.at.duration_since(before.at).as_secs_f64();
        CpuResult {
            wall_seconds,
            machine_busy_cores: busy_cores(before.machine_busy, self.machine_busy, wall_seconds),
            edges: self
                .edges
                .iter()
                .zip(&before.edges)
                .map(|(after, before)| after - before)
                .collect(),
            ingest_and_router: ingest + router,
            ingest: pipeline.then_some(ingest),
            router: pipeline.then_some(router),
            bench_and_kafka: self.bench - before.bench,
            clients: self.clients - before.clients,
            per_event: None,
        }
    }
}

/// The machine's cores busy on average between two readings of
/// [`machine_busy_seconds`] `wall_seconds` apart.
pub(crate) fn busy_cores(
    before: Option<f64>,
    after: Option<f64>,
    wall_seconds: f64,
) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if wall_seconds > 0.0 => Some((after - before) / wall_seconds),
        _ => None,
    }
}

/// Seconds between two Unix-microsecond times (0 if `to` is not after `from`).
fn seconds_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

/// `count` per second over `seconds` (0 over no time).
fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The connections over every worker: how many got how far, why the others failed,
/// and how fast they authenticated and subscribed from the first `connect`.
pub(crate) fn connection_result(reports: &[WorkerReport], requested: u64) -> ConnectionResult {
    let mut result = ConnectionResult {
        requested,
        ..ConnectionResult::default()
    };
    for report in reports {
        result.authenticated += report.progress.authenticated;
        result.subscribed += report.progress.subscribed;
        result.failed += report.progress.failed;
        for (error, count) in &report.errors {
            tally_error(&mut result.errors, error, *count, usize::MAX);
        }
    }
    let started_us = reports
        .iter()
        .map(|report| report.connect_started_us)
        .filter(|started| *started > 0)
        .min()
        .unwrap_or(0);
    let last_authenticated_us = reports
        .iter()
        .map(|report| report.last_authenticated_us)
        .max()
        .unwrap_or(0);
    let last_subscribed_us = reports
        .iter()
        .map(|report| report.last_subscribed_us)
        .max()
        .unwrap_or(0);
    result.authenticate_seconds = seconds_between(started_us, last_authenticated_us);
    result.handshakes_per_second = per_second(result.authenticated, result.authenticate_seconds);
    result.subscribe_seconds = seconds_between(started_us, last_subscribed_us);
    result.subscribed_per_second = per_second(result.subscribed, result.subscribe_seconds);
    result
}

/// Pushes received over every worker, and how fast from the first to the last.
pub(crate) fn count_received_pushes(reports: &[WorkerReport], pushes: &mut PushResult) {
    pushes.received = reports.iter().map(|report| report.progress.pushes).sum();
    let first_push_us = reports
        .iter()
        .map(|report| report.first_push_us)
        .filter(|first| *first > 0)
        .min();
    let last_push_us = reports
        .iter()
        .map(|report| report.last_push_us)
        .max()
        .unwrap_or(0);
    if let Some(first_push_us) = first_push_us
        && last_push_us > 0
    {
        pushes.seconds = seconds_between(first_push_us, last_push_us);
        pushes.per_second = per_second(pushes.received, pushes.seconds);
    }
}

/// Of users `0..users`, how many received a push of `count` (each counted once).
pub(crate) fn users_reached(reports: &[WorkerReport], users: u64, count: u64) -> u64 {
    let mut reached = vec![false; usize::try_from(users).unwrap_or(0)];
    for report in reports {
        for (user, received, _) in &report.receipts {
            if *received == count
                && let Some(slot) = usize::try_from(*user)
                    .ok()
                    .and_then(|user| reached.get_mut(user))
            {
                *slot = true;
            }
        }
    }
    reached.iter().filter(|reached| **reached).count() as u64
}

/// The latencies over every worker, in microseconds.
pub(crate) struct Latencies {
    /// Produce → client receive, per push.
    pub(crate) push: Histogram<u64>,
    /// Connect start → authenticated, per connection.
    pub(crate) handshake: Histogram<u64>,
    /// `group-message`: the pushes of each message.
    pub(crate) per_message: Vec<Histogram<u64>>,
}

impl Latencies {
    /// The workers' histograms added up, and their receipts turned into latencies by
    /// when the bench sent what caused them.
    pub(crate) fn merge(reports: &[WorkerReport], sends: &Sends) -> anyhow::Result<Self> {
        let mut latencies = Self {
            push: new_histogram()?,
            handshake: new_histogram()?,
            per_message: (0..sends.rounds.len())
                .map(|_| new_histogram())
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        for report in reports {
            record_pairs(&mut latencies.push, &report.latency_us);
            record_pairs(&mut latencies.handshake, &report.handshake_us);
            for (user, count, received_us) in &report.receipts {
                let Some(sent_us) = sends.sent_at(*user, *count) else {
                    continue;
                };
                let micros = received_us.saturating_sub(sent_us).max(1);
                latencies.push.saturating_record(micros);
                // Count k of every user comes from message k.
                if let Some(message) = usize::try_from(*count)
                    .ok()
                    .and_then(|count| latencies.per_message.get_mut(count.wrapping_sub(1)))
                {
                    message.saturating_record(micros);
                }
            }
        }
        Ok(latencies)
    }
}

/// Adds (value, count) pairs, the form workers report, to a histogram.
fn record_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for (value, count) in pairs {
        histogram.saturating_record_n((*value).max(1), *count);
    }
}

/// Connections on edge `index` of `edges`: connection `i` goes to edge `i % edges`.
fn connections_on_edge(connections: u64, edges: u64, index: u64) -> u64 {
    connections.saturating_sub(index).div_ceil(edges.max(1))
}

/// Each edge's connections, RSS and pushes, and over all edges the RSS growth per
/// connection.
pub(crate) async fn edge_results(
    target: &Target,
    connections: u64,
    rss: &EdgeRss,
) -> (Vec<EdgeResult>, Option<f64>) {
    let mut edges = Vec::new();
    let (mut growth_bytes, mut growth_connections) = (0.0, 0_u64);
    for (index, edge) in target.edges.iter().enumerate() {
        let on_edge = connections_on_edge(connections, target.edges.len() as u64, index as u64);
        let baseline = rss.baseline[index];
        let end = rss.end[index];
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
            rss_subscribed_kib: rss.subscribed[index],
            rss_end_kib: end,
            rss_per_connection_bytes: per_connection,
            rss_after_message_kib: rss
                .after_message
                .as_ref()
                .and_then(|after| after.get(index).copied().flatten()),
            edge_pushes_total,
        });
    }
    let rss_per_connection_bytes =
        (growth_connections > 0).then(|| growth_bytes / growth_connections as f64);
    (edges, rss_per_connection_bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::worker::Progress;

    #[test]
    fn connections_are_spread_round_robin_over_the_edges() {
        for connections in 0..20_u64 {
            for edges in 1..5_u64 {
                for index in 0..edges {
                    let round_robin = (0..connections)
                        .filter(|connection| connection % edges == index)
                        .count() as u64;
                    assert_eq!(
                        connections_on_edge(connections, edges, index),
                        round_robin,
                        "{connections} connections, edge {index} of {edges}"
                    );
                }
            }
        }
    }

    fn report(subscribed: u64, failed: u64, errors: &[(&str, u64)]) -> WorkerReport {
        WorkerReport {
            progress: Progress {
                authenticated: subscribed,
                subscribed,
                failed,
                ..Progress::default()
            },
            errors: errors
                .iter()
                .map(|(error, count)| ((*error).to_owned(), *count))
                .collect(),
            ..WorkerReport::default()
        }
    }

    #[test]
    fn the_workers_connections_add_up_from_the_first_connect() {
        let mut first = report(3, 1, &[("unauthorized", 1)]);
        first.connect_started_us = 2_000_000;
        first.last_authenticated_us = 2_500_000;
        first.last_subscribed_us = 3_000_000;
        let mut second = report(1, 2, &[("unauthorized", 1), ("closed by the edge", 1)]);
        second.connect_started_us = 1_000_000;
        second.last_authenticated_us = 2_000_000;
        second.last_subscribed_us = 2_000_000;
        let result = connection_result(&[first, second], 7);
        assert_eq!(result.requested, 7);
        assert_eq!(result.subscribed, 4);
        assert_eq!(result.failed, 3);
        assert_eq!(
            result.errors,
            [
                ("unauthorized".to_owned(), 2),
                ("closed by the edge".to_owned(), 1)
            ]
        );
        assert_eq!(result.authenticate_seconds, 1.5);
        assert_eq!(result.subscribe_seconds, 2.0);
        assert_eq!(result.subscribed_per_second, 2.0);
    }

    #[test]
    fn a_user_is_reached_once_however_often_its_count_arrives() {
        let mut first = report(2, 0, &[]);
        first.receipts = vec![(0, 1, 10), (0, 1, 20), (1, 2, 30), (7, 1, 40)];
        let mut second = report(1, 0, &[]);
        second.receipts = vec![(2, 1, 10)];
        // User 7 is not one of the run's 3; user 1's count is not the one asked for.
        assert_eq!(users_reached(&[first, second], 3, 1), 2);
    }

    #[test]
    fn receipts_become_latencies_by_their_send_time() {
        let sends = Sends {
            rounds: vec![1_000, 5_000],
            ..Sends::default()
        };
        let mut worker = report(2, 0, &[]);
        worker.receipts = vec![(0, 1, 3_000), (1, 2, 6_000), (1, 3, 9_000)];
        let latencies = Latencies::merge(&[worker], &sends).unwrap();
        // The third count was caused by no message the bench sent.
        assert_eq!(latencies.push.len(), 2);
        assert_eq!(latencies.per_message[0].max(), 2_000);
        assert_eq!(latencies.per_message[1].max(), 1_000);
    }
}
