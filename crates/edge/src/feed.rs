//! Feeds the count table from unread-counts: every partition (or the configured
//! subset) by `assign`, from the beginning, outside any consumer group; and the stream
//! hub from user-streams, the same partitions, from their end (live events only).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fanout_kafka::{KafkaSettings, StageContext, StageHealth};
use fanout_schema::v1;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::streams::{StreamFrame, StreamHub};
use crate::table::{CountTable, CountValue};
use crate::telemetry::{CountRecord, EdgeMetrics, StreamRecord};

/// Low and high-water mark of each partition.
type Watermarks = HashMap<i32, (i64, i64)>;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("the feed's setup task failed: {0}")]
    Setup(String),
}

/// What the feed reads and where it reports.
pub struct Feed {
    pub kafka: KafkaSettings,
    /// The unread-counts topic.
    pub topic: String,
    /// The user-streams topic.
    pub streams_topic: String,
    pub streams: Arc<StreamHub>,
    /// Partitions to read; empty means all.
    pub partitions: Vec<i32>,
    pub table: Arc<CountTable>,
    pub metrics: EdgeMetrics,
    /// Set to true once the table has caught up; sessions wait for it.
    pub ready: watch::Sender<bool>,
    pub health: StageHealth,
}

/// Reads the topic into the table until `shutdown` is cancelled. Sets `ready` once every
/// partition has been read up to the high-water mark it had when the feed started.
pub async fn run(feed: Feed, shutdown: CancellationToken) -> Result<(), FeedError> {
    let Feed {
        kafka,
        topic,
        streams_topic,
        streams,
        partitions,
        table,
        metrics,
        ready,
        health,
    } = feed;
    let kafka = &kafka;
    let topic = topic.as_str();
    let partitions = partitions.as_slice();
    let targets = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        targets = starting_positions(kafka, topic, partitions) => targets?,
    };
    // Streams are live: read from the end as it is now, resolved here rather than left
    // to the consumer, so that every event written once the table is ready is read.
    let stream_ends = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        ends = starting_positions(kafka, &streams_topic, partitions) => ends?,
    };
    let context = StageContext::new(health.clone()).with_metrics(metrics.kafka().clone());
    let consumer: StreamConsumer<StageContext> =
        KafkaSettings::with_statistics(kafka.assign_consumer_config())
            .create_with_context(context)
            .map_err(FeedError::Client)?;
    let mut assignment = TopicPartitionList::new();
    for partition in targets.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(FeedError::Client)?;
    }
    for (partition, (_, high)) in &stream_ends {
        assignment
            .add_partition_offset(&streams_topic, *partition, Offset::Offset(*high))
            .map_err(FeedError::Client)?;
    }
    consumer.assign(&assignment).map_err(FeedError::Client)?;
    // Partitions still to be read up to their starting high-water mark.
    let mut behind: HashMap<i32, i64> = targets
        .into_iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(partition, (_, high))| (partition, high))
        .collect();
    if behind.is_empty() {
        ready.send_replace(true);
        health.set_ready(true);
    }
    tracing::info!(topic, partitions = assignment.count(), "edge feed started");
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => {
                health.set_brokers_down(false);
                message
            }
            Err(error) => {
                metrics.kafka().consumer_error(&error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if message.topic() == streams_topic {
            publish(&streams, &message, &metrics);
            continue;
        }
        apply(&table, &message, &metrics);
        if !behind.is_empty() {
            let partition = message.partition();
            if behind
                .get(&partition)
                .is_some_and(|high| message.offset() + 1 >= *high)
            {
                behind.remove(&partition);
                if behind.is_empty() {
                    metrics.set_table_keys(table.len());
                    tracing::info!(users = table.len(), "edge count table caught up");
                    ready.send_replace(true);
                    health.set_ready(true);
                }
            }
        }
    }
    Ok(())
}

fn apply(
    table: &CountTable,
    message: &rdkafka::message::BorrowedMessage<'_>,
    metrics: &EdgeMetrics,
) {
    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        metrics.count_record(CountRecord::Invalid);
        return;
    };
    let Ok(record) = v1::UnreadCount::decode(message.payload().unwrap_or_default()) else {
        metrics.count_record(CountRecord::Invalid);
        return;
    };
    let value = CountValue {
        count: record.count,
        version: record.version,
        occurred_at_ms: record.occurred_at_ms,
        changes: 0,
    };
    if table.apply(key, value) {
        metrics.count_record(CountRecord::Applied);
    } else {
        metrics.count_record(CountRecord::Stale);
    }
}

/// Hands a user-streams record to the sessions subscribed to its user: rendered once,
/// and only if someone is.
fn publish(
    streams: &StreamHub,
    message: &rdkafka::message::BorrowedMessage<'_>,
    metrics: &EdgeMetrics,
) {
    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        metrics.stream_record(StreamRecord::Invalid);
        return;
    };
    if !streams.is_subscribed(key) {
        metrics.stream_record(StreamRecord::Unwatched);
        return;
    }
    let Some(frame) = v1::StreamEvent::decode(message.payload().unwrap_or_default())
        .ok()
        .and_then(|record| render(&record))
    else {
        metrics.stream_record(StreamRecord::Invalid);
        return;
    };
    let published = streams.publish(key, frame);
    metrics.stream_record(if published.repeated {
        StreamRecord::Repeated
    } else {
        StreamRecord::Delivered
    });
}

/// A stream record's frame body; `None` when its data is not a JSON object (the router
/// never writes one, so the record is not fanout's).
fn render(record: &v1::StreamEvent) -> Option<StreamFrame> {
    if !record.data_json.is_empty() {
        let data: &serde_json::value::RawValue = serde_json::from_str(&record.data_json).ok()?;
        if !data.get().starts_with('{') {
            return None;
        }
    }
    let body = fanout_protocol::stream::event_body(&fanout_protocol::stream::EventFields {
        event: &record.event,
        data_json: &record.data_json,
        conversation_id: &record.conversation_id,
        seq: record.seq,
        message_id: &record.message_id,
        sender: &record.sender,
        reader: &record.reader,
        unread_count: record.unread_count,
        epoch: record.epoch,
        offset: record.offset,
    });
    Some(StreamFrame {
        epoch: record.epoch,
        offset: record.offset,
        body: body.into_boxed_str(),
        source_time: (record.occurred_at_ms > 0).then_some(record.occurred_at_ms),
    })
}

/// The partitions to read and each one's low and high-water marks now. Retries until the topic
/// exists (an edge may start before the topics are created).
async fn starting_positions(
    kafka: &KafkaSettings,
    topic: &str,
    wanted: &[i32],
) -> Result<Watermarks, FeedError> {
    loop {
        let kafka = kafka.clone();
        let topic_name = topic.to_owned();
        let wanted = wanted.to_vec();
        let found =
            tokio::task::spawn_blocking(move || -> Result<Option<Watermarks>, KafkaError> {
                let consumer: BaseConsumer = kafka.assign_consumer_config().create()?;
                let timeout = Duration::from_secs(10);
                let metadata = consumer.fetch_metadata(Some(&topic_name), timeout)?;
                let Some(topic_metadata) =
                    metadata.topics().iter().find(|t| t.name() == topic_name)
                else {
                    return Ok(None);
                };
                if topic_metadata.error().is_some() || topic_metadata.partitions().is_empty() {
                    return Ok(None);
                }
                let mut positions = HashMap::new();
                for partition in topic_metadata.partitions() {
                    let id = partition.id();
                    if !wanted.is_empty() && !wanted.contains(&id) {
                        continue;
                    }
                    positions.insert(id, consumer.fetch_watermarks(&topic_name, id, timeout)?);
                }
                Ok(Some(positions))
            })
            .await
            .map_err(|error| FeedError::Setup(error.to_string()))?;
        match found {
            Ok(Some(positions)) => return Ok(positions),
            Ok(None) => tracing::warn!(topic, "topic not found yet; retrying"),
            Err(error) => {
                tracing::warn!(%error, topic, "could not read the topic's partitions; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
