//! Per-user unread counts, computed from message events.
//!
//! This crate is the router's pure state machine: no I/O, no async, no
//! dependencies. The router keeps one [`UserState`] per (partner, user) and
//! feeds it [`Op`]s derived from Kafka message events; [`UserState::apply`]
//! says whether the user's unread count changed, so the router knows when to
//! push a new count over the WebSocket.
//!
//! # Semantics
//!
//! For a user U and a conversation C, `unread(U, C)` is the number of
//! messages of C addressed to U whose `seq` is above U's read mark in C, that
//! were not read one by one and not deleted. The user's count is the sum over
//! U's conversations. The caller only sends [`OpKind::Created`] for messages
//! addressed to U and not sent by U.
//!
//! - [`OpKind::ConversationRead`]`(seq)` raises the read mark to
//!   `max(mark, seq)`. Marks start at 0, so seq 0 is never unread, and an op
//!   with seq 0 never changes anything.
//! - [`OpKind::MessageRead`]`(seq)` marks one message read, even when it
//!   arrives before the message itself.
//! - [`OpKind::Deleted`]`(seq)` removes one message, even when it arrives
//!   before the message itself.
//!
//! Duplicates and replays change nothing: the result depends only on the
//! *set* of ops seen, never on their order or multiplicity (as long as the
//! settled cap below is not hit). This is what lets the router consume a
//! Kafka topic at least once and rewind it freely. In fact the whole stored
//! state (not only the count) is a function of that set, so two replicas
//! that saw the same ops compare equal.
//!
//! # Representation
//!
//! Per conversation, keyed by the conversation id:
//!
//! - `read_mark: u64`: every seq `<= read_mark` is read.
//! - `unread`: the seqs `> read_mark` that were created and not settled.
//! - `settled`: the seqs `> read_mark` that were read one by one or deleted,
//!   whether or not their `Created` has been seen yet. This is what makes a
//!   replayed `Created` after a read idempotent, and what remembers early
//!   reads and deletes.
//!
//! Both sets are stored as sorted, disjoint, coalesced inclusive seq ranges
//! (not one entry per message), and are disjoint from each other. After
//! every change the read mark is advanced over a settled prefix: while the
//! first settled range starts at `read_mark + 1`, the mark moves to its end
//! and the range is dropped. This preserves the semantics (every seq in that
//! range is settled anyway) and keeps the common "read in order" pattern at
//! zero settled ranges.
//!
//! The user's total unread count, unread range count and settled range count
//! are maintained incrementally, so [`UserState::apply`] never recounts.
//!
//! # Memory
//!
//! Per user, memory is:
//!
//! - one entry per conversation ever touched (its id and read mark), kept
//!   even when both of its sets are empty. Forgetting the entry would forget
//!   the read mark, and a replayed `Created` below it would count again, so
//!   this entry is the per-conversation price of idempotency;
//! - the unread ranges: at most one range per unread message, usually far
//!   fewer since consecutive unread seqs share a range;
//! - the settled ranges, capped by [`Limits::max_settled_ranges`] across all
//!   of the user's conversations.
//!
//! # The settled cap
//!
//! When an op would leave the user with more than
//! [`Limits::max_settled_ranges`] settled ranges, the lowest settled range of
//! the conversation holding the most settled ranges (ties: the smallest
//! conversation id) is evicted, until the user is back under the cap.
//! [`Outcome::evicted_ranges`] reports how many ranges were evicted.
//!
//! Eviction forgets that those seqs were read or deleted. Past the cap, a
//! replayed `Created` for an evicted seq, or the first `Created` of a message
//! whose early read or delete was evicted, counts as unread again (until a
//! `ConversationRead` covers it). The count can only err upward: eviction
//! never hides an unread message. This is the price of bounded memory.
#![deny(missing_docs)]

mod range_set;
mod snapshot;
mod stream;

use std::collections::BTreeMap;

use range_set::RangeSet;
pub use snapshot::{ConversationSnapshot, SeqRange, Snapshot, SnapshotError, SnapshotErrorKind};
pub use stream::{
    Applied, Input, Position, SeenSnapshot, Stream, StreamLimits, StreamSnapshot, User,
};

/// What happened to a message or a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A message addressed to the user (and not sent by the user) was created.
    Created,
    /// The user read one message.
    MessageRead,
    /// The user read the conversation up to and including `seq`.
    ConversationRead,
    /// A message was deleted.
    Deleted,
}

/// One event for one user, about one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op<'a> {
    /// The conversation id.
    pub conversation: &'a str,
    /// The message seq within the conversation (for
    /// [`OpKind::ConversationRead`], the seq read up to, inclusive).
    pub seq: u64,
    /// What happened.
    pub kind: OpKind,
}

/// Per-user memory limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of settled ranges kept across all of a user's
    /// conversations. See the crate docs for what happens past it.
    pub max_settled_ranges: usize,
}

impl Limits {
    /// The default value of [`Limits::max_settled_ranges`].
    pub const DEFAULT_MAX_SETTLED_RANGES: usize = 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_settled_ranges: Self::DEFAULT_MAX_SETTLED_RANGES,
        }
    }
}

/// What [`UserState::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Anything stored changed (for example an early read changes the state
    /// but not the count). Never `false` when something changed. It can be
    /// `true` for a net no-op only when `evicted_ranges > 0`: an early read
    /// whose new settled range was evicted at once leaves the state as it was.
    pub state_changed: bool,
    /// The op itself changed the state (evictions aside): for a read, it read
    /// something not already read.
    pub op_changed: bool,
    /// The user's unread count changed.
    pub count_changed: bool,
    /// How many settled ranges were evicted to respect
    /// [`Limits::max_settled_ranges`].
    pub evicted_ranges: usize,
}

/// One conversation of one user. See the crate docs for the representation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Conversation {
    read_mark: u64,
    unread: RangeSet,
    settled: RangeSet,
}

/// The effect of one op on one conversation's unread seqs.
#[derive(Debug, Clone, Copy, Default)]
struct Effect {
    changed: bool,
    unread_added: u64,
    unread_removed: u64,
}

impl Effect {
    const NONE: Effect = Effect {
        changed: false,
        unread_added: 0,
        unread_removed: 0,
    };
}

impl Conversation {
    fn apply(&mut self, kind: OpKind, seq: u64) -> Effect {
        let effect = match kind {
            OpKind::Created => self.create(seq),
            OpKind::MessageRead | OpKind::Deleted => self.settle(seq),
            OpKind::ConversationRead => self.read_through(seq),
        };
        self.advance_read_mark();
        debug_assert!(self.invariants_hold());
        effect
    }

    fn create(&mut self, seq: u64) -> Effect {
        if seq <= self.read_mark || self.settled.contains(seq) {
            return Effect::NONE;
        }
        if !self.unread.insert(seq) {
            return Effect::NONE;
        }
        Effect {
            changed: true,
            unread_added: 1,
            unread_removed: 0,
        }
    }

    fn settle(&mut self, seq: u64) -> Effect {
        if seq <= self.read_mark || self.settled.contains(seq) {
            return Effect::NONE;
        }
        let was_unread = self.unread.remove(seq);
        self.settled.insert(seq);
        Effect {
            changed: true,
            unread_added: 0,
            unread_removed: u64::from(was_unread),
        }
    }

    fn read_through(&mut self, seq: u64) -> Effect {
        if seq <= self.read_mark {
            return Effect::NONE;
        }
        self.read_mark = seq;
        let unread_removed = self.unread.remove_through(seq);
        self.settled.remove_through(seq);
        Effect {
            changed: true,
            unread_added: 0,
            unread_removed,
        }
    }

    /// Moves the read mark over a settled prefix: while the first settled
    /// range starts right after the mark, every seq up to its end is settled
    /// or below the mark, so the mark can cover it and the range can go.
    ///
    /// No unread seq is skipped: unread seqs are above the old mark and not
    /// in `settled`, so none lies in the dropped range.
    fn advance_read_mark(&mut self) {
        while let Some(first_settled) = self.settled.first() {
            // Settled seqs are above the mark, so `read_mark + 1` does not overflow.
            if first_settled.first != self.read_mark + 1 {
                return;
            }
            self.read_mark = first_settled.last;
            self.settled.pop_first();
        }
    }

    /// The representation invariants, for `debug_assert!`.
    fn invariants_hold(&self) -> bool {
        let above_mark = |set: &RangeSet| set.first().is_none_or(|r| r.first > self.read_mark);
        let mark_advanced = self
            .settled
            .first()
            .is_none_or(|r| r.first != self.read_mark + 1);
        self.unread.is_canonical()
            && self.settled.is_canonical()
            && above_mark(&self.unread)
            && above_mark(&self.settled)
            && mark_advanced
            && self.unread.is_disjoint(&self.settled)
    }
}

/// Range counts of one conversation, to keep the user's totals in step.
#[derive(Debug, Clone, Copy)]
struct RangeCounts {
    unread: usize,
    settled: usize,
}

impl RangeCounts {
    fn of(conversation: &Conversation) -> Self {
        RangeCounts {
            unread: conversation.unread.range_count(),
            settled: conversation.settled.range_count(),
        }
    }
}

/// The unread state of one user: every conversation's read mark, unread
/// ranges and settled ranges, plus the maintained totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    /// Sorted by id, so iteration (eviction ties, snapshots) is deterministic.
    conversations: BTreeMap<Box<str>, Conversation>,
    /// Sum of the conversations' unread seq counts.
    unread_count: u64,
    /// Sum of the conversations' unread range counts.
    unread_ranges: usize,
    /// Sum of the conversations' settled range counts.
    settled_ranges: usize,
}

impl UserState {
    /// An empty state: no conversation, count 0.
    pub fn new() -> Self {
        UserState::default()
    }

    /// Applies one op, then evicts settled ranges if the user is over
    /// `limits.max_settled_ranges`.
    ///
    /// Does not allocate when the conversation is already known (or when the
    /// op is a no-op on an unknown conversation, i.e. seq 0).
    pub fn apply(&mut self, op: Op<'_>, limits: &Limits) -> Outcome {
        let count_before = self.unread_count;
        let op_changed_state = self.apply_to_conversation(op);
        let evicted_ranges = self.evict_settled_over(limits.max_settled_ranges);
        Outcome {
            state_changed: op_changed_state || evicted_ranges > 0,
            op_changed: op_changed_state,
            count_changed: self.unread_count != count_before,
            evicted_ranges,
        }
    }

    /// Applies `op` to its conversation, creating the entry if needed and
    /// keeping the totals in step. Returns whether anything changed.
    fn apply_to_conversation(&mut self, op: Op<'_>) -> bool {
        // Marks start at 0, so an op with seq 0 is a no-op everywhere; this
        // also means every op that reaches a new conversation changes it.
        if op.seq == 0 {
            return false;
        }
        let (effect, before, after) = match self.conversations.get_mut(op.conversation) {
            Some(conversation) => {
                let before = RangeCounts::of(conversation);
                let effect = conversation.apply(op.kind, op.seq);
                (effect, before, RangeCounts::of(conversation))
            }
            None => {
                let mut conversation = Conversation::default();
                let before = RangeCounts::of(&conversation);
                let effect = conversation.apply(op.kind, op.seq);
                let after = RangeCounts::of(&conversation);
                debug_assert!(effect.changed);
                self.conversations
                    .insert(Box::from(op.conversation), conversation);
                (effect, before, after)
            }
        };
        debug_assert!(effect.unread_removed <= self.unread_count);
        debug_assert!(effect.unread_added <= 1);
        // Saturating only matters for absurd restored states holding close
        // to u64::MAX unread seqs; one op adds at most one.
        self.unread_count =
            (self.unread_count - effect.unread_removed).saturating_add(effect.unread_added);
        self.unread_ranges = self.unread_ranges + after.unread - before.unread;
        self.settled_ranges = self.settled_ranges + after.settled - before.settled;
        effect.changed
    }

    /// Evicts settled ranges until at most `max_settled_ranges` remain:
    /// each time the lowest range of the conversation holding the most
    /// settled ranges (ties: smallest id). Returns how many were evicted.
    ///
    /// Evicting the lowest range keeps the "mark advanced over the settled
    /// prefix" invariant: the next range starts even further above the mark.
    fn evict_settled_over(&mut self, max_settled_ranges: usize) -> usize {
        let mut evicted = 0;
        while self.settled_ranges > max_settled_ranges {
            let mut victim: Option<&mut Conversation> = None;
            for conversation in self.conversations.values_mut() {
                let holds_more = match &victim {
                    Some(best) => conversation.settled.range_count() > best.settled.range_count(),
                    None => conversation.settled.range_count() > 0,
                };
                if holds_more {
                    victim = Some(conversation);
                }
            }
            // The totals are in step, so some conversation holds a range;
            // the `else` only guards against looping forever if they were not.
            let Some(victim) = victim else {
                break;
            };
            victim.settled.pop_first();
            debug_assert!(victim.invariants_hold());
            self.settled_ranges -= 1;
            evicted += 1;
        }
        debug_assert!(self.settled_ranges <= max_settled_ranges);
        evicted
    }

    /// The user's unread count: the sum over conversations.
    pub fn unread_count(&self) -> u64 {
        self.unread_count
    }

    /// How many conversations have an entry (every conversation that ever
    /// received an op with seq > 0).
    pub fn conversation_count(&self) -> usize {
        self.conversations.len()
    }

    /// Total settled ranges across conversations (bounded by
    /// [`Limits::max_settled_ranges`] after every [`UserState::apply`]).
    pub fn settled_range_count(&self) -> usize {
        self.settled_ranges
    }

    /// Total unread ranges across conversations.
    pub fn unread_range_count(&self) -> usize {
        self.unread_ranges
    }
}

#[cfg(test)]
mod tests;
