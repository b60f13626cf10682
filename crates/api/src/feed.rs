//! Feeds the api's tables: unread-counts into a count table (the edge's own), and
//! read-receipts into the receipt table; every partition by `assign`, from the
//! beginning, outside any consumer group. Ready once both have caught up with the ends
//! they had when the feed started, so an answer is never older than the api's start.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use fanout_edge::feed::{Watermarks, count_record, starting_positions};
use fanout_edge::table::CountTable;
use fanout_kafka::{KafkaSettings, PartitionCount, StageContext, StageHealth};
use fanout_schema::v1;
use prost::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics::{ApiMetrics, FeedRecord};
use crate::receipts::{Applied, ReceiptTable};

/// How often the table sizes are set in the metrics.
const STATS_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("the feed's setup task failed: {0}")]
    Setup(String),
    /// `api.shards` covers another partition count than unread-counts has.
    #[error("{0}")]
    Layout(String),
}

impl From<fanout_edge::feed::FeedError> for FeedError {
    fn from(error: fanout_edge::feed::FeedError) -> Self {
        match error {
            fanout_edge::feed::FeedError::Client(error) => Self::Client(error),
            fanout_edge::feed::FeedError::Setup(reason) => Self::Setup(reason),
            fanout_edge::feed::FeedError::Layout(reason) => Self::Layout(reason),
        }
    }
}

/// The tables the api answers from.
#[derive(Default)]
pub struct Tables {
    pub counts: CountTable,
    pub receipts: RwLock<ReceiptTable>,
}

pub struct Feed {
    pub kafka: KafkaSettings,
    pub counts_topic: String,
    pub receipts_topic: String,
    pub tables: Arc<Tables>,
    /// The partition count `api.shards` covers, checked against unread-counts'.
    pub shard_partitions: Option<PartitionCount>,
    pub metrics: ApiMetrics,
    pub health: StageHealth,
}

/// Reads both topics into the tables until `shutdown`.
pub async fn run(feed: Feed, shutdown: CancellationToken) -> Result<(), FeedError> {
    let Feed {
        kafka,
        counts_topic,
        receipts_topic,
        tables,
        shard_partitions,
        metrics,
        health,
    } = feed;
    let mut starts: HashMap<(bool, i32), (i64, i64)> = HashMap::new();
    for (is_receipts, topic) in [(false, &counts_topic), (true, &receipts_topic)] {
        let start = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            start = starting_positions(&kafka, topic, &[], None) => start?,
        };
        // A shard map for another partition count would send users to the wrong shard.
        if !is_receipts
            && let Some(covered) = shard_partitions
            && covered != start.partitions
        {
            return Err(FeedError::Layout(format!(
                "api.shards: the shards cover {covered} partitions, {topic} has {}",
                start.partitions
            )));
        }
        let positions: Watermarks = start.positions;
        starts.extend(
            positions
                .into_iter()
                .map(|(partition, range)| ((is_receipts, partition), range)),
        );
    }
    // Broker outages are reported to a health of the feed's own, not the api's: an api
    // whose brokers are away stays ready, so that a load balancer keeps sending it
    // publishes to answer 503 with Retry-After (a documented answer) rather than
    // failing them itself; its tables answer as of the outage's start meanwhile.
    let feed_health = StageHealth::new();
    let context = StageContext::new(feed_health.clone()).with_metrics(metrics.kafka().clone());
    let consumer: StreamConsumer<StageContext> =
        KafkaSettings::with_statistics(kafka.assign_consumer_config())
            .create_with_context(context)
            .map_err(FeedError::Client)?;
    let mut assignment = TopicPartitionList::new();
    let mut behind: HashMap<(bool, i32), i64> = HashMap::new();
    for ((is_receipts, partition), (start, high)) in starts {
        let topic = if is_receipts {
            &receipts_topic
        } else {
            &counts_topic
        };
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(FeedError::Client)?;
        if high > start {
            behind.insert((is_receipts, partition), high);
        }
    }
    consumer.assign(&assignment).map_err(FeedError::Client)?;
    tracing::info!(
        partitions = assignment.count(),
        "api feed started (unread-counts, read-receipts)"
    );
    if behind.is_empty() {
        caught_up(&tables, &metrics, &health);
    }
    let mut stats_tick = tokio::time::interval(STATS_TICK);
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = stats_tick.tick() => {
                set_sizes(&tables, &metrics);
                continue;
            }
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => {
                feed_health.set_brokers_down(false);
                message
            }
            Err(error) => {
                metrics.kafka().consumer_error(&error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let is_receipts = message.topic() == receipts_topic;
        metrics.feed_record(if is_receipts {
            apply_receipt(&tables, &message)
        } else {
            apply_count(&tables, &message)
        });
        if !behind.is_empty() {
            let at = (is_receipts, message.partition());
            if behind
                .get(&at)
                .is_some_and(|high| message.offset() + 1 >= *high)
            {
                behind.remove(&at);
                if behind.is_empty() {
                    caught_up(&tables, &metrics, &health);
                }
            }
        }
    }
    Ok(())
}

fn caught_up(tables: &Tables, metrics: &ApiMetrics, health: &StageHealth) {
    set_sizes(tables, metrics);
    let receipts = tables
        .receipts
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .stats();
    tracing::info!(
        users = tables.counts.len(),
        conversations = receipts.conversations,
        members = receipts.members,
        "api tables caught up"
    );
    health.set_ready(true);
}

fn set_sizes(tables: &Tables, metrics: &ApiMetrics) {
    let receipts = tables
        .receipts
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .stats();
    metrics.set_table_sizes(tables.counts.len(), receipts);
}

fn apply_count(tables: &Tables, message: &impl Message) -> FeedRecord {
    match count_record(message) {
        Some((key, value)) if tables.counts.apply(key, value) => FeedRecord::CountApplied,
        Some(_) => FeedRecord::Stale,
        None => FeedRecord::Invalid,
    }
}

fn apply_receipt(tables: &Tables, message: &impl Message) -> FeedRecord {
    let Some(payload) = message.payload() else {
        // A tombstone: the router writes none, and nothing is forgotten by one.
        return FeedRecord::Invalid;
    };
    let Ok(record) = v1::ReadReceipt::decode(payload) else {
        return FeedRecord::Invalid;
    };
    let applied = tables
        .receipts
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .apply(&record);
    match applied {
        Applied::Changed => FeedRecord::ReceiptApplied,
        Applied::Unchanged => FeedRecord::Stale,
        Applied::Invalid => FeedRecord::Invalid,
    }
}
