//! The receipt table: per partner and conversation, what each member has read, as the
//! router wrote it to read-receipts. Pure: records in, answers out.
//!
//! A member holds its read mark (the highest `ConversationRead`: every message up to
//! its seq is read, at its time) and the messages it read one by one above the mark,
//! each with its time. A message read one by one and later covered by the mark is
//! answered with the mark's time (the time of the read that covers it, as a chat app's
//! "read up to here" receipt says), so the answer depends only on the records, never on
//! the order they were read in.

use std::collections::HashMap;

use fanout_schema::v1::{self, user_event::Kind};

/// How a reader came to have read a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ConversationRead,
    MessageRead,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConversationRead => "conversation_read",
            Self::MessageRead => "message_read",
        }
    }
}

/// One reader of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub user: String,
    pub read_at_ms: i64,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    at_ms: i64,
}

#[derive(Debug, Default)]
struct Member {
    mark: Option<Mark>,
    /// Messages read one by one above the mark, `(seq, when)` sorted by seq: a vector,
    /// not a tree, as a member holds few (a tree's first node alone is ~200 bytes).
    reads: Vec<(u64, i64)>,
}

impl Member {
    fn mark_seq(&self) -> u64 {
        self.mark.map_or(0, |mark| mark.seq)
    }

    fn read_of(&self, seq: u64) -> Option<(i64, Via)> {
        match self.mark {
            Some(mark) if mark.seq >= seq => Some((mark.at_ms, Via::ConversationRead)),
            _ => self
                .reads
                .binary_search_by_key(&seq, |(read, _)| *read)
                .ok()
                .map(|index| (self.reads[index].1, Via::MessageRead)),
        }
    }
}

/// Members by user id.
type Conversation = HashMap<Box<str>, Member>;

/// Sizes, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptStats {
    pub conversations: usize,
    pub members: usize,
    pub message_reads: usize,
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed.
    Changed,
    /// Nothing new: a repeat, a lower mark, a read under the mark.
    Unchanged,
    /// Not a record the router writes.
    Invalid,
}

#[derive(Default)]
pub struct ReceiptTable {
    /// partner → conversation → members.
    partners: HashMap<Box<str>, HashMap<Box<str>, Conversation>>,
    stats: ReceiptStats,
}

impl ReceiptTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one read-receipts record (its value; the key repeats what the value says).
    pub fn apply(&mut self, record: &v1::ReadReceipt) -> Applied {
        let kind = Kind::try_from(record.kind).unwrap_or(Kind::Unspecified);
        if record.partner.is_empty()
            || record.conversation_id.is_empty()
            || record.user.is_empty()
            || record.seq == 0
            || !matches!(kind, Kind::ConversationRead | Kind::MessageRead)
        {
            return Applied::Invalid;
        }
        let conversations = self
            .partners
            .entry(Box::from(record.partner.as_str()))
            .or_default();
        let conversation = match conversations.get_mut(record.conversation_id.as_str()) {
            Some(conversation) => conversation,
            None => {
                self.stats.conversations += 1;
                conversations
                    .entry(Box::from(record.conversation_id.as_str()))
                    .or_default()
            }
        };
        let member = match conversation.get_mut(record.user.as_str()) {
            Some(member) => member,
            None => {
                self.stats.members += 1;
                conversation
                    .entry(Box::from(record.user.as_str()))
                    .or_default()
            }
        };
        let read = Mark {
            seq: record.seq,
            at_ms: record.read_at_ms,
        };
        if kind == Kind::MessageRead {
            if read.seq <= member.mark_seq() {
                return Applied::Unchanged;
            }
            return match member
                .reads
                .binary_search_by_key(&read.seq, |(seq, _)| *seq)
            {
                Err(index) => {
                    member.reads.insert(index, (read.seq, read.at_ms));
                    self.stats.message_reads += 1;
                    Applied::Changed
                }
                Ok(index) if read.at_ms < member.reads[index].1 => {
                    member.reads[index].1 = read.at_ms;
                    Applied::Changed
                }
                Ok(_) => Applied::Unchanged,
            };
        }
        let higher = match member.mark {
            None => true,
            Some(mark) => read.seq > mark.seq || (read.seq == mark.seq && read.at_ms < mark.at_ms),
        };
        if !higher {
            return Applied::Unchanged;
        }
        member.mark = Some(read);
        // Reads the mark now covers are answered by it.
        let held = member.reads.len();
        member.reads.retain(|(seq, _)| *seq > read.seq);
        self.stats.message_reads -= held - member.reads.len();
        Applied::Changed
    }

    /// Who of `partner`'s users read message `seq` of `conversation`, and when; sorted
    /// by user.
    pub fn readers(&self, partner: &str, conversation: &str, seq: u64) -> Vec<Reader> {
        let Some(members) = self
            .partners
            .get(partner)
            .and_then(|conversations| conversations.get(conversation))
        else {
            return Vec::new();
        };
        let mut readers: Vec<Reader> = members
            .iter()
            .filter_map(|(user, member)| {
                member.read_of(seq).map(|(read_at_ms, via)| Reader {
                    user: user.to_string(),
                    read_at_ms,
                    via,
                })
            })
            .collect();
        readers.sort_by(|a, b| a.user.cmp(&b.user));
        readers
    }

    pub fn stats(&self) -> ReceiptStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn record(partner: &str, user: &str, kind: Kind, seq: u64, at: i64) -> v1::ReadReceipt {
        v1::ReadReceipt {
            partner: partner.into(),
            conversation_id: "c1".into(),
            user: user.into(),
            kind: kind.into(),
            seq,
            read_at_ms: at,
            ..Default::default()
        }
    }

    #[test]
    fn marks_and_message_reads_answer_with_the_covering_reads_time() {
        let mut table = ReceiptTable::new();
        table.apply(&record("p", "ann", Kind::ConversationRead, 5, 100));
        table.apply(&record("p", "bob", Kind::MessageRead, 7, 50));
        table.apply(&record("p", "cy", Kind::ConversationRead, 3, 10));
        table.apply(&record("q", "ann", Kind::ConversationRead, 9, 1));
        let users = |table: &ReceiptTable, seq| {
            table
                .readers("p", "c1", seq)
                .into_iter()
                .map(|reader| (reader.user, reader.read_at_ms, reader.via))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            users(&table, 3),
            [
                ("ann".to_owned(), 100, Via::ConversationRead),
                ("cy".to_owned(), 10, Via::ConversationRead)
            ]
        );
        assert_eq!(users(&table, 7), [("bob".to_owned(), 50, Via::MessageRead)]);
        assert_eq!(
            users(&table, 4),
            [("ann".to_owned(), 100, Via::ConversationRead)]
        );
        assert!(users(&table, 6).is_empty());
        assert!(table.readers("p", "other", 1).is_empty());
        assert!(table.readers("nobody", "c1", 1).is_empty());
        assert_eq!(
            table.stats(),
            ReceiptStats {
                conversations: 2,
                members: 4,
                message_reads: 1
            }
        );
        // bob's mark covers his read of 7: the mark answers, and the read is dropped.
        table.apply(&record("p", "bob", Kind::ConversationRead, 8, 200));
        assert_eq!(
            users(&table, 7),
            [("bob".to_owned(), 200, Via::ConversationRead)]
        );
        assert_eq!(table.stats().message_reads, 0);
    }

    #[test]
    fn records_the_router_never_writes_are_refused() {
        let mut table = ReceiptTable::new();
        for bad in [
            record("", "ann", Kind::MessageRead, 1, 1),
            record("p", "", Kind::MessageRead, 1, 1),
            record("p", "ann", Kind::MessageRead, 0, 1),
            record("p", "ann", Kind::Created, 1, 1),
        ] {
            assert_eq!(table.apply(&bad), Applied::Invalid);
        }
        assert_eq!(table.stats(), ReceiptStats::default());
    }

    proptest! {
        /// The table's answer is a function of the set of records: any order, any
        /// repeats, the same readers; and it agrees with a plain recomputation.
        #[test]
        fn answers_depend_only_on_the_set_of_records(
            reads in proptest::collection::vec((0..3usize, any::<bool>(), 1..12u64, 0..50i64), 0..40),
            order in any::<u64>(),
        ) {
            let users = ["ann", "bob", "cy"];
            let records: Vec<v1::ReadReceipt> = reads
                .iter()
                .map(|(user, whole, seq, at)| {
                    let kind = if *whole { Kind::ConversationRead } else { Kind::MessageRead };
                    record("p", users[*user], kind, *seq, *at)
                })
                .collect();
            let mut shuffled: Vec<&v1::ReadReceipt> = records.iter().chain(records.iter()).collect();
            let mut state = order;
            for index in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let other = usize::try_from(state >> 33).unwrap() % (index + 1);
                shuffled.swap(index, other);
            }
            let mut in_order = ReceiptTable::new();
            let mut reordered = ReceiptTable::new();
            for record in &records {
                in_order.apply(record);
            }
            for record in shuffled {
                reordered.apply(record);
            }
            for seq in 1..13 {
                // The plain model: the highest mark (earliest on ties) answers up to its
                // seq; above it, the earliest read of that very message.
                let mut expected = Vec::new();
                for user in users {
                    let of_user = records.iter().filter(|r| r.user == user);
                    let mark = of_user
                        .clone()
                        .filter(|r| r.kind == i32::from(Kind::ConversationRead))
                        .map(|r| (r.seq, -r.read_at_ms))
                        .max();
                    let read = match mark {
                        Some((mark, at)) if mark >= seq => Some((-at, Via::ConversationRead)),
                        _ => of_user
                            .filter(|r| r.kind == i32::from(Kind::MessageRead) && r.seq == seq)
                            .map(|r| r.read_at_ms)
                            .min()
                            .map(|at| (at, Via::MessageRead)),
                    };
                    if let Some((read_at_ms, via)) = read {
                        expected.push(Reader { user: user.to_owned(), read_at_ms, via });
                    }
                }
                prop_assert_eq!(&in_order.readers("p", "c1", seq), &expected);
                prop_assert_eq!(&reordered.readers("p", "c1", seq), &expected);
            }
            prop_assert_eq!(in_order.stats(), reordered.stats());
        }
    }
}
