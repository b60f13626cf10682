//! What a WebSocket scenario's result holds (written as JSON), and its human summary.

use serde::Serialize;

use crate::report::{LatencySummary, Machine};
use crate::worker::Protocol;

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
