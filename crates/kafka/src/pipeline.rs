//! Producing with backpressure, and a stage's last commit.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

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

/// Commits the offsets stored so far, synchronously: a stage's last act. A failed commit
/// is only logged: the next owner replays from the last commit, and replays are
/// idempotent.
pub fn commit_stored<Ctx>(consumer: &rdkafka::consumer::StreamConsumer<Ctx>)
where
    Ctx: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::{CommitMode, Consumer};
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(%error, "final commit failed; the next owner replays from the last commit");
        }
    }
}
