//! Plain-data snapshots of a [`UserState`], and restoring from them.

use std::fmt;

use crate::range_set::{RangeSet, first_overlap};
use crate::{Conversation, UserState};

/// An inclusive range of seqs: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First seq in the range.
    pub first: u64,
    /// Last seq in the range (inclusive).
    pub last: u64,
}

/// The whole state of one user, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// One entry per conversation. [`UserState::snapshot`] sorts them by id.
    pub conversations: Vec<ConversationSnapshot>,
}

/// The state of one conversation of one user, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationSnapshot {
    /// The conversation id.
    pub conversation: String,
    /// Every seq `<= read_mark` is read.
    pub read_mark: u64,
    /// Seqs above the mark that were created and not settled, as sorted,
    /// disjoint ranges.
    pub unread: Vec<SeqRange>,
    /// Seqs above the mark that were read one by one or deleted, as sorted,
    /// disjoint ranges.
    pub settled: Vec<SeqRange>,
}

/// Which rule a [`Snapshot`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotErrorKind {
    /// Two entries have the same conversation id.
    DuplicateConversation,
    /// A range has `first > last`.
    InvertedRange,
    /// A range contains a seq `<= read_mark`.
    RangeNotAboveReadMark,
    /// A range starts at or before the end of the previous range of the same
    /// set (the ranges are not sorted, or they overlap).
    RangesNotSortedAndDisjoint,
    /// A seq is both unread and settled.
    UnreadSettledOverlap,
    /// The total unread count does not fit in a `u64`.
    CountOverflow,
}

/// Why [`UserState::restore`] rejected a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError {
    conversation: String,
    kind: SnapshotErrorKind,
    detail: String,
}

impl SnapshotError {
    pub(crate) fn new(conversation: &str, kind: SnapshotErrorKind, detail: String) -> Self {
        SnapshotError {
            conversation: conversation.to_owned(),
            kind,
            detail,
        }
    }

    /// The conversation whose entry broke the rule.
    pub fn conversation(&self) -> &str {
        &self.conversation
    }

    /// The rule that was broken.
    pub fn kind(&self) -> SnapshotErrorKind {
        self.kind
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid unread snapshot: conversation {:?}: {}",
            self.conversation, self.detail
        )
    }
}

impl std::error::Error for SnapshotError {}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

impl UserState {
    /// The state as plain data, conversations sorted by id, ranges sorted.
    ///
    /// `UserState::restore(state.snapshot())` returns a state equal to `state`.
    pub fn snapshot(&self) -> Snapshot {
        let conversations = self
            .conversations
            .iter()
            .map(|(id, conversation)| ConversationSnapshot {
                conversation: id.to_string(),
                read_mark: conversation.read_mark,
                unread: conversation.unread.ranges().to_vec(),
                settled: conversation.settled.ranges().to_vec(),
            })
            .collect();
        Snapshot { conversations }
    }

    /// Rebuilds a state from a snapshot, recomputing the count and totals.
    ///
    /// Rejects a snapshot whose ranges are inverted, unsorted, overlapping,
    /// not above the read mark, shared between `unread` and `settled`, or
    /// whose conversation ids repeat (see [`SnapshotErrorKind`]).
    ///
    /// Accepts, and normalizes without changing the meaning, what
    /// [`UserState::snapshot`] never produces: adjacent ranges (coalesced),
    /// and settled ranges starting right after the read mark (the mark is
    /// advanced over them). Entries may come in any order.
    ///
    /// Does not apply [`crate::Limits`]: a snapshot holding more settled
    /// ranges than the cap is restored as is, and the next
    /// [`UserState::apply`] evicts down to the cap.
    pub fn restore(snapshot: Snapshot) -> Result<UserState, SnapshotError> {
        let mut state = UserState::new();
        for entry in snapshot.conversations {
            let id = entry.conversation.as_str();
            if state.conversations.contains_key(id) {
                return Err(SnapshotError::new(
                    id,
                    SnapshotErrorKind::DuplicateConversation,
                    "appears more than once".to_owned(),
                ));
            }
            let unread = normalize_ranges(id, "unread", entry.read_mark, entry.unread)?;
            let settled = normalize_ranges(id, "settled", entry.read_mark, entry.settled)?;
            if let Some((unread_range, settled_range)) = first_overlap(&unread, &settled) {
                return Err(SnapshotError::new(
                    id,
                    SnapshotErrorKind::UnreadSettledOverlap,
                    format!("unread range {unread_range} overlaps settled range {settled_range}"),
                ));
            }
            let mut conversation = Conversation {
                read_mark: entry.read_mark,
                unread: RangeSet::from_canonical(unread),
                settled: RangeSet::from_canonical(settled),
            };
            conversation.advance_read_mark();
            debug_assert!(conversation.invariants_hold());

            let count_overflow = || {
                SnapshotError::new(
                    id,
                    SnapshotErrorKind::CountOverflow,
                    "the total unread count overflows u64".to_owned(),
                )
            };
            let conversation_count = conversation
                .unread
                .checked_seq_count()
                .ok_or_else(count_overflow)?;
            state.unread_count = state
                .unread_count
                .checked_add(conversation_count)
                .ok_or_else(count_overflow)?;
            state.unread_ranges += conversation.unread.range_count();
            state.settled_ranges += conversation.settled.range_count();
            state
                .conversations
                .insert(entry.conversation.into_boxed_str(), conversation);
        }
        Ok(state)
    }
}

/// Checks one set's ranges and coalesces adjacent ones.
pub(crate) fn normalize_ranges(
    conversation: &str,
    set_name: &str,
    read_mark: u64,
    ranges: Vec<SeqRange>,
) -> Result<Vec<SeqRange>, SnapshotError> {
    let mut normalized: Vec<SeqRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        if range.first > range.last {
            return Err(SnapshotError::new(
                conversation,
                SnapshotErrorKind::InvertedRange,
                format!("{set_name} range {range} has first > last"),
            ));
        }
        if range.first <= read_mark {
            return Err(SnapshotError::new(
                conversation,
                SnapshotErrorKind::RangeNotAboveReadMark,
                format!("{set_name} range {range} is not above the read mark {read_mark}"),
            ));
        }
        let Some(previous) = normalized.last_mut() else {
            normalized.push(range);
            continue;
        };
        if range.first <= previous.last {
            return Err(SnapshotError::new(
                conversation,
                SnapshotErrorKind::RangesNotSortedAndDisjoint,
                format!(
                    "{set_name} range {range} does not start after the previous range {previous}"
                ),
            ));
        }
        // `previous.last < range.first`, so `previous.last + 1` does not overflow.
        if previous.last + 1 == range.first {
            previous.last = range.last;
        } else {
            normalized.push(range);
        }
    }
    Ok(normalized)
}
