//! Output records acknowledged without a future per record.
//!
//! A stage hands a batch of inputs' output records to an [`OutputProducer`], all of
//! them carrying one [`AckGroup`] as their delivery opaque. librdkafka's delivery
//! callback counts the group down; when it reaches zero the stage's main loop is woken
//! ([`OutputProducer::acked`]) and advances its per-partition offset watermarks
//! ([`InputLog`]). Per record that is one reference-count increment, where a
//! `DeliveryFuture` was a oneshot channel, a boxed future and a wake-up each.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

use crate::StageContext;

/// The output records of some inputs, counted down as Kafka acknowledges them.
#[derive(Debug)]
pub struct AckGroup {
    /// Records not acknowledged yet, plus one until the group is sealed (so that a group
    /// whose first records are acknowledged while later ones are still being sent is not
    /// done early).
    remaining: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    wake: Arc<Notify>,
}

impl AckGroup {
    fn new(wake: Arc<Notify>) -> Self {
        Self {
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(None),
            wake,
        }
    }

    /// A group outside any producer (for a stage's own tests of what it does with
    /// groups): done once sealed, as nothing can be sent in it.
    pub fn unsealed() -> Arc<Self> {
        Arc::new(Self::new(Arc::new(Notify::new())))
    }

    fn add(&self) {
        self.remaining.fetch_add(1, Ordering::Relaxed);
    }

    fn done_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake.notify_one();
        }
    }

    fn fail(&self, error: KafkaError) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error);
    }

    /// No more records join the group: it is done once those sent are acknowledged.
    pub fn seal(&self) {
        self.done_one();
    }

    /// `None` while records are outstanding (or the group is not sealed); then `Ok` if
    /// every record was acknowledged, or the first delivery error.
    pub fn outcome(&self) -> Option<Result<(), KafkaError>> {
        if self.remaining.load(Ordering::Acquire) != 0 {
            return None;
        }
        match self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(error) => Some(Err(error)),
            None => Some(Ok(())),
        }
    }
}

/// A stage's producer context: [`StageContext`]'s health and metrics, and delivery
/// reports counted into each record's [`AckGroup`].
pub struct AckingContext {
    stage: StageContext,
}

impl ClientContext for AckingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.stage.on_stats(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.stage.on_error(&error, reason);
    }
}

impl ProducerContext for AckingContext {
    type DeliveryOpaque = Arc<AckGroup>;

    fn delivery(&self, result: &DeliveryResult<'_>, group: Arc<AckGroup>) {
        if let Err((error, _message)) = result {
            group.fail(error.clone());
        }
        group.done_one();
    }
}

/// A record for [`OutputProducer::send`].
pub type OutputRecord<'a, K> = BaseRecord<'a, K, [u8], Arc<AckGroup>>;

/// A producer whose records are acknowledged through [`AckGroup`]s; librdkafka's
/// delivery reports are served by its own thread.
pub struct OutputProducer {
    producer: ThreadedProducer<AckingContext>,
    wake: Arc<Notify>,
}

impl OutputProducer {
    /// Creates the producer from `config` (see
    /// [`KafkaSettings::producer_config`](crate::KafkaSettings::producer_config)).
    pub fn new(config: &ClientConfig, stage: StageContext) -> Result<Self, KafkaError> {
        let producer = ThreadedProducer::from_config_and_context(config, AckingContext { stage })?;
        Ok(Self {
            producer,
            wake: Arc::new(Notify::new()),
        })
    }

    /// A new, empty group; seal it once every record of it is sent.
    pub fn group(&self) -> Arc<AckGroup> {
        Arc::new(AckGroup::new(self.wake.clone()))
    }

    /// Hands a record to the producer, counted in its group, waiting while the local
    /// queue is full (backpressure rather than an error).
    pub async fn send<K>(&self, mut record: OutputRecord<'_, K>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
    {
        let group = record.delivery_opaque.clone();
        group.add();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _returned)) => {
                    group.fail(error.clone());
                    group.done_one();
                    return Err(error);
                }
            }
        }
    }

    /// Completes when some group was done since the last call (or is already).
    pub async fn acked(&self) {
        self.wake.notified().await;
    }

    /// Waits at most `timeout` for every record sent to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// Input records whose outputs are in flight, per partition in input order, each batch
/// of them with the [`AckGroup`] of its outputs: the input offsets that may be stored.
#[derive(Debug, Default)]
pub struct InputLog {
    partitions: HashMap<i32, VecDeque<Pending>>,
    records: usize,
}

#[derive(Debug)]
struct Pending {
    last_offset: i64,
    records: usize,
    outputs: Arc<AckGroup>,
}

impl InputLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Input records in flight.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Tracks `records` input records of `partition` up to `last_offset`, done when
    /// `outputs` (sealed by the caller) is.
    pub fn push(
        &mut self,
        partition: i32,
        last_offset: i64,
        records: usize,
        outputs: Arc<AckGroup>,
    ) {
        self.records += records;
        self.partitions
            .entry(partition)
            .or_default()
            .push_back(Pending {
                last_offset,
                records,
                outputs,
            });
    }

    /// Each partition's last input offset whose outputs, and every earlier input's, are
    /// acknowledged since the last call. An error is an output Kafka did not take: the
    /// stage must stop without storing that input's offset.
    pub fn advance(&mut self) -> Result<Vec<(i32, i64)>, KafkaError> {
        let mut done = Vec::new();
        for (partition, pending) in &mut self.partitions {
            let mut last = None;
            while let Some(front) = pending.front() {
                match front.outputs.outcome() {
                    None => break,
                    Some(Err(error)) => return Err(error),
                    Some(Ok(())) => {
                        last = Some(front.last_offset);
                        self.records -= front.records;
                        pending.pop_front();
                    }
                }
            }
            if let Some(offset) = last {
                done.push((*partition, offset));
            }
        }
        Ok(done)
    }
}

/// Stores an input offset (the record at `offset` is done) for the next commit. A
/// partition revoked while its records were in flight refuses the store; that is expected
/// and harmless (the new owner replays from the last commit, and replays are idempotent),
/// so it is only logged.
pub fn store_input_offset<Ctx>(
    consumer: &rdkafka::consumer::StreamConsumer<Ctx>,
    topic: &str,
    partition: i32,
    offset: i64,
) where
    Ctx: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::Consumer;
    if let Err(error) = consumer.store_offset(topic, partition, offset) {
        tracing::debug!(%error, topic, partition, offset, "offset not stored");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn group() -> Arc<AckGroup> {
        Arc::new(AckGroup::new(Arc::new(Notify::new())))
    }

    #[test]
    fn a_group_is_done_only_once_sealed_and_every_record_acknowledged() {
        let outputs = group();
        outputs.add();
        outputs.add();
        outputs.done_one();
        assert!(outputs.outcome().is_none());
        outputs.done_one();
        assert!(outputs.outcome().is_none(), "not sealed yet");
        outputs.seal();
        assert!(matches!(outputs.outcome(), Some(Ok(()))));
    }

    #[test]
    fn a_failed_record_fails_its_group() {
        let outputs = group();
        outputs.add();
        outputs.seal();
        outputs.fail(KafkaError::Canceled);
        outputs.done_one();
        assert!(matches!(outputs.outcome(), Some(Err(KafkaError::Canceled))));
    }

    #[test]
    fn offsets_advance_in_input_order_per_partition() {
        let mut log = InputLog::new();
        let (first, second, other) = (group(), group(), group());
        log.push(0, 10, 3, first.clone());
        log.push(0, 12, 2, second.clone());
        log.push(1, 7, 1, other.clone());
        assert_eq!(log.len(), 6);
        second.seal();
        other.seal();
        assert_eq!(log.advance().unwrap(), vec![(1, 7)]);
        first.seal();
        assert_eq!(log.advance().unwrap(), vec![(0, 12)]);
        assert!(log.is_empty());
        assert_eq!(log.advance().unwrap(), vec![]);
    }

    #[test]
    fn a_failed_batch_stops_the_log_before_its_offset() {
        let mut log = InputLog::new();
        let failed = group();
        log.push(0, 3, 1, failed.clone());
        failed.fail(KafkaError::Canceled);
        failed.seal();
        assert!(log.advance().is_err());
    }
}
