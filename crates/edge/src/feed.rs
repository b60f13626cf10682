//! Feeds the count table from unread-counts: every partition (or the configured
//! subset) by `assign`, from the beginning, outside any consumer group; and the stream
//! hub from user-streams, the same partitions, from the first record of the history
//! window's age (`edge.history.max_age_ms` ago). The node is ready once both have
//! caught up with the end they had when the feed started: a restarted edge holds the
//! window again before it takes a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fanout_kafka::{KafkaSettings, PartitionCount, StageContext, StageHealth};
use fanout_schema::v1;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use fanout_protocol::stream::{Epoch, stream_tag};

use crate::shard::Shard;
use crate::streams::{StreamFrame, StreamHub};
use crate::table::{CountTable, CountValue};
use crate::telemetry::{CountRecord, EdgeMetrics, StreamRecord};

/// Where reading starts in each partition, and its high-water mark then.
pub type Watermarks = HashMap<i32, (i64, i64)>;

/// A topic's partition count, and where reading starts in the partitions wanted.
#[derive(Debug, Clone)]
pub struct TopicStart {
    pub partitions: PartitionCount,
    pub positions: Watermarks,
}

/// How often the history window is aged and its metrics set while records come or not.
const HISTORY_TICK: Duration = Duration::from_secs(1);

/// A catch-up that took longer than this is followed by another, to the ends as they
/// are then, so that "ready" means caught up with about now rather than with when the
/// edge started: what was written meanwhile is not left for after the clients are back.
const CATCH_UP_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Catch-ups at most before the node is ready anyway.
const MAX_CATCH_UPS: u32 = 5;

/// Records the feed handles in one turn when the consumer holds them already.
const RECORDS_PER_TURN: usize = 64;

/// A partition of either topic the feed reads: (is a user-streams partition, partition).
type At = (bool, i32);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("the feed's setup task failed: {0}")]
    Setup(String),
    /// The topics do not fit the edge's shard: `edge.partitions` names a partition the
    /// topic lacks, or unread-counts and user-streams differ in partition count (so
    /// partition p of one would not hold the users of partition p of the other).
    #[error("{0}")]
    Layout(String),
}

/// What the feed reads and where it reports.
pub struct Feed {
    pub kafka: KafkaSettings,
    /// The unread-counts topic.
    pub topic: String,
    /// The user-streams topic.
    pub streams_topic: String,
    pub streams: Arc<StreamHub>,
    /// Partitions to read (all, unless the shard is partial); the feed records the
    /// topics' partition count in it before the node is ready.
    pub shard: Arc<Shard>,
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
        shard,
        table,
        metrics,
        ready,
        health,
    } = feed;
    let kafka = &kafka;
    let topic = topic.as_str();
    let wanted: Vec<i32> = shard
        .partitions()
        .map(|partitions| partitions.iter().copied().collect())
        .unwrap_or_default();
    let partitions = wanted.as_slice();
    let counts_start = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        start = starting_positions(kafka, topic, partitions, None) => start?,
    };
    // Streams: from the first record of the window's age, resolved here rather than
    // left to the consumer, so that the window is whole and every event written once
    // the node is ready is read.
    let window_start = fanout_schema::unix_millis()
        .saturating_sub(i64::try_from(streams.max_age_ms()).unwrap_or(i64::MAX));
    streams.starts_at(window_start);
    let streams_start = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        starts = starting_positions(kafka, &streams_topic, partitions, Some(window_start)) => starts?,
    };
    check_layout(&shard, topic, &counts_start, &streams_topic, &streams_start)?;
    shard.learned(counts_start.partitions);
    let targets = counts_start.positions;
    let stream_starts = streams_start.positions;
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
    for (partition, (start, _)) in &stream_starts {
        assignment
            .add_partition_offset(&streams_topic, *partition, Offset::Offset(*start))
            .map_err(FeedError::Client)?;
    }
    consumer.assign(&assignment).map_err(FeedError::Client)?;
    // Until ready: the next offset to read of every partition, and the partitions
    // still to be read up to their high-water mark.
    let mut position: HashMap<At, i64> = HashMap::new();
    let mut behind: HashMap<At, i64> = HashMap::new();
    for (at, (start, high)) in targets
        .into_iter()
        .map(|(partition, range)| ((false, partition), range))
        .chain(
            stream_starts
                .into_iter()
                .map(|(partition, range)| ((true, partition), range)),
        )
    {
        position.insert(at, start);
        if high > start {
            behind.insert(at, high);
        }
    }
    let mut catch_up = (1, tokio::time::Instant::now());
    if behind.is_empty() {
        ready.send_replace(true);
        health.set_ready(true);
    }
    tracing::info!(topic, partitions = assignment.count(), "edge feed started");
    let mut history_tick = tokio::time::interval(HISTORY_TICK);
    history_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut history = streams.history();
    // One stream for the feed's life: `recv` makes (and registers) a stream per record.
    let mut records = consumer.stream();
    'feed: loop {
        let mut received = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = history_tick.tick() => {
                streams.expire(fanout_schema::unix_millis());
                table.sweep();
                let now = streams.history();
                metrics.history(&now, &history);
                history = now;
                continue;
            }
            received = records.next() => received,
        };
        // What the consumer holds already is handled in this turn, without a select
        // (and its cancellation and timer checks) per record; bounded, so that the tick
        // and the shutdown are looked at between turns.
        for handled in 1..=RECORDS_PER_TURN {
            let message = match received {
                Some(Ok(message)) => {
                    health.set_brokers_down(false);
                    message
                }
                Some(Err(error)) => {
                    metrics.kafka().consumer_error(&error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'feed;
                }
                // The consumer's stream never ends.
                None => break 'feed,
            };
            let is_stream = message.topic() == streams_topic;
            if is_stream {
                publish(&streams, &message, &metrics);
            } else {
                apply(&table, &message, &metrics);
            }
            if !behind.is_empty() {
                let at = (is_stream, message.partition());
                position.insert(at, message.offset() + 1);
                if behind
                    .get(&at)
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    behind.remove(&at);
                    let (round, started) = catch_up;
                    if behind.is_empty()
                        && round < MAX_CATCH_UPS
                        && started.elapsed() > CATCH_UP_AGAIN_AFTER
                    {
                        let ends = tokio::select! {
                            () = shutdown.cancelled() => break 'feed,
                            ends = ends_now(kafka, topic, &streams_topic, partitions) => ends?,
                        };
                        behind = ends
                            .into_iter()
                            .filter(|(at, high)| position.get(at).is_some_and(|next| high > next))
                            .collect();
                        tracing::info!(
                            round,
                            partitions = behind.len(),
                            "edge feed catching up again"
                        );
                        catch_up = (round + 1, tokio::time::Instant::now());
                    }
                    if behind.is_empty() {
                        position = HashMap::new();
                        metrics.set_table_keys(table.len());
                        let window = streams.history();
                        tracing::info!(
                            users = table.len(),
                            history_events = window.events,
                            "edge count table and history window caught up"
                        );
                        ready.send_replace(true);
                        health.set_ready(true);
                    }
                }
            }
            // Not one more: a record taken from the stream must be handled.
            if handled == RECORDS_PER_TURN {
                break;
            }
            received = match records.next().now_or_never() {
                Some(next) => next,
                None => break,
            };
        }
    }
    Ok(())
}

/// Refuses a partial shard whose topics do not fit it: a configured partition the
/// topic lacks would leave its users refused everywhere, and counts and streams of
/// different partition counts would put a user's count and stream on different
/// partitions (DESIGN.md: they share one count). A full edge reads whatever is there.
fn check_layout(
    shard: &Shard,
    counts_topic: &str,
    counts: &TopicStart,
    streams_topic: &str,
    streams: &TopicStart,
) -> Result<(), FeedError> {
    let Some(partitions) = shard.partitions() else {
        return Ok(());
    };
    if counts.partitions != streams.partitions {
        return Err(FeedError::Layout(format!(
            "edge.partitions: {counts_topic} has {} partitions and {streams_topic} {}; a shard needs them equal",
            counts.partitions, streams.partitions
        )));
    }
    if let Some(missing) = partitions
        .iter()
        .find(|partition| !counts.partitions.contains(**partition))
    {
        return Err(FeedError::Layout(format!(
            "edge.partitions: {missing} is not a partition of {counts_topic}, which has {}",
            counts.partitions
        )));
    }
    Ok(())
}

fn apply(
    table: &CountTable,
    message: &rdkafka::message::BorrowedMessage<'_>,
    metrics: &EdgeMetrics,
) {
    let Some((key, value)) = count_record(message) else {
        metrics.count_record(CountRecord::Invalid);
        return;
    };
    if table.apply(key, value) {
        metrics.count_record(CountRecord::Applied);
    } else {
        metrics.count_record(CountRecord::Stale);
    }
}

/// An unread-counts record's key and value; `None` when it is not one the router wrote.
pub fn count_record(message: &impl Message) -> Option<(&str, CountValue)> {
    let key = message
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())?;
    let record = v1::UnreadCount::decode(message.payload().unwrap_or_default()).ok()?;
    Some((
        key,
        CountValue {
            count: record.count,
            version: record.version,
            occurred_at_ms: record.occurred_at_ms,
            changes: 0,
        },
    ))
}

/// Hands a user-streams record to the history window and the sessions subscribed to
/// its user: rendered once.
fn publish(
    streams: &StreamHub,
    message: &rdkafka::message::BorrowedMessage<'_>,
    metrics: &EdgeMetrics,
) {
    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        metrics.stream_record(StreamRecord::Invalid);
        return;
    };
    let now_ms = fanout_schema::unix_millis();
    let written_ms = message.timestamp().to_millis().unwrap_or(now_ms);
    let Some(frame) = v1::StreamEvent::decode(message.payload().unwrap_or_default())
        .ok()
        .and_then(|record| render(key, &record, written_ms))
    else {
        metrics.stream_record(StreamRecord::Invalid);
        return;
    };
    let published = streams.publish(key, frame, now_ms);
    metrics.stream_record(if published.repeated {
        StreamRecord::Repeated
    } else if published.queued + published.overflowed == 0 {
        StreamRecord::Unwatched
    } else {
        StreamRecord::Delivered
    });
}

/// A stream record's frame body; `None` when its data is not a JSON object (the router
/// never writes one, so the record is not fanout's).
fn render(key: &str, record: &v1::StreamEvent, written_ms: i64) -> Option<StreamFrame> {
    if !record.data_json.is_empty() {
        let data: &serde_json::value::RawValue = serde_json::from_str(&record.data_json).ok()?;
        if !data.get().starts_with('{') {
            return None;
        }
    }
    let epoch = Epoch {
        epoch: record.epoch,
        tag: stream_tag(key),
    };
    let body = fanout_protocol::stream::event_body(&fanout_protocol::stream::EventFields {
        event: &record.event,
        data_json: &record.data_json,
        conversation_id: &record.conversation_id,
        seq: record.seq,
        message_id: &record.message_id,
        sender: &record.sender,
        reader: &record.reader,
        unread_count: record.unread_count,
        epoch,
        offset: record.offset,
    });
    Some(StreamFrame {
        epoch,
        offset: record.offset,
        body: body.into_boxed_str(),
        source_time: (record.occurred_at_ms > 0).then_some(record.occurred_at_ms),
        written_ms,
    })
}

/// The partitions to read, and in each where reading starts and its high-water mark
/// now: the start is the low-water mark, or with `since_ms` the first record written at
/// or after it. Retries until the topic exists (an edge may start before the topics are
/// created).
pub async fn starting_positions(
    kafka: &KafkaSettings,
    topic: &str,
    wanted: &[i32],
    since_ms: Option<i64>,
) -> Result<TopicStart, FeedError> {
    loop {
        let kafka = kafka.clone();
        let topic_name = topic.to_owned();
        let wanted = wanted.to_vec();
        let found =
            tokio::task::spawn_blocking(move || -> Result<Option<TopicStart>, KafkaError> {
                let mut config = kafka.assign_consumer_config();
                // A probe of `first_written_at` reads one record per partition: no need
                // for a fetch's usual megabyte each.
                config.set("max.partition.fetch.bytes", "16384");
                let consumer: BaseConsumer = config.create()?;
                let timeout = Duration::from_secs(10);
                let metadata = consumer.fetch_metadata(Some(&topic_name), timeout)?;
                let Some(topic_metadata) =
                    metadata.topics().iter().find(|t| t.name() == topic_name)
                else {
                    return Ok(None);
                };
                if topic_metadata.error().is_some() {
                    return Ok(None);
                }
                let Some(partitions) = i32::try_from(topic_metadata.partitions().len())
                    .ok()
                    .and_then(PartitionCount::new)
                else {
                    return Ok(None);
                };
                let mut positions = HashMap::new();
                for partition in topic_metadata.partitions() {
                    let id = partition.id();
                    if !wanted.is_empty() && !wanted.contains(&id) {
                        continue;
                    }
                    positions.insert(id, consumer.fetch_watermarks(&topic_name, id, timeout)?);
                }
                if let Some(since_ms) = since_ms {
                    let mut times = TopicPartitionList::new();
                    for partition in positions.keys() {
                        times.add_partition_offset(
                            &topic_name,
                            *partition,
                            Offset::Offset(since_ms),
                        )?;
                    }
                    let found = consumer.offsets_for_times(times, timeout)?;
                    // No record at or after the time, says the broker; or it cannot
                    // look up by time (librdkafka's mock cluster): find out by reading.
                    let mut unanswered = HashMap::new();
                    for element in found.elements() {
                        let partition = element.partition();
                        if let Some((low, high)) = positions.get_mut(&partition) {
                            match element.offset() {
                                Offset::Offset(offset) => *low = offset.clamp(*low, *high),
                                _ if high > low => {
                                    unanswered.insert(partition, (*low, *high));
                                }
                                _ => *low = *high,
                            }
                        }
                    }
                    let read =
                        first_written_at(&consumer, &topic_name, unanswered, since_ms, timeout)?;
                    for (partition, start) in read {
                        if let Some((low, _)) = positions.get_mut(&partition) {
                            *low = start;
                        }
                    }
                }
                Ok(Some(TopicStart {
                    partitions,
                    positions,
                }))
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

/// For each partition and its range (low to high-water mark), the offset of its first
/// record written at or after `since_ms`, or the high-water mark if there is none,
/// found by reading records: a binary search over their timestamps (which a
/// partition's writer makes non-decreasing), all partitions at once, so that it takes
/// as many fetches as one partition's search.
fn first_written_at(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: HashMap<i32, (i64, i64)>,
    since_ms: i64,
    timeout: Duration,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let mut found = HashMap::new();
    // The first records first: a partition written entirely within the window (the
    // window reaches back further than the partition keeps) is read from its start.
    let firsts: HashMap<i32, i64> = ranges
        .iter()
        .map(|(partition, (low, _))| (*partition, *low))
        .collect();
    let mut older = HashMap::new();
    for (partition, read) in written_at(consumer, topic, &firsts, timeout)? {
        let (_, high) = ranges[&partition];
        match read {
            Some((offset, written)) if written >= since_ms => {
                found.insert(partition, offset);
            }
            Some((offset, _)) if offset + 1 < high => {
                older.insert(partition, offset + 1);
            }
            _ => {
                found.insert(partition, high);
            }
        }
    }
    // Then the last: one written before the window has nothing in it.
    let lasts: HashMap<i32, i64> = older
        .keys()
        .map(|partition| (*partition, ranges[partition].1 - 1))
        .collect();
    // Each partition still searched, and the offsets its answer lies within.
    let mut searching = HashMap::new();
    for (partition, read) in written_at(consumer, topic, &lasts, timeout)? {
        let high = ranges[&partition].1;
        match read {
            Some((_, written)) if written >= since_ms => {
                searching.insert(partition, (older[&partition], high - 1, high));
            }
            _ => {
                found.insert(partition, high);
            }
        }
    }
    while !searching.is_empty() {
        let probes: HashMap<i32, i64> = searching
            .iter()
            .map(|(partition, (first, last, _))| (*partition, first + (last - first) / 2))
            .collect();
        for (partition, read) in written_at(consumer, topic, &probes, timeout)? {
            let Some((first, last, high)) = searching.get_mut(&partition) else {
                continue;
            };
            let middle = probes[&partition];
            match read {
                Some((_, written)) if written >= since_ms => *last = middle,
                Some((offset, _)) => *first = offset.max(middle) + 1,
                None => *first = *high,
            }
            if *first >= *last {
                found.insert(partition, (*first).min(*high));
                searching.remove(&partition);
            }
        }
    }
    Ok(found)
}

/// For each partition, the offset and write time of its first record at or after the
/// offset given, `None` when none came within `timeout`.
fn written_at(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &HashMap<i32, i64>,
    timeout: Duration,
) -> Result<HashMap<i32, Option<(i64, i64)>>, KafkaError> {
    let mut at = TopicPartitionList::new();
    for (partition, offset) in offsets {
        at.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&at)?;
    let mut read = HashMap::new();
    let deadline = std::time::Instant::now() + timeout;
    while read.len() < offsets.len() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if offsets
                    .get(&partition)
                    .is_some_and(|offset| message.offset() >= *offset)
                {
                    let written = message.timestamp().to_millis().unwrap_or(i64::MAX);
                    read.entry(partition)
                        .or_insert(Some((message.offset(), written)));
                }
            }
            Some(Err(error)) => return Err(error),
            None => {}
        }
    }
    Ok(offsets
        .keys()
        .map(|partition| (*partition, read.get(partition).copied().flatten()))
        .collect())
}

/// The high-water mark of every partition the feed reads, now.
async fn ends_now(
    kafka: &KafkaSettings,
    topic: &str,
    streams_topic: &str,
    partitions: &[i32],
) -> Result<HashMap<At, i64>, FeedError> {
    let counts = starting_positions(kafka, topic, partitions, None)
        .await?
        .positions;
    let streams = starting_positions(kafka, streams_topic, partitions, None)
        .await?
        .positions;
    Ok(counts
        .into_iter()
        .map(|(partition, (_, high))| ((false, partition), high))
        .chain(
            streams
                .into_iter()
                .map(|(partition, (_, high))| ((true, partition), high)),
        )
        .collect())
}
