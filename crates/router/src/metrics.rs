use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// What became of a user event: the `result` label of `fanout_router_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// It changed the user's state.
    Applied,
    /// It changed nothing (a duplicate, or a read of what was read).
    Unchanged,
    /// At or below the offset the state already includes: the current count re-sent.
    Replayed,
    /// It could not be read, and was skipped.
    Invalid,
}

impl EventResult {
    pub const ALL: [Self; 4] = [
        Self::Applied,
        Self::Unchanged,
        Self::Replayed,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Replayed => "replayed",
            Self::Invalid => "invalid",
        }
    }
}

/// The router's log lines that bad input can drive at any rate, limited per kind by
/// [`fanout_kafka::LogLimit`] (the counters stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FloodLine {
    /// A user event skipped as invalid, by why.
    InvalidEvent(InvalidEvent),
}

/// Why a user event could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum InvalidEvent {
    /// The key is missing or not UTF-8.
    Key,
    /// The key is not `partner/user`.
    NotUserKey,
    /// The value is not a `UserEvent`.
    Undecodable,
    /// The event's kind is unknown.
    UnknownKind,
}

impl InvalidEvent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Key => "invalid_key",
            Self::NotUserKey => "not_a_user_key",
            Self::Undecodable => "undecodable",
            Self::UnknownKind => "unknown_event",
        }
    }
}

impl fanout_kafka::LogLine for FloodLine {
    fn message(self) -> &'static str {
        match self {
            Self::InvalidEvent(_) => "skipping an invalid user event",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::InvalidEvent(why) => why.as_str(),
        }
    }

    fn level(self) -> tracing::Level {
        tracing::Level::WARN
    }
}

/// The router's metrics. Each method is the one place that both logs and counts.
#[derive(Clone)]
pub struct RouterMetrics {
    events: IntCounterVec,
    /// `events` by [`EventResult`], resolved once rather than per event.
    by_result: [IntCounter; 4],
    restore_seconds: Histogram,
    restored_users: IntCounter,
    restored_records: IntCounter,
    users: IntGauge,
    evicted_ranges: IntCounter,
    streamed: IntCounter,
    receipts: IntCounter,
    read_receipts: IntCounter,
    state_writes: IntCounter,
    covered_states: IntCounter,
    kafka: fanout_kafka::KafkaClientMetrics,
    group: fanout_kafka::GroupMetrics,
    log_limit: fanout_kafka::LogLimit<FloodLine>,
}

impl RouterMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "fanout_router_events_total",
                "User events consumed, by result",
            ),
            &["result"],
        )?;
        let restore_seconds = Histogram::with_opts(HistogramOpts::new(
            "fanout_router_restore_duration_seconds",
            "Time to restore one partition's state from router-state",
        ))?;
        let restored_users = IntCounter::new(
            "fanout_router_restored_users_total",
            "User states restored from router-state",
        )?;
        let restored_records = IntCounter::new(
            "fanout_router_restored_records_total",
            "router-state records read while restoring",
        )?;
        let users = IntGauge::new("fanout_router_users", "Users whose state this router holds")?;
        let evicted_ranges = IntCounter::new(
            "fanout_router_evicted_ranges_total",
            "Settled seq ranges evicted at the per-user cap",
        )?;
        let streamed = IntCounter::new(
            "fanout_router_stream_events_total",
            "Events delivered to users' streams (written to user-streams)",
        )?;
        let receipts = IntCounter::new(
            "fanout_router_receipts_total",
            "Read receipts written back to user-events for notify users",
        )?;
        let read_receipts = IntCounter::new(
            "fanout_router_read_receipts_total",
            "Read marks and message reads written to read-receipts",
        )?;
        let state_writes = IntCounter::new(
            "fanout_router_state_writes_total",
            "User states written to router-state",
        )?;
        let covered_states = IntCounter::new(
            "fanout_router_covered_states_total",
            "User state changes not written on their own: a later change of the same user, written once its event's outputs were acknowledged, covered them",
        )?;
        registry.register(Box::new(state_writes.clone()))?;
        registry.register(Box::new(covered_states.clone()))?;
        registry.register(Box::new(streamed.clone()))?;
        registry.register(Box::new(receipts.clone()))?;
        registry.register(Box::new(read_receipts.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(restore_seconds.clone()))?;
        registry.register(Box::new(restored_users.clone()))?;
        registry.register(Box::new(users.clone()))?;
        registry.register(Box::new(restored_records.clone()))?;
        registry.register(Box::new(evicted_ranges.clone()))?;
        let by_result = EventResult::ALL.map(|result| events.with_label_values(&[result.as_str()]));
        Ok(Self {
            events,
            by_result,
            restore_seconds,
            restored_users,
            restored_records,
            users,
            evicted_ranges,
            streamed,
            receipts,
            read_receipts,
            state_writes,
            covered_states,
            kafka: fanout_kafka::KafkaClientMetrics::new(registry, "router", "user-events")?,
            group: fanout_kafka::GroupMetrics::new(fanout_kafka::GroupStage::Router, registry)?,
            log_limit: fanout_kafka::LogLimit::new(registry, "router")?,
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

    pub(crate) fn event(&self, result: EventResult) {
        self.by_result[result as usize].inc();
    }

    pub(crate) fn invalid_event(&self, partition: i32, offset: i64, why: InvalidEvent) {
        if self.log_limit.admit(FloodLine::InvalidEvent(why)) {
            let reason = why.as_str();
            tracing::warn!(partition, offset, reason, "skipping an invalid user event");
        }
        self.event(EventResult::Invalid);
    }

    pub(crate) fn restored(
        &self,
        partition: i32,
        users: usize,
        records: u64,
        end_offset: i64,
        seconds: f64,
    ) {
        tracing::info!(
            partition,
            users,
            records,
            end_offset,
            seconds,
            "partition state restored"
        );
        self.restore_seconds.observe(seconds);
        self.restored_users.inc_by(users as u64);
        self.restored_records.inc_by(records);
    }

    pub(crate) fn set_users(&self, users: usize) {
        self.users.set(i64::try_from(users).unwrap_or(i64::MAX));
    }

    pub(crate) fn evicted(&self, ranges: usize) {
        if ranges == 0 {
            return;
        }
        self.evicted_ranges.inc_by(ranges as u64);
    }

    pub(crate) fn streamed(&self) {
        self.streamed.inc();
    }

    pub(crate) fn receipt(&self) {
        self.receipts.inc();
    }

    pub(crate) fn read_receipt(&self) {
        self.read_receipts.inc();
    }

    /// A user's state written, covering `covered` earlier changes of it besides.
    pub(crate) fn state_written(&self, covered: usize) {
        self.state_writes.inc();
        self.covered_states.inc_by(covered as u64);
    }

    /// The stage's Kafka client metrics (lag, errors).
    pub fn kafka(&self) -> &fanout_kafka::KafkaClientMetrics {
        &self.kafka
    }

    /// The stage's consumer group metrics (stalled, unconsumed partitions, rejoins).
    pub fn group(&self) -> &fanout_kafka::GroupMetrics {
        &self.group
    }

    /// Errors reported by the Kafka clients so far.
    pub fn kafka_error_count(&self) -> u64 {
        self.kafka.error_count()
    }

    /// User states written to router-state so far.
    pub fn state_write_count(&self) -> u64 {
        self.state_writes.get()
    }

    /// Records written to read-receipts so far.
    pub fn read_receipt_count(&self) -> u64 {
        self.read_receipts.get()
    }

    /// Events consumed with `result` so far (one of [`Self::RESULTS`]).
    pub fn event_count(&self, result: &str) -> u64 {
        self.events.with_label_values(&[result]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_indexes_its_own_counter() {
        for (index, result) in EventResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, index);
        }
    }
}
