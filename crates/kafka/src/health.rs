//! What a stage's Kafka clients tell about its health: broker outages (from
//! librdkafka's error callback) and consumer lag (from its statistics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

/// A stage's readiness: its own condition (assigned and restored, caught up, ...) and
/// whether Kafka is reachable. Cheap to clone; all clones share one state.
#[derive(Clone, Default, Debug)]
pub struct StageHealth {
    inner: Arc<HealthInner>,
}

#[derive(Default, Debug)]
struct HealthInner {
    ready: AtomicBool,
    brokers_down: AtomicBool,
    group_stalled: AtomicBool,
}

impl StageHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stage's own condition for serving.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Set by the clients' error callback when every broker is unreachable, and cleared
    /// by the stage when Kafka answers again (a record arrives or is acknowledged).
    pub fn set_brokers_down(&self, down: bool) {
        if self.inner.brokers_down.swap(down, Ordering::Relaxed) != down {
            if down {
                tracing::warn!("all Kafka brokers are down; not ready until they answer");
            } else {
                tracing::info!("Kafka answers again");
            }
        }
    }

    pub fn brokers_down(&self) -> bool {
        self.inner.brokers_down.load(Ordering::Relaxed)
    }

    /// Set while the stage's consumer group is stalled (see [`GroupWatch`](crate::GroupWatch)).
    pub fn set_group_stalled(&self, stalled: bool) {
        self.inner.group_stalled.store(stalled, Ordering::Relaxed);
    }

    /// Ready to serve: the stage's own condition holds, Kafka is reachable and its
    /// consumer group is not stalled.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the stage is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.brokers_down() {
            Some("Kafka brokers are down")
        } else if self.inner.group_stalled.load(Ordering::Relaxed) {
            Some(
                "consumer group stalled: a rebalance is overdue, or partitions wait unconsumed while this member holds none",
            )
        } else if !self.inner.ready.load(Ordering::Relaxed) {
            Some("not assigned, restored or caught up yet")
        } else {
            None
        }
    }
}

/// The Kafka-client metrics every stage has: consumer lag per partition and client
/// errors. One place logs and counts a client error.
#[derive(Clone)]
pub struct KafkaClientMetrics {
    /// Labels: topic, partition.
    lag: IntGaugeVec,
    errors: IntCounter,
    offset_resets: IntCounter,
}

impl KafkaClientMetrics {
    /// Registers `fanout_<stage>_consumer_lag_records`,
    /// `fanout_<stage>_kafka_errors_total` and `fanout_<stage>_offset_resets_total`;
    /// `input` names what the stage consumes.
    pub fn new(registry: &Registry, stage: &str, input: &str) -> prometheus::Result<Self> {
        let lag = IntGaugeVec::new(
            Opts::new(
                format!("fanout_{stage}_consumer_lag_records"),
                format!("Records of {input} not yet consumed, by partition"),
            ),
            &["topic", "partition"],
        )?;
        let errors = IntCounter::new(
            format!("fanout_{stage}_kafka_errors_total"),
            "Errors reported by the Kafka clients (the stage retries)",
        )?;
        let offset_resets = IntCounter::new(
            format!("fanout_{stage}_offset_resets_total"),
            format!(
                "Times a consumer's position in {input} was outside its partition's records and was reset to the earliest one: records deleted before they were consumed are skipped"
            ),
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(offset_resets.clone()))?;
        Ok(Self {
            lag,
            errors,
            offset_resets,
        })
    }

    /// An error from a consumer poll: logged and counted; the stage retries.
    pub fn consumer_error(&self, error: &KafkaError) {
        tracing::warn!(%error, "kafka consumer error; retrying");
        self.errors.inc();
    }

    /// Errors reported so far.
    pub fn error_count(&self) -> u64 {
        self.errors.get()
    }

    /// Position resets counted so far.
    pub fn offset_reset_count(&self) -> u64 {
        self.offset_resets.get()
    }
}

/// A consumer's position reset after an error, as librdkafka says it: `detail` is its
/// words (topic, partition, the offset it was at and the one it resumes from). Logged
/// and, when the stage has metrics, counted.
fn offset_reset(metrics: Option<&KafkaClientMetrics>, detail: &str) {
    tracing::error!(
        detail,
        "a consumer's position was outside its partition's records and was reset to the earliest one: records deleted (by retention) before this stage consumed them are skipped, and what they would have changed is lost"
    );
    if let Some(metrics) = metrics {
        metrics.offset_resets.inc();
    }
}

/// The client context every stage uses: records outages in [`StageHealth`], and
/// consumer lag and client errors in [`KafkaClientMetrics`]; logs librdkafka's errors
/// as warnings (they are retried).
pub struct StageContext {
    health: StageHealth,
    metrics: Option<KafkaClientMetrics>,
    ready_on_assignment: bool,
    group: Option<crate::GroupWatch>,
}

impl StageContext {
    pub fn new(health: StageHealth) -> Self {
        Self {
            health,
            metrics: None,
            ready_on_assignment: false,
            group: None,
        }
    }

    /// Makes the stage ready once its group consumer has its first assignment (possibly
    /// empty: more members than partitions), for a stage with no state to restore.
    pub fn ready_on_assignment(mut self) -> Self {
        self.ready_on_assignment = true;
        self
    }

    /// Reports lag (from statistics, for consumers) and errors into `metrics`.
    pub fn with_metrics(mut self, metrics: KafkaClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records this member's rebalances in `group`.
    pub fn with_group(mut self, group: crate::GroupWatch) -> Self {
        self.group = Some(group);
        self
    }

    /// A revocation's handling, shared with contexts that wrap this one.
    pub fn on_revoked(&self, partitions: &[i32]) {
        if let Some(group) = &self.group {
            group.revoked(partitions);
        }
    }

    /// An assignment's handling, shared with contexts that wrap this one.
    pub fn on_assigned(&self, partitions: &[i32]) {
        if let Some(group) = &self.group {
            group.assigned(partitions);
        }
        if self.ready_on_assignment {
            self.health.set_ready(true);
        }
    }

    /// The error callback's handling, shared with contexts that wrap this one.
    pub fn on_error(&self, error: &KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set_brokers_down(true);
        }
        if let Some(metrics) = &self.metrics {
            metrics.errors.inc();
        }
        tracing::warn!(%error, reason, "kafka client error");
    }

    /// librdkafka's log lines, shared with contexts that wrap this one: forwarded to
    /// tracing at their level, but for a position reset, which librdkafka logs as a
    /// warning only when an error caused it (the position out of range: its records
    /// deleted), and which is data loss; that is [`offset_reset`].
    pub fn on_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "OFFSET" && (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            offset_reset(self.metrics.as_ref(), message);
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
        }
    }

    /// The statistics callback's handling, shared with contexts that wrap this one.
    pub fn on_stats(&self, statistics: &Statistics) {
        // The outage ends when a broker is up again, traffic or not: a quiet stage must
        // not stay unready after the brokers return.
        if statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP")
        {
            self.health.set_brokers_down(false);
        }
        let Some(metrics) = &self.metrics else {
            return;
        };
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                // librdkafka reports -1 for partitions it does not consume, and an
                // internal partition -1 ("UA") per topic.
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                metrics
                    .lag
                    .with_label_values(&[topic_name.as_str(), &partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ClientContext for StageContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.on_log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        self.on_stats(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.on_error(&error, reason);
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(partitions) = rebalance {
            self.on_revoked(&partition_ids(partitions));
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(partitions) = rebalance {
            self.on_assigned(&partition_ids(partitions));
        }
    }
}

/// The partition numbers in a rebalance's list (a stage's consumer reads one topic).
pub fn partition_ids(partitions: &rdkafka::TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stateless_stage_is_ready_once_assigned() {
        use rdkafka::consumer::{BaseConsumer, Consumer, Rebalance};
        let health = StageHealth::new();
        let consumer: BaseConsumer<StageContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "g")
            .create_with_context(StageContext::new(health.clone()).ready_on_assignment())
            .unwrap_or_else(|error| panic!("{error}"));
        let partitions = rdkafka::TopicPartitionList::new();
        consumer
            .context()
            .post_rebalance(&consumer, &Rebalance::Revoke(&partitions));
        assert!(!health.is_ready(), "not before an assignment");
        consumer
            .context()
            .post_rebalance(&consumer, &Rebalance::Assign(&partitions));
        assert!(
            health.is_ready(),
            "an empty assignment counts: the group answered"
        );
    }

    #[test]
    fn readiness_needs_the_stage_and_the_brokers() {
        let health = StageHealth::new();
        assert!(!health.is_ready());
        health.set_ready(true);
        assert!(health.is_ready());
        let metrics = KafkaClientMetrics::new(&Registry::new(), "test", "a topic")
            .unwrap_or_else(|_| unreachable!());
        let context = StageContext::new(health.clone()).with_metrics(metrics.clone());
        context.on_error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "test",
        );
        assert!(!health.is_ready());
        assert_eq!(health.not_ready_reason(), Some("Kafka brokers are down"));
        context.on_error(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "test",
        );
        assert!(
            health.brokers_down(),
            "one transport failure does not end an outage"
        );
        assert_eq!(metrics.error_count(), 2);
        health.set_brokers_down(false);
        assert!(health.is_ready());
    }

    /// On the embedded cluster, which keeps the last 5 MiB of a partition: a consumer
    /// whose position was deleted is counted as reset (and resumes at the earliest
    /// record kept); one whose position is still there is not.
    #[test]
    fn a_position_deleted_before_it_was_consumed_is_counted() {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let kafka = crate::EmbeddedKafka::start(1, &[("deleted".to_owned(), 1)])
            .unwrap_or_else(|error| panic!("{error}"));
        let settings = crate::KafkaSettings::new(kafka.bootstrap_servers());
        let producer: ThreadedProducer<DefaultProducerContext> = settings
            .producer_config()
            .create()
            .unwrap_or_else(|error| panic!("{error}"));
        // 8 MiB in batches of at most 1 MiB: the first ones are deleted.
        let payload = vec![7u8; 64 * 1024];
        for _ in 0..128 {
            producer
                .send(BaseRecord::<(), _>::to("deleted").payload(&payload))
                .unwrap_or_else(|(error, _)| panic!("{error}"));
        }
        producer
            .flush(Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("{error}"));
        let timeout = Duration::from_secs(10);
        let reader: BaseConsumer = settings
            .assign_consumer_config()
            .create()
            .unwrap_or_else(|error| panic!("{error}"));
        let (low, high) = reader
            .fetch_watermarks("deleted", 0, timeout)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(low > 0 && high == 128, "records deleted: {low}..{high}");

        let first_record_from = |offset: i64| {
            let metrics = KafkaClientMetrics::new(&Registry::new(), "test", "deleted")
                .unwrap_or_else(|_| unreachable!());
            let context = StageContext::new(StageHealth::new()).with_metrics(metrics.clone());
            let consumer: BaseConsumer<StageContext> = settings
                .assign_consumer_config()
                .create_with_context(context)
                .unwrap_or_else(|error| panic!("{error}"));
            let mut assignment = rdkafka::TopicPartitionList::new();
            assignment
                .add_partition_offset("deleted", 0, rdkafka::Offset::Offset(offset))
                .unwrap_or_else(|error| panic!("{error}"));
            consumer
                .assign(&assignment)
                .unwrap_or_else(|error| panic!("{error}"));
            let first = match consumer.poll(timeout) {
                Some(Ok(message)) => message.offset(),
                Some(Err(error)) => panic!("{error}"),
                None => panic!("no record within {timeout:?}"),
            };
            (first, metrics.offset_reset_count())
        };
        assert_eq!(first_record_from(0), (low, 1), "deleted: reset and counted");
        assert_eq!(
            first_record_from(low + 1),
            (low + 1, 0),
            "kept: not counted"
        );
    }
}
