//! The router's per-user record and its mapping to and from the wire schema. Pure.

use fanout_schema::v1::{self, user_event::Kind};
use fanout_unread::{
    ConversationSnapshot, Op, OpKind, SeqRange, Snapshot, SnapshotError, UserState,
};

/// A user's state as the router keeps it: the unread state machine plus the bookkeeping
/// that makes replays safe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub state: UserState,
    /// Grows by one with every change of `state`.
    pub version: u64,
    /// Offset, in this user's user-events partition, of the last event `state` includes;
    /// -1 before any.
    pub last_offset: i64,
    /// Source time of the last event that changed `state`.
    pub occurred_at_ms: i64,
}

impl UserRecord {
    pub fn new() -> Self {
        Self {
            last_offset: -1,
            ..Self::default()
        }
    }

    pub fn to_proto(&self, partner: &str, user: &str) -> v1::UserState {
        let snapshot = self.state.snapshot();
        v1::UserState {
            partner: partner.to_owned(),
            user: user.to_owned(),
            version: self.version,
            last_offset: self.last_offset,
            unread_count: self.state.unread_count(),
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
        }
    }

    pub fn from_proto(record: v1::UserState) -> Result<Self, SnapshotError> {
        let snapshot = Snapshot {
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
        Ok(Self {
            state: UserState::restore(snapshot)?,
            version: record.version,
            last_offset: record.last_offset,
            occurred_at_ms: record.occurred_at_ms,
        })
    }

    pub fn count_record(&self, partner: &str, user: &str) -> v1::UnreadCount {
        v1::UnreadCount {
            partner: partner.to_owned(),
            user: user.to_owned(),
            count: self.state.unread_count(),
            version: self.version,
            occurred_at_ms: self.occurred_at_ms,
        }
    }
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

/// The state-machine operation a user event stands for: `Ok(None)` for the kinds that
/// never change counts (the sender's own copy of a message, a partner notification:
/// they are for the user's event stream), an error for a kind this version does not
/// know.
pub fn op_of(event: &v1::UserEvent) -> Result<Option<Op<'_>>, UnknownKind> {
    let unknown = UnknownKind(event.kind);
    let kind = match Kind::try_from(event.kind).map_err(|_| unknown)? {
        Kind::Unspecified => return Err(unknown),
        Kind::Sent | Kind::Notification => return Ok(None),
        Kind::Created => OpKind::Created,
        Kind::MessageRead => OpKind::MessageRead,
        Kind::ConversationRead => OpKind::ConversationRead,
        Kind::Deleted => OpKind::Deleted,
    };
    Ok(Some(Op {
        conversation: &event.conversation_id,
        seq: event.seq,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fanout_unread::Limits;

    #[test]
    fn record_round_trips_through_the_wire_schema() {
        let mut record = UserRecord::new();
        let limits = Limits::default();
        for (kind, seq) in [
            (OpKind::Created, 1),
            (OpKind::Created, 2),
            (OpKind::Created, 5),
            (OpKind::MessageRead, 9),
            (OpKind::ConversationRead, 1),
        ] {
            record.state.apply(
                Op {
                    conversation: "c1",
                    seq,
                    kind,
                },
                &limits,
            );
        }
        record.version = 5;
        record.last_offset = 41;
        record.occurred_at_ms = 77;
        let proto = record.to_proto("acme", "bob");
        assert_eq!(proto.unread_count, 2);
        let back = UserRecord::from_proto(proto).unwrap();
        assert_eq!(back, record);
        let count = back.count_record("acme", "bob");
        assert_eq!(
            (count.count, count.version, count.occurred_at_ms),
            (2, 5, 77)
        );
    }

    #[test]
    fn unknown_kinds_are_not_operations() {
        let event = v1::UserEvent {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(op_of(&event), Err(UnknownKind(99)));
        let unspecified = v1::UserEvent::default();
        assert_eq!(op_of(&unspecified), Err(UnknownKind(0)));
    }

    #[test]
    fn sent_copies_and_notifications_change_no_count() {
        for kind in [Kind::Sent, Kind::Notification] {
            let event = v1::UserEvent {
                kind: kind.into(),
                conversation_id: "c1".into(),
                seq: 3,
                ..Default::default()
            };
            assert_eq!(op_of(&event), Ok(None), "{kind:?}");
        }
        let created = v1::UserEvent {
            kind: Kind::Created.into(),
            conversation_id: "c1".into(),
            seq: 3,
            ..Default::default()
        };
        assert_eq!(
            op_of(&created),
            Ok(Some(Op {
                conversation: "c1",
                seq: 3,
                kind: OpKind::Created
            }))
        );
    }
}
