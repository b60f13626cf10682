//! What the publish scenario's result holds (written as JSON), and its human summary.

use serde::Serialize;

use crate::report::{LatencySummary, Machine};

/// The result of `fanout bench publish`.
#[derive(Debug, Clone, Serialize)]
pub struct PublishBenchResult {
    pub scenario: &'static str,
    /// What ran, and how the api was set up.
    pub target: String,
    pub machine: Machine,
    pub settings: Settings,
    /// One per batch size, in the order run.
    pub publish: Vec<PublishPhase>,
    /// From the last publish answered until ingest had consumed every accepted event
    /// and the topics downstream stopped growing: how far the pipeline was behind the
    /// api.
    pub settle_seconds: f64,
    /// Whether it caught up at all: on the embedded broker, not if ingest fell more than
    /// the 5 MiB the broker keeps of each partition behind (the queries' checks then
    /// fail; the publish figures and their check stand).
    pub pipeline_caught_up: bool,
    /// `receipts`, then `unread_count`.
    pub queries: Vec<QueryPhase>,
    pub receipt_on_socket: SocketReceipts,
    pub check: PublishCheck,
    /// The api's RSS once ready, and at the end.
    pub api_rss_ready_kib: Option<u64>,
    pub api_rss_end_kib: Option<u64>,
    pub result_file: String,
    pub plot_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Concurrent keep-alive connections, each one task sending its next request when
    /// the last was answered (publish and queries).
    pub connections: usize,
    pub warm_up_seconds: f64,
    pub publish_seconds: f64,
    pub query_seconds: f64,
    pub users: u64,
    pub conversations_per_connection: usize,
    pub partitions: i32,
    pub user_partitions: i32,
    /// `api.requests_per_second` of the api: raised so that the rate limit does not cap
    /// the measurement.
    pub api_requests_per_second: u32,
    pub workload: &'static str,
}

/// CPU seconds each process used over a phase (from /proc), and the phase's wall time.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseCpu {
    pub wall_seconds: f64,
    pub api: f64,
    pub ingest: f64,
    pub router: f64,
    pub edge: f64,
    /// The bench process's librdkafka threads (`rdk:*`): the embedded broker (its
    /// `rdk:mock` thread does nearly all of it).
    pub kafka: f64,
    /// The bench process's other threads: the HTTP (and WebSocket) clients.
    pub bench_clients: f64,
}

/// Publishing at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct PublishPhase {
    pub batch_events: usize,
    pub connections: usize,
    /// Distinct TCP connections the requests went over (keep-alive: `connections`).
    pub tcp_connections: usize,
    /// From the end of the warm-up to the last measured answer.
    pub measured_seconds: f64,
    /// Requests started after the warm-up, and the events of theirs the api accepted.
    pub requests: u64,
    pub events: u64,
    pub requests_per_second: f64,
    pub events_per_second: f64,
    /// Request sent → answer read: the api answers once Kafka acknowledged every event.
    pub latency: LatencySummary,
    /// Every request's status, warm-up included.
    pub statuses: Vec<(u16, u64)>,
    /// Requests that failed (transport, timeout, an answer that does not parse) and
    /// events not accepted, by reason.
    pub errors: Vec<(String, u64)>,
    pub events_not_accepted: u64,
    /// Over the whole phase (warm-up included), as `cpu`.
    pub all_requests: u64,
    pub all_events: u64,
    pub cpu: PhaseCpu,
    /// The api's CPU time per accepted event and per request over the phase: what one
    /// api needs, whatever else shares its cores.
    pub api_cpu_us_per_event: f64,
    pub api_cpu_us_per_request: f64,
    pub api_rss_kib: Option<u64>,
}

/// Queries of one route at full speed.
#[derive(Debug, Clone, Serialize)]
pub struct QueryPhase {
    pub route: &'static str,
    pub connections: usize,
    pub tcp_connections: usize,
    pub measured_seconds: f64,
    pub queries: u64,
    pub per_second: f64,
    pub latency: LatencySummary,
    pub statuses: Vec<(u16, u64)>,
    pub errors: Vec<(String, u64)>,
    /// Answers compared with what the accepted events imply (warm-up included), and
    /// how many differed; a few of those.
    pub checked: u64,
    pub wrong: u64,
    pub wrong_examples: Vec<String>,
    /// Answers that were not empty: a reader listed, a count above 0.
    pub non_empty: u64,
    /// Queries answered over the whole phase (warm-up included), as `cpu`.
    pub all_queries: u64,
    pub cpu: PhaseCpu,
    /// The api's CPU time per query over the phase.
    pub api_cpu_us_per_query: f64,
}

/// A `MessageRead` published over HTTP naming the sender in `notify`, one at a time:
/// how long until the `message.read` receipt is on the sender's `/realtime` socket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SocketReceipts {
    pub requested: u64,
    pub received: u64,
    /// Receipts that did not come within 10 s.
    pub missing: u64,
    /// Request sent → receipt event read on the sender's socket.
    pub latency: LatencySummary,
    /// Request sent → HTTP answer (Kafka acknowledged the read), for the same requests.
    pub ack_latency: LatencySummary,
    /// Receipts on the socket before the HTTP answer was read.
    pub before_ack: u64,
    pub cpu: PhaseCpu,
}

/// One partition of message-events, at the end.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PartitionCheck {
    pub partition: i32,
    pub low_watermark: i64,
    pub high_watermark: i64,
    /// Accepted events the api placed in it.
    pub accepted: u64,
}

/// Whether what the api said it published is what message-events holds, read from the
/// topic's watermarks; and whether the queries answered what the events imply.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishCheck {
    /// Events the api answered `accepted`, over the whole run.
    pub accepted_events: u64,
    pub events_not_accepted: u64,
    /// Distinct (partition, offset) among them, and how many were repeated.
    pub distinct_positions: u64,
    pub repeated_positions: u64,
    /// Positions at or past their partition's high watermark (never written).
    pub positions_past_high_watermark: u64,
    /// Records ever written to message-events: the sum of its high watermarks (the
    /// topic is the run's own, and only the api writes to it).
    pub message_events_records: i64,
    pub partitions: Vec<PartitionCheck>,
    /// `fanout_ingest_events_total` after the publish phases, and at the end: what
    /// ingest consumed (for reference; not part of the check).
    pub ingest_consumed_at_settle: Option<f64>,
    pub ingest_consumed: Option<f64>,
    /// Per role, consumer positions the embedded broker had deleted ("Offset out of
    /// range" in its log): records that role never read. Queries then fail their check.
    pub offset_resets: Vec<(String, u64)>,
    /// Every request answered with an outcome per event, every event accepted, every
    /// position distinct and below its high watermark, and as many records as accepted
    /// events.
    pub publish_passed: bool,
    /// Every query answered 200 with what the accepted events imply.
    pub queries_passed: bool,
    /// Every receipt arrived.
    pub receipts_passed: bool,
    /// All three passed (`check.met`, as every scenario's result has it).
    pub met: bool,
}

fn cpu_line(cpu: &PhaseCpu) -> String {
    format!(
        "CPU s over {:.1} s: api {:.1}, ingest {:.1}, router {:.1}, edge {:.1}, Kafka {:.1}, clients {:.1}",
        cpu.wall_seconds, cpu.api, cpu.ingest, cpu.router, cpu.edge, cpu.kafka, cpu.bench_clients
    )
}

fn short(latency: &LatencySummary) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        latency.p50_ms, latency.p99_ms, latency.max_ms, latency.samples
    )
}

fn pairs<T: std::fmt::Display>(pairs: &[(T, u64)]) -> String {
    pairs
        .iter()
        .map(|(what, count)| format!("{what}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A human summary of a result.
pub fn summary(result: &PublishBenchResult) -> String {
    let settings = &result.settings;
    let mut lines = vec![
        format!("fanout bench publish ({})", result.target),
        format!(
            "{} keep-alive connections; {:.0} s per batch size and {:.0} s per query route after {:.0} s of warm-up; {} users, {} conversations per connection, {} partitions (keyed by user: {})",
            settings.connections,
            settings.publish_seconds,
            settings.query_seconds,
            settings.warm_up_seconds,
            settings.users,
            settings.conversations_per_connection,
            settings.partitions,
            settings.user_partitions
        ),
    ];
    for phase in &result.publish {
        lines.push(format!(
            "publish, {} event(s) per request: {:.0} events/s, {:.0} requests/s over {} TCP connections; acknowledged {}",
            phase.batch_events,
            phase.events_per_second,
            phase.requests_per_second,
            phase.tcp_connections,
            short(&phase.latency)
        ));
        lines.push(format!(
            "  api CPU {:.1} µs per event, {:.1} µs per request; statuses {{{}}}; {} events not accepted{}; api RSS {} KiB; {}",
            phase.api_cpu_us_per_event,
            phase.api_cpu_us_per_request,
            pairs(&phase.statuses),
            phase.events_not_accepted,
            if phase.errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", pairs(&phase.errors))
            },
            phase
                .api_rss_kib
                .map_or_else(|| "?".to_owned(), |kib| kib.to_string()),
            cpu_line(&phase.cpu)
        ));
    }
    if result.pipeline_caught_up {
        lines.push(format!(
            "pipeline caught up {:.1} s after the last publish",
            result.settle_seconds
        ));
    } else {
        lines.push(format!(
            "pipeline did NOT catch up: ingest consumed {} of {} accepted events, the last {:.1} s after the last publish",
            result
                .check
                .ingest_consumed_at_settle
                .map_or_else(|| "?".to_owned(), |consumed| consumed.to_string()),
            result.check.accepted_events,
            result.settle_seconds
        ));
    }
    for query in &result.queries {
        lines.push(format!(
            "GET {}: {:.0} queries/s over {} TCP connections; {}",
            query.route,
            query.per_second,
            query.tcp_connections,
            short(&query.latency)
        ));
        lines.push(format!(
            "  api CPU {:.1} µs per query; statuses {{{}}}{}; {} checked, {} wrong, {} not empty; {}",
            query.api_cpu_us_per_query,
            pairs(&query.statuses),
            if query.errors.is_empty() {
                String::new()
            } else {
                format!(" (errors: {})", pairs(&query.errors))
            },
            query.checked,
            query.wrong,
            query.non_empty,
            cpu_line(&query.cpu)
        ));
        for example in &query.wrong_examples {
            lines.push(format!("  wrong: {example}"));
        }
    }
    let receipts = &result.receipt_on_socket;
    lines.push(format!(
        "HTTP MessageRead → message.read on the sender's socket: {}/{} received; {}; HTTP acknowledged {}; {} before the HTTP answer",
        receipts.received,
        receipts.requested,
        short(&receipts.latency),
        short(&receipts.ack_latency),
        receipts.before_ack
    ));
    let check = &result.check;
    lines.push(format!(
        "check: {} events accepted ({} not), {} distinct (partition, offset), {} repeated, {} past the high watermark; message-events holds {} records: publish {}, queries {}, receipts {}",
        check.accepted_events,
        check.events_not_accepted,
        check.distinct_positions,
        check.repeated_positions,
        check.positions_past_high_watermark,
        check.message_events_records,
        verdict(check.publish_passed),
        verdict(check.queries_passed),
        verdict(check.receipts_passed)
    ));
    if !check.offset_resets.is_empty() {
        lines.push(format!(
            "consumers lost records the embedded broker deleted before they read them (\"Offset out of range\"): {}",
            pairs(&check.offset_resets)
        ));
    }
    lines.push(format!(
        "api RSS {} → {} KiB",
        result
            .api_rss_ready_kib
            .map_or_else(|| "?".to_owned(), |kib| kib.to_string()),
        result
            .api_rss_end_kib
            .map_or_else(|| "?".to_owned(), |kib| kib.to_string())
    ));
    lines.push(format!(
        "wrote {} and {}",
        result.result_file, result.plot_file
    ));
    lines.join("\n")
}

fn verdict(passed: bool) -> &'static str {
    if passed { "OK" } else { "FAILED" }
}
