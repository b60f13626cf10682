//! In-order acknowledgement of input records.
//!
//! A stage turns each input record into zero or more output records. The input offset
//! may be stored for commit only once every output of that record, and of every record
//! before it, is acknowledged by Kafka. [`AckPipeline`] keeps one future per input
//! record, in input order, and yields each record's position once it is safe to store.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// The position of an input record whose outputs are all acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

type AckFuture<T> = Pin<Box<dyn Future<Output = Result<(Acked, T), KafkaError>> + Send>>;

/// Input records in flight, in input order. Each may carry a `T` to act on once its
/// outputs are acknowledged (the router writes a user's state only then).
pub struct AckPipeline<T = ()> {
    in_flight: FuturesOrdered<AckFuture<T>>,
}

impl<T> Default for AckPipeline<T> {
    fn default() -> Self {
        Self {
            in_flight: FuturesOrdered::new(),
        }
    }
}

impl<T: Send + 'static> AckPipeline<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Tracks an input record at `(topic, partition, offset)` whose outputs are
    /// `deliveries` (possibly none), with `then` to hand back once they are acknowledged.
    pub fn push_then(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        deliveries: Vec<DeliveryFuture>,
        then: T,
    ) {
        let acked = Acked {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        self.in_flight.push_back(Box::pin(async move {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _message))) => return Err(error),
                    Err(_canceled) => return Err(KafkaError::Canceled),
                }
            }
            Ok((acked, then))
        }));
    }

    /// Tracks an input record at `(topic, partition, offset)` that is done when `done`
    /// completes (an acknowledgement that comes by another way), with `then`.
    pub fn push_when(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        done: impl Future<Output = Result<(), KafkaError>> + Send + 'static,
        then: T,
    ) {
        let acked = Acked {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        self.in_flight
            .push_back(Box::pin(async move { done.await.map(|()| (acked, then)) }));
    }

    /// The next input record whose outputs are all acknowledged, with its `then`, in
    /// input order; `None` when nothing is in flight. An error means an output was not
    /// delivered: the stage must not store that offset (it stops, and the record is
    /// processed again).
    pub async fn next_then(&mut self) -> Option<Result<(Acked, T), KafkaError>> {
        self.in_flight.next().await
    }
}

impl AckPipeline {
    /// Tracks an input record at `(topic, partition, offset)` whose outputs are
    /// `deliveries` (possibly none).
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        deliveries: Vec<DeliveryFuture>,
    ) {
        self.push_then(topic, partition, offset, deliveries, ());
    }

    /// The next input record whose outputs are all acknowledged, in input order; `None`
    /// when nothing is in flight. An error means an output was not delivered: the stage
    /// must not store that offset (it stops, and the record is processed again).
    pub async fn next(&mut self) -> Option<Result<Acked, KafkaError>> {
        self.next_then()
            .await
            .map(|acked| acked.map(|(acked, ())| acked))
    }
}

/// Hands a record to the producer, waiting while its local queue is full (backpressure
/// rather than an error), and returns the future of its acknowledgement.
pub async fn enqueue<K, C>(
    producer: &FutureProducer<C>,
    mut record: FutureRecord<'_, K, [u8]>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    C: rdkafka::ClientContext + 'static,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((error, _returned)) => return Err(error),
        }
    }
}

/// Flushes `producer`, waiting at most `timeout`.
pub fn flush<C: rdkafka::ClientContext + 'static>(
    producer: &FutureProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    use rdkafka::producer::Producer;
    producer.flush(Timeout::After(timeout))
}

/// Stores an acknowledged input position for the next commit. A partition revoked while
/// its records were in flight refuses the store; that is expected and harmless (the new
/// owner replays from the last commit, and replays are idempotent), so it is only logged.
pub fn store_offset<Ctx>(consumer: &rdkafka::consumer::StreamConsumer<Ctx>, acked: &Acked)
where
    Ctx: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::Consumer;
    if let Err(error) = consumer.store_offset(&acked.topic, acked.partition, acked.offset) {
        tracing::debug!(%error, topic = %acked.topic, partition = acked.partition, offset = acked.offset, "offset not stored");
    }
}

/// The end of a stage's run: waits for every record in flight, stores each position in
/// order, then commits synchronously. An output that was not delivered is the error
/// (its offset is not stored, so the next owner processes it again); a failed final
/// commit is only logged, for the same reason.
pub async fn drain_and_commit<Ctx>(
    pipeline: &mut AckPipeline,
    consumer: &rdkafka::consumer::StreamConsumer<Ctx>,
) -> Result<(), KafkaError>
where
    Ctx: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::{CommitMode, Consumer};
    while let Some(acked) = pipeline.next().await {
        store_offset(consumer, &acked?);
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(%error, "final commit failed; the next owner replays from the last commit");
        }
    }
    Ok(())
}
