//! A user's event stream: which events the user is to see, each exactly once, and the
//! position each one gets.
//!
//! [`User`] is the router's whole per-user state machine: the unread state
//! ([`UserState`]) plus the stream's bookkeeping ([`Stream`]). [`User::apply`] takes
//! one [`Input`] and says whether the count changed and whether the input is delivered
//! to the user's stream, at which [`Position`].
//!
//! # What is delivered
//!
//! An input that changes nothing delivers nothing; a duplicate or a replay never
//! delivers twice, in any order:
//!
//! - a message ([`Input::Created`] to a recipient, [`Input::Sent`] to its sender):
//!   the first time its `(conversation, seq)` is seen, unless that message was
//!   already deleted;
//! - [`Input::Deleted`]: the first time its `(conversation, seq)` is seen;
//! - [`Input::MessageRead`] and [`Input::ConversationRead`]: when they change the
//!   unread state, that is when they read something not already read (one by one,
//!   through a conversation read, or by a delete);
//! - [`Input::Notification`]: the first time its id is seen;
//! - [`Input::Receipt`]: when its reader's position is past the last receipt seen from
//!   that reader (or from a new epoch of that reader's stream).
//!
//! # Position
//!
//! Every delivered input takes the next `offset` (1, 2, ...) under the stream's `epoch`,
//! which the caller chooses when the user is first seen and which never changes after.
//! The position is part of the state: a snapshot restored continues the sequence, so
//! replaying the same inputs from the same state assigns the same positions.
//!
//! # Memory
//!
//! Per conversation, the messages and deletes seen are seq ranges. Each set keeps at
//! most [`StreamLimits::max_ranges`] ranges: past it, the gap between its two lowest
//! ranges is filled, so the seqs of that gap count as seen (an old message first seen
//! after that is not delivered: the stream errs towards missing a very late event,
//! never towards a repeat). At most [`StreamLimits::max_notification_ids`] recent
//! notification ids and [`StreamLimits::max_readers`] readers' receipt positions are
//! kept; past them the oldest id, and the reader with the smallest id, are forgotten,
//! and a repeat of what they remembered arriving after that would be delivered again.

use std::collections::{BTreeMap, VecDeque};

use crate::range_set::RangeSet;
use crate::snapshot::normalize_ranges;
use crate::{Limits, Op, OpKind, Outcome, SeqRange, Snapshot, SnapshotError, UserState};

/// Where a delivered event sits in its user's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Changes only if the user's stream history was lost.
    pub epoch: u64,
    /// 1 for the first event of the epoch, +1 for each next.
    pub offset: u64,
}

/// One user event, as the state machine sees it. `conversation` and `seq` name a
/// message (for a conversation read, the seq read through), as in [`Op`].
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// A message addressed to the user, who did not send it: counts.
    Created { conversation: &'a str, seq: u64 },
    /// A message the user sent: its other sessions see it; never counts.
    Sent { conversation: &'a str, seq: u64 },
    /// The user read one message.
    MessageRead { conversation: &'a str, seq: u64 },
    /// The user read a conversation up to and including `seq`.
    ConversationRead { conversation: &'a str, seq: u64 },
    /// A message was deleted.
    Deleted { conversation: &'a str, seq: u64 },
    /// A partner notification, known by its (non-empty) event id.
    Notification { id: &'a str },
    /// Another user (`reader`) read something and named this user to be told; the
    /// position is the one the read took in the reader's own stream.
    Receipt { reader: &'a str, position: Position },
}

impl Input<'_> {
    /// The unread-state operation of this input, if it has one.
    fn op(&self) -> Option<Op<'_>> {
        let (conversation, seq, kind) = match *self {
            Input::Created { conversation, seq } => (conversation, seq, OpKind::Created),
            Input::MessageRead { conversation, seq } => (conversation, seq, OpKind::MessageRead),
            Input::ConversationRead { conversation, seq } => {
                (conversation, seq, OpKind::ConversationRead)
            }
            Input::Deleted { conversation, seq } => (conversation, seq, OpKind::Deleted),
            Input::Sent { .. } | Input::Notification { .. } | Input::Receipt { .. } => {
                return None;
            }
        };
        Some(Op {
            conversation,
            seq,
            kind,
        })
    }
}

/// Bounds of the stream's bookkeeping (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Ranges kept per conversation in each of the seen-messages and deleted sets.
    pub max_ranges: usize,
    /// Recent notification ids kept, to know a repeated notification.
    pub max_notification_ids: usize,
    /// Readers whose last receipt position is kept.
    pub max_readers: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_ranges: 64,
            max_notification_ids: 64,
            max_readers: 256,
        }
    }
}

/// What [`User::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// What the unread state did (all false for inputs that never count).
    pub counts: Outcome,
    /// The position given to the input, when it is delivered.
    pub delivered: Option<Position>,
    /// Anything stored changed: the state must be written.
    pub state_changed: bool,
}

/// The messages and deletes of one conversation the stream has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    messages: RangeSet,
    deleted: RangeSet,
}

/// A user's stream bookkeeping: its position and what it has delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    position: Position,
    conversations: BTreeMap<Box<str>, Seen>,
    /// Oldest first.
    notifications: VecDeque<Box<str>>,
    receipts: BTreeMap<Box<str>, Position>,
}

/// The state of one conversation's stream bookkeeping, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenSnapshot {
    /// The conversation id.
    pub conversation: String,
    /// Seqs of the messages seen (created or sent).
    pub messages: Vec<SeqRange>,
    /// Seqs of the deletes seen.
    pub deleted: Vec<SeqRange>,
}

/// A [`Stream`] as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// The position of the last delivered event (offset 0 before any).
    pub position: Position,
    /// Per conversation, what was seen.
    pub conversations: Vec<SeenSnapshot>,
    /// Oldest first.
    pub notifications: Vec<String>,
    /// Per reader, the position of the last receipt seen from it.
    pub receipts: Vec<(String, Position)>,
}

impl Stream {
    /// A stream that has delivered nothing yet, under `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            position: Position { epoch, offset: 0 },
            ..Self::default()
        }
    }

    /// The position of the last delivered event (offset 0 before any).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The conversation's entry, made if missing (`None` only if it could not be, which
    /// does not happen: it is there once inserted).
    fn seen(&mut self, conversation: &str) -> Option<&mut Seen> {
        if !self.conversations.contains_key(conversation) {
            self.conversations
                .insert(Box::from(conversation), Seen::default());
        }
        self.conversations.get_mut(conversation)
    }

    /// Records a message; returns (changed, deliver).
    fn message(&mut self, conversation: &str, seq: u64, limits: &StreamLimits) -> (bool, bool) {
        if seq == 0 {
            return (false, false);
        }
        let Some(seen) = self.seen(conversation) else {
            return (false, false);
        };
        let new = seen.messages.insert(seq);
        let deliver = new && !seen.deleted.contains(seq);
        cap(&mut seen.messages, limits.max_ranges);
        (new, deliver)
    }

    fn deleted(&mut self, conversation: &str, seq: u64, limits: &StreamLimits) -> bool {
        if seq == 0 {
            return false;
        }
        let Some(seen) = self.seen(conversation) else {
            return false;
        };
        let new = seen.deleted.insert(seq);
        cap(&mut seen.deleted, limits.max_ranges);
        new
    }

    fn notification(&mut self, id: &str, limits: &StreamLimits) -> bool {
        if self.notifications.iter().any(|seen| &**seen == id) {
            return false;
        }
        self.notifications.push_back(Box::from(id));
        while self.notifications.len() > limits.max_notification_ids {
            self.notifications.pop_front();
        }
        true
    }

    fn receipt(&mut self, reader: &str, position: Position, limits: &StreamLimits) -> bool {
        if let Some(last) = self.receipts.get_mut(reader) {
            let newer = position.epoch != last.epoch || position.offset > last.offset;
            if newer {
                *last = position;
            }
            return newer;
        }
        self.receipts.insert(Box::from(reader), position);
        while self.receipts.len() > limits.max_readers {
            self.receipts.pop_first();
        }
        true
    }

    /// The next position, taken.
    fn advance(&mut self) -> Position {
        self.position.offset += 1;
        self.position
    }

    /// The stream as plain data; [`Stream::restore`] gives it back.
    pub fn snapshot(&self) -> StreamSnapshot {
        StreamSnapshot {
            position: self.position,
            conversations: self
                .conversations
                .iter()
                .map(|(id, seen)| SeenSnapshot {
                    conversation: id.to_string(),
                    messages: seen.messages.ranges().to_vec(),
                    deleted: seen.deleted.ranges().to_vec(),
                })
                .collect(),
            notifications: self.notifications.iter().map(|id| id.to_string()).collect(),
            receipts: self
                .receipts
                .iter()
                .map(|(reader, position)| (reader.to_string(), *position))
                .collect(),
        }
    }

    /// Rebuilds a stream from a snapshot; rejects inverted, overlapping or unsorted
    /// ranges, ranges holding seq 0, and repeated conversations.
    pub fn restore(snapshot: StreamSnapshot) -> Result<Self, SnapshotError> {
        let mut conversations = BTreeMap::new();
        for entry in snapshot.conversations {
            let id = entry.conversation.as_str();
            let messages = normalize_ranges(id, "messages", 0, entry.messages)?;
            let deleted = normalize_ranges(id, "deleted", 0, entry.deleted)?;
            let seen = Seen {
                messages: RangeSet::from_canonical(messages),
                deleted: RangeSet::from_canonical(deleted),
            };
            if conversations.contains_key(id) {
                return Err(SnapshotError::new(
                    id,
                    crate::SnapshotErrorKind::DuplicateConversation,
                    "appears more than once in the stream".to_owned(),
                ));
            }
            conversations.insert(entry.conversation.into_boxed_str(), seen);
        }
        Ok(Self {
            position: snapshot.position,
            conversations,
            notifications: snapshot
                .notifications
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            receipts: snapshot
                .receipts
                .into_iter()
                .map(|(reader, position)| (reader.into_boxed_str(), position))
                .collect(),
        })
    }
}

/// Keeps `set` at most `max_ranges` ranges by filling its lowest gaps.
fn cap(set: &mut RangeSet, max_ranges: usize) {
    while set.range_count() > max_ranges.max(1) && set.fill_first_gap() {}
}

/// The router's whole state for one user: counts and stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// The unread state.
    pub counts: UserState,
    /// The stream's position and bookkeeping.
    pub stream: Stream,
}

impl User {
    /// A user first seen now, whose stream gets `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            counts: UserState::new(),
            stream: Stream::new(epoch),
        }
    }

    /// Rebuilds a user from its snapshots.
    pub fn restore(counts: Snapshot, stream: StreamSnapshot) -> Result<Self, SnapshotError> {
        Ok(Self {
            counts: UserState::restore(counts)?,
            stream: Stream::restore(stream)?,
        })
    }

    /// Applies one input (see the module docs for what is delivered).
    pub fn apply(&mut self, input: Input<'_>, limits: &Limits, stream: &StreamLimits) -> Applied {
        let counts = match input.op() {
            Some(op) => self.counts.apply(op, limits),
            None => Outcome::default(),
        };
        let (recorded, deliver) = match input {
            Input::Created { conversation, seq } | Input::Sent { conversation, seq } => {
                self.stream.message(conversation, seq, stream)
            }
            Input::Deleted { conversation, seq } => {
                let new = self.stream.deleted(conversation, seq, stream);
                (new, new)
            }
            Input::MessageRead { .. } | Input::ConversationRead { .. } => {
                (false, counts.op_changed)
            }
            Input::Notification { id } => {
                let new = !id.is_empty() && self.stream.notification(id, stream);
                (new, new)
            }
            Input::Receipt { reader, position } => {
                let new = self.stream.receipt(reader, position, stream);
                (new, new)
            }
        };
        let delivered = deliver.then(|| self.stream.advance());
        Applied {
            counts,
            delivered,
            state_changed: counts.state_changed || recorded || delivered.is_some(),
        }
    }
}
