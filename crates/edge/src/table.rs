//! The edge's count table: the newest count per `partner/user` key.
//!
//! Every user ever counted has an entry, connected or not, so an entry is lean: the key
//! inline when it fits in 24 bytes (`CompactString`), the count and the version; about
//! 60 bytes with the map's own overhead (`examples/table_memory.rs` measures it). Only a
//! user with a session subscribed is also watched: a small cell, created by the first
//! subscription and dropped once no session holds it, which carries the count to the
//! sessions with the source time of its change and the changes they skipped, and wakes
//! each of them at a change.
//!
//! The table is split in shards, each behind its own lock, so that the feed's writes
//! and the sessions' subscriptions rarely wait for each other.
//!
//! A cell also holds the frame of its latest change once a session encoded it
//! ([`crate::frames`]), if the user has more than one session: the others write the
//! same bytes. The feed's sweep drops it again, so that a user whose count stays put
//! holds no frame.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};

use compact_str::CompactString;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::frames::{Shape, SharedFrame};

/// Shards of the table: a power of two, well above the cores that write and read.
const SHARDS: usize = 64;

/// A user's count as the edge holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountValue {
    pub count: u64,
    /// The router's per-user version; 0 means "no record seen yet".
    pub version: u64,
    /// Source time of the event that produced this count, Unix milliseconds; 0 when not
    /// known (a value a session got on subscribing, not from a change it watched).
    pub occurred_at_ms: i64,
    /// How many values the user's cell has carried, this one included (set by the
    /// table): a session that skips from change 3 to change 7 coalesced three.
    pub changes: u64,
}

impl CountValue {
    /// The source event time, if the router knew it: the start of the delivery latency.
    pub fn source_time(&self) -> Option<i64> {
        (self.occurred_at_ms > 0).then_some(self.occurred_at_ms)
    }
}

/// What every user's entry holds.
#[derive(Debug, Clone, Copy)]
struct Stored {
    count: u64,
    version: u64,
}

/// A watched user's count as its sessions see it. Not a `tokio::sync::watch` channel:
/// that is ~400 bytes per user (eight notifiers for its many-receiver case), and a
/// session waiting on it holds a 120-byte future for its whole life; here a session
/// waits with its waker in the cell, and a change wakes each session once.
struct Watched {
    state: Mutex<WatchedState>,
}

struct WatchedState {
    value: CountValue,
    frame: SharedFrame,
    /// The sessions subscribed, each with its waker while it waits for a change.
    listeners: Vec<Listener>,
    next_id: u64,
}

struct Listener {
    id: u64,
    waker: Option<Waker>,
}

impl Watched {
    fn lock(&self) -> MutexGuard<'_, WatchedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Shard {
    counts: HashMap<CompactString, Stored>,
    /// Users with a session subscribed (or one that ended since their last change).
    watched: HashMap<CompactString, Arc<Watched>>,
}

/// Counts by key. Subscribers see only the newest value, so memory per subscriber is
/// bounded however fast counts change.
pub struct CountTable {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

impl Default for CountTable {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl CountTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        // `SHARDS` is a power of two: the low bits of the hash pick the shard.
        let index = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) & (SHARDS - 1);
        &self.shards[index]
    }

    /// Stores `value` for `key` if it is newer than the one held; returns whether it was.
    /// The sessions watching `key` get it.
    pub fn apply(&self, key: &str, value: CountValue) -> bool {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let stored = Stored {
            count: value.count,
            version: value.version,
        };
        match shard.counts.get_mut(key) {
            Some(held) if value.version <= held.version => return false,
            Some(held) => *held = stored,
            None => {
                shard.counts.insert(CompactString::from(key), stored);
            }
        }
        let unwatched = shard.watched.get(key).is_some_and(|watched| {
            let mut state = watched.lock();
            if state.listeners.is_empty() {
                return true;
            }
            state.value = CountValue {
                changes: state.value.changes + 1,
                ..value
            };
            state.frame.clear();
            for listener in &mut state.listeners {
                if let Some(waker) = listener.waker.take() {
                    waker.wake();
                }
            }
            false
        });
        if unwatched {
            shard.watched.remove(key);
        }
        true
    }

    /// A session's subscription to `key`: the current value, every later change, and
    /// how many changes were replaced before the session took them.
    pub fn subscription(&self, key: &str) -> CountSubscription {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let watched = match shard.watched.get(key) {
            Some(watched) => Arc::clone(watched),
            None => {
                let value = shard
                    .counts
                    .get(key)
                    .map(|held| CountValue {
                        count: held.count,
                        version: held.version,
                        ..CountValue::default()
                    })
                    .unwrap_or_default();
                let watched = Arc::new(Watched {
                    state: Mutex::new(WatchedState {
                        value,
                        frame: SharedFrame::default(),
                        listeners: Vec::new(),
                        next_id: 0,
                    }),
                });
                shard
                    .watched
                    .insert(CompactString::from(key), Arc::clone(&watched));
                watched
            }
        };
        // Listed before the shard is let go: a change meanwhile must not find the cell
        // without listeners and drop it.
        let (id, taken) = {
            let mut state = watched.lock();
            let id = state.next_id;
            state.next_id += 1;
            // Most users have one session: room for exactly one, not Vec's four.
            state.listeners.reserve_exact(1);
            state.listeners.push(Listener { id, waker: None });
            // Changes before the session started were never its to write.
            (id, state.value.changes)
        };
        drop(shard);
        CountSubscription { watched, id, taken }
    }

    /// The count held for `key`, if any record was seen for it (without its source
    /// time, which only a watched change carries).
    pub fn get(&self, key: &str) -> Option<CountValue> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.counts.get(key).map(|held| CountValue {
            count: held.count,
            version: held.version,
            ..CountValue::default()
        })
    }

    /// Drops the cells no session holds any more (a user whose count changes drops its
    /// own at the change; this catches those whose count stays as it is), and the
    /// frames of changes the sessions have had time to take.
    pub fn sweep(&self) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.watched.retain(|_, watched| {
                let mut state = watched.lock();
                state.frame.clear();
                !state.listeners.is_empty()
            });
        }
    }

    /// Users with a count.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .counts
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Users with a cell: those with a session subscribed, and those whose last session
    /// ended since their last change, until [`CountTable::sweep`].
    pub fn watched_len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .watched
                    .len()
            })
            .sum()
    }
}

/// One session's view of its user's count.
pub struct CountSubscription {
    watched: Arc<Watched>,
    /// Its place among the cell's listeners.
    id: u64,
    /// The `changes` of the last value taken.
    taken: u64,
}

impl CountSubscription {
    /// Whether a change came that was not taken yet.
    pub fn has_changed(&self) -> bool {
        self.watched.lock().value.changes > self.taken
    }

    /// Ready once a change came that was not taken yet; until then the task is woken
    /// at the next change.
    pub fn poll_changed(&mut self, context: &mut Context<'_>) -> Poll<()> {
        let mut state = self.watched.lock();
        if state.value.changes > self.taken {
            return Poll::Ready(());
        }
        if let Some(listener) = state
            .listeners
            .iter_mut()
            .find(|listener| listener.id == self.id)
        {
            match &mut listener.waker {
                Some(waker) => waker.clone_from(context.waker()),
                None => listener.waker = Some(context.waker().clone()),
            }
        }
        Poll::Pending
    }

    /// The newest value, marked seen, and how many changes it replaced that were
    /// never taken (coalesced while the session was busy writing to a slow client).
    pub fn take(&mut self) -> (CountValue, u64) {
        let value = self.watched.lock().value;
        let skipped = value.changes.saturating_sub(self.taken + 1);
        self.taken = self.taken.max(value.changes);
        (value, skipped)
    }

    /// The frame of `value` (a value this subscription took) in `shape`: the one
    /// another session of the user encoded, or `encode`d here and left for them. A
    /// value no longer the newest, or the only session's, is encoded here alone.
    pub fn frame(
        &self,
        value: &CountValue,
        shape: Shape<'_>,
        encode: impl FnOnce() -> String,
    ) -> Utf8Bytes {
        let mut state = self.watched.lock();
        if state.value.changes == value.changes && state.listeners.len() > 1 {
            state.frame.get_or_encode(shape, encode)
        } else {
            drop(state);
            Utf8Bytes::from(encode())
        }
    }
}

impl Drop for CountSubscription {
    fn drop(&mut self) {
        let mut state = self.watched.lock();
        if let Some(index) = state
            .listeners
            .iter()
            .position(|listener| listener.id == self.id)
        {
            state.listeners.swap_remove(index);
        }
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
        assert_eq!(table.get("acme/bob"), Some(value(3, 2)));
        assert!(table.apply("acme/bob", value(1, 3)));
        assert_eq!(table.get("acme/bob").map(|v| v.count), Some(1));
    }

    #[test]
    fn subscribers_see_the_current_value_then_only_the_newest() {
        let table = CountTable::new();
        let mut subscription = table.subscription("acme/bob");
        assert_eq!(subscription.take().0.count, 0);
        assert_eq!(table.get("acme/bob"), None);
        for version in 1..=1000 {
            table.apply("acme/bob", value(version, version));
        }
        assert!(subscription.has_changed());
        let newest = subscription.take().0;
        assert_eq!((newest.count, newest.changes), (1000, 1000));
        assert!(!subscription.has_changed());
    }

    #[test]
    fn a_change_wakes_each_waiting_session_once() {
        struct Wakes(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let wakes = Arc::new(Wakes(0.into()));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut context = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::Relaxed);
        let table = CountTable::new();
        let mut first = table.subscription("acme/bob");
        let mut second = table.subscription("acme/bob");
        assert!(first.poll_changed(&mut context).is_pending());
        assert!(second.poll_changed(&mut context).is_pending());
        table.apply("acme/bob", value(1, 1));
        assert_eq!(woken(), 2);
        // Woken once: the next change finds nobody waiting.
        table.apply("acme/bob", value(2, 2));
        assert_eq!(woken(), 2);
        assert!(first.poll_changed(&mut context).is_ready());
        let (taken, skipped) = first.take();
        assert_eq!((taken.count, taken.changes, skipped), (2, 2, 1));
        assert!(first.poll_changed(&mut context).is_pending());
        drop(second);
        table.apply("acme/bob", value(3, 3));
        assert_eq!(woken(), 3);
    }

    #[test]
    fn a_subscription_counts_the_changes_it_never_took() {
        let table = CountTable::new();
        table.apply("acme/bob", value(1, 1));
        let mut subscription = table.subscription("acme/bob");
        assert_eq!(subscription.take(), (value(1, 1), 0));
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

    #[test]
    fn only_a_watched_user_has_a_channel_and_it_goes_with_its_last_session() {
        let table = CountTable::new();
        for user in 0..100 {
            table.apply(&format!("acme/user-{user}"), value(1, 1));
        }
        assert_eq!((table.len(), table.watched_len()), (100, 0));
        let mut first = table.subscription("acme/user-7");
        let second = table.subscription("acme/user-7");
        let fresh = table.subscription("acme/never-counted");
        assert_eq!(
            table.watched_len(),
            2,
            "one channel per user, not per session"
        );
        assert_eq!(first.take().0.count, 1);
        assert_eq!(table.len(), 100, "subscribing counts nobody");
        table.sweep();
        assert_eq!(table.watched_len(), 2, "both still held");

        // The last session of user-7 goes: its next change drops the channel.
        drop((first, second));
        assert!(table.apply("acme/user-7", value(2, 2)));
        assert_eq!(table.watched_len(), 1);
        assert_eq!(table.get("acme/user-7"), Some(value(2, 2)));
        // One whose count stays put is swept.
        drop(fresh);
        table.sweep();
        assert_eq!(table.watched_len(), 0);
        // And a new session starts from the count held.
        let mut again = table.subscription("acme/user-7");
        assert_eq!(again.take(), (value(2, 2), 0));
    }

    #[test]
    fn a_change_is_encoded_once_for_every_session_of_its_user() {
        let table = CountTable::new();
        table.apply("acme/bob", value(1, 1));
        let mut first = table.subscription("acme/bob");
        let mut second = table.subscription("acme/bob");
        assert!(table.apply("acme/bob", value(2, 2)));
        let mut encodings = 0;
        let (taken, _) = first.take();
        let one = first.frame(&taken, Shape::Realtime, || {
            encodings += 1;
            format!("count {}", taken.count)
        });
        let (taken_too, _) = second.take();
        let two = second.frame(&taken_too, Shape::Realtime, || {
            encodings += 1;
            String::new()
        });
        assert_eq!(
            (one.as_str(), two.as_str(), encodings),
            ("count 2", "count 2", 1)
        );
        // A value taken before the newest change is not the newest's frame.
        assert!(table.apply("acme/bob", value(3, 3)));
        let stale = first.frame(&taken, Shape::Realtime, || "count 2 again".into());
        assert_eq!(stale, "count 2 again");
        // The sweep drops the frame, not the change: it is encoded again.
        let (newest, _) = second.take();
        second.frame(&newest, Shape::Realtime, || "count 3".into());
        table.sweep();
        assert!(!second.has_changed(), "dropping a frame is not a change");
        assert_eq!(
            second.frame(&newest, Shape::Realtime, || "count 3, anew".into()),
            "count 3, anew"
        );
    }

    #[test]
    fn the_only_session_of_a_user_caches_no_frame() {
        let table = CountTable::new();
        let first = table.subscription("acme/bob");
        let mut only = table.subscription("acme/bob");
        drop(first);
        assert!(table.apply("acme/bob", value(1, 1)));
        let (taken, _) = only.take();
        only.frame(&taken, Shape::Realtime, || "count 1".into());
        assert_eq!(
            only.frame(&taken, Shape::Realtime, || "count 1, anew".into()),
            "count 1, anew"
        );
    }

    #[test]
    fn long_keys_work_as_short_ones() {
        let table = CountTable::new();
        let long = format!("acme/{}", "u".repeat(300));
        assert!(table.apply(&long, value(4, 1)));
        let mut subscription = table.subscription(&long);
        assert_eq!(subscription.take().0.count, 4);
        assert!(table.apply(&long, value(5, 2)));
        assert_eq!(subscription.take().0.count, 5);
    }
}
