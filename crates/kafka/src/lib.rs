//! Kafka plumbing shared by fanout's stages: client settings, topic names, the embedded
//! cluster of `fanout dev` and the tests, and the in-order acknowledgement pipeline that
//! lets a stage commit an input offset only once everything derived from it is in Kafka.

mod embedded;
mod health;
mod pipeline;
mod settings;

pub use embedded::{EMBEDDED_CLIENT_SETTINGS, EmbeddedKafka, EmbeddedKafkaError};
pub use health::{KafkaClientMetrics, StageContext, StageHealth};
pub use pipeline::{AckPipeline, Acked, drain_and_commit, enqueue, flush, store_offset};
pub use settings::{InvalidSetting, KafkaSettings, Topics, require_positive};

/// Errors of this crate's helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}
