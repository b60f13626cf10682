//! Restoring one partition's user states from the router-state changelog.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_kafka::KafkaSettings;
use fanout_schema::v1;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::state::UserRecord;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("kafka while restoring {topic}/{partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("restoring {topic}/{partition} took longer than {timeout:?}")]
    Timeout {
        topic: String,
        partition: i32,
        timeout: Duration,
    },
}

pub(crate) struct Restored {
    pub users: HashMap<String, UserRecord>,
    pub records: u64,
    pub skipped: u64,
    /// The offset after the last record read: where the restore found the end.
    pub end_offset: i64,
    pub elapsed: Duration,
}

/// The restore consumer's context: end of partition is how a restore knows it is done,
/// not an error worth a log line.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(%error, reason, "kafka client error while restoring");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Reads `partitions` of `topic` from the beginning to their ends, all at once, and
/// keeps, per key, the state with the highest version. Highest version rather than last
/// written: a record a previous owner wrote late must not roll a user back. Blocking;
/// run it off the async runtime.
///
/// "Its end" is where the fetch path reports end of partition *and* a fresh
/// high-water mark agrees. A high-water mark queried once up front is not enough: a
/// broker may report a stale one (seen with tansu), and stopping there restores a
/// state older than records already acknowledged, whose input offsets were committed,
/// losing those events for good.
pub(crate) fn restore_partitions(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, Restored>, RestoreError> {
    let started = Instant::now();
    let kafka_error = |partition: i32| {
        move |source| RestoreError::Kafka {
            topic: topic.to_owned(),
            partition,
            source,
        }
    };
    let first = partitions.first().copied().unwrap_or_default();
    let mut config = kafka.assign_consumer_config();
    config
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer<RestoreContext> = config
        .create_with_context(RestoreContext)
        .map_err(kafka_error(first))?;
    let mut assignment = TopicPartitionList::new();
    let mut pending: HashMap<i32, Restored> = HashMap::new();
    for &partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka_error(partition))?;
        pending.insert(
            partition,
            Restored {
                users: HashMap::new(),
                records: 0,
                skipped: 0,
                end_offset: 0,
                elapsed: Duration::ZERO,
            },
        );
    }
    consumer.assign(&assignment).map_err(kafka_error(first))?;
    let mut done: HashMap<i32, Restored> = HashMap::new();
    while !pending.is_empty() {
        if started.elapsed() > timeout {
            let partition = pending.keys().copied().min().unwrap_or(first);
            return Err(RestoreError::Timeout {
                topic: topic.to_owned(),
                partition,
                timeout,
            });
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(partition)) => {
                let Some(restored) = pending.get(&partition) else {
                    continue;
                };
                let (_low, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(kafka_error(partition))?;
                // Otherwise records were written (or became visible) since: keep reading.
                if restored.end_offset >= high
                    && let Some(mut restored) = pending.remove(&partition)
                {
                    restored.elapsed = started.elapsed();
                    done.insert(partition, restored);
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, topic, "error while restoring; retrying");
                continue;
            }
        };
        let Some(restored) = pending.get_mut(&message.partition()) else {
            continue;
        };
        restored.records += 1;
        restored.end_offset = restored.end_offset.max(message.offset() + 1);
        match decode(&message) {
            Some((key, record)) => {
                let newer = restored
                    .users
                    .get(&key)
                    .is_none_or(|held| record.version > held.version);
                if newer {
                    restored.users.insert(key, record);
                }
            }
            None => restored.skipped += 1,
        }
    }
    Ok(done)
}

fn decode(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<(String, UserRecord)> {
    let key = std::str::from_utf8(message.key()?).ok()?.to_owned();
    let proto = v1::UserState::decode(message.payload()?).ok()?;
    match UserRecord::from_proto(proto) {
        Ok(record) => Some((key, record)),
        Err(error) => {
            tracing::warn!(%error, "skipping an invalid state record");
            None
        }
    }
}
