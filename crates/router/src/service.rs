use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_kafka::{
    AckPipeline, InvalidSetting, KafkaSettings, StageContext, StageHealth, Topics,
    drain_and_commit, enqueue, require_positive, store_offset,
};
use fanout_schema::{split_user_key, user_key, v1};
use fanout_unread::{Limits, StreamLimits};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::metrics::{EventResult, RouterMetrics};
use crate::restore::{RestoreError, restore_partitions};
use crate::state::{Step, UserRecord, epoch_of, input_of, read_receipt_of, receipts_of};

/// The router's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Consumer group of all router instances.
    pub group_id: String,
    /// Input records whose outputs may be awaiting acknowledgement at once.
    pub max_in_flight: usize,
    /// Longest a partition restore may take before the router gives up (and exits, to
    /// be restarted).
    pub restore_timeout_ms: u64,
    /// Longest a revocation waits for this router's in-flight records to be delivered.
    pub revoke_flush_timeout_ms: u64,
    /// Most settled seq ranges kept per user (see fanout-unread's memory bound).
    pub max_settled_ranges_per_user: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            group_id: "fanout-router".to_owned(),
            max_in_flight: 10_000,
            restore_timeout_ms: 120_000,
            revoke_flush_timeout_ms: 10_000,
            max_settled_ranges_per_user: Limits::default().max_settled_ranges,
        }
    }
}

impl RouterConfig {
    /// Checks what serde cannot, naming the key within `[router]`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.group_id.trim().is_empty() {
            return Err(InvalidSetting::new("group_id", "must not be empty"));
        }
        require_positive(&[
            ("max_in_flight", self.max_in_flight as u64),
            ("restore_timeout_ms", self.restore_timeout_ms),
            ("revoke_flush_timeout_ms", self.revoke_flush_timeout_ms),
            (
                "max_settled_ranges_per_user",
                self.max_settled_ranges_per_user as u64,
            ),
        ])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("an output record was not acknowledged by Kafka: {0}")]
    Delivery(#[source] KafkaError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the restore task failed: {0}")]
    RestoreTask(String),
}

/// Assignment changes seen by the consumer's rebalance callbacks, handled by the main
/// loop before it processes the next record.
#[derive(Debug)]
enum AssignmentChange {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct RouterContext {
    stage: StageContext,
    changes: Arc<Mutex<Vec<AssignmentChange>>>,
    producer: FutureProducer<StageContext>,
    input_topic: String,
    revoke_flush_timeout: Duration,
}

impl ClientContext for RouterContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.stage.on_stats(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.stage.on_error(&error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let revoked = partitions_of(partitions, &self.input_topic);
            // Everything this router produced for the revoked partitions must be in
            // Kafka before the next owner restores from it.
            if let Err(error) = fanout_kafka::flush(&self.producer, self.revoke_flush_timeout) {
                tracing::warn!(%error, "flush on revoke did not finish; the next owner may see a replay");
            }
            tracing::info!(partitions = ?revoked, "partitions revoked");
            self.push(AssignmentChange::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned = partitions_of(partitions, &self.input_topic);
            tracing::info!(partitions = ?assigned, "partitions assigned");
            self.push(AssignmentChange::Assigned(assigned));
        }
    }
}

impl RouterContext {
    fn push(&self, change: AssignmentChange) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
    }

    fn take(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn partitions_of(list: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect()
}

/// The users of every partition this router owns and has restored.
struct Owned {
    partitions: HashMap<i32, HashMap<String, UserRecord>>,
}

impl Owned {
    fn user_count(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }
}

struct Router<'a> {
    kafka: &'a KafkaSettings,
    topics: &'a Topics,
    config: &'a RouterConfig,
    limits: Limits,
    stream_limits: StreamLimits,
    producer: FutureProducer<StageContext>,
    metrics: RouterMetrics,
    health: StageHealth,
    owned: Owned,
    unwritten: HashMap<String, Unwritten>,
}

/// Runs the router until `shutdown` is cancelled, then finishes what is in flight and
/// commits. Returns an error only for failures it cannot retry.
pub async fn run(
    kafka: &KafkaSettings,
    topics: &Topics,
    config: &RouterConfig,
    metrics: RouterMetrics,
    health: StageHealth,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    let producer: FutureProducer<StageContext> = kafka
        .producer_config()
        .create_with_context(
            StageContext::new(health.clone()).with_metrics(metrics.kafka().clone()),
        )
        .map_err(RouterError::Client)?;
    let context = RouterContext {
        stage: StageContext::new(health.clone()).with_metrics(metrics.kafka().clone()),
        changes: Arc::new(Mutex::new(Vec::new())),
        producer: producer.clone(),
        input_topic: topics.user_events.clone(),
        revoke_flush_timeout: Duration::from_millis(config.revoke_flush_timeout_ms),
    };
    let consumer: StreamConsumer<RouterContext> =
        KafkaSettings::with_statistics(kafka.group_consumer_config(&config.group_id))
            .create_with_context(context)
            .map_err(RouterError::Client)?;
    consumer
        .subscribe(&[&topics.user_events])
        .map_err(RouterError::Client)?;
    tracing::info!(topic = %topics.user_events, group = %config.group_id, "router started");

    let mut router = Router {
        kafka,
        topics,
        config,
        limits: Limits {
            max_settled_ranges: config.max_settled_ranges_per_user,
        },
        stream_limits: StreamLimits::default(),
        producer,
        metrics,
        health: health.clone(),
        owned: Owned {
            partitions: HashMap::new(),
        },
        unwritten: HashMap::new(),
    };
    // Two stages of acknowledgement: an input's outputs (count, stream event, receipts,
    // read receipt) first; only once they are in Kafka is the user's state written, in
    // input order, and only once that is in Kafka is the input offset stored. A state on
    // record therefore never covers an event whose stream record could still be lost: a
    // crash at any point replays the event from an older state, which gives it the same
    // position and the same content again (edges and receivers skip the repeat; a
    // read-receipts record is rewritten with the same key and value).
    let mut outputs: AckPipeline<Option<String>> = AckPipeline::new();
    let mut states = AckPipeline::new();
    // Assignment changes arrive inside the consumer's poll; this tick makes sure an
    // assignment is restored promptly even when no record follows it.
    let mut assignment_tick = tokio::time::interval(Duration::from_millis(100));
    assignment_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(acked) = states.next(), if !states.is_empty() => {
                let acked = acked.map_err(RouterError::Delivery)?;
                health.set_brokers_down(false);
                store_offset(&consumer, &acked);
            }
            Some(acked) = outputs.next_then(), if !outputs.is_empty() => {
                let (acked, state) = acked.map_err(RouterError::Delivery)?;
                router.write_state(&mut states, acked, state).await?;
            }
            _ = assignment_tick.tick() => {
                router.apply_assignment_changes(consumer.context().take()).await?;
            }
            received = consumer.recv(), if outputs.len() + states.len() < config.max_in_flight => {
                router.apply_assignment_changes(consumer.context().take()).await?;
                match received {
                    Ok(message) => {
                        health.set_brokers_down(false);
                        let (deliveries, state) = router.handle(&message).await?;
                        outputs.push_then(message.topic(), message.partition(), message.offset(), deliveries, state);
                    }
                    Err(error) => {
                        router.metrics.kafka().consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    while let Some(acked) = outputs.next_then().await {
        let (acked, state) = acked.map_err(RouterError::Delivery)?;
        router.write_state(&mut states, acked, state).await?;
    }
    drain_and_commit(&mut states, &consumer)
        .await
        .map_err(RouterError::Delivery)?;
    tracing::info!("router stopped");
    Ok(())
}

/// Users with events whose outputs are not acknowledged yet, by key: how many, and the
/// inputs whose state waits for the write that will cover them.
#[derive(Default)]
struct Unwritten {
    in_flight: usize,
    covered: Vec<oneshot::Sender<Result<(), KafkaError>>>,
}

impl Router<'_> {
    /// The second stage of an input whose outputs are acknowledged: the state of its
    /// user (`key`, if it changed), written once no later event of that user is still
    /// in its first stage. Such a later event's state covers this one's, so it is
    /// written once for a burst and encoded from the user's record as it is then (which
    /// includes no unacknowledged output); the inputs it covers are done when it is
    /// acknowledged. Not written when the partition was revoked meanwhile: the next
    /// owner replays the events from the state on record, and a late write here could
    /// shadow the new owner's.
    async fn write_state(
        &mut self,
        states: &mut AckPipeline,
        acked: fanout_kafka::Acked,
        key: Option<String>,
    ) -> Result<(), RouterError> {
        let Some(key) = key else {
            states.push(&acked.topic, acked.partition, acked.offset, Vec::new());
            return Ok(());
        };
        let Some(unwritten) = self.unwritten.get_mut(&key) else {
            states.push(&acked.topic, acked.partition, acked.offset, Vec::new());
            return Ok(());
        };
        unwritten.in_flight = unwritten.in_flight.saturating_sub(1);
        if unwritten.in_flight > 0 {
            let (covered, done) = oneshot::channel();
            unwritten.covered.push(covered);
            let done = async move { done.await.unwrap_or(Ok(())) };
            states.push_when(&acked.topic, acked.partition, acked.offset, done, ());
            return Ok(());
        }
        let covered = self
            .unwritten
            .remove(&key)
            .map(|unwritten| unwritten.covered)
            .unwrap_or_default();
        let record = self
            .owned
            .partitions
            .get(&acked.partition)
            .and_then(|users| users.get(&key));
        let (Some(record), Some((partner, user))) = (record, split_user_key(&key)) else {
            // Revoked: nothing to write; what it covered is not stored either (the
            // partition's offsets are refused).
            for waiting in covered {
                let _ = waiting.send(Ok(()));
            }
            states.push(&acked.topic, acked.partition, acked.offset, Vec::new());
            return Ok(());
        };
        self.metrics.state_written(covered.len());
        let payload = record.to_proto(partner, user).encode_to_vec();
        let delivery = self
            .send(
                &self.topics.router_state,
                Some(acked.partition),
                key.as_bytes(),
                &payload,
            )
            .await?;
        let done = async move {
            let result = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _message))) => Err(error),
                Err(_canceled) => Err(KafkaError::Canceled),
            };
            for waiting in covered {
                let _ = waiting.send(result.clone());
            }
            result
        };
        states.push_when(&acked.topic, acked.partition, acked.offset, done, ());
        Ok(())
    }

    async fn apply_assignment_changes(
        &mut self,
        changes: Vec<AssignmentChange>,
    ) -> Result<(), RouterError> {
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            match change {
                AssignmentChange::Revoked(partitions) => {
                    for partition in partitions {
                        self.owned.partitions.remove(&partition);
                    }
                }
                AssignmentChange::Assigned(partitions) => {
                    // Not ready while restoring: the state would be behind.
                    self.health.set_ready(false);
                    let unique: HashSet<i32> = partitions.into_iter().collect();
                    self.restore(unique.into_iter().collect()).await?;
                    self.health.set_ready(true);
                }
            }
        }
        self.metrics.set_users(self.owned.user_count());
        Ok(())
    }

    async fn restore(&mut self, partitions: Vec<i32>) -> Result<(), RouterError> {
        let kafka = self.kafka.clone();
        let topic = self.topics.router_state.clone();
        let timeout = Duration::from_millis(self.config.restore_timeout_ms);
        let restored = tokio::task::spawn_blocking(move || {
            restore_partitions(&kafka, &topic, &partitions, timeout)
        })
        .await
        .map_err(|error| RouterError::RestoreTask(error.to_string()))??;
        for (partition, restored) in restored {
            if restored.skipped > 0 {
                tracing::warn!(
                    partition,
                    skipped = restored.skipped,
                    "state records skipped while restoring"
                );
            }
            self.metrics.restored(
                partition,
                restored.users.len(),
                restored.records,
                restored.end_offset,
                restored.elapsed.as_secs_f64(),
            );
            self.owned.partitions.insert(partition, restored.users);
        }
        Ok(())
    }

    /// Applies one user event: the outputs to send now, and the state to write once
    /// they are acknowledged.
    async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> Result<(Vec<DeliveryFuture>, Option<String>), RouterError> {
        let partition = message.partition();
        let offset = message.offset();
        let nothing = || Ok((Vec::new(), None));
        let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
            self.metrics
                .invalid_event(partition, offset, "key is missing or not UTF-8");
            return nothing();
        };
        let Some((partner, user)) = split_user_key(key) else {
            self.metrics
                .invalid_event(partition, offset, "key is not partner/user");
            return nothing();
        };
        let Ok(event) = v1::UserEvent::decode(message.payload().unwrap_or_default()) else {
            self.metrics
                .invalid_event(partition, offset, "value is not a UserEvent");
            return nothing();
        };
        let Ok(input) = input_of(&event) else {
            self.metrics
                .invalid_event(partition, offset, "unknown event kind");
            return nothing();
        };
        if !self.owned.partitions.contains_key(&partition) {
            // Not expected (assignment changes are applied before each record), but if
            // a record ever arrives first, restoring now keeps it correct.
            self.restore(vec![partition]).await?;
        }
        let users = self.owned.partitions.entry(partition).or_default();
        let (step, record) = match users.get_mut(key) {
            Some(record) => {
                let step = record.apply(&event, input, offset, &self.limits, &self.stream_limits);
                (step, &*record)
            }
            None => {
                // A user is kept from the first event that changes it: its epoch then
                // comes from a record a replay sees again.
                let timestamp = message
                    .timestamp()
                    .to_millis()
                    .unwrap_or(event.occurred_at_ms);
                let mut record = UserRecord::new(epoch_of(timestamp, offset));
                let step = record.apply(&event, input, offset, &self.limits, &self.stream_limits);
                if !matches!(step, Step::Applied { .. }) {
                    self.metrics.event(EventResult::Unchanged);
                    return nothing();
                }
                users.insert(key.to_owned(), record);
                self.metrics.set_users(self.owned.user_count());
                let Some(record) = self
                    .owned
                    .partitions
                    .get(&partition)
                    .and_then(|users| users.get(key))
                else {
                    return nothing();
                };
                (step, record)
            }
        };
        match step {
            Step::Replayed => {
                self.metrics.event(EventResult::Replayed);
                let count = record.count_record(partner, user).encode_to_vec();
                let delivery = self
                    .send(
                        &self.topics.unread_counts,
                        Some(partition),
                        key.as_bytes(),
                        &count,
                    )
                    .await?;
                Ok((vec![delivery], None))
            }
            Step::Unchanged { evicted_ranges } => {
                self.metrics.evicted(evicted_ranges);
                self.metrics.event(EventResult::Unchanged);
                nothing()
            }
            Step::Applied { counts, delivered } => {
                self.metrics.evicted(counts.evicted_ranges);
                self.metrics.event(EventResult::Applied);
                let count = counts
                    .count_changed
                    .then(|| record.count_record(partner, user).encode_to_vec());
                let streamed = delivered.map(|position| {
                    let stream = record
                        .stream_record(&event, position, partner, user)
                        .encode_to_vec();
                    (stream, receipts_of(&event, position))
                });
                let read = read_receipt_of(&event, &counts, partner, user)
                    .map(|(read_key, receipt)| (read_key, receipt.encode_to_vec()));
                self.unwritten.entry(key.to_owned()).or_default().in_flight += 1;
                let mut deliveries = Vec::with_capacity(3);
                if let Some(count) = count {
                    deliveries.push(
                        self.send(
                            &self.topics.unread_counts,
                            Some(partition),
                            key.as_bytes(),
                            &count,
                        )
                        .await?,
                    );
                }
                if let Some((stream, receipts)) = streamed {
                    self.metrics.streamed();
                    deliveries.push(
                        self.send(
                            &self.topics.user_streams,
                            Some(partition),
                            key.as_bytes(),
                            &stream,
                        )
                        .await?,
                    );
                    for receipt in receipts {
                        let receiver = user_key(&receipt.partner, &receipt.user);
                        self.metrics.receipt();
                        deliveries.push(
                            self.send(
                                &self.topics.user_events,
                                None,
                                receiver.as_bytes(),
                                &receipt.encode_to_vec(),
                            )
                            .await?,
                        );
                    }
                }
                // The reader's own partition, as the count's: the api finds a user's
                // reads where it finds the user.
                if let Some((read_key, read_receipt)) = read {
                    self.metrics.read_receipt();
                    deliveries.push(
                        self.send(
                            &self.topics.read_receipts,
                            Some(partition),
                            &read_key,
                            &read_receipt,
                        )
                        .await?,
                    );
                }
                Ok((deliveries, Some(key.to_owned())))
            }
        }
    }

    /// Hands a record to the producer: to `partition`, or where its key hashes to (as
    /// ingest's records to user-events do).
    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<DeliveryFuture, RouterError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        enqueue(&self.producer, record)
            .await
            .map_err(RouterError::Client)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        RouterConfig::default().validate().unwrap();
    }

    #[test]
    fn an_empty_group_id_is_refused() {
        let config = RouterConfig {
            group_id: String::new(),
            ..RouterConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "group_id: must not be empty"
        );
    }

    /// Sets one bound to zero.
    type Zero = fn(&mut RouterConfig);

    #[test]
    fn a_zero_bound_is_refused_naming_its_key() {
        let zeroed: [(&str, Zero); 4] = [
            ("max_in_flight", |config| config.max_in_flight = 0),
            ("restore_timeout_ms", |config| config.restore_timeout_ms = 0),
            ("revoke_flush_timeout_ms", |config| {
                config.revoke_flush_timeout_ms = 0;
            }),
            ("max_settled_ranges_per_user", |config| {
                config.max_settled_ranges_per_user = 0;
            }),
        ];
        for (key, zero) in zeroed {
            let mut config = RouterConfig::default();
            zero(&mut config);
            assert_eq!(
                config.validate().unwrap_err().to_string(),
                format!("{key}: must be positive")
            );
        }
    }
}
