//! The edge's telemetry: one method per notable event, the one place that both logs
//! it (where it is worth a line) and counts it. Labels are enums, so a label value
//! exists only where the code names it.

use fanout_protocol::cable::CommandError;
use fanout_protocol::realtime::{ErrorCode, FrameErrorKind};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::auth::AuthError;
use crate::close::{CloseReason, Protocol};
use crate::limits::Limit;

/// The edge's log lines that clients can drive at any rate, limited per kind by
/// [`fanout_kafka::LogLimit`] (the counters stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FloodLine {
    Unauthorized(AuthError),
    Limited(Limit),
    /// `accept` failed (usually out of file descriptors).
    AcceptFailed,
}

impl fanout_kafka::LogLine for FloodLine {
    fn message(self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "connection refused: unauthorized",
            Self::Limited(_) => "refused by a limit",
            Self::AcceptFailed => "accept failed",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Unauthorized(error) => error.reason(),
            Self::Limited(limit) => limit.as_str(),
            Self::AcceptFailed => "accept_error",
        }
    }

    fn level(self) -> tracing::Level {
        match self {
            Self::Unauthorized(_) | Self::Limited(_) => tracing::Level::INFO,
            Self::AcceptFailed => tracing::Level::WARN,
        }
    }
}

/// How a WebSocket handshake ended: the `result` label of
/// `fanout_edge_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Authenticated and admitted.
    Accepted,
    /// The token was refused (ActionCable), or too many were (`/realtime`).
    Unauthorized,
    /// No successful `authrequest` in time (`/realtime`).
    AuthTimeout,
    /// Authenticated, then refused by the origin allow-list or a connection limit.
    Limited,
    /// The WebSocket handshake itself failed.
    Failed,
    /// The WebSocket handshake took longer than `handshake_timeout_ms`.
    Timeout,
}

impl Handshake {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::AuthTimeout => "auth_timeout",
            Self::Limited => "limited",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
}

/// Why a client frame was not acted on: the `reason` label of
/// `fanout_edge_ignored_frames_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A binary frame: both protocols speak text.
    Binary,
    /// An ActionCable command that does not decode.
    Command(CommandError),
    /// An ActionCable identifier that is not a JSON object naming a channel.
    BadIdentifier,
    /// A subscribe to an identifier already subscribed (Rails ignores it too).
    DuplicateSubscribe,
    /// An ActionCable `message` to a channel with no actions.
    UnknownAction,
    /// An extended-protocol `history` for an identifier not subscribed.
    UnknownSubscription,
    /// A `/realtime` request that does not decode.
    Request(FrameErrorKind),
    /// A `/realtime` request refused in the session's state.
    Refused(ErrorCode),
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Command(error) => error.as_str(),
            Self::BadIdentifier => "bad_identifier",
            Self::DuplicateSubscribe => "duplicate_subscribe",
            Self::UnknownAction => "unknown_action",
            Self::UnknownSubscription => "unknown_subscription",
            Self::Request(kind) => kind.as_str(),
            Self::Refused(code) => code.as_str(),
        }
    }
}

/// What became of an unread-counts record: the `result` label of
/// `fanout_edge_count_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountRecord {
    /// Newer than the count held: stored and pushed.
    Applied,
    /// Not newer than the count held (a replay, or a record read out of order).
    Stale,
    /// No key, or a value that does not decode.
    Invalid,
}

impl CountRecord {
    const ALL: [Self; 3] = [Self::Applied, Self::Stale, Self::Invalid];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Invalid => "invalid",
        }
    }
}

/// What became of a user-streams record: the `result` label of
/// `fanout_edge_stream_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRecord {
    /// Queued for the user's subscribed sessions.
    Delivered,
    /// No session of this node is subscribed to the user: kept in the history window
    /// only.
    Unwatched,
    /// At or before the position already delivered (a router's replay): skipped.
    Repeated,
    /// No key, a value that does not decode, or data that is not a JSON object.
    Invalid,
}

impl StreamRecord {
    const ALL: [Self; 4] = [
        Self::Delivered,
        Self::Unwatched,
        Self::Repeated,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Unwatched => "unwatched",
            Self::Repeated => "repeated",
            Self::Invalid => "invalid",
        }
    }
}

/// How a stream subscription request ended: the `result` label of
/// `fanout_edge_stream_subscriptions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSubscribe {
    Accepted,
    /// The subscription's token was refused (its reason is in
    /// `fanout_edge_auth_failures_total`).
    Unauthorized,
    /// The token's partner is not the connection's.
    PartnerMismatch,
    /// The page's origin is not on the partner's allow-list.
    OriginNotAllowed,
    /// The partner is at its connection limit (a connection that authenticated only by
    /// subscribing takes its place then).
    ConnectionLimit,
    /// The connection already holds a stream subscription.
    AlreadySubscribed,
    /// No token, on a connection that authenticated none.
    NoIdentity,
    /// The token's user is served by another shard.
    WrongShard,
}

impl StreamSubscribe {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::PartnerMismatch => "partner_mismatch",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::ConnectionLimit => "connection_limit",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NoIdentity => "no_identity",
            Self::WrongShard => "wrong_shard",
        }
    }
}

/// How a subscription that named a position (or a time) started: the `result` label of
/// `fanout_edge_stream_resumes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamResume {
    /// Every missed event, then live ones.
    Resumed,
    /// The window no longer holds every missed event: told to reset.
    ResetBeyondWindow,
    /// The user's stream started over: told to reset.
    ResetEpochChanged,
    /// The position was another stream's: refused.
    ForeignPosition,
    /// The position was past the user's last event, even after waiting for this node
    /// to catch up: refused.
    FutureOffset,
}

impl StreamResume {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resumed => "resumed",
            Self::ResetBeyondWindow => "reset_beyond_window",
            Self::ResetEpochChanged => "reset_epoch_changed",
            Self::ForeignPosition => "foreign_position",
            Self::FutureOffset => "future_offset",
        }
    }
}

/// What became of an extended-protocol client's `sid`: the `result` label of
/// `fanout_edge_session_restores_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRestore {
    Restored,
    /// Not a session this node holds (it ended too long ago, on another node, or
    /// before this node restarted): the client connects and subscribes afresh.
    Unknown,
}

impl SessionRestore {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::Unknown => "unknown",
        }
    }
}

/// Source event time to now, when the source time is known.
fn observe_latency(histogram: &Histogram, source_time: Option<i64>) {
    if let Some(occurred_at_ms) = source_time {
        let latency_ms = (fanout_schema::unix_millis() - occurred_at_ms).max(0);
        histogram.observe(latency_ms as f64 / 1000.0);
    }
}

/// One open session in `fanout_edge_connections`, until dropped.
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The edge's metrics. Each method is the one place that both logs and counts.
#[derive(Clone)]
pub struct EdgeMetrics {
    connections: IntGaugeVec,
    handshakes: IntCounterVec,
    auth_failures: IntCounterVec,
    ignored_frames: IntCounterVec,
    pushes: IntCounter,
    coalesced_pushes: IntCounter,
    closes: IntCounterVec,
    limited: IntCounterVec,
    wrong_shard: IntCounterVec,
    secret_reloads: IntCounterVec,
    /// `fanout_edge_count_records_total`'s series, resolved once: the feed counts every record, and a
    /// label lookup per record was a tenth of a catch-up's CPU.
    count_record_series: [IntCounter; 3],
    stream_record_series: [IntCounter; 4],
    table_keys: IntGauge,
    delivery_seconds: Histogram,
    stream_records: IntCounterVec,
    stream_subscriptions: IntCounterVec,
    stream_pushes: IntCounter,
    stream_overflows: IntCounter,
    stream_delivery_seconds: Histogram,
    stream_resumes: IntCounterVec,
    session_restores: IntCounterVec,
    history_events: IntGauge,
    history_bytes: IntGauge,
    history_users: IntGauge,
    history_evictions: IntCounterVec,
    kafka: fanout_kafka::KafkaClientMetrics,
    log_limit: fanout_kafka::LogLimit<FloodLine>,
}

impl EdgeMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntGaugeVec::new(
            Opts::new(
                "fanout_edge_connections",
                "Open client connections, by protocol",
            ),
            &["protocol"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "fanout_edge_handshakes_total",
                "WebSocket handshakes, by result",
            ),
            &["result"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "fanout_edge_auth_failures_total",
                "Refused tokens, by reason",
            ),
            &["reason"],
        )?;
        let ignored_frames = IntCounterVec::new(
            Opts::new(
                "fanout_edge_ignored_frames_total",
                "Client frames not acted on (ignored, or answered with an error), by protocol and reason",
            ),
            &["protocol", "reason"],
        )?;
        let pushes = IntCounter::new(
            "fanout_edge_pushes_total",
            "Count frames written to clients",
        )?;
        let coalesced_pushes = IntCounter::new(
            "fanout_edge_coalesced_pushes_total",
            "Count changes never written to a client because a newer count replaced them while it was not reading",
        )?;
        let closes = IntCounterVec::new(
            Opts::new(
                "fanout_edge_closes_total",
                "Sessions ended after the upgrade, by protocol and reason",
            ),
            &["protocol", "reason"],
        )?;
        let limited = IntCounterVec::new(
            Opts::new(
                "fanout_edge_limited_total",
                "Connections, frames or commands refused by a limit, by limit",
            ),
            &["limit"],
        )?;
        let wrong_shard = IntCounterVec::new(
            Opts::new(
                "fanout_edge_wrong_shard_total",
                "Users refused because this edge does not read their partition (edge.partitions), by protocol",
            ),
            &["protocol"],
        )?;
        for protocol in [Protocol::Cable, Protocol::Realtime] {
            wrong_shard.with_label_values(&[protocol.as_str()]);
        }
        let secret_reloads = IntCounterVec::new(
            Opts::new(
                "fanout_edge_secret_reloads_total",
                "Reads of a changed edge.secrets_file, by result (ok: now in use; error: the previous secrets stay)",
            ),
            &["result"],
        )?;
        // Both results exist from the start at 0, so that increase() sees a pod's first
        // failed reload.
        for result in ["ok", "error"] {
            secret_reloads.with_label_values(&[result]);
        }
        let count_records = IntCounterVec::new(
            Opts::new(
                "fanout_edge_count_records_total",
                "unread-counts records read, by result",
            ),
            &["result"],
        )?;
        let table_keys = IntGauge::new("fanout_edge_table_keys", "Users in the count table")?;
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fanout_edge_delivery_latency_seconds",
                "Source event time to the count frame's socket write",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )?;
        let stream_records = IntCounterVec::new(
            Opts::new(
                "fanout_edge_stream_records_total",
                "user-streams records read, by result",
            ),
            &["result"],
        )?;
        let stream_subscriptions = IntCounterVec::new(
            Opts::new(
                "fanout_edge_stream_subscriptions_total",
                "Stream subscription requests (RoomChannel, subscribe_events), by result",
            ),
            &["result"],
        )?;
        let stream_pushes = IntCounter::new(
            "fanout_edge_stream_pushes_total",
            "Stream event frames written to clients",
        )?;
        let stream_overflows = IntCounter::new(
            "fanout_edge_stream_overflows_total",
            "Stream subscriptions ended because the client fell max_stream_queue events behind",
        )?;
        let stream_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fanout_edge_stream_delivery_latency_seconds",
                "Source event time to the stream event frame's socket write",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )?;
        let stream_resumes = IntCounterVec::new(
            Opts::new(
                "fanout_edge_stream_resumes_total",
                "Stream subscriptions that named a position or a time, by how they started",
            ),
            &["result"],
        )?;
        let session_restores = IntCounterVec::new(
            Opts::new(
                "fanout_edge_session_restores_total",
                "Extended-protocol reconnects presenting a sid, by result",
            ),
            &["result"],
        )?;
        let history_events = IntGauge::new(
            "fanout_edge_history_events",
            "Stream events in the history window",
        )?;
        let history_bytes = IntGauge::new(
            "fanout_edge_history_bytes",
            "Bytes the history window accounts for: event bodies and a fixed overhead per event",
        )?;
        let history_users = IntGauge::new(
            "fanout_edge_history_users",
            "Users with events in the history window or a stream subscription",
        )?;
        let history_evictions = IntCounterVec::new(
            Opts::new(
                "fanout_edge_history_evictions_total",
                "Events dropped from the history window, by the bound that dropped them",
            ),
            &["reason"],
        )?;
        for reason in ["age", "bytes", "count"] {
            history_evictions.with_label_values(&[reason]);
        }
        registry.register(Box::new(stream_resumes.clone()))?;
        registry.register(Box::new(session_restores.clone()))?;
        registry.register(Box::new(history_events.clone()))?;
        registry.register(Box::new(history_bytes.clone()))?;
        registry.register(Box::new(history_users.clone()))?;
        registry.register(Box::new(history_evictions.clone()))?;
        registry.register(Box::new(stream_records.clone()))?;
        registry.register(Box::new(stream_subscriptions.clone()))?;
        registry.register(Box::new(stream_pushes.clone()))?;
        registry.register(Box::new(stream_overflows.clone()))?;
        registry.register(Box::new(stream_delivery_seconds.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(ignored_frames.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(coalesced_pushes.clone()))?;
        registry.register(Box::new(closes.clone()))?;
        registry.register(Box::new(limited.clone()))?;
        registry.register(Box::new(wrong_shard.clone()))?;
        registry.register(Box::new(secret_reloads.clone()))?;
        registry.register(Box::new(count_records.clone()))?;
        registry.register(Box::new(table_keys.clone()))?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        Ok(Self {
            connections,
            handshakes,
            auth_failures,
            ignored_frames,
            pushes,
            coalesced_pushes,
            closes,
            limited,
            wrong_shard,
            secret_reloads,
            count_record_series: CountRecord::ALL
                .map(|result| count_records.with_label_values(&[result.as_str()])),
            stream_record_series: StreamRecord::ALL
                .map(|result| stream_records.with_label_values(&[result.as_str()])),
            table_keys,
            delivery_seconds,
            stream_records,
            stream_subscriptions,
            stream_pushes,
            stream_overflows,
            stream_delivery_seconds,
            stream_resumes,
            session_restores,
            history_events,
            history_bytes,
            history_users,
            history_evictions,
            kafka: fanout_kafka::KafkaClientMetrics::new(registry, "edge", "unread-counts")?,
            log_limit: fanout_kafka::LogLimit::new(registry, "edge")?,
        })
    }

    /// Counts an open session of `protocol` until the returned guard is dropped, even
    /// when the session is cut short.
    pub(crate) fn open_connection(&self, protocol: Protocol) -> OpenConnection {
        let gauge = self.connections.with_label_values(&[protocol.as_str()]);
        gauge.inc();
        OpenConnection(gauge)
    }

    pub(crate) fn handshake(&self, result: Handshake) {
        self.handshakes.with_label_values(&[result.as_str()]).inc();
    }

    /// How many lines of one kind a flood may write (`[log]`).
    pub fn set_log_limits(&self, limits: fanout_kafka::LogLimits) {
        self.log_limit.set_limits(limits);
    }

    /// Log lines left out by the flood limit so far.
    pub fn suppressed_log_line_count(&self) -> u64 {
        self.log_limit.suppressed_count()
    }

    pub(crate) fn auth_failed(&self, partner_known: bool, error: AuthError) {
        // Neither the token nor the user appears here: only the bounded reason.
        let reason = error.reason();
        if self.log_limit.admit(FloodLine::Unauthorized(error)) {
            tracing::info!(reason, partner_known, "connection refused: unauthorized");
        }
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// `accept` failed; the server backs off. Not counted: the kernel's counters and
    /// the open-files limit tell more.
    pub(crate) fn accept_failed(&self, error: &std::io::Error) {
        if self.log_limit.admit(FloodLine::AcceptFailed) {
            tracing::warn!(%error, reason = "accept_error", "accept failed");
        }
    }

    pub(crate) fn ignored_frame(&self, protocol: Protocol, reason: Ignored) {
        self.ignored_frames
            .with_label_values(&[protocol.as_str(), reason.as_str()])
            .inc();
    }

    /// One frame written to a client. `source_time`: the source event time of the
    /// change it delivers, for the delivery latency; `None` for a frame that only
    /// answers with the current state.
    pub(crate) fn pushed(&self, source_time: Option<i64>) {
        self.pushes.inc();
        observe_latency(&self.delivery_seconds, source_time);
    }

    /// `skipped` count changes were replaced by a newer one before this write.
    pub(crate) fn coalesced(&self, skipped: u64) {
        if skipped > 0 {
            self.coalesced_pushes.inc_by(skipped);
        }
    }

    pub(crate) fn closed(&self, protocol: Protocol, reason: CloseReason) {
        self.closes
            .with_label_values(&[protocol.as_str(), reason.as_str()])
            .inc();
    }

    /// A limit refused something. Under a flood the line is rate-limited; the counter
    /// counts every refusal.
    pub(crate) fn limited(&self, limit: Limit) {
        if self.log_limit.admit(FloodLine::Limited(limit)) {
            tracing::info!(reason = limit.as_str(), "refused by a limit");
        }
        self.limited.with_label_values(&[limit.as_str()]).inc();
    }

    /// A user refused because its partition (`partition`) is not one this edge reads:
    /// a backend sent the client to the wrong shard. Logged at debug only, like a
    /// limit: a misconfigured backend would send every client; the counter tells.
    pub(crate) fn wrong_shard(&self, protocol: Protocol, partition: i32) {
        tracing::debug!(
            protocol = protocol.as_str(),
            partition,
            "user refused: served by another shard"
        );
        self.wrong_shard
            .with_label_values(&[protocol.as_str()])
            .inc();
    }

    /// Users of `protocol` refused as another shard's so far.
    pub fn wrong_shard_count(&self, protocol: &str) -> u64 {
        self.wrong_shard.with_label_values(&[protocol]).get()
    }

    pub(crate) fn secrets_reloaded(&self, result: Result<usize, &str>) {
        match result {
            Ok(partners) => {
                tracing::info!(partners, "partner secrets reloaded");
                self.secret_reloads.with_label_values(&["ok"]).inc();
            }
            Err(reason) => {
                tracing::error!(%reason, "partner secrets file not reloaded; the previous secrets stay in use");
                self.secret_reloads.with_label_values(&["error"]).inc();
            }
        }
    }

    /// Count frames written so far.
    pub fn push_count(&self) -> u64 {
        self.pushes.get()
    }

    /// Count changes coalesced so far.
    pub fn coalesced_count(&self) -> u64 {
        self.coalesced_pushes.get()
    }

    /// Sessions of `protocol` ended for `reason` so far.
    pub fn close_count(&self, protocol: &str, reason: &str) -> u64 {
        self.closes.with_label_values(&[protocol, reason]).get()
    }

    /// Refusals by `limit` so far.
    pub fn limited_count(&self, limit: &str) -> u64 {
        self.limited.with_label_values(&[limit]).get()
    }

    /// Secret file reloads that ended with `result` so far.
    pub fn secret_reload_count(&self, result: &str) -> u64 {
        self.secret_reloads.with_label_values(&[result]).get()
    }

    pub(crate) fn count_record(&self, result: CountRecord) {
        self.count_record_series[result as usize].inc();
    }

    pub(crate) fn stream_record(&self, result: StreamRecord) {
        self.stream_record_series[result as usize].inc();
    }

    pub(crate) fn stream_subscribe(&self, result: StreamSubscribe) {
        if result != StreamSubscribe::Accepted {
            tracing::debug!(result = result.as_str(), "stream subscription refused");
        }
        self.stream_subscriptions
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// One stream event frame written to a client.
    pub(crate) fn stream_pushed(&self, source_time: Option<i64>) {
        self.stream_pushes.inc();
        observe_latency(&self.stream_delivery_seconds, source_time);
    }

    /// A stream subscription ended because its queue was full.
    pub(crate) fn stream_overflowed(&self) {
        tracing::debug!("stream subscription ended: the client fell too far behind");
        self.stream_overflows.inc();
    }

    pub(crate) fn stream_resumed(&self, result: StreamResume) {
        tracing::debug!(
            result = result.as_str(),
            "stream subscription from a position"
        );
        self.stream_resumes
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn stream_resume_count(&self, result: &str) -> u64 {
        self.stream_resumes.with_label_values(&[result]).get()
    }

    pub(crate) fn session_restore(&self, result: SessionRestore) {
        tracing::debug!(result = result.as_str(), "session restore");
        self.session_restores
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn session_restore_count(&self, result: &str) -> u64 {
        self.session_restores.with_label_values(&[result]).get()
    }

    /// The history window's size now; `previous` is what the last call was given, for
    /// the eviction counters.
    pub(crate) fn history(
        &self,
        now: &crate::streams::HistoryStats,
        previous: &crate::streams::HistoryStats,
    ) {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.history_events.set(gauge(now.events));
        self.history_bytes.set(gauge(now.bytes));
        self.history_users.set(gauge(now.users));
        for (reason, total, before) in [
            ("age", now.evicted_age, previous.evicted_age),
            ("bytes", now.evicted_bytes, previous.evicted_bytes),
            ("count", now.evicted_count, previous.evicted_count),
        ] {
            self.history_evictions
                .with_label_values(&[reason])
                .inc_by(total.saturating_sub(before));
        }
    }

    pub fn history_event_count(&self) -> i64 {
        self.history_events.get()
    }

    pub fn history_eviction_count(&self, reason: &str) -> u64 {
        self.history_evictions.with_label_values(&[reason]).get()
    }

    pub fn stream_record_count(&self, result: &str) -> u64 {
        self.stream_records.with_label_values(&[result]).get()
    }

    pub fn stream_push_count(&self) -> u64 {
        self.stream_pushes.get()
    }

    pub fn stream_overflow_count(&self) -> u64 {
        self.stream_overflows.get()
    }

    pub fn stream_subscription_count(&self, result: &str) -> u64 {
        self.stream_subscriptions.with_label_values(&[result]).get()
    }

    pub(crate) fn set_table_keys(&self, keys: usize) {
        self.table_keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The stage's Kafka client metrics (lag, errors).
    pub fn kafka(&self) -> &fanout_kafka::KafkaClientMetrics {
        &self.kafka
    }

    /// Errors reported by the Kafka clients so far.
    pub fn kafka_error_count(&self) -> u64 {
        self.kafka.error_count()
    }

    /// Client frames of `protocol` not acted on for `reason` so far.
    pub fn ignored_frame_count(&self, protocol: &str, reason: &str) -> u64 {
        self.ignored_frames
            .with_label_values(&[protocol, reason])
            .get()
    }

    /// Handshakes that ended with `result` so far.
    pub fn handshake_count(&self, result: &str) -> u64 {
        self.handshakes.with_label_values(&[result]).get()
    }

    /// Connections of `protocol` open now.
    pub fn open_connections(&self, protocol: &str) -> i64 {
        self.connections.with_label_values(&[protocol]).get()
    }

    /// Refused tokens for `reason` so far.
    pub fn auth_failure_count(&self, reason: &str) -> u64 {
        self.auth_failures.with_label_values(&[reason]).get()
    }
}
