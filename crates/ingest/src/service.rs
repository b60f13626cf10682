use std::time::Duration;

use fanout_kafka::{
    AckPipeline, InvalidSetting, KafkaSettings, StageContext, StageHealth, Topics,
    drain_and_commit, enqueue, require_positive, store_offset,
};
use fanout_schema::{CONTENT_TYPE_HEADER, user_key};
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
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
    // Stateless: ready once the group has given it its partitions (nothing to restore).
    // Readiness then follows the brokers.
    let context = StageContext::new(health.clone())
        .with_metrics(metrics.kafka().clone())
        .ready_on_assignment();
    let consumer: StreamConsumer<StageContext> =
        KafkaSettings::with_statistics(kafka.group_consumer_config(&config.group_id))
            .create_with_context(context)
            .map_err(IngestError::Client)?;
    let producer: FutureProducer<StageContext> = kafka
        .producer_config()
        .create_with_context(
            StageContext::new(health.clone()).with_metrics(metrics.kafka().clone()),
        )
        .map_err(IngestError::Client)?;
    consumer
        .subscribe(&[&topics.message_events])
        .map_err(IngestError::Client)?;
    tracing::info!(topic = %topics.message_events, group = %config.group_id, "ingest started");

    let mut pipeline = AckPipeline::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(acked) = pipeline.next(), if !pipeline.is_empty() => {
                let acked = acked.map_err(IngestError::Delivery)?;
                health.set_brokers_down(false);
                store_offset(&consumer, &acked);
            }
            received = consumer.recv(), if pipeline.len() < config.max_in_flight => {
                match received {
                    Ok(message) => {
                        health.set_brokers_down(false);
                        let deliveries = handle(&message, &producer, topics, config, &metrics).await?;
                        pipeline.push(message.topic(), message.partition(), message.offset(), deliveries);
                    }
                    Err(error) => {
                        metrics.kafka().consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    // Drain: everything consumed so far is delivered, its offsets stored and committed.
    drain_and_commit(&mut pipeline, &consumer)
        .await
        .map_err(IngestError::Delivery)?;
    tracing::info!("ingest stopped");
    Ok(())
}

async fn handle(
    message: &BorrowedMessage<'_>,
    producer: &FutureProducer<StageContext>,
    topics: &Topics,
    config: &IngestConfig,
    metrics: &IngestMetrics,
) -> Result<Vec<DeliveryFuture>, IngestError> {
    let value = message.payload().unwrap_or_default();
    let content_type = header(message, CONTENT_TYPE_HEADER);
    let checked = decode_event(value, content_type, &config.limits)
        .and_then(|event| validate(event, &config.limits));
    match checked {
        Ok(valid) => {
            let mut deliveries = Vec::new();
            for user_event in fan_out(&valid) {
                let key = user_key(&user_event.partner, &user_event.user);
                let payload = user_event.encode_to_vec();
                let record = FutureRecord::to(&topics.user_events)
                    .key(key.as_str())
                    .payload(payload.as_slice());
                deliveries.push(
                    enqueue(producer, record)
                        .await
                        .map_err(IngestError::Client)?,
                );
            }
            metrics.accepted(deliveries.len());
            Ok(deliveries)
        }
        Err(rejection) => {
            metrics.dead_lettered(&rejection, message.partition(), message.offset());
            let delivery = dead_letter(message, &rejection, producer, &topics.dead_letter).await?;
            Ok(vec![delivery])
        }
    }
}

/// Sends the original key, value and headers to dead-letter, with headers naming why.
async fn dead_letter(
    message: &BorrowedMessage<'_>,
    rejection: &Rejection,
    producer: &FutureProducer<StageContext>,
    dead_letter_topic: &str,
) -> Result<DeliveryFuture, IngestError> {
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
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dead_letter_topic)
        .payload(message.payload().unwrap_or_default())
        .headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    enqueue(producer, record).await.map_err(IngestError::Client)
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
