use std::time::Duration;

use std::sync::Arc;

use fanout_kafka::{
    AckGroup, GroupWatch, InputLog, InvalidSetting, KafkaSettings, OutputProducer, StageContext,
    StageHealth, Topics, commit_stored, leave_group, require_positive, store_input_offset,
};
use fanout_schema::{CONTENT_TYPE_HEADER, user_key};
use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{IngestLimits, Rejection, decode_event, fan_out, validate};
use crate::metrics::IngestMetrics;

/// Ingest's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Consumer group of all ingest instances.
    pub group_id: String,
    /// Input records whose outputs may be awaiting acknowledgement at once.
    pub max_in_flight: usize,
    pub limits: IngestLimits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            group_id: "fanout-ingest".to_owned(),
            max_in_flight: 10_000,
            limits: IngestLimits::default(),
        }
    }
}

impl IngestConfig {
    /// Checks what serde cannot, naming the key within `[ingest]`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.group_id.trim().is_empty() {
            return Err(InvalidSetting::new("group_id", "must not be empty"));
        }
        let limits = &self.limits;
        require_positive(&[
            ("max_in_flight", self.max_in_flight as u64),
            ("limits.max_record_bytes", limits.max_record_bytes as u64),
            ("limits.max_recipients", limits.max_recipients as u64),
            ("limits.max_id_bytes", limits.max_id_bytes as u64),
            ("limits.max_seq", limits.max_seq),
            ("limits.max_data_bytes", limits.max_data_bytes as u64),
        ])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("an output record was not acknowledged by Kafka: {0}")]
    Delivery(#[source] KafkaError),
}

/// Headers on a dead-letter record.
pub mod dead_letter_headers {
    /// The [`Rejection::reason`](crate::Rejection::reason) label.
    pub const ERROR: &str = "fanout-error";
    /// A human-readable description of the rejection.
    pub const DETAIL: &str = "fanout-error-detail";
    /// `topic/partition/offset` of the original record.
    pub const SOURCE: &str = "fanout-source";
}

/// Runs ingest until `shutdown` is cancelled, then finishes what is in flight and
/// commits. Returns an error only for failures it cannot retry.
pub async fn run(
    kafka: &KafkaSettings,
    topics: &Topics,
    config: &IngestConfig,
    metrics: IngestMetrics,
    health: StageHealth,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let (group, monitor) = GroupWatch::start(
        kafka,
        &config.group_id,
        &topics.message_events,
        health.clone(),
        metrics.group().clone(),
        &shutdown,
    )
    .map_err(IngestError::Client)?;
    // A consumer subscribed to the input topic: at start, and again whenever the group
    // stalls (leaving it and joining with a new member id). Stateless: ready once the
    // group has given it its partitions (nothing to restore); readiness then follows
    // the brokers and the group.
    let subscribe = || -> Result<StreamConsumer<StageContext>, IngestError> {
        let context = StageContext::new(health.clone())
            .with_metrics(metrics.kafka().clone())
            .with_group(group.clone())
            .ready_on_assignment();
        let consumer: StreamConsumer<StageContext> =
            KafkaSettings::with_statistics(kafka.group_consumer_config(&config.group_id))
                .create_with_context(context)
                .map_err(IngestError::Client)?;
        consumer
            .subscribe(&[&topics.message_events])
            .map_err(IngestError::Client)?;
        Ok(consumer)
    };
    let mut consumer = subscribe()?;
    let producer = OutputProducer::new(
        &kafka.producer_config(),
        StageContext::new(health.clone()).with_metrics(metrics.kafka().clone()),
    )
    .map_err(IngestError::Client)?;
    tracing::info!(topic = %topics.message_events, group = %config.group_id, "ingest started");

    let mut stage = Ingest {
        producer,
        topics,
        config,
        metrics: &metrics,
        log: InputLog::new(),
        scratch: Vec::new(),
    };
    let max_batch = MAX_POLL_BATCH.min(config.max_in_flight);
    let mut group_tick = tokio::time::interval(GROUP_CHECK_INTERVAL);
    group_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut rejoin = false;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = group_tick.tick() => rejoin = group.check().is_some(),
            () = stage.producer.acked() => {
                if stage.store_done(&consumer)? {
                    health.set_brokers_down(false);
                }
            }
            received = consumer.recv(), if stage.log.len() < config.max_in_flight => {
                match received {
                    Ok(first) => {
                        health.set_brokers_down(false);
                        let mut messages = vec![first];
                        while messages.len() < max_batch {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => messages.push(message),
                                Some(Err(error)) => {
                                    metrics.kafka().consumer_error(&error);
                                    break;
                                }
                                None => break,
                            }
                        }
                        stage.handle_batch(&messages).await?;
                    }
                    Err(error) => {
                        metrics.kafka().consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        if rejoin {
            // What is in flight is replayed by the next owner (the router skips the
            // repeats); what is done is stored and committed as the consumer leaves.
            stage.store_done(&consumer)?;
            leave_group(consumer).await;
            consumer = subscribe()?;
        }
    }
    monitor.stop();

    // Drain: everything consumed so far is delivered, its offsets stored and committed.
    while !stage.log.is_empty() {
        stage.producer.acked().await;
        stage.store_done(&consumer)?;
    }
    commit_stored(&consumer);
    tracing::info!("ingest stopped");
    Ok(())
}

/// How often ingest asks its [`GroupWatch`] whether its group is stalled.
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Most records taken from the consumer's queue to process as one batch: what is
/// already fetched, without waiting for more.
const MAX_POLL_BATCH: usize = 4096;

struct Ingest<'a> {
    producer: OutputProducer,
    topics: &'a Topics,
    config: &'a IngestConfig,
    metrics: &'a IngestMetrics,
    /// Input records whose outputs are in flight.
    log: InputLog,
    /// Reused for every user event's encoding (the producer copies it).
    scratch: Vec<u8>,
}

impl Ingest<'_> {
    /// Stores the offsets of inputs whose outputs are all acknowledged; whether any were.
    fn store_done(&mut self, consumer: &StreamConsumer<StageContext>) -> Result<bool, IngestError> {
        let done = self.log.advance().map_err(IngestError::Delivery)?;
        for (partition, offset) in &done {
            store_input_offset(consumer, &self.topics.message_events, *partition, *offset);
        }
        Ok(!done.is_empty())
    }

    /// Handles the records of one poll: per partition, their outputs share one
    /// acknowledgement group (a message to 10k recipients is 10k records and one group).
    async fn handle_batch(&mut self, messages: &[BorrowedMessage<'_>]) -> Result<(), IngestError> {
        let mut open: Vec<(i32, Arc<AckGroup>, i64, usize)> = Vec::new();
        for message in messages {
            let partition = message.partition();
            let slot = match open.iter().position(|(id, ..)| *id == partition) {
                Some(slot) => slot,
                None => {
                    open.push((partition, self.producer.group(), -1, 0));
                    open.len() - 1
                }
            };
            let group = open[slot].1.clone();
            open[slot].2 = message.offset();
            open[slot].3 += 1;
            self.handle(message, &group).await?;
        }
        for (partition, group, last_offset, records) in open {
            group.seal();
            self.log.push(partition, last_offset, records, group);
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
        group: &Arc<AckGroup>,
    ) -> Result<(), IngestError> {
        let limits = &self.config.limits;
        let value = message.payload().unwrap_or_default();
        let content_type = header(message, CONTENT_TYPE_HEADER);
        let checked =
            decode_event(value, content_type, limits).and_then(|event| validate(event, limits));
        match checked {
            Ok(valid) => {
                let mut produced = 0;
                for user_event in fan_out(&valid) {
                    let key = user_key(&user_event.partner, &user_event.user);
                    self.scratch.clear();
                    user_event.encode(&mut self.scratch).ok();
                    let record =
                        BaseRecord::with_opaque_to(&self.topics.user_events, group.clone())
                            .key(key.as_str())
                            .payload(self.scratch.as_slice());
                    self.producer
                        .send(record)
                        .await
                        .map_err(IngestError::Client)?;
                    produced += 1;
                }
                self.metrics.accepted(produced);
                Ok(())
            }
            Err(rejection) => {
                self.metrics
                    .dead_lettered(&rejection, message.partition(), message.offset());
                dead_letter(
                    message,
                    &rejection,
                    &self.producer,
                    group,
                    &self.topics.dead_letter,
                )
                .await
            }
        }
    }
}

/// Sends the original key, value and headers to dead-letter, with headers naming why.
async fn dead_letter(
    message: &BorrowedMessage<'_>,
    rejection: &Rejection,
    producer: &OutputProducer,
    group: &Arc<AckGroup>,
    dead_letter_topic: &str,
) -> Result<(), IngestError> {
    let detail = rejection.to_string();
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: dead_letter_headers::ERROR,
            value: Some(rejection.reason()),
        })
        .insert(Header {
            key: dead_letter_headers::DETAIL,
            value: Some(detail.as_str()),
        })
        .insert(Header {
            key: dead_letter_headers::SOURCE,
            value: Some(source.as_str()),
        });
    if let Some(original) = message.headers() {
        for header in original.iter() {
            headers = headers.insert(header);
        }
    }
    let mut record: BaseRecord<'_, [u8], [u8], Arc<AckGroup>> =
        BaseRecord::with_opaque_to(dead_letter_topic, group.clone())
            .payload(message.payload().unwrap_or_default())
            .headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    producer.send(record).await.map_err(IngestError::Client)
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|header| header.key.eq_ignore_ascii_case(name))
        .and_then(|header| header.value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        IngestConfig::default().validate().unwrap();
    }

    #[test]
    fn an_empty_group_id_is_refused() {
        let config = IngestConfig {
            group_id: " ".to_owned(),
            ..IngestConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "group_id: must not be empty"
        );
    }

    /// Sets one bound to zero.
    type Zero = fn(&mut IngestConfig);

    #[test]
    fn a_zero_bound_is_refused_naming_its_key() {
        let zeroed: [(&str, Zero); 6] = [
            ("max_in_flight", |config| config.max_in_flight = 0),
            ("limits.max_record_bytes", |config| {
                config.limits.max_record_bytes = 0;
            }),
            ("limits.max_recipients", |config| {
                config.limits.max_recipients = 0;
            }),
            ("limits.max_id_bytes", |config| {
                config.limits.max_id_bytes = 0
            }),
            ("limits.max_seq", |config| config.limits.max_seq = 0),
            ("limits.max_data_bytes", |config| {
                config.limits.max_data_bytes = 0;
            }),
        ];
        for (key, zero) in zeroed {
            let mut config = IngestConfig::default();
            zero(&mut config);
            assert_eq!(
                config.validate().unwrap_err().to_string(),
                format!("{key}: must be positive")
            );
        }
    }
}
