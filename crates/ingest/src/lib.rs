//! fanout's ingest stage: consumes message events, turns each into one user event per
//! affected user (keyed `partner/user`) and sends records it cannot use to dead-letter
//! with a `fanout-error` header. Stateless: scale it by adding group members.

pub mod events;
pub mod fuzzing;
mod metrics;
mod service;

pub use events::{IngestLimits, Rejection, ValidEvent, decode_event, fan_out, validate};
pub use metrics::IngestMetrics;
pub use service::{IngestConfig, IngestError, run};
