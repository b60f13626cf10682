//! The edge's count table: the newest count per `partner/user` key.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use tokio::sync::watch;

/// A user's count as the edge holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountValue {
    pub count: u64,
    /// The router's per-user version; 0 means "no record seen yet".
    pub version: u64,
    /// Source time of the event that produced this count, Unix milliseconds.
    pub occurred_at_ms: i64,
    /// How many values this edge has stored for the key, this one included (set by the
    /// table): a session that skips from change 3 to change 7 coalesced three.
    pub changes: u64,
}

impl CountValue {
    /// The source event time, if the router knew it: the start of the delivery latency.
    pub fn source_time(&self) -> Option<i64> {
        (self.occurred_at_ms > 0).then_some(self.occurred_at_ms)
    }
}

/// Counts by key, each behind a `watch` channel: subscribers see only the newest value,
/// so memory per subscriber is bounded however fast counts change.
#[derive(Default)]
pub struct CountTable {
    slots: RwLock<HashMap<Box<str>, watch::Sender<CountValue>>>,
}

impl CountTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` for `key` if it is newer than the one held; returns whether it was.
    pub fn apply(&self, key: &str, value: CountValue) -> bool {
        self.with_slot(key, |slot| {
            slot.send_if_modified(|held| {
                if value.version > held.version {
                    *held = CountValue {
                        changes: held.changes + 1,
                        ..value
                    };
                    true
                } else {
                    false
                }
            })
        })
    }

    /// A receiver of `key`'s count: its current value now, and every later change.
    pub fn subscribe(&self, key: &str) -> watch::Receiver<CountValue> {
        self.with_slot(key, watch::Sender::subscribe)
    }

    /// Runs `f` on `key`'s slot, creating it (count 0, version 0) if missing. The common
    /// case, an existing key, takes only the read lock.
    fn with_slot<T>(&self, key: &str, f: impl FnOnce(&watch::Sender<CountValue>) -> T) -> T {
        {
            let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = slots.get(key) {
                return f(slot);
            }
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        f(slots
            .entry(Box::from(key))
            .or_insert_with(|| watch::Sender::new(CountValue::default())))
    }

    /// A session's subscription to `key`: the current value, every later change, and
    /// how many changes were replaced before the session took them.
    pub fn subscription(&self, key: &str) -> CountSubscription {
        let receiver = self.subscribe(key);
        // Changes before the session started were never its to write.
        let taken = receiver.borrow().changes;
        CountSubscription { receiver, taken }
    }

    /// The count held for `key`, if any record was seen for it.
    pub fn get(&self, key: &str) -> Option<CountValue> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots
            .get(key)
            .map(|slot| *slot.borrow())
            .filter(|value| value.version > 0)
    }

    pub fn len(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One session's view of its user's count.
pub struct CountSubscription {
    pub receiver: watch::Receiver<CountValue>,
    /// The `changes` of the last value taken.
    taken: u64,
}

impl CountSubscription {
    /// The newest value, marked seen, and how many changes it replaced that were
    /// never taken (coalesced while the session was busy writing to a slow client).
    pub fn take(&mut self) -> (CountValue, u64) {
        let value = *self.receiver.borrow_and_update();
        let skipped = value.changes.saturating_sub(self.taken + 1);
        self.taken = self.taken.max(value.changes);
        (value, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(count: u64, version: u64) -> CountValue {
        CountValue {
            count,
            version,
            occurred_at_ms: 0,
            changes: 0,
        }
    }

    #[test]
    fn older_and_equal_versions_are_ignored() {
        let table = CountTable::new();
        assert!(table.apply("acme/bob", value(3, 2)));
        assert!(!table.apply("acme/bob", value(9, 1)));
        assert!(!table.apply("acme/bob", value(9, 2)));
        assert_eq!(
            table.get("acme/bob"),
            Some(CountValue {
                changes: 1,
                ..value(3, 2)
            })
        );
        assert!(table.apply("acme/bob", value(1, 3)));
        assert_eq!(table.get("acme/bob").map(|v| v.count), Some(1));
    }

    #[test]
    fn subscribers_see_the_current_value_then_only_the_newest() {
        let table = CountTable::new();
        let mut receiver = table.subscribe("acme/bob");
        assert_eq!(receiver.borrow_and_update().count, 0);
        assert_eq!(table.get("acme/bob"), None);
        for version in 1..=1000 {
            table.apply("acme/bob", value(version, version));
        }
        assert!(receiver.has_changed().unwrap_or(false));
        let newest = *receiver.borrow_and_update();
        assert_eq!((newest.count, newest.changes), (1000, 1000));
        assert!(!receiver.has_changed().unwrap_or(true));
    }

    #[test]
    fn a_subscription_counts_the_changes_it_never_took() {
        let table = CountTable::new();
        table.apply("acme/bob", value(1, 1));
        let mut subscription = table.subscription("acme/bob");
        assert_eq!(
            subscription.take(),
            (
                CountValue {
                    changes: 1,
                    ..value(1, 1)
                },
                0
            )
        );
        table.apply("acme/bob", value(2, 2));
        assert_eq!(subscription.take().1, 0);
        for version in 3..=1002 {
            table.apply("acme/bob", value(version, version));
        }
        let (newest, skipped) = subscription.take();
        assert_eq!((newest.count, skipped), (1002, 999));
        assert_eq!(subscription.take().1, 0);
    }

    #[test]
    fn keys_of_different_partners_are_separate() {
        let table = CountTable::new();
        table.apply("a/u1", value(5, 1));
        table.apply("b/u1", value(7, 1));
        assert_eq!(table.get("a/u1").map(|v| v.count), Some(5));
        assert_eq!(table.get("b/u1").map(|v| v.count), Some(7));
        assert_eq!(table.len(), 2);
    }
}
