//! Restoring one partition's user states from the router-state changelog.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_kafka::KafkaSettings;
use fanout_schema::v1;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

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

/// Reads `topic` partition `partition` from the beginning to its end and keeps, per key,
/// the state with the highest version. Highest version rather than last written: a
/// record a previous owner wrote late must not roll a user back. Blocking; run it off
/// the async runtime.
///
/// "Its end" is where the fetch path reports end of partition *and* a fresh
/// high-water mark agrees. A high-water mark queried once up front is not enough: a
/// broker may report a stale one (seen with tansu), and stopping there restores a
/// state older than records already acknowledged, whose input offsets were committed,
/// losing those events for good.
pub(crate) fn restore_partition(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let kafka_error = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let mut config = kafka.assign_consumer_config();
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().map_err(kafka_error)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(kafka_error)?;
    consumer.assign(&assignment).map_err(kafka_error)?;
    let mut users: HashMap<String, UserRecord> = HashMap::new();
    let mut records = 0_u64;
    let mut skipped = 0_u64;
    // The offset after the last record read.
    let mut next_offset = 0_i64;
    loop {
        if started.elapsed() > timeout {
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
            Err(KafkaError::PartitionEOF(_)) => {
                let (_low, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(kafka_error)?;
                if next_offset >= high {
                    break;
                }
                // Records were written (or became visible) since: keep reading.
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, topic, partition, "error while restoring; retrying");
                continue;
            }
        };
        records += 1;
        next_offset = next_offset.max(message.offset() + 1);
        match decode(&message) {
            Some((key, record)) => {
                let newer = users
                    .get(&key)
                    .is_none_or(|held| record.version > held.version);
                if newer {
                    users.insert(key, record);
                }
            }
            None => skipped += 1,
        }
    }
    Ok(Restored {
        users,
        records,
        skipped,
        end_offset: next_offset,
        elapsed: started.elapsed(),
    })
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
