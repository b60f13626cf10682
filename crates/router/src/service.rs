use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fanout_kafka::{
    AckGroup, GroupWatch, InvalidSetting, KafkaSettings, OutputProducer, StageContext, StageHealth,
    Topics, commit_stored, leave_group, require_positive, store_input_offset,
};
use fanout_schema::{split_user_key, user_key, v1};
use fanout_unread::{Limits, StreamLimits};
use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::BaseRecord;
use rdkafka::{ClientContext, Message};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{EventResult, InvalidEvent, RouterMetrics};
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
    /// How long a batch of input records stays open before it is sealed: a user changed
    /// several times in it has its state written once, after every output of the batch
    /// is acknowledged. Outputs are sent at once whatever this is; it delays only state
    /// writes and offset commits (a crash replays at most this much more).
    pub state_write_interval_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            group_id: "fanout-router".to_owned(),
            max_in_flight: 50_000,
            restore_timeout_ms: 120_000,
            revoke_flush_timeout_ms: 10_000,
            max_settled_ranges_per_user: Limits::default().max_settled_ranges,
            state_write_interval_ms: 100,
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
            ("state_write_interval_ms", self.state_write_interval_ms),
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
    producer: Arc<OutputProducer>,
    input_topic: String,
    revoke_flush_timeout: Duration,
}

impl ClientContext for RouterContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.stage.on_log(level, facility, message);
    }

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
            if let Err(error) = self.producer.flush(self.revoke_flush_timeout) {
                tracing::warn!(%error, "flush on revoke did not finish; the next owner may see a replay");
            }
            tracing::info!(partitions = ?revoked, "partitions revoked");
            self.stage.on_revoked(&revoked);
            self.push(AssignmentChange::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned = partitions_of(partitions, &self.input_topic);
            tracing::info!(partitions = ?assigned, "partitions assigned");
            self.stage.on_assigned(&assigned);
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

/// How often a router asks its [`GroupWatch`] whether its group is stalled.
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn partitions_of(list: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect()
}

/// Most records taken from the consumer's queue to process as one batch: what is
/// already fetched, without waiting for more.
const MAX_POLL_BATCH: usize = 4096;

/// One partition this router owns and has restored: its users, and its input batches
/// whose outputs or states are not acknowledged yet.
#[derive(Default)]
struct Partition {
    users: HashMap<String, UserRecord>,
    /// Users changed by a batch still waiting for its outputs.
    unwritten: HashMap<String, Unwritten>,
    /// Sealed batches, in input order.
    batches: VecDeque<Batch>,
    /// The batch new records join, and when it was opened.
    open: Option<(Batch, Instant)>,
    next_batch: u64,
}

/// A user changed by batches whose outputs are not all acknowledged yet.
struct Unwritten {
    /// How many such batches.
    batches: u32,
    /// The latest of them.
    last: u64,
    /// Changes since the state on record.
    changes: usize,
}

/// The records of one partition taken in one poll, processed together: their outputs
/// share one acknowledgement group, and each user they changed has its state written
/// once for all of them.
struct Batch {
    id: u64,
    last_offset: i64,
    records: usize,
    outputs: Arc<AckGroup>,
    /// Users whose state this batch changed, each once.
    changed: Vec<String>,
    /// The states written once `outputs` were acknowledged (the second stage).
    states: Option<Arc<AckGroup>>,
    /// The latest batch whose state write covers a user this one changed but left to
    /// it (a later batch changed that user too, and its outputs were still in flight).
    covered_by: u64,
}

struct Router<'a> {
    kafka: &'a KafkaSettings,
    topics: &'a Topics,
    config: &'a RouterConfig,
    limits: Limits,
    stream_limits: StreamLimits,
    producer: Arc<OutputProducer>,
    metrics: RouterMetrics,
    health: StageHealth,
    partitions: HashMap<i32, Partition>,
    /// Input records in unfinished batches, over all partitions.
    in_flight: usize,
    /// Reused for every record's encoding (the producer copies it).
    scratch: Vec<u8>,
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
    let producer = Arc::new(
        OutputProducer::new(
            &kafka.producer_config(),
            StageContext::new(health.clone()).with_metrics(metrics.kafka().clone()),
        )
        .map_err(RouterError::Client)?,
    );
    let (group, monitor) = GroupWatch::start(
        kafka,
        &config.group_id,
        &topics.user_events,
        health.clone(),
        metrics.group().clone(),
        &shutdown,
    )
    .map_err(RouterError::Client)?;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let kafka_metrics = metrics.kafka().clone();
    let output = producer.clone();
    // A consumer subscribed to the input topic: at start, and again whenever the group
    // stalls (leaving it and joining with a new member id).
    let subscribe = || -> Result<StreamConsumer<RouterContext>, RouterError> {
        let context = RouterContext {
            stage: StageContext::new(health.clone())
                .with_metrics(kafka_metrics.clone())
                .with_group(group.clone()),
            changes: changes.clone(),
            producer: output.clone(),
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
        Ok(consumer)
    };
    let mut consumer = subscribe()?;
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
        partitions: HashMap::new(),
        in_flight: 0,
        scratch: Vec::new(),
    };
    // Two stages of acknowledgement: a batch's outputs (counts, stream events, receipts,
    // read receipts) first; only once they are in Kafka are the states of the users it
    // changed written, and only once those are in Kafka are its input offsets stored. A
    // state on record therefore never covers an event whose stream record could still be
    // lost: a crash at any point replays the event from an older state, which gives it
    // the same position and the same content again (edges and receivers skip the
    // repeat; a read-receipts record is rewritten with the same key and value).
    // Assignment changes arrive inside the consumer's poll; this tick makes sure an
    // assignment is restored promptly even when no record follows it, and that a batch
    // is sealed when no record follows it.
    let tick = config.state_write_interval_ms.clamp(1, 100);
    let mut assignment_tick = tokio::time::interval(Duration::from_millis(tick));
    assignment_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_batch = MAX_POLL_BATCH.min(config.max_in_flight);
    let mut group_tick = tokio::time::interval(GROUP_CHECK_INTERVAL);
    group_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut rejoin = false;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = router.producer.acked() => {
                router.advance(&consumer).await?;
            }
            _ = group_tick.tick() => rejoin = group.check().is_some(),
            _ = assignment_tick.tick() => {
                router.apply_assignment_changes(consumer.context().take()).await?;
                router.seal_batches(false);
                router.advance(&consumer).await?;
            }
            received = consumer.recv(), if router.in_flight < config.max_in_flight => {
                match received {
                    Ok(first) => {
                        health.set_brokers_down(false);
                        let mut messages = vec![first];
                        while messages.len() < max_batch {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => messages.push(message),
                                Some(Err(error)) => {
                                    router.metrics.kafka().consumer_error(&error);
                                    break;
                                }
                                None => break,
                            }
                        }
                        // Changes seen while polling come first: a revoked partition's
                        // records are then left to its next owner.
                        router.apply_assignment_changes(consumer.context().take()).await?;
                        router.handle_batch(&messages).await?;
                    }
                    Err(error) => {
                        router.apply_assignment_changes(consumer.context().take()).await?;
                        router.metrics.kafka().consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        if rejoin {
            // Leaving revokes what this member holds (flushing its outputs) before the
            // new member joins; what was in flight is replayed by the next owner.
            leave_group(consumer).await;
            let left = std::mem::take(&mut *changes.lock().unwrap_or_else(PoisonError::into_inner));
            router.apply_assignment_changes(left).await?;
            consumer = subscribe()?;
        }
    }
    monitor.stop();

    router.seal_batches(true);
    router.advance(&consumer).await?;
    while router.in_flight > 0 {
        router.producer.acked().await;
        router.advance(&consumer).await?;
    }
    commit_stored(&consumer);
    tracing::info!("router stopped");
    Ok(())
}

impl Router<'_> {
    /// Moves every partition's batches on: each whose outputs are acknowledged (in
    /// input order) has its users' states written; each whose states are acknowledged
    /// has its input offsets stored.
    async fn advance(
        &mut self,
        consumer: &StreamConsumer<RouterContext>,
    ) -> Result<(), RouterError> {
        for (&partition_id, partition) in &mut self.partitions {
            write_states(
                partition_id,
                partition,
                &self.producer,
                &self.topics.router_state,
                &self.metrics,
                &mut self.scratch,
            )
            .await?;
            let (records, last_offset) = partition.finished()?;
            if let Some(offset) = last_offset {
                self.health.set_brokers_down(false);
                self.in_flight -= records;
                store_input_offset(consumer, &self.topics.user_events, partition_id, offset);
            }
        }
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
                    // Its batches in flight are forgotten: their states are not written
                    // and their offsets not stored, so the next owner replays them from
                    // the state on record.
                    for partition in partitions {
                        if let Some(revoked) = self.partitions.remove(&partition) {
                            self.in_flight -= revoked.in_flight();
                        }
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
        self.metrics.set_users(self.user_count());
        Ok(())
    }

    fn user_count(&self) -> usize {
        self.partitions
            .values()
            .map(|partition| partition.users.len())
            .sum()
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
            if let Some(replaced) = self.partitions.insert(
                partition,
                Partition {
                    users: restored.users,
                    ..Partition::default()
                },
            ) {
                self.in_flight -= replaced.in_flight();
            }
        }
        Ok(())
    }

    /// Applies the records of one poll, each into its partition's open batch (whose
    /// outputs are sent now and share one acknowledgement group), then seals the
    /// batches that are due.
    async fn handle_batch(&mut self, messages: &[BorrowedMessage<'_>]) -> Result<(), RouterError> {
        for message in messages {
            let partition_id = message.partition();
            let Some(partition) = self.partitions.get_mut(&partition_id) else {
                // Revoked while it was polled: its next owner processes it.
                tracing::debug!(
                    partition = partition_id,
                    offset = message.offset(),
                    "record of a partition not owned; left to its owner"
                );
                continue;
            };
            let Partition {
                users,
                unwritten,
                open,
                next_batch,
                ..
            } = partition;
            let (batch, _) = open.get_or_insert_with(|| Batch::open(next_batch, &self.producer));
            batch.records += 1;
            batch.last_offset = message.offset();
            self.in_flight += 1;
            let output = Output {
                producer: &self.producer,
                topics: self.topics,
                scratch: &mut self.scratch,
                group: &batch.outputs,
            };
            let (id, changed) = (batch.id, &mut batch.changed);
            apply(
                message,
                users,
                unwritten,
                id,
                changed,
                output,
                &self.limits,
                &self.stream_limits,
                &self.metrics,
            )
            .await?;
        }
        // Past half the in-flight bound every batch is sealed, so that consuming never
        // waits on a batch that nothing would seal.
        let crowded = self.in_flight * 2 >= self.config.max_in_flight;
        self.seal_batches(crowded);
        self.metrics.set_users(self.user_count());
        Ok(())
    }

    /// Seals each partition's open batch that is older than the state write interval
    /// (or every one, with `all`): its outputs are all sent, and its states are written
    /// once they are acknowledged.
    fn seal_batches(&mut self, all: bool) {
        let interval = Duration::from_millis(self.config.state_write_interval_ms);
        for partition in self.partitions.values_mut() {
            let due = partition
                .open
                .as_ref()
                .is_some_and(|(_, opened)| all || opened.elapsed() >= interval);
            if due && let Some((batch, _)) = partition.open.take() {
                batch.outputs.seal();
                partition.batches.push_back(batch);
            }
        }
    }
}

impl Batch {
    /// A new batch, the partition's next.
    fn open(next_batch: &mut u64, producer: &OutputProducer) -> (Self, Instant) {
        let id = *next_batch;
        *next_batch += 1;
        let batch = Self {
            id,
            last_offset: -1,
            records: 0,
            outputs: producer.group(),
            changed: Vec::new(),
            states: None,
            covered_by: id,
        };
        (batch, Instant::now())
    }
}

impl Partition {
    fn in_flight(&self) -> usize {
        self.batches
            .iter()
            .chain(self.open.as_ref().map(|(batch, _)| batch))
            .map(|batch| batch.records)
            .sum()
    }

    /// Takes the batches at the front that are done (their states, and those of the
    /// later batches that cover theirs, acknowledged): how many input records, and the
    /// last offset among them.
    fn finished(&mut self) -> Result<(usize, Option<i64>), RouterError> {
        let mut records = 0;
        let mut last_offset = None;
        'front: while let Some(front) = self.batches.front() {
            let mut horizon = front.covered_by;
            let mut through: usize = 0;
            for batch in &self.batches {
                if batch.id > horizon {
                    break;
                }
                match batch.states.as_ref().and_then(|states| states.outcome()) {
                    None => break 'front,
                    Some(Err(error)) => return Err(RouterError::Delivery(error)),
                    Some(Ok(())) => {}
                }
                horizon = horizon.max(batch.covered_by);
                through += 1;
            }
            // The covering batch may be the open one, not sealed yet.
            let reached = self
                .batches
                .get(through.saturating_sub(1))
                .map(|batch| batch.id);
            if reached < Some(horizon) {
                break;
            }
            for batch in self.batches.drain(..through) {
                records += batch.records;
                last_offset = Some(batch.last_offset);
            }
        }
        Ok((records, last_offset))
    }
}

/// The second stage, for each batch of `partition` whose outputs are acknowledged and
/// every earlier batch's too: the state of each user it changed, written unless a later
/// batch's outputs for that user are still in flight (that batch's state write then
/// covers this one's, so a burst is one write, encoded from the user's record as it is
/// then, which includes no unacknowledged output).
async fn write_states(
    partition_id: i32,
    partition: &mut Partition,
    producer: &OutputProducer,
    topic: &str,
    metrics: &RouterMetrics,
    scratch: &mut Vec<u8>,
) -> Result<(), RouterError> {
    for batch in &mut partition.batches {
        if batch.states.is_some() {
            continue;
        }
        match batch.outputs.outcome() {
            None => break,
            Some(Err(error)) => return Err(RouterError::Delivery(error)),
            Some(Ok(())) => {}
        }
        let states = producer.group();
        for key in batch.changed.drain(..) {
            let Some(unwritten) = partition.unwritten.get_mut(&key) else {
                continue;
            };
            unwritten.batches -= 1;
            if unwritten.batches > 0 {
                batch.covered_by = batch.covered_by.max(unwritten.last);
                continue;
            }
            let changes = unwritten.changes;
            partition.unwritten.remove(&key);
            let (Some(record), Some((partner, user))) =
                (partition.users.get(&key), split_user_key(&key))
            else {
                continue;
            };
            metrics.state_written(changes.saturating_sub(1));
            scratch.clear();
            record.to_proto(partner, user).encode(scratch).ok();
            producer
                .send(
                    BaseRecord::with_opaque_to(topic, states.clone())
                        .partition(partition_id)
                        .key(key.as_bytes())
                        .payload(scratch.as_slice()),
                )
                .await
                .map_err(RouterError::Client)?;
        }
        states.seal();
        batch.states = Some(states);
    }
    Ok(())
}

/// Where one record's outputs go.
struct Output<'a> {
    producer: &'a OutputProducer,
    topics: &'a Topics,
    scratch: &'a mut Vec<u8>,
    group: &'a Arc<AckGroup>,
}

impl Output<'_> {
    /// Encodes `value` and hands it to the producer: to the input's partition, or (for
    /// `partition: None`) where its key hashes to, as ingest's records to user-events.
    async fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: &impl prost::Message,
    ) -> Result<(), RouterError> {
        self.scratch.clear();
        value.encode(self.scratch).ok();
        let mut record = BaseRecord::with_opaque_to(topic, self.group.clone())
            .key(key)
            .payload(self.scratch.as_slice());
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        self.producer
            .send(record)
            .await
            .map_err(RouterError::Client)
    }
}

/// Applies one user event of batch `batch` to its partition's `users` and sends its
/// outputs; a user it changed is added to `changed` (once per batch) and counted in
/// `unwritten`.
#[allow(clippy::too_many_arguments)]
async fn apply(
    message: &BorrowedMessage<'_>,
    users: &mut HashMap<String, UserRecord>,
    unwritten: &mut HashMap<String, Unwritten>,
    batch: u64,
    changed: &mut Vec<String>,
    mut output: Output<'_>,
    limits: &Limits,
    stream_limits: &StreamLimits,
    metrics: &RouterMetrics,
) -> Result<(), RouterError> {
    let partition_id = message.partition();
    let offset = message.offset();
    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        metrics.invalid_event(partition_id, offset, InvalidEvent::Key);
        return Ok(());
    };
    let Some((partner, user)) = split_user_key(key) else {
        metrics.invalid_event(partition_id, offset, InvalidEvent::NotUserKey);
        return Ok(());
    };
    let Ok(event) = v1::UserEvent::decode(message.payload().unwrap_or_default()) else {
        metrics.invalid_event(partition_id, offset, InvalidEvent::Undecodable);
        return Ok(());
    };
    let Ok(input) = input_of(&event) else {
        metrics.invalid_event(partition_id, offset, InvalidEvent::UnknownKind);
        return Ok(());
    };
    let (step, record) = match users.get_mut(key) {
        Some(record) => {
            let step = record.apply(&event, input, offset, limits, stream_limits);
            (step, &*record)
        }
        None => {
            // A user is kept from the first event that changes it: its epoch then comes
            // from a record a replay sees again.
            let timestamp = message
                .timestamp()
                .to_millis()
                .unwrap_or(event.occurred_at_ms);
            let mut record = UserRecord::new(epoch_of(timestamp, offset));
            let step = record.apply(&event, input, offset, limits, stream_limits);
            if !matches!(step, Step::Applied { .. }) {
                metrics.event(EventResult::Unchanged);
                return Ok(());
            }
            let record = users.entry(key.to_owned()).or_insert(record);
            (step, &*record)
        }
    };
    let topics = output.topics;
    match step {
        Step::Replayed => {
            metrics.event(EventResult::Replayed);
            let count = record.count_record(partner, user);
            output
                .send(
                    &topics.unread_counts,
                    Some(partition_id),
                    key.as_bytes(),
                    &count,
                )
                .await
        }
        Step::Unchanged { evicted_ranges } => {
            metrics.evicted(evicted_ranges);
            metrics.event(EventResult::Unchanged);
            Ok(())
        }
        Step::Applied { counts, delivered } => {
            metrics.evicted(counts.evicted_ranges);
            metrics.event(EventResult::Applied);
            let count = counts
                .count_changed
                .then(|| record.count_record(partner, user));
            let streamed = delivered.map(|position| {
                (
                    record.stream_record(&event, position, partner, user),
                    receipts_of(&event, position),
                )
            });
            let read = read_receipt_of(&event, &counts, partner, user);
            match unwritten.get_mut(key) {
                Some(unwritten) => {
                    unwritten.changes += 1;
                    if unwritten.last != batch {
                        unwritten.batches += 1;
                        unwritten.last = batch;
                        changed.push(key.to_owned());
                    }
                }
                None => {
                    unwritten.insert(
                        key.to_owned(),
                        Unwritten {
                            batches: 1,
                            last: batch,
                            changes: 1,
                        },
                    );
                    changed.push(key.to_owned());
                }
            }
            if let Some(count) = count {
                output
                    .send(
                        &topics.unread_counts,
                        Some(partition_id),
                        key.as_bytes(),
                        &count,
                    )
                    .await?;
            }
            if let Some((stream, receipts)) = streamed {
                metrics.streamed();
                output
                    .send(
                        &topics.user_streams,
                        Some(partition_id),
                        key.as_bytes(),
                        &stream,
                    )
                    .await?;
                for receipt in receipts {
                    let receiver = user_key(&receipt.partner, &receipt.user);
                    metrics.receipt();
                    output
                        .send(&topics.user_events, None, receiver.as_bytes(), &receipt)
                        .await?;
                }
            }
            // The reader's own partition, as the count's: the api finds a user's reads
            // where it finds the user.
            if let Some((read_key, read_receipt)) = read {
                metrics.read_receipt();
                output
                    .send(
                        &topics.read_receipts,
                        Some(partition_id),
                        &read_key,
                        &read_receipt,
                    )
                    .await?;
            }
            Ok(())
        }
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

    /// A sealed batch of `records` inputs up to `last_offset`, its states written (as
    /// `states`), covered up to batch `covered_by`.
    fn batch(id: u64, last_offset: i64, states: &Arc<AckGroup>, covered_by: u64) -> Batch {
        let outputs = AckGroup::unsealed();
        outputs.seal();
        Batch {
            id,
            last_offset,
            records: 2,
            outputs,
            changed: Vec::new(),
            states: Some(states.clone()),
            covered_by,
        }
    }

    fn partition(batches: Vec<Batch>) -> Partition {
        Partition {
            batches: batches.into(),
            ..Partition::default()
        }
    }

    #[test]
    fn a_batch_is_finished_once_its_states_are_acknowledged_in_input_order() {
        let (first, second) = (AckGroup::unsealed(), AckGroup::unsealed());
        let mut partition = partition(vec![batch(0, 9, &first, 0), batch(1, 19, &second, 1)]);
        second.seal();
        assert_eq!(
            partition.finished().unwrap(),
            (0, None),
            "the first is not done"
        );
        first.seal();
        assert_eq!(partition.finished().unwrap(), (4, Some(19)));
        assert!(partition.batches.is_empty());
    }

    #[test]
    fn a_batch_whose_user_a_later_batch_covers_waits_for_that_batch() {
        let (first, second, third) = (
            AckGroup::unsealed(),
            AckGroup::unsealed(),
            AckGroup::unsealed(),
        );
        // The first batch left a user's state to the second, which left it to the third.
        let mut partition = partition(vec![
            batch(0, 9, &first, 1),
            batch(1, 19, &second, 2),
            batch(2, 29, &third, 2),
        ]);
        first.seal();
        second.seal();
        assert_eq!(partition.finished().unwrap(), (0, None));
        third.seal();
        assert_eq!(partition.finished().unwrap(), (6, Some(29)));
    }

    #[test]
    fn a_batch_covered_by_the_open_batch_waits_for_it() {
        let first = AckGroup::unsealed();
        first.seal();
        // Batch 1, which covers the first's user, is still open (not in `batches`).
        let mut partition = partition(vec![batch(0, 9, &first, 1)]);
        assert_eq!(partition.finished().unwrap(), (0, None));
        assert_eq!(partition.batches.len(), 1);
    }

    #[test]
    fn batches_not_covered_by_a_pending_one_are_finished_without_it() {
        let (first, second) = (AckGroup::unsealed(), AckGroup::unsealed());
        let mut partition = partition(vec![batch(0, 9, &first, 0), batch(1, 19, &second, 1)]);
        first.seal();
        assert_eq!(partition.finished().unwrap(), (2, Some(9)));
        assert_eq!(partition.batches.len(), 1);
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
        let zeroed: [(&str, Zero); 5] = [
            ("max_in_flight", |config| config.max_in_flight = 0),
            ("restore_timeout_ms", |config| config.restore_timeout_ms = 0),
            ("revoke_flush_timeout_ms", |config| {
                config.revoke_flush_timeout_ms = 0;
            }),
            ("max_settled_ranges_per_user", |config| {
                config.max_settled_ranges_per_user = 0;
            }),
            ("state_write_interval_ms", |config| {
                config.state_write_interval_ms = 0;
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
