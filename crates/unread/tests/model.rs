//! The judge of the semantics: `UserState` against a naive model computed
//! from the set of ops each user has seen, over random streams with
//! duplicates, replays and snapshot/restore cycles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};

use fanout_unread::{Limits, Op, OpKind, UserState};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const PARTNERS: [&str; 2] = ["a", "b"];
/// The same user ids under both partners: they must stay independent.
const USERS: [&str; 2] = ["u1", "u2"];
const CONVERSATIONS: [&str; 3] = ["c1", "c2", "c3"];
const MAX_SEQ: u64 = 40;

/// (partner, user): the key of the router's table.
type Key = (&'static str, &'static str);

fn all_keys() -> impl Iterator<Item = Key> {
    PARTNERS
        .into_iter()
        .flat_map(|partner| USERS.into_iter().map(move |user| (partner, user)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Created,
    MessageRead,
    ConversationRead,
    Deleted,
}

impl Kind {
    fn op_kind(self) -> OpKind {
        match self {
            Kind::Created => OpKind::Created,
            Kind::MessageRead => OpKind::MessageRead,
            Kind::ConversationRead => OpKind::ConversationRead,
            Kind::Deleted => OpKind::Deleted,
        }
    }
}

/// One op for one user, as owned data the model can remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Event {
    conversation: &'static str,
    seq: u64,
    kind: Kind,
}

impl Event {
    fn op(self) -> Op<'static> {
        Op {
            conversation: self.conversation,
            seq: self.seq,
            kind: self.kind.op_kind(),
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// A new (random) op for a user.
    Fresh(Key, Event),
    /// Repeat one earlier op.
    Duplicate(Index),
    /// Re-apply a contiguous window of earlier ops.
    Replay { start: Index, len: usize },
    /// Replace a user's state with `restore(snapshot())`.
    SnapshotRestore(Key),
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Created),
        2 => Just(Kind::MessageRead),
        1 => Just(Kind::ConversationRead),
        1 => Just(Kind::Deleted),
    ]
}

fn key_strategy() -> impl Strategy<Value = Key> {
    (
        prop::sample::select(PARTNERS.to_vec()),
        prop::sample::select(USERS.to_vec()),
    )
}

fn event_strategy() -> impl Strategy<Value = Event> {
    (
        prop::sample::select(CONVERSATIONS.to_vec()),
        0..=MAX_SEQ,
        kind_strategy(),
    )
        .prop_map(|(conversation, seq, kind)| Event {
            conversation,
            seq,
            kind,
        })
}

fn action_strategy() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => (key_strategy(), event_strategy()).prop_map(|(key, event)| Action::Fresh(key, event)),
        3 => any::<Index>().prop_map(Action::Duplicate),
        1 => (any::<Index>(), 1usize..=25).prop_map(|(start, len)| Action::Replay { start, len }),
        1 => key_strategy().prop_map(Action::SnapshotRestore),
    ]
}

fn stream_strategy() -> impl Strategy<Value = Vec<Action>> {
    prop::collection::vec(action_strategy(), 0..=300)
}

/// The naive model: the unread count as a function of the SET of ops seen,
/// straight from the definition.
fn naive_count(seen: &BTreeSet<Event>) -> u64 {
    let has = |conversation: &str, seq: u64, kind: Kind| {
        seen.contains(&Event {
            conversation: CONVERSATIONS
                .into_iter()
                .find(|c| *c == conversation)
                .unwrap(),
            seq,
            kind,
        })
    };
    let mut count = 0;
    for conversation in CONVERSATIONS {
        let read_mark = seen
            .iter()
            .filter(|e| e.conversation == conversation && e.kind == Kind::ConversationRead)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0);
        for seq in 0..=MAX_SEQ {
            let unread = has(conversation, seq, Kind::Created)
                && !has(conversation, seq, Kind::MessageRead)
                && !has(conversation, seq, Kind::Deleted)
                && seq > read_mark;
            if unread {
                count += 1;
            }
        }
    }
    count
}

/// Upper bound on the count when eviction may forget reads: every created
/// seq above the conversation read marks.
fn created_above_marks(seen: &BTreeSet<Event>) -> u64 {
    let mut count = 0;
    for conversation in CONVERSATIONS {
        let read_mark = seen
            .iter()
            .filter(|e| e.conversation == conversation && e.kind == Kind::ConversationRead)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0);
        count += seen
            .iter()
            .filter(|e| e.conversation == conversation && e.kind == Kind::Created)
            .filter(|e| e.seq > read_mark)
            .count() as u64;
    }
    count
}

/// The router's table plus, per key, the set of ops that key has seen.
struct Harness {
    limits: Limits,
    /// Whether the limits are small enough to evict; if not, counts must
    /// match the model exactly.
    may_evict: bool,
    states: HashMap<Key, UserState>,
    seen: HashMap<Key, BTreeSet<Event>>,
    history: Vec<(Key, Event)>,
}

impl Harness {
    fn new(limits: Limits, may_evict: bool) -> Self {
        Harness {
            limits,
            may_evict,
            states: all_keys().map(|key| (key, UserState::new())).collect(),
            seen: all_keys().map(|key| (key, BTreeSet::new())).collect(),
            history: Vec::new(),
        }
    }

    fn run(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::Fresh(key, event) => self.apply(*key, *event),
                Action::Duplicate(index) => {
                    if self.history.is_empty() {
                        continue;
                    }
                    let (key, event) = self.history[index.index(self.history.len())];
                    self.apply(key, event);
                }
                Action::Replay { start, len } => {
                    if self.history.is_empty() {
                        continue;
                    }
                    let start = start.index(self.history.len());
                    let end = (start + len).min(self.history.len());
                    let window: Vec<(Key, Event)> = self.history[start..end].to_vec();
                    for (key, event) in window {
                        self.apply(key, event);
                    }
                }
                Action::SnapshotRestore(key) => {
                    let state = self.states.get_mut(key).unwrap();
                    let restored = UserState::restore(state.snapshot()).unwrap();
                    assert_eq!(&restored, state, "snapshot round trip for {key:?}");
                    *state = restored;
                    self.check_all_counts();
                }
            }
        }
    }

    fn apply(&mut self, key: Key, event: Event) {
        let counts_before: HashMap<Key, u64> = self
            .states
            .iter()
            .map(|(key, state)| (*key, state.unread_count()))
            .collect();
        let naive_before = naive_count(&self.seen[&key]);

        let state = self.states.get_mut(&key).unwrap();
        let state_before = state.clone();
        let outcome = state.apply(event.op(), &self.limits);
        self.seen.get_mut(&key).unwrap().insert(event);
        self.history.push((key, event));

        let state = &self.states[&key];
        if outcome.evicted_ranges == 0 {
            assert_eq!(
                outcome.state_changed,
                *state != state_before,
                "state_changed for {key:?} {event:?}"
            );
        } else {
            // Eviction may undo the op's own change (an early read evicted at
            // once), so `state_changed` is only conservative here.
            assert!(outcome.state_changed, "eviction without state_changed");
        }
        assert_eq!(
            outcome.count_changed,
            state.unread_count() != state_before.unread_count(),
            "count_changed vs the count for {key:?} {event:?}"
        );
        assert!(
            state.settled_range_count() <= self.limits.max_settled_ranges,
            "settled ranges {} over the cap {} for {key:?}",
            state.settled_range_count(),
            self.limits.max_settled_ranges
        );
        // The incrementally maintained totals equal a recount from scratch.
        assert_eq!(
            &UserState::restore(state.snapshot()).unwrap(),
            state,
            "totals after {key:?} {event:?}"
        );
        if !self.may_evict {
            assert_eq!(outcome.evicted_ranges, 0);
            let naive_after = naive_count(&self.seen[&key]);
            assert_eq!(
                outcome.count_changed,
                naive_before != naive_after,
                "count_changed vs the model for {key:?} {event:?}"
            );
        }

        for (other_key, other_state) in &self.states {
            if *other_key != key {
                assert_eq!(
                    other_state.unread_count(),
                    counts_before[other_key],
                    "op for {key:?} changed the count of {other_key:?}"
                );
            }
        }
        self.check_all_counts();
    }

    fn check_all_counts(&self) {
        for key in all_keys() {
            let count = self.states[&key].unread_count();
            let seen = &self.seen[&key];
            if self.may_evict {
                // Eviction forgets reads, so it can only count more, and
                // never more than what was created above the marks.
                assert!(
                    naive_count(seen) <= count && count <= created_above_marks(seen),
                    "count {count} of {key:?} outside [{}, {}]",
                    naive_count(seen),
                    created_above_marks(seen)
                );
            } else {
                assert_eq!(count, naive_count(seen), "count of {key:?}");
            }
        }
    }
}

/// 512 cases; failing cases are saved beside this file
/// (`model.proptest-regressions`) and replayed first on later runs.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Large enough that the streams here never evict.
const NEVER_EVICTS: Limits = Limits {
    max_settled_ranges: usize::MAX,
};

proptest! {
    #![proptest_config(config())]

    /// After every op, every key's count equals the naive model's.
    #[test]
    fn counts_match_the_naive_model(actions in stream_strategy()) {
        Harness::new(NEVER_EVICTS, false).run(&actions);
    }

    /// With a tiny cap, memory stays bounded (and the count stays between
    /// the model and the created-above-marks bound).
    #[test]
    fn settled_ranges_stay_under_a_small_cap(actions in stream_strategy()) {
        Harness::new(Limits { max_settled_ranges: 4 }, true).run(&actions);
    }
}

/// Ops for a single user, each maybe repeated.
fn user_events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(event_strategy(), 0..=120)
}

proptest! {
    #![proptest_config(config())]

    /// The whole state (not only the count) depends only on the set of ops:
    /// any order, with any duplicates, gives an equal `UserState`.
    #[test]
    fn state_depends_only_on_the_set_of_ops(
        (events, shuffled) in user_events().prop_flat_map(|events| {
            let doubled: Vec<Event> = events.iter().chain(events.iter()).copied().collect();
            (Just(events), Just(doubled).prop_shuffle())
        })
    ) {
        let mut in_order = UserState::new();
        for event in &events {
            in_order.apply(event.op(), &NEVER_EVICTS);
        }
        let mut reordered = UserState::new();
        for event in &shuffled {
            reordered.apply(event.op(), &NEVER_EVICTS);
        }
        prop_assert_eq!(&in_order, &reordered);
        let set: BTreeSet<Event> = events.iter().copied().collect();
        prop_assert_eq!(in_order.unread_count(), naive_count(&set));
    }
}
