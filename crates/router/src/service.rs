use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_kafka::{
    AckPipeline, InvalidSetting, KafkaSettings, StageContext, StageHealth, Topics,
    drain_and_commit, enqueue, require_positive, store_offset,
};
use fanout_schema::{split_user_key, v1};
use fanout_unread::Limits;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{EventResult, RouterMetrics};
use crate::restore::{RestoreError, restore_partitions};
use crate::state::{UserRecord, op_of};

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
    producer: FutureProducer<StageContext>,
    metrics: RouterMetrics,
    health: StageHealth,
    owned: Owned,
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
        producer,
        metrics,
        health: health.clone(),
        owned: Owned {
            partitions: HashMap::new(),
        },
    };
    let mut pipeline = AckPipeline::new();
    // Assignment changes arrive inside the consumer's poll; this tick makes sure an
    // assignment is restored promptly even when no record follows it.
    let mut assignment_tick = tokio::time::interval(Duration::from_millis(100));
    assignment_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(acked) = pipeline.next(), if !pipeline.is_empty() => {
                let acked = acked.map_err(RouterError::Delivery)?;
                health.set_brokers_down(false);
                store_offset(&consumer, &acked);
            }
            _ = assignment_tick.tick() => {
                router.apply_assignment_changes(consumer.context().take()).await?;
            }
            received = consumer.recv(), if pipeline.len() < config.max_in_flight => {
                router.apply_assignment_changes(consumer.context().take()).await?;
                match received {
                    Ok(message) => {
                        health.set_brokers_down(false);
                        let deliveries = router.handle(&message).await?;
                        pipeline.push(message.topic(), message.partition(), message.offset(), deliveries);
                    }
                    Err(error) => {
                        router.metrics.kafka().consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    drain_and_commit(&mut pipeline, &consumer)
        .await
        .map_err(RouterError::Delivery)?;
    tracing::info!("router stopped");
    Ok(())
}

impl Router<'_> {
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

    async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> Result<Vec<DeliveryFuture>, RouterError> {
        let partition = message.partition();
        let offset = message.offset();
        let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
            self.metrics
                .invalid_event(partition, offset, "key is missing or not UTF-8");
            return Ok(Vec::new());
        };
        let Some((partner, user)) = split_user_key(key) else {
            self.metrics
                .invalid_event(partition, offset, "key is not partner/user");
            return Ok(Vec::new());
        };
        let Ok(event) = v1::UserEvent::decode(message.payload().unwrap_or_default()) else {
            self.metrics
                .invalid_event(partition, offset, "value is not a UserEvent");
            return Ok(Vec::new());
        };
        let op = match op_of(&event) {
            Ok(Some(op)) => op,
            // Stream-only kinds (the sender's copy, notifications): no count changes,
            // and the offset advances like any other's.
            Ok(None) => {
                self.metrics.event(EventResult::Unchanged);
                return Ok(Vec::new());
            }
            Err(_) => {
                self.metrics
                    .invalid_event(partition, offset, "unknown event kind");
                return Ok(Vec::new());
            }
        };
        if !self.owned.partitions.contains_key(&partition) {
            // Not expected (assignment changes are applied before each record), but if
            // a record ever arrives first, restoring now keeps it correct.
            self.restore(vec![partition]).await?;
        }
        let (output, is_new_user) = {
            let users = self.owned.partitions.entry(partition).or_default();
            let is_new_user = !users.contains_key(key);
            if is_new_user {
                users.insert(key.to_owned(), UserRecord::new());
            }
            let Some(record) = users.get_mut(key) else {
                return Ok(Vec::new());
            };
            (
                apply(record, &event, op, offset, &self.limits, partner, user),
                is_new_user,
            )
        };
        if is_new_user {
            self.metrics.set_users(self.owned.user_count());
        }
        match output {
            Output::Replayed { count } => {
                self.metrics.event(EventResult::Replayed);
                let delivery = self
                    .send(&self.topics.unread_counts, partition, key, &count)
                    .await?;
                Ok(vec![delivery])
            }
            Output::Unchanged { evicted_ranges } => {
                self.metrics.evicted(evicted_ranges);
                self.metrics.event(EventResult::Unchanged);
                Ok(Vec::new())
            }
            Output::Applied {
                state,
                count,
                evicted_ranges,
            } => {
                self.metrics.evicted(evicted_ranges);
                self.metrics.event(EventResult::Applied);
                let mut deliveries = Vec::with_capacity(2);
                if let Some(count) = count {
                    deliveries.push(
                        self.send(&self.topics.unread_counts, partition, key, &count)
                            .await?,
                    );
                }
                deliveries.push(
                    self.send(&self.topics.router_state, partition, key, &state)
                        .await?,
                );
                Ok(deliveries)
            }
        }
    }

    async fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
    ) -> Result<DeliveryFuture, RouterError> {
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(payload);
        enqueue(&self.producer, record)
            .await
            .map_err(RouterError::Client)
    }
}

/// What applying one event to a user's record produced, encoded and ready to send.
enum Output {
    /// A replay of an event the state already includes: the current count is sent again
    /// in case its record was lost before the crash that caused the replay.
    Replayed {
        count: Vec<u8>,
    },
    Unchanged {
        evicted_ranges: usize,
    },
    Applied {
        state: Vec<u8>,
        count: Option<Vec<u8>>,
        evicted_ranges: usize,
    },
}

fn apply(
    record: &mut UserRecord,
    event: &v1::UserEvent,
    op: fanout_unread::Op<'_>,
    offset: i64,
    limits: &Limits,
    partner: &str,
    user: &str,
) -> Output {
    if offset <= record.last_offset {
        return Output::Replayed {
            count: record.count_record(partner, user).encode_to_vec(),
        };
    }
    let outcome = record.state.apply(op, limits);
    if !outcome.state_changed {
        return Output::Unchanged {
            evicted_ranges: outcome.evicted_ranges,
        };
    }
    record.version += 1;
    record.last_offset = offset;
    record.occurred_at_ms = event.occurred_at_ms;
    Output::Applied {
        state: record.to_proto(partner, user).encode_to_vec(),
        count: outcome
            .count_changed
            .then(|| record.count_record(partner, user).encode_to_vec()),
        evicted_ranges: outcome.evicted_ranges,
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
