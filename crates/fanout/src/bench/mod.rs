//! `fanout bench`: load against fanout's stages, measured from outside.
//!
//! - [`router`]: one router's throughput through a broker.
//! - [`ws`]: the WebSocket scenarios (`idle`, `group-message`, `steady`, `push-rate`,
//!   `connect-storm`, `scale-out`): client connections spread over worker processes
//!   ([`worker`]), against edges the bench starts itself ([`target`]) or a running
//!   deployment, with latency in an HDR histogram and a result written as JSON and
//!   SVG ([`report`]).

pub mod report;
pub mod router;
pub mod target;
pub mod worker;
pub mod ws;

pub use router::{RouterBenchOptions, RouterBenchResult, create_topics, router};
