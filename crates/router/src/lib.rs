//! fanout's router stage: applies user events to per-user unread state
//! ([`fanout_unread`]), writes each new state to the router-state changelog and each new
//! count to unread-counts, both keyed `partner/user` in the partition the event came
//! from. On assignment it restores a partition's state from router-state before it
//! processes any of that partition's events.
//!
//! Exactly-once output without transactions rests on three rules:
//! - an input offset is stored for commit only after the state and count records it
//!   produced are acknowledged (so a crash replays, never skips);
//! - each state record carries the offset of the last event it includes, so a replayed
//!   event is recognised and not applied twice (and the state machine itself ignores
//!   duplicates from upstream);
//! - a replayed event re-sends the user's current count at its current version, which
//!   repairs a count record lost between the state's acknowledgement and a crash; edges
//!   ignore a version they already hold.

mod metrics;
mod restore;
mod service;
pub mod state;

pub use fanout_unread as unread;
pub use metrics::{EventResult, RouterMetrics};
pub use service::{RouterConfig, RouterError, run};
