//! Kafka plumbing shared by fanout's stages: client settings, topic names, the embedded
//! cluster of `fanout dev` and the tests, and the acknowledgement groups and input log that
//! let a stage commit an input offset only once everything derived from it is in Kafka.
//! Also the flood limit every stage puts on the log lines its input can drive
//! ([`LogLimit`]).

mod acks;
mod embedded;
mod group;
mod health;
mod log_limit;
mod partitioner;
mod pipeline;
mod settings;

pub use acks::{
    AckGroup, AckingContext, InputLog, OutputProducer, OutputRecord, store_input_offset,
};
pub use embedded::{EMBEDDED_CLIENT_SETTINGS, EmbeddedKafka, EmbeddedKafkaError};
pub use group::{
    GroupBounds, GroupMetrics, GroupMonitor, GroupStage, GroupState, GroupWatch, PartitionSample,
    Rejoin, leave_group,
};
pub use health::{KafkaClientMetrics, StageContext, StageHealth, partition_ids};
pub use log_limit::{Admission, LogLimit, LogLimiter, LogLimits, LogLine, Summary};
pub use partitioner::{PartitionCount, murmur2, partition_for_key};
pub use pipeline::{commit_stored, enqueue};
pub use settings::{InvalidSetting, KafkaSettings, Topics, require_positive};

/// Errors of this crate's helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}
