//! The api's metrics. Each method is the one place that both logs (where anything is
//! logged) and counts. No label carries a user, a key or a partner: routes, statuses,
//! results and reasons are bounded vocabularies.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::receipts::ReceiptStats;

/// The route a request matched: the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Publish,
    UnreadCount,
    Receipts,
    Shard,
    OpenApi,
    /// No route: 404 and 405.
    Unmatched,
}

impl Route {
    pub const ALL: [Self; 6] = [
        Self::Publish,
        Self::UnreadCount,
        Self::Receipts,
        Self::Shard,
        Self::OpenApi,
        Self::Unmatched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::UnreadCount => "unread_count",
            Self::Receipts => "receipts",
            Self::Shard => "shard",
            Self::OpenApi => "openapi",
            Self::Unmatched => "unmatched",
        }
    }
}

/// The api's log lines that clients can drive at any rate, limited per kind by
/// [`fanout_kafka::LogLimit`] (the counters stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FloodLine {
    /// A request answered with a 4xx, by route and the answer's error code.
    Refused(Route, &'static str),
}

impl fanout_kafka::LogLine for FloodLine {
    fn message(self) -> &'static str {
        match self {
            Self::Refused(..) => "request refused",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Refused(_, code) => code,
        }
    }

    fn level(self) -> tracing::Level {
        tracing::Level::INFO
    }
}

/// A limit a request went over: the `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    BodySize,
    BatchSize,
    Rate,
}

impl Limit {
    pub const ALL: [Self; 3] = [Self::BodySize, Self::BatchSize, Self::Rate];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BodySize => "body_size",
            Self::BatchSize => "batch_size",
            Self::Rate => "rate",
        }
    }
}

/// What became of a published event: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// Kafka acknowledged it.
    Accepted,
    /// Its content was refused; nothing was produced.
    Rejected,
    /// Kafka did not acknowledge it in time: answered 503.
    Unavailable,
}

impl EventResult {
    pub const ALL: [Self; 3] = [Self::Accepted, Self::Rejected, Self::Unavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What became of a record the feed read: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedRecord {
    CountApplied,
    ReceiptApplied,
    /// Older than, or the same as, what the table holds.
    Stale,
    Invalid,
}

impl FeedRecord {
    pub const ALL: [Self; 4] = [
        Self::CountApplied,
        Self::ReceiptApplied,
        Self::Stale,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CountApplied => "count_applied",
            Self::ReceiptApplied => "receipt_applied",
            Self::Stale => "stale",
            Self::Invalid => "invalid",
        }
    }
}

/// The HTTP statuses the api answers with, for pre-registering label values.
const STATUSES: [&str; 11] = [
    "200", "400", "401", "404", "405", "413", "415", "422", "429", "500", "503",
];

#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    events: IntCounterVec,
    rejections: IntCounterVec,
    limited: IntCounterVec,
    publish_seconds: Histogram,
    feed_records: IntCounterVec,
    count_users: IntGauge,
    receipt_conversations: IntGauge,
    receipt_members: IntGauge,
    receipt_message_reads: IntGauge,
    keys: IntGauge,
    key_reloads: IntCounterVec,
    kafka: fanout_kafka::KafkaClientMetrics,
    log_limit: fanout_kafka::LogLimit<FloodLine>,
}

/// Every rejection reason an event can get: ingest's, and the api's own.
pub fn rejection_reasons() -> impl Iterator<Item = &'static str> {
    fanout_ingest::Rejection::REASONS
        .into_iter()
        .chain([crate::publish::PARTNER_MISMATCH])
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "fanout_api_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "fanout_api_events_total",
                "Events received by POST /v1/events, by result",
            ),
            &["result"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "fanout_api_event_rejections_total",
                "Events refused for their content, by reason (ingest's dead-letter reasons, and partner_mismatch)",
            ),
            &["reason"],
        )?;
        let limited = IntCounterVec::new(
            Opts::new(
                "fanout_api_limited_requests_total",
                "Requests refused for a limit: body_size and batch_size (413), rate (429)",
            ),
            &["limit"],
        )?;
        let publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fanout_api_publish_seconds",
                "From an event's request being read to Kafka's acknowledgement of its record",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let feed_records = IntCounterVec::new(
            Opts::new(
                "fanout_api_feed_records_total",
                "unread-counts and read-receipts records read into the api's tables, by result",
            ),
            &["result"],
        )?;
        let count_users =
            IntGauge::new("fanout_api_count_users", "Users in the api's count table")?;
        let receipt_conversations = IntGauge::new(
            "fanout_api_receipt_conversations",
            "Conversations in the api's receipt table",
        )?;
        let receipt_members = IntGauge::new(
            "fanout_api_receipt_members",
            "Readers held in the api's receipt table (one per user and conversation with a read)",
        )?;
        let receipt_message_reads = IntGauge::new(
            "fanout_api_receipt_message_reads",
            "Messages read one by one above their reader's mark, held in the receipt table",
        )?;
        let keys = IntGauge::new("fanout_api_keys", "Live API keys, all partners together")?;
        let key_reloads = IntCounterVec::new(
            Opts::new(
                "fanout_api_key_reloads_total",
                "Reloads of api.keys_file, by result",
            ),
            &["result"],
        )?;
        for route in Route::ALL {
            for status in STATUSES {
                requests.with_label_values(&[route.as_str(), status]);
            }
        }
        for result in EventResult::ALL {
            events.with_label_values(&[result.as_str()]);
        }
        for reason in rejection_reasons() {
            rejections.with_label_values(&[reason]);
        }
        for limit in Limit::ALL {
            limited.with_label_values(&[limit.as_str()]);
        }
        for result in FeedRecord::ALL {
            feed_records.with_label_values(&[result.as_str()]);
        }
        for result in ["ok", "error"] {
            key_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(limited.clone()))?;
        registry.register(Box::new(publish_seconds.clone()))?;
        registry.register(Box::new(feed_records.clone()))?;
        registry.register(Box::new(count_users.clone()))?;
        registry.register(Box::new(receipt_conversations.clone()))?;
        registry.register(Box::new(receipt_members.clone()))?;
        registry.register(Box::new(receipt_message_reads.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        registry.register(Box::new(key_reloads.clone()))?;
        let kafka = fanout_kafka::KafkaClientMetrics::new(registry, "api", "tables")?;
        let log_limit = fanout_kafka::LogLimit::new(registry, "api")?;
        Ok(Self {
            requests,
            events,
            rejections,
            limited,
            publish_seconds,
            feed_records,
            count_users,
            receipt_conversations,
            receipt_members,
            receipt_message_reads,
            keys,
            key_reloads,
            kafka,
            log_limit,
        })
    }

    /// How many lines of one kind a flood may write (`[log]`).
    pub fn set_log_limits(&self, limits: fanout_kafka::LogLimits) {
        self.log_limit.set_limits(limits);
    }

    /// Log lines left out by the flood limit so far.
    pub fn suppressed_log_line_count(&self) -> u64 {
        self.log_limit.suppressed_count()
    }

    pub fn kafka(&self) -> &fanout_kafka::KafkaClientMetrics {
        &self.kafka
    }

    /// A request answered; `refusal`: the error code of a 4xx answer, logged (neither
    /// the key nor the body appears, only the route, status and code).
    pub(crate) fn request(&self, route: Route, status: u16, refusal: Option<&'static str>) {
        if let Some(code) = refusal
            && self.log_limit.admit(FloodLine::Refused(route, code))
        {
            tracing::info!(
                route = route.as_str(),
                status,
                reason = code,
                "request refused"
            );
        }
        self.requests
            .with_label_values(&[route.as_str(), &status.to_string()])
            .inc();
    }

    pub(crate) fn event(&self, result: EventResult) {
        self.events.with_label_values(&[result.as_str()]).inc();
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.event(EventResult::Rejected);
        self.rejections.with_label_values(&[reason]).inc();
    }

    pub(crate) fn published(&self, elapsed: Duration) {
        self.event(EventResult::Accepted);
        self.publish_seconds.observe(elapsed.as_secs_f64());
    }

    /// A publish Kafka did not acknowledge; logged, since it means the broker is away.
    pub(crate) fn unavailable(&self, error: &str) {
        tracing::warn!(%error, "event not acknowledged by Kafka; answered 503");
        self.event(EventResult::Unavailable);
    }

    pub(crate) fn limited(&self, limit: Limit) {
        self.limited.with_label_values(&[limit.as_str()]).inc();
    }

    pub(crate) fn feed_record(&self, result: FeedRecord) {
        self.feed_records
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub(crate) fn set_table_sizes(&self, users: usize, receipts: ReceiptStats) {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.count_users.set(gauge(users));
        self.receipt_conversations
            .set(gauge(receipts.conversations));
        self.receipt_members.set(gauge(receipts.members));
        self.receipt_message_reads
            .set(gauge(receipts.message_reads));
    }

    pub(crate) fn keys_loaded(&self, result: Result<usize, &str>) {
        match result {
            Ok(keys) => {
                tracing::info!(keys, "api keys loaded");
                self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
                self.key_reloads.with_label_values(&["ok"]).inc();
            }
            Err(reason) => {
                tracing::error!(%reason, "api keys file not reloaded; the previous keys stay in use");
                self.key_reloads.with_label_values(&["error"]).inc();
            }
        }
    }
}
