use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::events::Rejection;

/// Ingest's log lines that an upstream can drive at any rate, limited per kind by
/// [`fanout_kafka::LogLimit`] (the counters stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FloodLine {
    /// A record sent to dead-letter, by its reason (one of [`Rejection::REASONS`]).
    DeadLetter(&'static str),
}

impl fanout_kafka::LogLine for FloodLine {
    fn message(self) -> &'static str {
        match self {
            Self::DeadLetter(_) => "record sent to dead-letter",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::DeadLetter(reason) => reason,
        }
    }

    fn level(self) -> tracing::Level {
        tracing::Level::WARN
    }
}

/// Ingest's metrics. Each method is the one place that both logs and counts its event.
#[derive(Clone)]
pub struct IngestMetrics {
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    user_events: IntCounter,
    kafka: fanout_kafka::KafkaClientMetrics,
    group: fanout_kafka::GroupMetrics,
    log_limit: fanout_kafka::LogLimit<FloodLine>,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "fanout_ingest_events_total",
                "Message events consumed, by result",
            ),
            &["result"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "fanout_ingest_dead_letters_total",
                "Records sent to dead-letter, by reason",
            ),
            &["reason"],
        )?;
        let user_events =
            IntCounter::new("fanout_ingest_user_events_total", "User events produced")?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(user_events.clone()))?;
        for result in ["accepted", "dead_lettered"] {
            events.with_label_values(&[result]);
        }
        for reason in Rejection::REASONS {
            dead_letters.with_label_values(&[reason]);
        }
        Ok(Self {
            events,
            dead_letters,
            user_events,
            kafka: fanout_kafka::KafkaClientMetrics::new(registry, "ingest", "message-events")?,
            group: fanout_kafka::GroupMetrics::new(fanout_kafka::GroupStage::Ingest, registry)?,
            log_limit: fanout_kafka::LogLimit::new(registry, "ingest")?,
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

    pub(crate) fn accepted(&self, user_events: usize) {
        self.events.with_label_values(&["accepted"]).inc();
        self.user_events.inc_by(user_events as u64);
    }

    pub(crate) fn dead_lettered(&self, rejection: &Rejection, partition: i32, offset: i64) {
        let reason = rejection.reason();
        if self.log_limit.admit(FloodLine::DeadLetter(reason)) {
            tracing::warn!(reason, detail = %rejection, partition, offset, "record sent to dead-letter");
        }
        self.events.with_label_values(&["dead_lettered"]).inc();
        self.dead_letters.with_label_values(&[reason]).inc();
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

    /// Records sent to dead-letter for `reason` so far.
    pub fn dead_letter_count(&self, reason: &str) -> u64 {
        self.dead_letters.with_label_values(&[reason]).get()
    }

    /// Events accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.events.with_label_values(&["accepted"]).get()
    }
}
