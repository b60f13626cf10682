//! The router's per-user record and its mapping to and from the wire schema. Pure.

use fanout_schema::v1::{self, user_event::Kind};
use fanout_unread::{
    ConversationSnapshot, Input, Limits, Outcome, Position, SeenSnapshot, SeqRange, Snapshot,
    SnapshotError, StreamLimits, StreamSnapshot, User,
};
use prost::Message as _;

/// A user's state as the router keeps it: the unread state and the stream (one state
/// machine, [`User`]) plus the bookkeeping that makes replays safe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub user: User,
    /// Grows by one with every change of `user`.
    pub version: u64,
    /// Offset, in this user's user-events partition, of the last event `user` includes;
    /// -1 before any.
    pub last_offset: i64,
    /// Source time of the last event that changed `user`.
    pub occurred_at_ms: i64,
}

/// What applying one user event to a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The record already includes this event: a replay after a crash or rebalance.
    Replayed,
    /// Nothing changed (a duplicate from upstream, a read of what was read).
    Unchanged { evicted_ranges: usize },
    /// The record changed: it must be written, with the count if it changed
    /// (`counts.count_changed`), the stream event at `delivered` if the user is to see
    /// it, and the read receipt if the event read something unread (see
    /// [`read_receipt_of`]).
    Applied {
        counts: Outcome,
        delivered: Option<Position>,
    },
}

impl UserRecord {
    /// A user first seen now; its stream gets `epoch` (see [`epoch_of`]).
    pub fn new(epoch: u64) -> Self {
        Self {
            user: User::new(epoch),
            version: 0,
            last_offset: -1,
            occurred_at_ms: 0,
        }
    }

    /// Applies `event`, found at `offset` of the user's user-events partition.
    pub fn apply(
        &mut self,
        event: &v1::UserEvent,
        input: Input<'_>,
        offset: i64,
        limits: &Limits,
        stream_limits: &StreamLimits,
    ) -> Step {
        if offset <= self.last_offset {
            return Step::Replayed;
        }
        let applied = self.user.apply(input, limits, stream_limits);
        if !applied.state_changed {
            return Step::Unchanged {
                evicted_ranges: applied.counts.evicted_ranges,
            };
        }
        self.version += 1;
        self.last_offset = offset;
        self.occurred_at_ms = event.occurred_at_ms;
        Step::Applied {
            counts: applied.counts,
            delivered: applied.delivered,
        }
    }

    pub fn unread_count(&self) -> u64 {
        self.user.counts.unread_count()
    }

    pub fn to_proto(&self, partner: &str, user: &str) -> v1::UserState {
        let snapshot = self.user.counts.snapshot();
        let stream = self.user.stream.snapshot();
        v1::UserState {
            partner: partner.to_owned(),
            user: user.to_owned(),
            version: self.version,
            last_offset: self.last_offset,
            unread_count: self.unread_count(),
            occurred_at_ms: self.occurred_at_ms,
            conversations: snapshot
                .conversations
                .into_iter()
                .map(|conversation| v1::ConversationState {
                    conversation_id: conversation.conversation,
                    read_mark: conversation.read_mark,
                    unread: ranges_to_proto(&conversation.unread),
                    settled: ranges_to_proto(&conversation.settled),
                })
                .collect(),
            stream_epoch: stream.position.epoch,
            stream_offset: stream.position.offset,
            stream_conversations: stream
                .conversations
                .into_iter()
                .map(|seen| v1::StreamConversation {
                    conversation_id: seen.conversation,
                    messages: ranges_to_proto(&seen.messages),
                    deleted: ranges_to_proto(&seen.deleted),
                })
                .collect(),
            stream_notifications: stream.notifications,
            stream_receipts: stream
                .receipts
                .into_iter()
                .map(|(reader, position)| v1::ReaderPosition {
                    reader,
                    epoch: position.epoch,
                    offset: position.offset,
                })
                .collect(),
        }
    }

    pub fn from_proto(record: v1::UserState) -> Result<Self, SnapshotError> {
        let counts = Snapshot {
            conversations: record
                .conversations
                .into_iter()
                .map(|conversation| ConversationSnapshot {
                    conversation: conversation.conversation_id,
                    read_mark: conversation.read_mark,
                    unread: ranges_from_proto(&conversation.unread),
                    settled: ranges_from_proto(&conversation.settled),
                })
                .collect(),
        };
        let stream = StreamSnapshot {
            position: Position {
                epoch: record.stream_epoch,
                offset: record.stream_offset,
            },
            conversations: record
                .stream_conversations
                .into_iter()
                .map(|seen| SeenSnapshot {
                    conversation: seen.conversation_id,
                    messages: ranges_from_proto(&seen.messages),
                    deleted: ranges_from_proto(&seen.deleted),
                })
                .collect(),
            notifications: record.stream_notifications,
            receipts: record
                .stream_receipts
                .into_iter()
                .map(|reader| {
                    (
                        reader.reader,
                        Position {
                            epoch: reader.epoch,
                            offset: reader.offset,
                        },
                    )
                })
                .collect(),
        };
        Ok(Self {
            user: User::restore(counts, stream)?,
            version: record.version,
            last_offset: record.last_offset,
            occurred_at_ms: record.occurred_at_ms,
        })
    }

    pub fn count_record(&self, partner: &str, user: &str) -> v1::UnreadCount {
        v1::UnreadCount {
            partner: partner.to_owned(),
            user: user.to_owned(),
            count: self.unread_count(),
            version: self.version,
            occurred_at_ms: self.occurred_at_ms,
        }
    }

    /// The stream record of `event`, delivered at `position`.
    pub fn stream_record(
        &self,
        event: &v1::UserEvent,
        position: Position,
        partner: &str,
        user: &str,
    ) -> v1::StreamEvent {
        let kind = Kind::try_from(event.kind).unwrap_or(Kind::Unspecified);
        let reader = match kind {
            Kind::MessageRead | Kind::ConversationRead => user.to_owned(),
            Kind::Receipt => event.reader.clone(),
            _ => String::new(),
        };
        v1::StreamEvent {
            partner: partner.to_owned(),
            user: user.to_owned(),
            epoch: position.epoch,
            offset: position.offset,
            event: event_name(event).to_owned(),
            data_json: event.data_json.clone(),
            conversation_id: event.conversation_id.clone(),
            seq: event.seq,
            message_id: event.message_id.clone(),
            sender: event.sender.clone(),
            reader,
            unread_count: self.unread_count(),
            occurred_at_ms: event.occurred_at_ms,
            event_id: event.event_id.clone(),
        }
    }
}

/// The name a stream event goes by: fanout's own names, or the partner's for a
/// notification.
pub fn event_name(event: &v1::UserEvent) -> &str {
    let kind = match Kind::try_from(event.kind) {
        Ok(Kind::Receipt) => Kind::try_from(event.receipt_of).unwrap_or(Kind::Unspecified),
        Ok(kind) => kind,
        Err(_) => Kind::Unspecified,
    };
    match kind {
        Kind::Created | Kind::Sent => "message.created",
        Kind::Deleted => "message.deleted",
        Kind::MessageRead => "message.read",
        Kind::ConversationRead => "conversation.read",
        Kind::Notification => &event.event_name,
        Kind::Unspecified | Kind::Receipt => "",
    }
}

/// The read receipts a delivered read owes its `notify` users: one user event each,
/// keyed to the notified user, carrying the position the read took for the reader.
pub fn receipts_of(event: &v1::UserEvent, position: Position) -> Vec<v1::UserEvent> {
    let is_read = matches!(
        Kind::try_from(event.kind),
        Ok(Kind::MessageRead | Kind::ConversationRead)
    );
    if !is_read {
        return Vec::new();
    }
    event
        .notify
        .iter()
        .filter(|notified| **notified != event.user)
        .map(|notified| v1::UserEvent {
            partner: event.partner.clone(),
            user: notified.clone(),
            event_id: event.event_id.clone(),
            occurred_at_ms: event.occurred_at_ms,
            kind: Kind::Receipt.into(),
            conversation_id: event.conversation_id.clone(),
            seq: event.seq,
            data_json: event.data_json.clone(),
            message_id: event.message_id.clone(),
            reader: event.user.clone(),
            receipt_of: event.kind,
            reader_epoch: position.epoch,
            reader_offset: position.offset,
            ..v1::UserEvent::default()
        })
        .collect()
}

/// The read-receipts record a read owes, as (key, value): for a `KIND_CONVERSATION_READ`
/// or `KIND_MESSAGE_READ` of `partner`/`user` whose op read something not read before
/// (`counts.op_changed`); `None` for any other event, and for a read that changed
/// nothing (a duplicate, a replay of an applied read, a read at or below the mark).
///
/// The key is a protobuf [`v1::ReadReceiptKey`]: seq 0 for a ConversationRead, so the
/// user's latest mark in the conversation replaces the earlier ones under compaction
/// (marks only grow, and a lower one changes nothing, so the last record is the highest);
/// the message's seq for a MessageRead. The value is the same for the same event, so a
/// replay rewrites the same records.
pub fn read_receipt_of(
    event: &v1::UserEvent,
    counts: &Outcome,
    partner: &str,
    user: &str,
) -> Option<(Vec<u8>, v1::ReadReceipt)> {
    let key_seq = match Kind::try_from(event.kind) {
        Ok(Kind::ConversationRead) => 0,
        Ok(Kind::MessageRead) => event.seq,
        _ => return None,
    };
    if !counts.op_changed {
        return None;
    }
    let key = v1::ReadReceiptKey {
        partner: partner.to_owned(),
        conversation_id: event.conversation_id.clone(),
        user: user.to_owned(),
        seq: key_seq,
    }
    .encode_to_vec();
    let receipt = v1::ReadReceipt {
        partner: partner.to_owned(),
        conversation_id: event.conversation_id.clone(),
        user: user.to_owned(),
        kind: event.kind,
        seq: event.seq,
        read_at_ms: event.occurred_at_ms,
        event_id: event.event_id.clone(),
        message_id: event.message_id.clone(),
    };
    Some((key, receipt))
}

/// The epoch of a user first seen in the user-events record at `offset` with Kafka
/// timestamp `timestamp_ms`: the same record always gives the same epoch, so a replay
/// after a crash continues the same stream, while a user whose state was lost (and who
/// is seen anew from a later record) gets another. Below 2^53, so JavaScript reads it
/// exactly.
pub fn epoch_of(timestamp_ms: i64, offset: i64) -> u64 {
    let millis = u64::try_from(timestamp_ms).unwrap_or(0);
    let offset = u64::try_from(offset).unwrap_or(0);
    millis.saturating_mul(1000).saturating_add(offset % 1000)
}

fn ranges_to_proto(ranges: &[SeqRange]) -> Vec<v1::SeqRange> {
    ranges
        .iter()
        .map(|range| v1::SeqRange {
            first: range.first,
            last: range.last,
        })
        .collect()
}

fn ranges_from_proto(ranges: &[v1::SeqRange]) -> Vec<SeqRange> {
    ranges
        .iter()
        .map(|range| SeqRange {
            first: range.first,
            last: range.last,
        })
        .collect()
}

/// A user event of a kind this version does not know (or `KIND_UNSPECIFIED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownKind(pub i32);

/// The state-machine input a user event stands for; an error for a kind this version
/// does not know.
pub fn input_of(event: &v1::UserEvent) -> Result<Input<'_>, UnknownKind> {
    let unknown = UnknownKind(event.kind);
    let conversation = event.conversation_id.as_str();
    let seq = event.seq;
    Ok(match Kind::try_from(event.kind).map_err(|_| unknown)? {
        Kind::Unspecified => return Err(unknown),
        Kind::Created => Input::Created { conversation, seq },
        Kind::Sent => Input::Sent { conversation, seq },
        Kind::MessageRead => Input::MessageRead { conversation, seq },
        Kind::ConversationRead => Input::ConversationRead { conversation, seq },
        Kind::Deleted => Input::Deleted { conversation, seq },
        Kind::Notification => Input::Notification {
            id: &event.event_id,
        },
        Kind::Receipt => Input::Receipt {
            reader: &event.reader,
            position: Position {
                epoch: event.reader_epoch,
                offset: event.reader_offset,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(kind: Kind, conversation: &str, seq: u64) -> v1::UserEvent {
        v1::UserEvent {
            partner: "acme".into(),
            user: "bob".into(),
            event_id: format!("e{seq}"),
            kind: kind.into(),
            conversation_id: conversation.into(),
            seq,
            ..Default::default()
        }
    }

    fn apply(record: &mut UserRecord, event: &v1::UserEvent, offset: i64) -> Step {
        record.apply(
            event,
            input_of(event).unwrap(),
            offset,
            &Limits::default(),
            &StreamLimits::default(),
        )
    }

    #[test]
    fn record_round_trips_through_the_wire_schema() {
        let mut record = UserRecord::new(epoch_of(1_700_000_000_123, 4567));
        let mut notification = event(Kind::Notification, "", 0);
        notification.event_id = "n1".into();
        notification.event_name = "typing.started".into();
        let mut receipt = event(Kind::Receipt, "c1", 2);
        receipt.reader = "ann".into();
        receipt.receipt_of = Kind::MessageRead.into();
        receipt.reader_epoch = 3;
        receipt.reader_offset = 9;
        let events = [
            event(Kind::Created, "c1", 1),
            event(Kind::Created, "c1", 2),
            event(Kind::Created, "c1", 5),
            event(Kind::Sent, "c2", 3),
            event(Kind::MessageRead, "c1", 9),
            event(Kind::ConversationRead, "c1", 1),
            event(Kind::Deleted, "c1", 7),
            notification,
            receipt,
        ];
        for (offset, event) in events.iter().enumerate() {
            apply(&mut record, event, offset as i64);
        }
        record.occurred_at_ms = 77;
        let proto = record.to_proto("acme", "bob");
        assert_eq!(proto.unread_count, 2);
        assert_eq!(proto.stream_epoch, 1_700_000_000_123_567);
        assert_eq!(proto.stream_offset, 9);
        let back = UserRecord::from_proto(proto).unwrap();
        assert_eq!(back, record);
        let count = back.count_record("acme", "bob");
        assert_eq!(
            (count.count, count.version, count.occurred_at_ms),
            (2, 9, 77)
        );
    }

    #[test]
    fn deliveries_take_consecutive_positions_and_replays_take_none() {
        let mut record = UserRecord::new(5);
        let created = event(Kind::Created, "c1", 1);
        let Step::Applied { counts, delivered } = apply(&mut record, &created, 10) else {
            panic!("the message applies");
        };
        assert!(counts.count_changed);
        assert_eq!(counts.evicted_ranges, 0);
        assert_eq!(
            delivered,
            Some(Position {
                epoch: 5,
                offset: 1
            })
        );
        // The same record again (a router replay), then the same event at a new offset
        // (an ingest replay): neither delivers.
        assert_eq!(apply(&mut record, &created, 10), Step::Replayed);
        assert_eq!(
            apply(&mut record, &created, 11),
            Step::Unchanged { evicted_ranges: 0 }
        );
        let read = event(Kind::ConversationRead, "c1", 1);
        let Step::Applied { delivered, .. } = apply(&mut record, &read, 12) else {
            panic!("the read applies");
        };
        assert_eq!(delivered.map(|p| p.offset), Some(2));
        assert_eq!(
            record
                .stream_record(
                    &read,
                    Position {
                        epoch: 5,
                        offset: 2
                    },
                    "acme",
                    "bob"
                )
                .reader,
            "bob"
        );
    }

    #[test]
    fn a_delivered_read_owes_each_notify_user_a_receipt_but_the_reader_none() {
        let mut read = event(Kind::MessageRead, "c1", 4);
        read.notify = vec!["ann".into(), "bob".into(), "cy".into()];
        read.data_json = r#"{"by":"bob"}"#.into();
        let position = Position {
            epoch: 8,
            offset: 3,
        };
        let receipts = receipts_of(&read, position);
        let users: Vec<&str> = receipts.iter().map(|r| r.user.as_str()).collect();
        assert_eq!(users, ["ann", "cy"]);
        let receipt = &receipts[0];
        assert_eq!(receipt.kind, i32::from(Kind::Receipt));
        assert_eq!(receipt.receipt_of, i32::from(Kind::MessageRead));
        assert_eq!(
            (
                receipt.reader.as_str(),
                receipt.reader_epoch,
                receipt.reader_offset
            ),
            ("bob", 8, 3)
        );
        assert_eq!(receipt.data_json, read.data_json);
        assert_eq!(event_name(receipt), "message.read");
        assert!(receipts_of(&event(Kind::Created, "c1", 4), position).is_empty());
    }

    /// The read-receipts record `event` owes once applied at `offset`, as the router
    /// decides it: only an applied step's outcome can owe one.
    fn read_receipt_after(
        record: &mut UserRecord,
        event: &v1::UserEvent,
        offset: i64,
    ) -> Option<(v1::ReadReceiptKey, v1::ReadReceipt)> {
        let Step::Applied { counts, .. } = apply(record, event, offset) else {
            return None;
        };
        read_receipt_of(event, &counts, "acme", "bob")
            .map(|(key, receipt)| (v1::ReadReceiptKey::decode(key.as_slice()).unwrap(), receipt))
    }

    fn key(seq: u64) -> v1::ReadReceiptKey {
        v1::ReadReceiptKey {
            partner: "acme".into(),
            conversation_id: "c1".into(),
            user: "bob".into(),
            seq,
        }
    }

    #[test]
    fn a_read_that_reads_something_owes_one_read_receipt_keyed_by_mark_or_message() {
        let mut record = UserRecord::new(1);
        for (offset, seq) in [1, 2, 3].into_iter().enumerate() {
            apply(&mut record, &event(Kind::Created, "c1", seq), offset as i64);
        }
        let mut mark = event(Kind::ConversationRead, "c1", 2);
        mark.occurred_at_ms = 1_700_000_000_500;
        mark.event_id = "read-2".into();
        assert_eq!(
            read_receipt_after(&mut record, &mark, 10),
            Some((
                key(0),
                v1::ReadReceipt {
                    partner: "acme".into(),
                    conversation_id: "c1".into(),
                    user: "bob".into(),
                    kind: Kind::ConversationRead.into(),
                    seq: 2,
                    read_at_ms: 1_700_000_000_500,
                    event_id: "read-2".into(),
                    message_id: String::new(),
                }
            ))
        );
        // A message read before the message exists: keyed by its seq; the seq is the
        // event's, not the mark it may move.
        let mut early = event(Kind::MessageRead, "c1", 9);
        early.message_id = "m9".into();
        early.occurred_at_ms = 1_700_000_000_600;
        let (early_key, early_receipt) = read_receipt_after(&mut record, &early, 11).unwrap();
        assert_eq!(early_key, key(9));
        assert_eq!(
            (
                early_receipt.kind,
                early_receipt.seq,
                early_receipt.read_at_ms,
                early_receipt.message_id.as_str()
            ),
            (i32::from(Kind::MessageRead), 9, 1_700_000_000_600, "m9")
        );
        let (_, next) =
            read_receipt_after(&mut record, &event(Kind::MessageRead, "c1", 3), 12).unwrap();
        assert_eq!(next.seq, 3);
        // A later, higher mark: the same key as the first, to replace it.
        let (higher_key, higher) =
            read_receipt_after(&mut record, &event(Kind::ConversationRead, "c1", 12), 13).unwrap();
        assert_eq!((higher_key, higher.seq), (key(0), 12));
    }

    #[test]
    fn a_read_that_changes_nothing_owes_no_read_receipt() {
        let mut record = UserRecord::new(1);
        apply(&mut record, &event(Kind::Created, "c1", 1), 0);
        let mark = event(Kind::ConversationRead, "c1", 5);
        assert!(read_receipt_after(&mut record, &mark, 1).is_some());
        // The same record again (a router replay), the same event again (a duplicate),
        // a lower mark, a message read at or below the mark: none reads anything.
        assert_eq!(read_receipt_after(&mut record, &mark, 1), None);
        assert_eq!(read_receipt_after(&mut record, &mark, 2), None);
        let below = [
            event(Kind::ConversationRead, "c1", 3),
            event(Kind::MessageRead, "c1", 4),
            event(Kind::MessageRead, "c1", 5),
        ];
        for (offset, read) in (3..).zip(&below) {
            assert_eq!(
                read_receipt_after(&mut record, read, offset),
                None,
                "{read:?}"
            );
        }
        let read = event(Kind::MessageRead, "c1", 8);
        assert!(read_receipt_after(&mut record, &read, 10).is_some());
        assert_eq!(read_receipt_after(&mut record, &read, 11), None);
        // A read of a message deleted for the user reads nothing more.
        apply(&mut record, &event(Kind::Deleted, "c1", 9), 12);
        assert_eq!(
            read_receipt_after(&mut record, &event(Kind::MessageRead, "c1", 9), 13),
            None
        );
    }

    #[test]
    fn only_reads_whose_own_op_changed_owe_a_read_receipt() {
        let changed = Outcome {
            state_changed: true,
            op_changed: true,
            count_changed: true,
            evicted_ranges: 0,
        };
        for kind in [Kind::Created, Kind::Sent, Kind::Deleted, Kind::Notification] {
            assert_eq!(
                read_receipt_of(&event(kind, "c1", 1), &changed, "acme", "bob"),
                None
            );
        }
        let mut receipt = event(Kind::Receipt, "c1", 1);
        receipt.receipt_of = Kind::MessageRead.into();
        assert_eq!(read_receipt_of(&receipt, &changed, "acme", "bob"), None);
        // Evictions alone changed the state: the read itself changed nothing.
        let evicted_only = Outcome {
            state_changed: true,
            op_changed: false,
            count_changed: false,
            evicted_ranges: 1,
        };
        let read = event(Kind::MessageRead, "c1", 1);
        assert_eq!(read_receipt_of(&read, &evicted_only, "acme", "bob"), None);
        assert!(read_receipt_of(&read, &changed, "acme", "bob").is_some());
    }

    #[test]
    fn read_receipt_keys_keep_partners_users_and_conversations_apart() {
        let changed = Outcome {
            state_changed: true,
            op_changed: true,
            count_changed: true,
            evicted_ranges: 0,
        };
        // Ids that a separator would confuse: "a/b" + "c" and "a" + "b/c".
        let keys: Vec<Vec<u8>> = [("a/b", "c", "u"), ("a", "b/c", "u"), ("a", "b", "c/u")]
            .into_iter()
            .map(|(partner, conversation, user)| {
                let read = event(Kind::ConversationRead, conversation, 1);
                read_receipt_of(&read, &changed, partner, user).unwrap().0
            })
            .collect();
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_ne!(keys[0], keys[2]);
        let decoded = v1::ReadReceiptKey::decode(keys[1].as_slice()).unwrap();
        assert_eq!(
            (
                decoded.partner.as_str(),
                decoded.conversation_id.as_str(),
                decoded.user.as_str()
            ),
            ("a", "b/c", "u")
        );
    }

    #[test]
    fn unknown_kinds_are_not_inputs() {
        let event = v1::UserEvent {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(input_of(&event), Err(UnknownKind(99)));
        let unspecified = v1::UserEvent::default();
        assert_eq!(input_of(&unspecified), Err(UnknownKind(0)));
    }

    #[test]
    fn event_names() {
        for (kind, name) in [
            (Kind::Created, "message.created"),
            (Kind::Sent, "message.created"),
            (Kind::Deleted, "message.deleted"),
            (Kind::MessageRead, "message.read"),
            (Kind::ConversationRead, "conversation.read"),
        ] {
            assert_eq!(event_name(&event(kind, "c1", 1)), name);
        }
        let mut notification = event(Kind::Notification, "", 0);
        notification.event_name = "typing.started".into();
        assert_eq!(event_name(&notification), "typing.started");
    }

    #[test]
    fn epochs_are_the_same_for_the_same_record_and_fit_javascript() {
        assert_eq!(
            epoch_of(1_700_000_000_000, 42),
            epoch_of(1_700_000_000_000, 42)
        );
        assert_ne!(
            epoch_of(1_700_000_000_000, 42),
            epoch_of(1_700_000_000_001, 42)
        );
        assert!(epoch_of(4_102_444_800_000, 999_999) < 1 << 53);
    }
}
