//! What a WebSocket scenario's result holds (written as JSON), and its human summary.

use serde::Serialize;

use crate::report::{LatencySummary, Machine};
use crate::syscalls::WriteSyscalls;
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
    /// scale-out: the users whose count of the group message arrived, each once however
    /// often it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<u64>,
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
    /// At the end of the run (scale-out: of the hold, before its group message).
    pub rss_end_kib: Option<u64>,
    /// (end RSS - baseline) / connections.
    pub rss_per_connection_bytes: Option<f64>,
    /// scale-out: after its group message, which puts every user's count and stream
    /// event in every edge's count table and history window, connected there or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_message_kib: Option<u64>,
    /// `fanout_edge_pushes_total` at the end (subscribe counts included).
    pub edge_pushes_total: Option<f64>,
}

/// The machine's memory over a run, and the client processes'.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryResult {
    /// MemTotal of /proc/meminfo.
    pub total_kib: u64,
    /// MemTotal − MemAvailable (every process's and the kernel's, ours or not, socket
    /// buffers included) when the run started, and at its highest, read every 250 ms
    /// until the workers reported.
    pub used_at_start_kib: u64,
    pub used_peak_kib: u64,
    /// The client worker processes' RSS added up, once every connection was subscribed,
    /// and that over the connections.
    pub clients_rss_kib: Option<u64>,
    pub clients_rss_per_connection_bytes: Option<f64>,
}

/// CPU seconds each process used during the load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuResult {
    pub wall_seconds: f64,
    /// The machine's cores busy on average over the load, every process's (others'
    /// too): 2.0 is all of this machine.
    pub machine_busy_cores: Option<f64>,
    /// Each edge process (local edges, or `--edge-pid`).
    pub edges: Vec<f64>,
    /// Ingest and router processes together (local, group-message and steady).
    pub ingest_and_router: f64,
    /// The ingest process, and the router process (`None`: the run has none).
    pub ingest: Option<f64>,
    pub router: Option<f64>,
    /// The bench process: the embedded Kafka and the producer.
    pub bench_and_kafka: f64,
    /// The client worker processes together.
    pub clients: f64,
    /// The same per event of the scenario, in microseconds (`None`: a scenario with no
    /// events, idle and scale-out).
    pub per_event: Option<CpuPerEvent>,
}

/// CPU microseconds each process used per event of the scenario: the seconds of
/// [`CpuResult`] divided by [`CpuPerEvent::events`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerEvent {
    /// What an event is here: `"user event"` (one recipient of a message produced:
    /// group-message, steady, stream), `"push delivered"` (push-rate), `"stream event
    /// produced"` (reconnect-storm), `"connection subscribed"` (connect-storm).
    pub unit: &'static str,
    pub events: u64,
    pub edges_us: Vec<f64>,
    pub ingest_us: Option<f64>,
    pub router_us: Option<f64>,
    pub bench_and_kafka_us: f64,
    pub clients_us: f64,
    /// Every process above together.
    pub total_us: f64,
}

impl CpuPerEvent {
    /// `cpu` per one of `events` (`None` for none).
    pub fn of(cpu: &CpuResult, unit: &'static str, events: u64) -> Option<Self> {
        if events == 0 {
            return None;
        }
        let per_event = |seconds: f64| seconds * 1e6 / events as f64;
        let total = cpu.edges.iter().sum::<f64>()
            + cpu.ingest.unwrap_or(0.0)
            + cpu.router.unwrap_or(0.0)
            + cpu.bench_and_kafka
            + cpu.clients;
        Some(Self {
            unit,
            events,
            edges_us: cpu.edges.iter().copied().map(per_event).collect(),
            ingest_us: cpu.ingest.map(per_event),
            router_us: cpu.router.map(per_event),
            bench_and_kafka_us: per_event(cpu.bench_and_kafka),
            clients_us: per_event(cpu.clients),
            total_us: per_event(total),
        })
    }

    /// `edges [..], ingest .., router .., bench+Kafka .., clients .., total ..`.
    pub fn line(&self) -> String {
        let optional = |name: &str, value: Option<f64>| {
            value.map_or_else(String::new, |us| format!(", {name} {us:.1}"))
        };
        format!(
            "edges {:?}{}{}, bench+Kafka {:.1}, clients {:.1}, total {:.1}",
            self.edges_us
                .iter()
                .map(|us| (us * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            optional("ingest", self.ingest_us),
            optional("router", self.router_us),
            self.bench_and_kafka_us,
            self.clients_us,
            self.total_us
        )
    }
}

/// A figure of the edge, the same of the ceiling measured in the same run, and the
/// edge's over the ceiling's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Compared {
    pub edge: Option<f64>,
    pub ceiling: Option<f64>,
    pub edge_over_ceiling: Option<f64>,
}

impl Compared {
    pub fn of(edge: Option<f64>, ceiling: Option<f64>) -> Self {
        let edge_over_ceiling = match (edge, ceiling) {
            (Some(edge), Some(ceiling)) if ceiling > 0.0 => Some(edge / ceiling),
            _ => None,
        };
        Self {
            edge,
            ceiling,
            edge_over_ceiling,
        }
    }

    fn line(&self, name: &str, precision: usize) -> String {
        let value = |value: Option<f64>| {
            value.map_or_else(|| "?".to_owned(), |value| format!("{value:.precision$}"))
        };
        format!(
            "{name}: edge {}, ceiling {}, edge/ceiling {}",
            value(self.edge),
            value(self.ceiling),
            self.edge_over_ceiling
                .map_or_else(|| "?".to_owned(), |ratio| format!("{ratio:.2}"))
        )
    }
}

/// The edge's figures against the ceiling's of the same run ([`crate::ceiling`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VsCeiling {
    /// Pushes delivered per second.
    pub pushes_per_second: Compared,
    /// CPU microseconds per push delivered: the edge processes (added up), and the
    /// ceiling's server process.
    pub server_cpu_us_per_push: Compared,
    /// The client workers' CPU microseconds per push delivered.
    pub clients_cpu_us_per_push: Compared,
    /// Frames per socket write syscall (perf's `sendto` + `writev`).
    pub frames_per_write_syscall: Compared,
    /// Frames per `/proc/<pid>/io` `syscw` (which does not count `sendto`).
    pub frames_per_syscw: Compared,
    /// Latency: the edge's from produce, the ceiling's from the frame's stamp.
    pub latency_p50_ms: Compared,
    pub latency_p99_ms: Compared,
}

impl VsCeiling {
    pub fn lines(&self) -> Vec<String> {
        vec![
            self.pushes_per_second.line("pushes/s", 0),
            self.server_cpu_us_per_push.line("server CPU µs/push", 2),
            self.clients_cpu_us_per_push.line("clients CPU µs/push", 2),
            self.frames_per_write_syscall
                .line("frames per write syscall (sendto+writev)", 3),
            self.frames_per_syscw.line("frames per syscw", 3),
            self.latency_p50_ms.line("latency p50 ms", 2),
            self.latency_p99_ms.line("latency p99 ms", 2),
        ]
    }
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
    /// The machine's memory at the start and at its highest, and the clients' RSS.
    pub memory: MemoryResult,
    /// CPU seconds each process used during the load (after every connection was
    /// subscribed), and the load's wall-clock seconds: where the 2 cores went.
    pub cpu: CpuResult,
    /// The edges' write syscalls over the load, and frames per write (push-rate, and a
    /// scenario run with `--ceiling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_writes: Option<WriteSyscalls>,
    /// The ceiling measured in the same run, with the same connections and pattern
    /// (push-rate; group-message with `--ceiling`), and the edge against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<CeilingResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_ceiling: Option<VsCeiling>,
    pub check: Option<TargetCheck>,
    /// reconnect-storm's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_storm: Option<StormResult>,
    pub result_file: String,
    pub plot_file: String,
}

/// `fanout bench ceiling`: what a minimal server in a process of its own (no Kafka, no
/// auth, frames encoded once) does with the same clients and the same pattern of
/// writes as a scenario; on its own, or inside push-rate's (and group-message's, with
/// `--ceiling`) result.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub scenario: &'static str,
    /// The scenario whose writes it makes: `push-rate` (one frame at a time, round robin
    /// over the connections, at `rate`) or `group-message` (one frame to every
    /// connection, `messages` times).
    pub pattern: &'static str,
    pub server: &'static str,
    pub protocol: Protocol,
    pub workers: usize,
    /// push-rate: frames per second (`None`: as fast as the server writes).
    pub rate: Option<u64>,
    pub duration_seconds: f64,
    /// group-message: rounds, each one frame to every connection.
    pub messages: Option<u64>,
    pub machine: Machine,
    pub connections: ConnectionResult,
    /// From the time stamped in the frame (when it was due) to the client's receipt.
    pub latency: LatencySummary,
    pub pushes: CeilingPushes,
    pub cpu: CeilingCpu,
    /// The server's write syscalls over the load; `frames` are the frames it wrote.
    pub writes: WriteSyscalls,
    /// The socket writes the server counted itself (each one `sendto`): perf's count
    /// less any other `sendto` of the process.
    pub server_socket_writes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot_file: Option<String>,
}

/// What the ceiling's server wrote and its clients received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingPushes {
    /// push-rate: frames the rate has due over the duration (`None` for group-message,
    /// and as fast as it writes); those neither written nor coalesced were due when
    /// the server, behind, reached the end of the duration.
    pub due: Option<u64>,
    /// Frames the server wrote, writes that failed (a connection gone), and frames
    /// coalesced: not written, a newer one to the same connection being due too (the
    /// server was behind by more than a round).
    pub written: u64,
    pub write_failures: u64,
    pub coalesced: u64,
    /// Frames the clients counted (count above 0), from the first to the last.
    pub received: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// CPU seconds of each process over the ceiling's load, and microseconds per push
/// received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingCpu {
    pub wall_seconds: f64,
    /// The machine's cores busy on average over the load, every process's.
    pub machine_busy_cores: Option<f64>,
    pub server: f64,
    pub clients: f64,
    /// The bench process, which only drives the run here.
    pub bench: f64,
    pub server_us_per_push: Option<f64>,
    pub clients_us_per_push: Option<f64>,
    pub bench_us_per_push: Option<f64>,
}

impl CeilingResult {
    /// Pushes/s, CPU per push and frames per write, on one line.
    pub fn headline(&self) -> String {
        let us = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |us| format!("{us:.2}"));
        let due = self.pushes.due.map_or_else(String::new, |due| {
            format!(" ({due} due, {} coalesced)", self.pushes.coalesced)
        });
        format!(
            "{} pushes received of {} written{due} in {:.2} s = {:.0}/s; CPU µs/push: server {}, clients {}; {}",
            self.pushes.received,
            self.pushes.written,
            self.pushes.seconds,
            self.pushes.per_second,
            us(self.cpu.server_us_per_push),
            us(self.cpu.clients_us_per_push),
            crate::syscalls::line(&self.writes)
        )
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let connections = &self.connections;
        let mut lines = vec![
            format!(
                "fanout bench ceiling --pattern {} ({}, {} workers, {:?})",
                self.pattern, self.server, self.workers, self.protocol
            ),
            format!(
                "connections: {}/{} subscribed, {} failed",
                connections.subscribed, connections.requested, connections.failed
            ),
        ];
        for (error, count) in &connections.errors {
            lines.push(format!("  {count} × {error}"));
        }
        lines.push(self.headline());
        lines.push(format!(
            "latency (stamp → client receive): {}",
            self.latency.line()
        ));
        lines.push(format!(
            "CPU seconds over {:.1} s of load: server {:.2}, clients {:.2}, bench {:.2}; machine busy {}",
            self.cpu.wall_seconds,
            self.cpu.server,
            self.cpu.clients,
            self.cpu.bench,
            busy_line(self.cpu.machine_busy_cores)
        ));
        if let (Some(result), Some(plot)) = (&self.result_file, &self.plot_file) {
            lines.push(format!("wrote {result} and {plot}"));
        }
        lines.join("\n")
    }
}

/// reconnect-storm: the edge restarted under its stream subscribers, and how they
/// recovered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    /// Stream events per second (notifications, one per event), and their data's size.
    pub rate: u64,
    pub data_bytes: usize,
    /// Events flowed this long before the edge was killed.
    pub warm_up_seconds: f64,
    /// Notifications produced over the whole run, and in how long.
    pub produced: u64,
    pub produce_seconds: f64,
    pub produce_failures: u64,
    pub restart: RestartResult,
    pub clients: StormClients,
    /// Per client: from the new edge reporting ready to having every event up to the
    /// position its user had then (or, with nothing missed, to its resubscription).
    pub recovery: LatencySummary,
    /// From the new edge reporting ready until every client recovered; `None` unless
    /// every one did.
    pub all_recovered_seconds: Option<f64>,
    /// The new edge's `fanout_edge_stream_resumes_total`, by result.
    pub edge_resumes: Vec<(String, f64)>,
    pub memory: HistoryMemory,
    /// The history window's memory target (the run's `check` is recovery's).
    pub memory_check: Option<TargetCheck>,
}

/// The edge's restart, Unix microseconds and seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartResult {
    pub killed_us: u64,
    /// When the bench first saw the new edge's `/readyz` answer 200 (polled every 5 ms).
    pub ready_us: u64,
    /// Killed → the new edge ready: process start, reading the count table and the
    /// history window back from Kafka.
    pub kill_to_ready_seconds: f64,
    /// Ready → every client subscribed again.
    pub ready_to_all_resubscribed_seconds: f64,
    /// user-streams records written from just before the kill until the new edge was
    /// ready: about what the clients missed.
    pub stream_records_while_down: u64,
    /// CPU seconds of the first edge over the warm-up, and of the new edge until it was
    /// ready and until the end.
    pub first_edge_warm_up_cpu_seconds: f64,
    pub new_edge_cpu_seconds_to_ready: f64,
    pub new_edge_cpu_seconds: f64,
}

/// What the clients saw of the restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormClients {
    pub subscribed: u64,
    pub dropped: u64,
    pub resubscribed: u64,
    /// Reached every event up to their user's position at ready.
    pub recovered: u64,
    pub not_recovered: u64,
    /// Resubscriptions answered `reset`: must be 0.
    pub resets: u64,
    /// Events never received (offsets skipped) and received twice, over the whole run:
    /// must be 0; the run fails otherwise.
    pub gaps: u64,
    pub repeats: u64,
    pub epoch_changes: u64,
    /// Event frames received over the whole run.
    pub events_received: u64,
    /// The `missed` the new edge announced, summed, and what the clients needed.
    pub missed_announced: u64,
    pub missed_needed: u64,
    /// Connection attempts per client after the drop, the one that held included.
    pub reconnect_attempts_mean: f64,
    pub reconnect_attempts_max: u32,
}

/// One reading of an edge: its RSS and its history window's metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HistorySample {
    /// Seconds since the load started.
    pub seconds: f64,
    pub rss_kib: u64,
    /// `fanout_edge_history_events` and `fanout_edge_history_bytes` (set by the edge
    /// once a second, so up to a second behind the RSS).
    pub events: u64,
    pub bytes: u64,
}

/// The history window's memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryMemory {
    /// The first edge once a second over the warm-up: subscribed connections held,
    /// events coming, nothing evicted.
    pub samples: Vec<HistorySample>,
    /// `fanout_edge_history_bytes / fanout_edge_history_events` at the end of the
    /// warm-up: what the edge accounts per event.
    pub accounted_bytes_per_event: Option<f64>,
    /// RSS growth per event in the window: the least-squares slope of RSS over
    /// `fanout_edge_history_events` in the samples from 2 s on.
    pub rss_bytes_per_event: Option<f64>,
    /// The same from the first and the last of those samples only.
    pub rss_bytes_per_event_endpoints: Option<f64>,
    /// The new edge once every client was subscribed again.
    pub restarted: Option<HistorySample>,
    /// Its RSS above the first edge's before any event (connections subscribed then
    /// too) per event in its window: the window as read back from Kafka, with what
    /// the read left behind.
    pub restarted_rss_bytes_per_event: Option<f64>,
}

/// `1.87 cores`, or `?`.
fn busy_line(cores: Option<f64>) -> String {
    cores.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2} cores"))
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
    if let Some(reached) = result.pushes.reached {
        lines.push(format!(
            "group message: {} events, {reached} of {} users reached",
            result.pushes.produced,
            result
                .pushes
                .expected
                .map_or_else(|| "?".to_owned(), |expected| expected.to_string()),
        ));
    }
    for (index, message) in result.per_message.iter().enumerate() {
        lines.push(format!("  message {}: {}", index + 1, message.line()));
    }
    for edge in &result.edges {
        if let (Some(baseline), Some(end)) = (edge.rss_baseline_kib, edge.rss_end_kib) {
            let per_connection = edge
                .rss_per_connection_bytes
                .map_or_else(String::new, |bytes| {
                    format!(" = {bytes:.0} bytes/connection")
                });
            let after_message = edge.rss_after_message_kib.map_or_else(String::new, |kib| {
                format!(" ({kib} KiB after the group message)")
            });
            lines.push(format!(
                "edge {}: {} connections, RSS {} KiB → {} KiB{per_connection}{after_message}",
                edge.url, edge.connections, baseline, end,
            ));
        }
    }
    let per_connection: Vec<f64> = result
        .edges
        .iter()
        .filter_map(|edge| edge.rss_per_connection_bytes)
        .collect();
    if per_connection.len() > 1 {
        lines.push(format!(
            "RSS per connection over {} edges: min {:.0}, max {:.0}, all {} bytes",
            per_connection.len(),
            per_connection.iter().copied().fold(f64::INFINITY, f64::min),
            per_connection.iter().copied().fold(0.0, f64::max),
            result
                .rss_per_connection_bytes
                .map_or_else(|| "?".to_owned(), |bytes| format!("{bytes:.0}"))
        ));
    }
    let memory = &result.memory;
    let gib = |kib: u64| kib as f64 / (1024.0 * 1024.0);
    lines.push(format!(
        "machine memory in use: {:.1} GiB at the start, {:.1} GiB at the most, of {:.1} GiB; clients RSS {}",
        gib(memory.used_at_start_kib),
        gib(memory.used_peak_kib),
        gib(memory.total_kib),
        match (memory.clients_rss_kib, memory.clients_rss_per_connection_bytes) {
            (Some(kib), Some(bytes)) => format!("{:.2} GiB = {bytes:.0} bytes/connection", gib(kib)),
            _ => "?".to_owned(),
        }
    ));
    let cpu = &result.cpu;
    let pipeline = match (cpu.ingest, cpu.router) {
        (Some(ingest), Some(router)) => format!(", ingest {ingest:.1}, router {router:.1}"),
        _ => String::new(),
    };
    lines.push(format!(
        "CPU seconds over {:.1} s of load: edges {:?}{pipeline}, bench+Kafka {:.1}, clients {:.1}; machine busy {}",
        cpu.wall_seconds,
        cpu.edges
            .iter()
            .map(|seconds| (seconds * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        cpu.bench_and_kafka,
        cpu.clients,
        busy_line(cpu.machine_busy_cores)
    ));
    if let Some(per_event) = &cpu.per_event {
        lines.push(format!(
            "CPU µs per {} ({}): {}",
            per_event.unit,
            per_event.events,
            per_event.line()
        ));
    }
    if let Some(writes) = &result.edge_writes {
        lines.push(format!("edge writes: {}", crate::syscalls::line(writes)));
    }
    if let Some(ceiling) = &result.ceiling {
        lines.push(format!(
            "ceiling (same connections and pattern, minimal server): {}",
            ceiling.headline()
        ));
    }
    if let Some(vs_ceiling) = &result.vs_ceiling {
        lines.extend(
            vs_ceiling
                .lines()
                .into_iter()
                .map(|line| format!("  {line}")),
        );
    }
    if let Some(storm) = &result.reconnect_storm {
        lines.extend(storm_summary(storm));
    }
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

/// reconnect-storm's lines of the summary.
fn storm_summary(storm: &StormResult) -> Vec<String> {
    let restart = &storm.restart;
    let clients = &storm.clients;
    let memory = &storm.memory;
    let bytes = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |v| format!("{v:.0} B"));
    let mut lines = vec![
        format!(
            "events: {} notifications at {}/s with {} B of data, {:.1} s of warm-up",
            storm.produced, storm.rate, storm.data_bytes, storm.warm_up_seconds
        ),
        format!(
            "restart: killed → ready {:.2} s ({} stream records written meanwhile), ready → all resubscribed {:.2} s",
            restart.kill_to_ready_seconds,
            restart.stream_records_while_down,
            restart.ready_to_all_resubscribed_seconds
        ),
        format!(
            "clients: {} dropped, {} resubscribed, {} recovered, {} not; resets {}, gaps {}, repeats {}, epoch changes {}; missed {} announced, {} needed; attempts mean {:.2}, max {}",
            clients.dropped,
            clients.resubscribed,
            clients.recovered,
            clients.not_recovered,
            clients.resets,
            clients.gaps,
            clients.repeats,
            clients.epoch_changes,
            clients.missed_announced,
            clients.missed_needed,
            clients.reconnect_attempts_mean,
            clients.reconnect_attempts_max
        ),
        format!("ready → recovered: {}", storm.recovery.line()),
        format!(
            "all recovered: {}",
            storm.all_recovered_seconds.map_or_else(
                || "no".to_owned(),
                |seconds| format!("{seconds:.2} s after ready")
            )
        ),
        format!(
            "history window: accounted {} per event; RSS {} per event (slope), {} (endpoints); restarted edge {}",
            bytes(memory.accounted_bytes_per_event),
            bytes(memory.rss_bytes_per_event),
            bytes(memory.rss_bytes_per_event_endpoints),
            bytes(memory.restarted_rss_bytes_per_event)
        ),
    ];
    if let Some(check) = &storm.memory_check {
        lines.push(format!(
            "target: {} {} — measured {:.2}: {}",
            check.metric,
            check.target,
            check.measured,
            if check.met { "MET" } else { "MISSED" }
        ));
    }
    lines
}
