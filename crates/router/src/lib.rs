//! fanout's router stage: applies user events to per-user state ([`fanout_unread`]: the
//! unread counts and the event stream), writes each new count to unread-counts, each
//! event the user is to see to user-streams at its position, read receipts for `notify`
//! users back to user-events, each read that read something to the compacted
//! read-receipts (keyed by a protobuf `ReadReceiptKey`, see [`state::read_receipt_of`]),
//! and each new state to the router-state changelog; all but read-receipts keyed
//! `partner/user`, and all in the partition the event came from (receipts: the notified
//! user's). On assignment it restores a partition's state from router-state before it
//! processes any of that partition's events.
//!
//! Exactly-once output without transactions rests on these rules:
//! - an event's outputs (count, stream record, receipts, read receipt) are sent first;
//!   its user's state only once they are acknowledged and no later event of that user
//!   still waits for its own (one write covers a burst); its input offset is stored for
//!   commit only once a state covering it is acknowledged (so a crash replays, never
//!   skips, and a state on record never covers an output that could still be lost);
//! - each state record carries the offset of the last event it includes, so a replayed
//!   event is recognised and not applied twice (and the state machine itself ignores
//!   duplicates from upstream);
//! - the stream's position is part of the state, and a user's epoch comes from the
//!   record that first changed it: replaying from the state on record gives the same
//!   events the same positions and the same content, which edges (and, for receipts,
//!   the notified user's router) recognise as repeats, and the same read-receipts
//!   records (same key, same value), which compaction keeps once;
//! - a replayed event re-sends the user's current count at its current version; edges
//!   ignore a version they already hold.

mod metrics;
mod restore;
mod service;
pub mod state;

pub use fanout_unread as unread;
pub use metrics::{EventResult, RouterMetrics};
pub use service::{RouterConfig, RouterError, run};
