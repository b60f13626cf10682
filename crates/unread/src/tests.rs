#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const ROOMY: Limits = Limits {
    max_settled_ranges: 1 << 20,
};

fn op(conversation: &str, seq: u64, kind: OpKind) -> Op<'_> {
    Op {
        conversation,
        seq,
        kind,
    }
}

fn created(conversation: &str, seq: u64) -> Op<'_> {
    op(conversation, seq, OpKind::Created)
}

fn message_read(conversation: &str, seq: u64) -> Op<'_> {
    op(conversation, seq, OpKind::MessageRead)
}

fn deleted(conversation: &str, seq: u64) -> Op<'_> {
    op(conversation, seq, OpKind::Deleted)
}

fn conversation_read(conversation: &str, seq: u64) -> Op<'_> {
    op(conversation, seq, OpKind::ConversationRead)
}

fn range(first: u64, last: u64) -> SeqRange {
    SeqRange { first, last }
}

/// Applies `ops` with a cap that never evicts, checking the totals each time.
fn state_after(ops: &[Op<'_>]) -> UserState {
    let mut state = UserState::new();
    for &op in ops {
        state.apply(op, &ROOMY);
        assert_totals_consistent(&state);
    }
    state
}

/// The maintained totals equal a recount.
fn assert_totals_consistent(state: &UserState) {
    let mut unread = 0;
    let mut unread_ranges = 0;
    let mut settled_ranges = 0;
    for conversation in state.conversations.values() {
        assert!(conversation.invariants_hold());
        unread += conversation.unread.checked_seq_count().unwrap();
        unread_ranges += conversation.unread.range_count();
        settled_ranges += conversation.settled.range_count();
    }
    assert_eq!(state.unread_count(), unread);
    assert_eq!(state.unread_range_count(), unread_ranges);
    assert_eq!(state.settled_range_count(), settled_ranges);
}

fn conversation_snapshot(state: &UserState, id: &str) -> ConversationSnapshot {
    state
        .snapshot()
        .conversations
        .into_iter()
        .find(|entry| entry.conversation == id)
        .expect("conversation present")
}

const CHANGED_COUNT: Outcome = Outcome {
    state_changed: true,
    op_changed: true,
    count_changed: true,
    evicted_ranges: 0,
};
const CHANGED_STATE_ONLY: Outcome = Outcome {
    state_changed: true,
    op_changed: true,
    count_changed: false,
    evicted_ranges: 0,
};
const NOTHING: Outcome = Outcome {
    state_changed: false,
    op_changed: false,
    count_changed: false,
    evicted_ranges: 0,
};

#[test]
fn new_state_is_empty() {
    let state = UserState::new();
    assert_eq!(state.unread_count(), 0);
    assert_eq!(state.conversation_count(), 0);
    assert_eq!(state.settled_range_count(), 0);
    assert_eq!(state.unread_range_count(), 0);
    assert_eq!(state.snapshot(), Snapshot::default());
    assert_eq!(Limits::default().max_settled_ranges, 1024);
}

#[test]
fn created_counts_once() {
    let mut state = UserState::new();
    assert_eq!(state.apply(created("c1", 1), &ROOMY), CHANGED_COUNT);
    assert_eq!(state.apply(created("c1", 1), &ROOMY), NOTHING);
    assert_eq!(state.apply(created("c1", 2), &ROOMY), CHANGED_COUNT);
    assert_eq!(state.unread_count(), 2);
    assert_eq!(state.unread_range_count(), 1);
    assert_eq!(state.conversation_count(), 1);
}

#[test]
fn seq_zero_changes_nothing_and_creates_no_entry() {
    let mut state = UserState::new();
    for kind in [
        OpKind::Created,
        OpKind::MessageRead,
        OpKind::ConversationRead,
        OpKind::Deleted,
    ] {
        assert_eq!(state.apply(op("c1", 0, kind), &ROOMY), NOTHING);
    }
    assert_eq!(state, UserState::new());
}

#[test]
fn counts_sum_over_conversations() {
    let state = state_after(&[
        created("c1", 1),
        created("c1", 5),
        created("c2", 3),
        created("c3", 9),
    ]);
    assert_eq!(state.unread_count(), 4);
    assert_eq!(state.conversation_count(), 3);
    assert_eq!(state.unread_range_count(), 4);
}

#[test]
fn message_read_removes_one_unread() {
    let mut state = state_after(&[created("c1", 1), created("c1", 2), created("c1", 3)]);
    assert_eq!(state.apply(message_read("c1", 2), &ROOMY), CHANGED_COUNT);
    assert_eq!(state.unread_count(), 2);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.unread, vec![range(1, 1), range(3, 3)]);
    assert_eq!(entry.settled, vec![range(2, 2)]);
    assert_eq!(state.apply(message_read("c1", 2), &ROOMY), NOTHING);
}

#[test]
fn deleted_removes_one_unread() {
    let mut state = state_after(&[created("c1", 4), created("c1", 6)]);
    assert_eq!(state.apply(deleted("c1", 6), &ROOMY), CHANGED_COUNT);
    assert_eq!(state.unread_count(), 1);
    assert_eq!(state.apply(deleted("c1", 6), &ROOMY), NOTHING);
    assert_eq!(state.apply(message_read("c1", 6), &ROOMY), NOTHING);
}

#[test]
fn conversation_read_drops_unread_and_settled_through_seq() {
    let mut state = state_after(&[
        created("c1", 2),
        created("c1", 3),
        message_read("c1", 5),
        created("c1", 7),
        message_read("c1", 9),
        created("c2", 1),
    ]);
    assert_eq!(state.unread_count(), 4);
    assert_eq!(
        state.apply(conversation_read("c1", 6), &ROOMY),
        CHANGED_COUNT
    );
    assert_eq!(state.unread_count(), 2); // c1:7 and c2:1
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, 6);
    assert_eq!(entry.unread, vec![range(7, 7)]);
    assert_eq!(entry.settled, vec![range(9, 9)]);
    assert_totals_consistent(&state);
}

#[test]
fn conversation_read_at_or_below_mark_is_noop() {
    let mut state = state_after(&[conversation_read("c1", 5), created("c1", 8)]);
    assert_eq!(state.apply(conversation_read("c1", 5), &ROOMY), NOTHING);
    assert_eq!(state.apply(conversation_read("c1", 3), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 1);
}

#[test]
fn conversation_read_without_unread_changes_state_only() {
    let mut state = UserState::new();
    assert_eq!(
        state.apply(conversation_read("c1", 5), &ROOMY),
        CHANGED_STATE_ONLY
    );
    assert_eq!(state.conversation_count(), 1);
    assert_eq!(state.apply(created("c1", 5), &ROOMY), NOTHING);
    assert_eq!(state.apply(created("c1", 1), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 0);
}

#[test]
fn early_read_then_create_does_not_count() {
    let mut state = UserState::new();
    assert_eq!(
        state.apply(message_read("c1", 4), &ROOMY),
        CHANGED_STATE_ONLY
    );
    assert_eq!(state.settled_range_count(), 1);
    assert_eq!(state.apply(created("c1", 4), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 0);
}

#[test]
fn delete_then_create_does_not_count() {
    let mut state = UserState::new();
    assert_eq!(state.apply(deleted("c1", 4), &ROOMY), CHANGED_STATE_ONLY);
    assert_eq!(state.apply(created("c1", 4), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 0);
}

#[test]
fn replayed_create_after_read_does_not_count() {
    let mut state = state_after(&[created("c1", 7), message_read("c1", 7)]);
    assert_eq!(state.unread_count(), 0);
    assert_eq!(state.apply(created("c1", 7), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 0);
}

#[test]
fn replayed_create_below_mark_does_not_count() {
    let mut state = state_after(&[created("c1", 7), conversation_read("c1", 7)]);
    assert_eq!(state.apply(created("c1", 7), &ROOMY), NOTHING);
    assert_eq!(state.unread_count(), 0);
}

#[test]
fn read_mark_advances_over_settled_prefix() {
    let mut state = UserState::new();
    state.apply(message_read("c1", 3), &ROOMY);
    state.apply(message_read("c1", 5), &ROOMY);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, 0);
    assert_eq!(entry.settled, vec![range(3, 3), range(5, 5)]);

    // Reading through 2 reaches the settled 3: the mark moves on to 3.
    state.apply(conversation_read("c1", 2), &ROOMY);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, 3);
    assert_eq!(entry.settled, vec![range(5, 5)]);

    // Settling 4 joins the prefix with 5: the mark moves to 5.
    state.apply(deleted("c1", 4), &ROOMY);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, 5);
    assert_eq!(entry.settled, vec![]);
    assert_eq!(state.settled_range_count(), 0);
    assert_totals_consistent(&state);
}

#[test]
fn reading_in_order_keeps_no_settled_ranges() {
    let mut ops = Vec::new();
    for seq in 1..=50 {
        ops.push(created("c1", seq));
    }
    for seq in 1..=50 {
        ops.push(message_read("c1", seq));
    }
    let state = state_after(&ops);
    assert_eq!(state.unread_count(), 0);
    assert_eq!(state.settled_range_count(), 0);
    assert_eq!(state.unread_range_count(), 0);
    assert_eq!(conversation_snapshot(&state, "c1").read_mark, 50);
}

#[test]
fn many_creates_share_one_unread_range() {
    let ops: Vec<Op<'_>> = (1..=1000).map(|seq| created("c1", seq)).collect();
    let state = state_after(&ops);
    assert_eq!(state.unread_count(), 1000);
    assert_eq!(state.unread_range_count(), 1);
}

#[test]
fn conversation_entry_is_kept_when_empty() {
    let state = state_after(&[created("c1", 1), conversation_read("c1", 1)]);
    assert_eq!(state.conversation_count(), 1);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, 1);
    assert!(entry.unread.is_empty() && entry.settled.is_empty());
}

#[test]
fn order_of_ops_does_not_matter() {
    let ops = [
        created("c1", 1),
        created("c1", 2),
        message_read("c1", 2),
        deleted("c1", 4),
        created("c1", 4),
        created("c1", 6),
        conversation_read("c1", 1),
        created("c2", 3),
    ];
    let forward = state_after(&ops);
    let mut reversed_ops = ops;
    reversed_ops.reverse();
    let backward = state_after(&reversed_ops);
    assert_eq!(forward, backward);
    assert_eq!(forward.unread_count(), 2); // c1:6, c2:3
}

#[test]
fn u64_max_seq_is_handled() {
    let mut state = UserState::new();
    state.apply(message_read("c1", u64::MAX), &ROOMY);
    state.apply(created("c1", u64::MAX - 1), &ROOMY);
    assert_eq!(state.unread_count(), 1);
    state.apply(conversation_read("c1", u64::MAX - 2), &ROOMY);
    assert_eq!(state.unread_count(), 1);
    state.apply(message_read("c1", u64::MAX - 1), &ROOMY);
    assert_eq!(state.unread_count(), 0);
    let entry = conversation_snapshot(&state, "c1");
    assert_eq!(entry.read_mark, u64::MAX);
    assert_eq!(state.settled_range_count(), 0);
    assert_eq!(state.apply(created("c1", u64::MAX), &ROOMY), NOTHING);
    assert_totals_consistent(&state);
}

#[test]
fn eviction_at_cap_drops_lowest_settled_range() {
    let cap = Limits {
        max_settled_ranges: 1,
    };
    let mut state = UserState::new();
    assert_eq!(state.apply(message_read("c1", 5), &cap).evicted_ranges, 0);
    let outcome = state.apply(message_read("c1", 7), &cap);
    assert_eq!(
        outcome,
        Outcome {
            state_changed: true,
            op_changed: true,
            count_changed: false,
            evicted_ranges: 1
        }
    );
    assert_eq!(state.settled_range_count(), 1);
    assert_eq!(
        conversation_snapshot(&state, "c1").settled,
        vec![range(7, 7)]
    );
    // The documented price of the cap: the evicted early read is forgotten.
    assert_eq!(state.apply(created("c1", 5), &cap), CHANGED_COUNT);
    // The kept one still works.
    assert_eq!(state.apply(created("c1", 7), &cap), NOTHING);
    assert_eq!(state.unread_count(), 1);
    assert_totals_consistent(&state);
}

#[test]
fn eviction_takes_from_conversation_with_most_settled_ranges() {
    let cap = Limits {
        max_settled_ranges: 3,
    };
    let mut state = UserState::new();
    for read in [
        message_read("c1", 10),
        message_read("c2", 10),
        message_read("c2", 20),
    ] {
        assert_eq!(state.apply(read, &cap).evicted_ranges, 0);
    }
    assert_eq!(state.apply(message_read("c2", 30), &cap).evicted_ranges, 1);
    assert_eq!(
        conversation_snapshot(&state, "c1").settled,
        vec![range(10, 10)]
    );
    assert_eq!(
        conversation_snapshot(&state, "c2").settled,
        vec![range(20, 20), range(30, 30)]
    );
    assert_totals_consistent(&state);
}

#[test]
fn eviction_ties_go_to_smallest_conversation_id() {
    let cap = Limits {
        max_settled_ranges: 3,
    };
    let mut state = UserState::new();
    for read in [
        message_read("b", 10),
        message_read("b", 20),
        message_read("a", 10),
        message_read("a", 20),
    ] {
        state.apply(read, &cap);
    }
    assert_eq!(
        conversation_snapshot(&state, "a").settled,
        vec![range(20, 20)]
    );
    assert_eq!(
        conversation_snapshot(&state, "b").settled,
        vec![range(10, 10), range(20, 20)]
    );
}

#[test]
fn cap_zero_keeps_no_settled_range() {
    let cap = Limits {
        max_settled_ranges: 0,
    };
    let mut state = UserState::new();
    let outcome = state.apply(message_read("c1", 5), &cap);
    assert!(outcome.state_changed);
    assert_eq!(outcome.evicted_ranges, 1);
    assert_eq!(state.settled_range_count(), 0);
    // A read that reaches the mark is absorbed, so nothing to evict.
    assert_eq!(state.apply(message_read("c1", 1), &cap).evicted_ranges, 0);
    assert_eq!(conversation_snapshot(&state, "c1").read_mark, 1);
}

#[test]
fn snapshot_is_sorted_and_round_trips() {
    let state = state_after(&[
        created("zeta", 3),
        message_read("alpha", 7),
        created("mid", 1),
        created("mid", 2),
        created("mid", 5),
        conversation_read("alpha", 2),
    ]);
    let snapshot = state.snapshot();
    let ids: Vec<&str> = snapshot
        .conversations
        .iter()
        .map(|entry| entry.conversation.as_str())
        .collect();
    assert_eq!(ids, ["alpha", "mid", "zeta"]);
    assert_eq!(
        snapshot.conversations[1],
        ConversationSnapshot {
            conversation: "mid".to_owned(),
            read_mark: 0,
            unread: vec![range(1, 2), range(5, 5)],
            settled: vec![],
        }
    );
    let restored = UserState::restore(snapshot).unwrap();
    assert_eq!(restored, state);
    assert_totals_consistent(&restored);
}

#[test]
fn restore_accepts_any_entry_order() {
    let state = state_after(&[created("b", 1), created("a", 2)]);
    let mut snapshot = state.snapshot();
    snapshot.conversations.reverse();
    assert_eq!(UserState::restore(snapshot).unwrap(), state);
}

#[test]
fn restore_normalizes_adjacent_ranges_and_settled_prefix() {
    let snapshot = Snapshot {
        conversations: vec![ConversationSnapshot {
            conversation: "c1".to_owned(),
            read_mark: 2,
            unread: vec![range(6, 6), range(7, 8), range(10, 10)],
            settled: vec![range(3, 3), range(4, 5), range(12, 12)],
        }],
    };
    let state = UserState::restore(snapshot).unwrap();
    assert_eq!(
        conversation_snapshot(&state, "c1"),
        ConversationSnapshot {
            conversation: "c1".to_owned(),
            read_mark: 5,
            unread: vec![range(6, 8), range(10, 10)],
            settled: vec![range(12, 12)],
        }
    );
    assert_eq!(state.unread_count(), 4);
    assert_totals_consistent(&state);
}

#[test]
fn restore_over_cap_evicts_on_next_apply() {
    let snapshot = Snapshot {
        conversations: vec![ConversationSnapshot {
            conversation: "c1".to_owned(),
            read_mark: 0,
            unread: vec![],
            settled: vec![range(2, 2), range(4, 4), range(6, 6)],
        }],
    };
    let mut state = UserState::restore(snapshot).unwrap();
    assert_eq!(state.settled_range_count(), 3);
    let cap = Limits {
        max_settled_ranges: 1,
    };
    let outcome = state.apply(created("c1", 9), &cap);
    assert_eq!(outcome.evicted_ranges, 2);
    assert_eq!(state.settled_range_count(), 1);
    assert_eq!(
        conversation_snapshot(&state, "c1").settled,
        vec![range(6, 6)]
    );
}

fn one_conversation(read_mark: u64, unread: Vec<SeqRange>, settled: Vec<SeqRange>) -> Snapshot {
    Snapshot {
        conversations: vec![ConversationSnapshot {
            conversation: "c1".to_owned(),
            read_mark,
            unread,
            settled,
        }],
    }
}

fn restore_error(snapshot: Snapshot) -> SnapshotError {
    UserState::restore(snapshot).expect_err("snapshot should be rejected")
}

#[test]
fn restore_rejects_duplicate_conversation() {
    let entry = ConversationSnapshot {
        conversation: "c1".to_owned(),
        ..ConversationSnapshot::default()
    };
    let error = restore_error(Snapshot {
        conversations: vec![entry.clone(), entry],
    });
    assert_eq!(error.kind(), SnapshotErrorKind::DuplicateConversation);
    assert_eq!(error.conversation(), "c1");
    assert!(error.to_string().contains("\"c1\""), "{error}");
    assert!(error.to_string().contains("more than once"), "{error}");
}

#[test]
fn restore_rejects_inverted_range() {
    let error = restore_error(one_conversation(0, vec![range(5, 4)], vec![]));
    assert_eq!(error.kind(), SnapshotErrorKind::InvertedRange);
    assert!(error.to_string().contains("unread range 5..=4"), "{error}");
    let error = restore_error(one_conversation(0, vec![], vec![range(9, 1)]));
    assert_eq!(error.kind(), SnapshotErrorKind::InvertedRange);
    assert!(error.to_string().contains("settled range 9..=1"), "{error}");
}

#[test]
fn restore_rejects_range_not_above_read_mark() {
    let error = restore_error(one_conversation(5, vec![range(5, 6)], vec![]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangeNotAboveReadMark);
    assert!(error.to_string().contains("read mark 5"), "{error}");
    let error = restore_error(one_conversation(5, vec![], vec![range(2, 8)]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangeNotAboveReadMark);
    // Seq 0 is below every mark.
    let error = restore_error(one_conversation(0, vec![range(0, 3)], vec![]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangeNotAboveReadMark);
}

#[test]
fn restore_rejects_unsorted_ranges() {
    let error = restore_error(one_conversation(0, vec![range(8, 9), range(2, 3)], vec![]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangesNotSortedAndDisjoint);
    let error = restore_error(one_conversation(0, vec![], vec![range(8, 9), range(2, 3)]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangesNotSortedAndDisjoint);
    assert!(error.to_string().contains("settled range 2..=3"), "{error}");
}

#[test]
fn restore_rejects_overlapping_ranges() {
    let error = restore_error(one_conversation(0, vec![range(2, 5), range(5, 9)], vec![]));
    assert_eq!(error.kind(), SnapshotErrorKind::RangesNotSortedAndDisjoint);
    // Overlap with a range that was coalesced from two adjacent ones.
    let error = restore_error(one_conversation(
        0,
        vec![range(1, 2), range(3, 4), range(4, 6)],
        vec![],
    ));
    assert_eq!(error.kind(), SnapshotErrorKind::RangesNotSortedAndDisjoint);
}

#[test]
fn restore_rejects_unread_settled_overlap() {
    let error = restore_error(one_conversation(
        0,
        vec![range(2, 3), range(10, 12)],
        vec![range(5, 6), range(12, 20)],
    ));
    assert_eq!(error.kind(), SnapshotErrorKind::UnreadSettledOverlap);
    assert!(
        error
            .to_string()
            .contains("unread range 10..=12 overlaps settled range 12..=20"),
        "{error}"
    );
}

#[test]
fn restore_rejects_count_overflow() {
    let huge = ConversationSnapshot {
        conversation: "c1".to_owned(),
        read_mark: 0,
        unread: vec![range(1, u64::MAX)],
        settled: vec![],
    };
    // One conversation holding u64::MAX seqs fits...
    assert_eq!(
        UserState::restore(Snapshot {
            conversations: vec![huge.clone()]
        })
        .unwrap()
        .unread_count(),
        u64::MAX
    );
    // ...two do not.
    let other = ConversationSnapshot {
        conversation: "c2".to_owned(),
        ..huge.clone()
    };
    let error = restore_error(Snapshot {
        conversations: vec![huge, other],
    });
    assert_eq!(error.kind(), SnapshotErrorKind::CountOverflow);
    assert_eq!(error.conversation(), "c2");
}

#[test]
fn restore_error_is_std_error() {
    let error = restore_error(one_conversation(0, vec![range(5, 4)], vec![]));
    let boxed: Box<dyn std::error::Error> = Box::new(error);
    assert!(boxed.to_string().starts_with("invalid unread snapshot"));
}

#[test]
fn early_read_evicted_at_once_reports_change_conservatively() {
    let cap = Limits {
        max_settled_ranges: 1,
    };
    let mut state = state_after(&[message_read("c1", 20)]);
    let before = state.clone();
    // 10 becomes the lowest settled range and is evicted right away: the
    // stored state ends up as it was, but the outcome says "changed".
    let outcome = state.apply(message_read("c1", 10), &cap);
    assert_eq!(
        outcome,
        Outcome {
            state_changed: true,
            op_changed: true,
            count_changed: false,
            evicted_ranges: 1
        }
    );
    assert_eq!(state, before);
}
