use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::events::Rejection;

/// Ingest's metrics. Each method is the one place that both logs and counts its event.
#[derive(Clone)]
pub struct IngestMetrics {
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    user_events: IntCounter,
    kafka_errors: IntCounter,
    lag: IntGaugeVec,
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
        let kafka_errors = IntCounter::new(
            "fanout_ingest_kafka_errors_total",
            "Errors reported by the Kafka consumer (the stage retries)",
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(user_events.clone()))?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "fanout_ingest_consumer_lag_records",
                "Records of message-events not yet consumed, by partition",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(kafka_errors.clone()))?;
        registry.register(Box::new(lag.clone()))?;
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
            kafka_errors,
            lag,
        })
    }

    pub(crate) fn accepted(&self, user_events: usize) {
        self.events.with_label_values(&["accepted"]).inc();
        self.user_events.inc_by(user_events as u64);
    }

    pub(crate) fn dead_lettered(&self, rejection: &Rejection, partition: i32, offset: i64) {
        tracing::warn!(reason = rejection.reason(), detail = %rejection, partition, offset, "record sent to dead-letter");
        self.events.with_label_values(&["dead_lettered"]).inc();
        self.dead_letters
            .with_label_values(&[rejection.reason()])
            .inc();
    }

    pub(crate) fn kafka_error(&self, error: &rdkafka::error::KafkaError) {
        tracing::warn!(%error, "kafka consumer error; retrying");
        self.kafka_errors.inc();
    }

    pub(crate) fn lag_gauge(&self) -> IntGaugeVec {
        self.lag.clone()
    }

    pub(crate) fn kafka_error_counter(&self) -> IntCounter {
        self.kafka_errors.clone()
    }

    /// Errors reported by the Kafka clients so far.
    pub fn kafka_error_count(&self) -> u64 {
        self.kafka_errors.get()
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
