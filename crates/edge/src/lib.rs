//! fanout's edge: an in-memory table of unread counts fed from the unread-counts topic,
//! and WebSocket sessions that get the current count on subscribe and every change
//! after it.
//!
//! - [`table`]: the count table; a count is state, so each subscriber sees only the
//!   newest value (a slow client costs one pending count, never a queue).
//! - [`feed`]: reads unread-counts by `assign` (no group) and reports when caught up.
//! - [`auth`]: HS256 JWT verification against per-partner secrets.
//! - [`cable`]: the ActionCable session (`/cable`).
//! - [`realtime`]: the JSON session (`/realtime`), authenticated in band.
//! - [`server`]: the accept loop and WebSocket handshake.
//! - [`drain`]: on shutdown, sessions told to leave spread over a window.
//! - [`limits`]: connection limits (node, partner), command rate, origin allow-lists.
//! - [`replay`]: each token id accepted once per node until it expires.
//! - `secrets`: hot reload of the partner secrets file.

pub mod auth;
pub mod cable;
pub mod close;
mod config;
pub mod drain;
pub mod feed;
pub mod limits;
mod metrics;
pub mod realtime;
pub mod replay;
mod secrets;
pub mod server;
pub mod table;
#[cfg(test)]
mod test_socket;

pub use config::{
    EdgeConfig, MIN_SECRET_BYTES, PartnerConfig, PartnerSecrets, SecretConfig, SecretsFile,
    parse_secrets_file, read_secrets_file,
};
pub use metrics::EdgeMetrics;
pub use server::{Edge, serve};
