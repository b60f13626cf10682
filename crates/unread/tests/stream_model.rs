//! The judge of the event streams: what `User::apply` delivers, and at which position,
//! against a naive model that remembers every input it has seen, over random streams
//! with duplicates, replays and snapshot/restore cycles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fanout_unread::{Input, Limits, Position, StreamLimits, User};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const USERS: [&str; 3] = ["u1", "u2", "u3"];
const CONVERSATIONS: [&str; 2] = ["c1", "c2"];
const NOTIFICATIONS: [&str; 4] = ["n1", "n2", "n3", "n4"];
const READERS: [&str; 2] = ["r1", "r2"];
const MAX_SEQ: u64 = 12;
const EPOCH: u64 = 7;

/// One input, as owned data the model can remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Created(&'static str, u64),
    Sent(&'static str, u64),
    MessageRead(&'static str, u64),
    ConversationRead(&'static str, u64),
    Deleted(&'static str, u64),
    Notification(&'static str),
    Receipt(&'static str, u64),
}

impl Event {
    fn input(self) -> Input<'static> {
        match self {
            Event::Created(conversation, seq) => Input::Created { conversation, seq },
            Event::Sent(conversation, seq) => Input::Sent { conversation, seq },
            Event::MessageRead(conversation, seq) => Input::MessageRead { conversation, seq },
            Event::ConversationRead(conversation, seq) => {
                Input::ConversationRead { conversation, seq }
            }
            Event::Deleted(conversation, seq) => Input::Deleted { conversation, seq },
            Event::Notification(id) => Input::Notification { id },
            Event::Receipt(reader, offset) => Input::Receipt {
                reader,
                position: Position { epoch: 1, offset },
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    Fresh(&'static str, Event),
    Duplicate(Index),
    Replay { start: Index, len: usize },
    SnapshotRestore(&'static str),
}

fn event_strategy() -> impl Strategy<Value = Event> {
    let conversation = proptest::sample::select(CONVERSATIONS.to_vec());
    let seq = 1..=MAX_SEQ;
    prop_oneof![
        4 => (conversation.clone(), seq.clone()).prop_map(|(c, s)| Event::Created(c, s)),
        2 => (conversation.clone(), seq.clone()).prop_map(|(c, s)| Event::Sent(c, s)),
        2 => (conversation.clone(), seq.clone()).prop_map(|(c, s)| Event::MessageRead(c, s)),
        2 => (conversation.clone(), seq.clone()).prop_map(|(c, s)| Event::ConversationRead(c, s)),
        1 => (conversation, seq).prop_map(|(c, s)| Event::Deleted(c, s)),
        1 => proptest::sample::select(NOTIFICATIONS.to_vec()).prop_map(Event::Notification),
        1 => (proptest::sample::select(READERS.to_vec()), 1..=8u64)
            .prop_map(|(r, o)| Event::Receipt(r, o)),
    ]
}

fn action_strategy() -> impl Strategy<Value = Action> {
    let user = proptest::sample::select(USERS.to_vec());
    prop_oneof![
        8 => (user.clone(), event_strategy()).prop_map(|(u, e)| Action::Fresh(u, e)),
        2 => any::<Index>().prop_map(Action::Duplicate),
        1 => (any::<Index>(), 1..10usize).prop_map(|(start, len)| Action::Replay { start, len }),
        1 => user.prop_map(Action::SnapshotRestore),
    ]
}

/// What one user has seen, remembered plainly: every message, delete, read and
/// notification, and each reader's highest receipt.
#[derive(Default)]
struct Model {
    messages: BTreeSet<(&'static str, u64)>,
    deleted: BTreeSet<(&'static str, u64)>,
    read: BTreeSet<(&'static str, u64)>,
    read_through: BTreeMap<&'static str, u64>,
    notifications: BTreeSet<&'static str>,
    receipts: BTreeMap<&'static str, u64>,
    delivered: u64,
}

impl Model {
    /// Whether seq `k` of `c` is already read: through a conversation read, one by one,
    /// or by its delete.
    fn is_read(&self, c: &'static str, k: u64) -> bool {
        k <= self.read_through.get(c).copied().unwrap_or(0)
            || self.read.contains(&(c, k))
            || self.deleted.contains(&(c, k))
    }

    /// Whether `event` is delivered, given everything seen before it; then remembers it.
    fn deliver(&mut self, event: Event) -> bool {
        let deliver = match event {
            Event::Created(c, s) | Event::Sent(c, s) => {
                let first = self.messages.insert((c, s));
                first && !self.deleted.contains(&(c, s))
            }
            Event::Deleted(c, s) => self.deleted.insert((c, s)),
            Event::MessageRead(c, s) => {
                let deliver = !self.is_read(c, s);
                self.read.insert((c, s));
                deliver
            }
            Event::ConversationRead(c, s) => {
                let deliver = (1..=s).any(|k| !self.is_read(c, k));
                let mark = self.read_through.entry(c).or_insert(0);
                *mark = (*mark).max(s);
                deliver
            }
            Event::Notification(id) => self.notifications.insert(id),
            Event::Receipt(reader, offset) => {
                let last = self.receipts.entry(reader).or_insert(0);
                let deliver = offset > *last;
                *last = (*last).max(offset);
                deliver
            }
        };
        if deliver {
            self.delivered += 1;
        }
        deliver
    }
}

struct Harness {
    users: HashMap<&'static str, User>,
    models: HashMap<&'static str, Model>,
    history: Vec<(&'static str, Event)>,
    stream_limits: StreamLimits,
    /// Per user, every position delivered, in order.
    positions: HashMap<&'static str, Vec<Position>>,
}

impl Harness {
    fn new(stream_limits: StreamLimits) -> Self {
        Self {
            users: HashMap::new(),
            models: HashMap::new(),
            history: Vec::new(),
            stream_limits,
            positions: HashMap::new(),
        }
    }

    /// Applies `event` to the machine; returns what it delivered and what the model says.
    fn apply(&mut self, user: &'static str, event: Event) -> (Option<Position>, bool) {
        let machine = self.users.entry(user).or_insert_with(|| User::new(EPOCH));
        let applied = machine.apply(event.input(), &Limits::default(), &self.stream_limits);
        let expected = self.models.entry(user).or_default().deliver(event);
        if let Some(position) = applied.delivered {
            assert!(applied.state_changed, "a delivery must be written");
            self.positions.entry(user).or_default().push(position);
        }
        (applied.delivered, expected)
    }

    fn run(&mut self, actions: &[Action], exact: bool) {
        for action in actions {
            let events: Vec<(&'static str, Event)> = match action {
                Action::Fresh(user, event) => {
                    self.history.push((user, *event));
                    vec![(user, *event)]
                }
                Action::Duplicate(index) if !self.history.is_empty() => {
                    vec![self.history[index.index(self.history.len())]]
                }
                Action::Replay { start, len } if !self.history.is_empty() => {
                    let start = start.index(self.history.len());
                    let end = (start + len).min(self.history.len());
                    self.history[start..end].to_vec()
                }
                Action::SnapshotRestore(user) => {
                    if let Some(machine) = self.users.get_mut(user) {
                        let restored =
                            User::restore(machine.counts.snapshot(), machine.stream.snapshot())
                                .unwrap();
                        assert_eq!(&restored, machine);
                        *machine = restored;
                    }
                    Vec::new()
                }
                Action::Duplicate(_) | Action::Replay { .. } => Vec::new(),
            };
            for (user, event) in events {
                let (delivered, expected) = self.apply(user, event);
                if exact {
                    let model = &self.models[user];
                    let want = expected.then_some(Position {
                        epoch: EPOCH,
                        offset: model.delivered,
                    });
                    assert_eq!(delivered, want, "{user} {event:?}");
                } else if delivered.is_some() {
                    // Past the bounds the stream may miss an event, never repeat one.
                    assert!(expected, "{user} {event:?} delivered though seen before");
                }
            }
        }
        for (user, positions) in &self.positions {
            let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
            let want: Vec<u64> = (1..=offsets.len() as u64).collect();
            assert_eq!(offsets, want, "{user}: positions 1..n, no gap, no repeat");
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn deliveries_match_the_naive_model(actions in prop::collection::vec(action_strategy(), 1..200)) {
        let roomy = StreamLimits { max_ranges: 1 << 20, max_notification_ids: 1 << 20, max_readers: 1 << 20 };
        Harness::new(roomy).run(&actions, true);
    }

    #[test]
    fn past_the_range_bounds_nothing_repeats(actions in prop::collection::vec(action_strategy(), 1..200)) {
        // Only the range bounds err towards missing; a forgotten notification id or
        // reader would let a very late repeat through (see the crate docs).
        let tight = StreamLimits { max_ranges: 1, max_notification_ids: 1 << 20, max_readers: 1 << 20 };
        Harness::new(tight).run(&actions, false);
    }
}
