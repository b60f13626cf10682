//! The node's stream hub: every user's recent events (the history window) and which
//! sessions hold a stream subscription for which user. A user-streams record becomes a
//! frame body once, in the feed, and that one body is what the window keeps and every
//! subscribed session of its user writes.
//!
//! **The window.** Each user's latest events, contiguous in offset, at most
//! `max_events_per_user` of them, none older than `max_age_ms` (by the record's Kafka
//! timestamp), and all users' together at most `max_bytes`. A subscription may name a
//! position (or, ActionCable's extended protocol, a time): it is resumed with exactly
//! the events after it when the window still holds them all, and told to reset
//! otherwise; never given part of them. Replay and live events are queued under one
//! lock, so there is no gap and no repeat between them.
//!
//! **Queues.** Each subscription has a bounded queue (`edge.max_stream_queue`). A
//! session whose client reads too slowly to keep up fills it; the hub then drops that
//! subscription (its session sees the queue end and tells its client, who subscribes
//! again) rather than hold its events without bound. A repeated record (a router
//! replaying after a crash writes the same event at the same position again) is
//! delivered once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use fanout_protocol::realtime::ResetReason;
use fanout_protocol::stream::{Epoch, Position, stream_tag};

/// A stream event ready for every session of its user.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamFrame {
    pub epoch: Epoch,
    pub offset: u64,
    /// The event's body (`fanout_protocol::stream::event_body`), which each protocol
    /// wraps in its frame.
    pub body: Box<str>,
    /// Source event time, Unix milliseconds, when known.
    pub source_time: Option<i64>,
    /// When its record was written (the Kafka timestamp), Unix milliseconds: the
    /// window's age is measured by it.
    pub written_ms: i64,
}

/// What the window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events_per_user: usize,
    pub max_age_ms: u64,
    pub max_bytes: usize,
}

/// Bytes the window accounts for one event besides its body: the frame, its reference
/// counts, its place in the user's window and in the eviction order.
pub const EVENT_OVERHEAD_BYTES: usize = std::mem::size_of::<StreamFrame>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<Ordered>()
    + std::mem::size_of::<Arc<StreamFrame>>();

fn cost(frame: &StreamFrame) -> usize {
    frame.body.len() + EVENT_OVERHEAD_BYTES
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Live events only.
    Now,
    /// Just after the position the client has.
    After(Position),
    /// The events written at or after this time (Unix milliseconds): the extended
    /// protocol's `since`, for a stream the client has no position of.
    Time(i64),
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No position asked for: live events from now.
    Live,
    /// `missed` events were queued first (the last at `through`), then live ones.
    Resumed { missed: u64, through: Option<u64> },
    /// The missed events cannot all be given: none were; live events from now.
    Reset(ResetReason),
}

/// Why a subscription with a position was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotResumable {
    /// The position is another stream's (its tag is not this user's).
    Foreign,
    /// The position is past the last event this node has of the user: the client saw
    /// it on a node further ahead, or it is made up. Asked again shortly, the first is
    /// resolved.
    Ahead,
}

/// The window's size now, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub users: usize,
    pub events: usize,
    /// What [`EVENT_OVERHEAD_BYTES`] and the bodies add up to.
    pub bytes: usize,
    /// Events dropped from the window, by reason, since the start.
    pub evicted_age: u64,
    pub evicted_bytes: u64,
    pub evicted_count: u64,
}

/// What [`StreamHub::publish`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sessions it was queued for.
    pub queued: usize,
    /// Subscriptions ended because their queue was full.
    pub overflowed: usize,
    /// It was at or before the position already delivered: nothing was queued.
    pub repeated: bool,
}

/// One subscription's queue, shared by the hub (which pushes) and the session (which
/// takes). Lean on purpose, since every subscribed connection holds one: nothing is
/// allocated for frames until one is queued, and the queue's buffer is given back
/// whenever it empties.
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Arc<StreamFrame>>,
    /// The hub ended the subscription: its queue overflowed.
    ended: bool,
    /// The session waiting for a frame.
    waker: Option<Waker>,
}

/// Why a frame was not queued.
enum Refused {
    Full,
    Ended,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` unless `capacity` frames wait already; a full queue ends.
    fn push(&self, frame: &Arc<StreamFrame>, capacity: usize) -> Result<(), Refused> {
        let (queued, waker) = {
            let mut state = self.lock();
            if state.ended {
                return Err(Refused::Ended);
            }
            let queued = if state.frames.len() >= capacity {
                state.ended = true;
                Err(Refused::Full)
            } else {
                state.frames.push_back(Arc::clone(frame));
                Ok(())
            };
            (queued, state.waker.take())
        };
        // Woken either way: a session whose queue ended must see it.
        if let Some(waker) = waker {
            waker.wake();
        }
        queued
    }

    fn take(state: &mut QueueState) -> Option<Arc<StreamFrame>> {
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > 0 {
            state.frames = VecDeque::new();
        }
        frame
    }
}

struct Listener {
    id: u64,
    queue: Arc<Queue>,
}

/// One user's stream on this node: its window and its subscribers.
struct UserStream {
    /// The epoch and offset of the last event, once one was seen.
    last: Option<(Epoch, u64)>,
    /// The latest events, contiguous, the last at `last`.
    window: VecDeque<Arc<StreamFrame>>,
    /// When the newest event dropped from the window was written: a request for the
    /// events since a time at or before it cannot be served.
    dropped_ms: i64,
    listeners: Vec<Listener>,
}

impl UserStream {
    fn new() -> Self {
        Self {
            last: None,
            window: VecDeque::new(),
            dropped_ms: i64::MIN,
            listeners: Vec::new(),
        }
    }

    fn drop_front(&mut self) -> Option<Arc<StreamFrame>> {
        let dropped = self.window.pop_front()?;
        self.dropped_ms = self.dropped_ms.max(dropped.written_ms);
        Some(dropped)
    }

    /// The events after `since` as the window holds them, or why they cannot be given.
    fn missed(
        &self,
        since: Since,
        floor_ms: i64,
    ) -> Result<Replay, Result<ResetReason, NotResumable>> {
        match since {
            Since::Now => Ok(Replay::Nothing),
            Since::After(position) => {
                let Some((epoch, last)) = self.last else {
                    return Err(Ok(ResetReason::BeyondWindow));
                };
                if position.epoch != epoch {
                    return Err(Ok(ResetReason::EpochChanged));
                }
                if position.offset > last {
                    return Err(Err(NotResumable::Ahead));
                }
                let first = self.window.front().map_or(last + 1, |frame| frame.offset);
                if position.offset + 1 < first {
                    return Err(Ok(ResetReason::BeyondWindow));
                }
                let skip = usize::try_from(position.offset + 1 - first).unwrap_or(usize::MAX);
                Ok(Replay::From(skip))
            }
            Since::Time(since_ms) => {
                if since_ms <= floor_ms || since_ms <= self.dropped_ms {
                    return Err(Ok(ResetReason::BeyondWindow));
                }
                let skip = self
                    .window
                    .iter()
                    .take_while(|frame| frame.written_ms < since_ms)
                    .count();
                Ok(Replay::From(skip))
            }
        }
    }
}

/// Which of a window's events a new subscription gets first.
enum Replay {
    Nothing,
    /// The window's events from this index on.
    From(usize),
}

/// An event in the eviction order: its user, the event itself while a window or a
/// queue holds it, and when it was written.
struct Ordered {
    key: Arc<str>,
    frame: Weak<StreamFrame>,
    written_ms: i64,
}

struct Hub {
    users: HashMap<Arc<str>, UserStream>,
    /// Every event in a window, oldest first: what age and the byte bound evict. An
    /// event that left its window otherwise (the per-user bound, a gap) is freed then,
    /// and its place here only waits for its turn to go.
    order: VecDeque<Ordered>,
    /// Events in the windows, and what they cost.
    events: usize,
    bytes: usize,
    /// Events written at or before this time may be missing from every window: the
    /// feed started reading after it, or the byte bound dropped events up to it.
    floor_ms: i64,
    stats: HistoryStats,
}

/// Subscriptions and the history window, by `partner/user` key.
pub struct StreamHub {
    hub: Mutex<Hub>,
    next_id: AtomicU64,
    capacity: usize,
    limits: HistoryLimits,
}

impl StreamHub {
    /// A hub whose subscriptions queue at most `capacity` events each (a resumed one
    /// also its missed events) and whose window holds what `limits` allow.
    pub fn new(capacity: usize, limits: HistoryLimits) -> Self {
        Self {
            hub: Mutex::new(Hub {
                users: HashMap::new(),
                order: VecDeque::new(),
                events: 0,
                bytes: 0,
                floor_ms: i64::MIN,
                stats: HistoryStats::default(),
            }),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
            limits,
        }
    }

    /// The window holds nothing written before `ms`: the feed starts reading there.
    pub fn starts_at(&self, ms: i64) {
        let mut hub = self.lock();
        hub.floor_ms = hub.floor_ms.max(ms.saturating_sub(1));
    }

    /// Subscribes to `key`'s events from `since`: the missed ones are queued first,
    /// then every live one. `now_ms` is the time the window's age is measured at.
    pub fn subscribe(
        self: &Arc<Self>,
        key: &str,
        since: Since,
        now_ms: i64,
    ) -> Result<(EventSubscription, Resume), NotResumable> {
        if let Since::After(position) = since
            && position.epoch.tag != stream_tag(key)
        {
            return Err(NotResumable::Foreign);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
        });
        let mut hub = self.lock();
        // Whatever was written before the age bound is gone.
        let floor_ms = hub
            .floor_ms
            .max(now_ms.saturating_sub(self.age_ms()).saturating_sub(1));
        let key = match hub.users.get_key_value(key) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(key),
        };
        let user = hub
            .users
            .entry(Arc::clone(&key))
            .or_insert_with(UserStream::new);
        let resume = match user.missed(since, floor_ms) {
            Err(Err(refused)) => {
                if user.listeners.is_empty() && user.window.is_empty() {
                    hub.users.remove(&key);
                }
                return Err(refused);
            }
            Err(Ok(reason)) => Resume::Reset(reason),
            Ok(Replay::Nothing) => Resume::Live,
            Ok(Replay::From(skip)) => {
                let mut state = queue.lock();
                state
                    .frames
                    .extend(user.window.iter().skip(skip).map(Arc::clone));
                Resume::Resumed {
                    missed: state.frames.len() as u64,
                    through: state.frames.back().map(|frame| frame.offset),
                }
            }
        };
        user.listeners.reserve_exact(1);
        user.listeners.push(Listener {
            id,
            queue: Arc::clone(&queue),
        });
        Ok((
            EventSubscription {
                hub: Arc::clone(self),
                key,
                id,
                queue,
            },
            resume,
        ))
    }

    /// Keeps `frame` in `key`'s window and queues it for every subscription of `key`,
    /// unless its position was already seen (same epoch, offset not above the last).
    /// A full queue ends its subscription. Then evicts what the limits no longer allow
    /// at `now_ms`.
    pub fn publish(&self, key: &str, frame: StreamFrame, now_ms: i64) -> Published {
        let mut published = Published {
            queued: 0,
            overflowed: 0,
            repeated: false,
        };
        let mut hub = self.lock();
        let hub = &mut *hub;
        let key = match hub.users.get_key_value(key) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(key),
        };
        let user = hub
            .users
            .entry(Arc::clone(&key))
            .or_insert_with(UserStream::new);
        let follows = match user.last {
            Some((epoch, offset)) if epoch == frame.epoch => {
                if frame.offset <= offset {
                    published.repeated = true;
                    return published;
                }
                frame.offset == offset + 1
            }
            _ => false,
        };
        if !follows {
            // A new epoch, or a gap (an event the router never wrote): the window
            // covers nothing before this event.
            while let Some(dropped) = user.drop_front() {
                hub.events -= 1;
                hub.bytes -= cost(&dropped);
            }
        }
        user.last = Some((frame.epoch, frame.offset));
        let frame = Arc::new(frame);
        let capacity = self.capacity;
        user.listeners
            .retain(|listener| match listener.queue.push(&frame, capacity) {
                Ok(()) => {
                    published.queued += 1;
                    true
                }
                Err(Refused::Full) => {
                    published.overflowed += 1;
                    false
                }
                Err(Refused::Ended) => false,
            });
        user.window.push_back(Arc::clone(&frame));
        hub.events += 1;
        hub.bytes += cost(&frame);
        if user.window.len() > self.limits.max_events_per_user
            && let Some(dropped) = user.drop_front()
        {
            hub.events -= 1;
            hub.bytes -= cost(&dropped);
            hub.stats.evicted_count += 1;
        }
        hub.order.push_back(Ordered {
            key,
            frame: Arc::downgrade(&frame),
            written_ms: frame.written_ms,
        });
        self.evict(hub, now_ms);
        published
    }

    /// Drops what is older than the age bound at `now_ms`; call it now and then, so
    /// that the window ages while no events come.
    pub fn expire(&self, now_ms: i64) {
        let mut hub = self.lock();
        self.evict(&mut hub, now_ms);
    }

    /// The oldest event the window keeps, by age.
    pub fn max_age_ms(&self) -> u64 {
        self.limits.max_age_ms
    }

    fn age_ms(&self) -> i64 {
        i64::try_from(self.limits.max_age_ms).unwrap_or(i64::MAX)
    }

    fn evict(&self, hub: &mut Hub, now_ms: i64) {
        let oldest_kept = now_ms.saturating_sub(self.age_ms());
        while let Some(front) = hub.order.front() {
            let aged = front.written_ms < oldest_kept;
            let over = hub.bytes > self.limits.max_bytes;
            if !aged && !over {
                break;
            }
            let Some(Ordered {
                key,
                frame,
                written_ms,
            }) = hub.order.pop_front()
            else {
                break;
            };
            let Some(user) = hub.users.get_mut(&key) else {
                continue;
            };
            // Still in its window, it is the window's first: every older event of the
            // user came earlier in the order.
            let in_window = frame.upgrade().is_some_and(|frame| {
                user.window
                    .front()
                    .is_some_and(|first| Arc::ptr_eq(first, &frame))
            });
            if in_window && let Some(dropped) = user.drop_front() {
                hub.events -= 1;
                hub.bytes -= cost(&dropped);
                if aged {
                    hub.stats.evicted_age += 1;
                } else {
                    hub.stats.evicted_bytes += 1;
                    hub.floor_ms = hub.floor_ms.max(written_ms);
                }
            }
            if user.window.is_empty() && user.listeners.is_empty() {
                hub.users.remove(&key);
            }
        }
    }

    /// The window's size now.
    pub fn history(&self) -> HistoryStats {
        let hub = self.lock();
        HistoryStats {
            users: hub.users.len(),
            events: hub.events,
            bytes: hub.bytes,
            ..hub.stats
        }
    }

    /// The epoch and offset of `key`'s last event this node has seen, while it holds
    /// the user.
    pub fn last_position(&self, key: &str) -> Option<(Epoch, u64)> {
        self.lock().users.get(key).and_then(|user| user.last)
    }

    /// Subscriptions held now.
    pub fn subscriptions(&self) -> usize {
        self.lock()
            .users
            .values()
            .map(|user| user.listeners.len())
            .sum()
    }

    fn remove(&self, key: &str, id: u64) {
        let mut hub = self.lock();
        if let Some(user) = hub.users.get_mut(key) {
            user.listeners.retain(|listener| listener.id != id);
            if user.listeners.is_empty() && user.window.is_empty() {
                hub.users.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One session's stream subscription; dropping it unsubscribes.
pub struct EventSubscription {
    hub: Arc<StreamHub>,
    key: Arc<str>,
    id: u64,
    queue: Arc<Queue>,
}

impl EventSubscription {
    /// The next event, in position order; `None` once the hub ended the subscription
    /// (its queue overflowed) and what it held was taken.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<StreamFrame>>> {
        let mut state = self.queue.lock();
        if let Some(frame) = Queue::take(&mut state) {
            return Poll::Ready(Some(frame));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next event if one is queued now.
    pub fn try_next(&self) -> Option<Arc<StreamFrame>> {
        Queue::take(&mut self.queue.lock())
    }

    /// Whether the hub ended the subscription and nothing is left to take.
    pub fn is_ended(&self) -> bool {
        let state = self.queue.lock();
        state.ended && state.frames.is_empty()
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        self.hub.remove(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "a/u1";
    const ROOMY: HistoryLimits = HistoryLimits {
        max_events_per_user: 100,
        max_age_ms: 60_000,
        max_bytes: 1 << 20,
    };

    fn epoch(key: &str, epoch: u64) -> Epoch {
        Epoch {
            epoch,
            tag: stream_tag(key),
        }
    }

    fn frame_of(key: &str, e: u64, offset: u64, written_ms: i64) -> StreamFrame {
        StreamFrame {
            epoch: epoch(key, e),
            offset,
            body: format!("{{\"offset\":{offset}}}").into(),
            source_time: None,
            written_ms,
        }
    }

    fn frame(e: u64, offset: u64) -> StreamFrame {
        frame_of(KEY, e, offset, 1_000)
    }

    fn after(e: u64, offset: u64) -> Since {
        Since::After(Position {
            epoch: epoch(KEY, e),
            offset,
        })
    }

    fn live(hub: &Arc<StreamHub>, key: &str) -> EventSubscription {
        hub.subscribe(key, Since::Now, 1_000).unwrap().0
    }

    fn drain(subscription: &EventSubscription) -> Vec<u64> {
        std::iter::from_fn(|| subscription.try_next())
            .map(|frame| frame.offset)
            .collect()
    }

    #[test]
    fn every_session_of_the_user_gets_each_position_once_and_no_one_else_does() {
        let hub = Arc::new(StreamHub::new(8, ROOMY));
        let first = live(&hub, KEY);
        let second = live(&hub, KEY);
        let other_partner = live(&hub, "b/u1");
        assert_eq!(hub.publish(KEY, frame(1, 1), 1_000).queued, 2);
        assert!(hub.publish(KEY, frame(1, 1), 1_000).repeated);
        assert_eq!(hub.publish(KEY, frame(1, 2), 1_000).queued, 2);
        // A new epoch starts over.
        assert_eq!(hub.publish(KEY, frame(2, 1), 1_000).queued, 2);
        for subscription in [&first, &second] {
            let positions: Vec<(u64, u64)> = std::iter::from_fn(|| subscription.try_next())
                .map(|frame| (frame.epoch.epoch, frame.offset))
                .collect();
            assert_eq!(positions, [(1, 1), (1, 2), (2, 1)]);
        }
        assert!(other_partner.try_next().is_none());
        assert_eq!(
            hub.publish("nobody/u9", frame_of("nobody/u9", 1, 1, 1_000), 1_000)
                .queued,
            0
        );
    }

    #[test]
    fn a_full_queue_ends_that_subscription_only_after_what_it_holds() {
        let hub = Arc::new(StreamHub::new(2, ROOMY));
        let slow = live(&hub, KEY);
        let fast = live(&hub, KEY);
        for offset in 1..=2 {
            hub.publish(KEY, frame(1, offset), 1_000);
            fast.try_next().unwrap();
        }
        let published = hub.publish(KEY, frame(1, 3), 1_000);
        assert_eq!((published.queued, published.overflowed), (1, 1));
        assert_eq!(fast.try_next().unwrap().offset, 3);
        assert!(!slow.is_ended());
        assert_eq!(slow.try_next().unwrap().offset, 1);
        assert_eq!(slow.try_next().unwrap().offset, 2);
        assert!(slow.is_ended());
        assert!(slow.try_next().is_none());
        assert_eq!(hub.subscriptions(), 1);
        drop(fast);
        assert_eq!(hub.subscriptions(), 0);
    }

    #[test]
    fn a_position_in_the_window_resumes_with_exactly_the_events_after_it_then_live_ones() {
        for (from, missed) in [(0, 5), (2, 3), (5, 0)] {
            let hub = Arc::new(StreamHub::new(64, ROOMY));
            for offset in 1..=5 {
                hub.publish(KEY, frame(1, offset), 1_000);
            }
            let (subscription, resume) = hub.subscribe(KEY, after(1, from), 1_000).unwrap();
            let through = (missed > 0).then_some(5);
            assert_eq!(resume, Resume::Resumed { missed, through });
            hub.publish(KEY, frame(1, 6), 1_000);
            let expected: Vec<u64> = (from + 1..=6).collect();
            assert_eq!(drain(&subscription), expected);
        }
    }

    #[test]
    fn what_the_window_no_longer_holds_is_a_reset_never_a_part() {
        let limits = HistoryLimits {
            max_events_per_user: 3,
            ..ROOMY
        };
        let hub = Arc::new(StreamHub::new(64, limits));
        for offset in 1..=5 {
            hub.publish(KEY, frame(1, offset), 1_000);
        }
        // The window holds 3..=5: from 2 on can be resumed, 1 cannot.
        assert!(matches!(
            hub.subscribe(KEY, after(1, 2), 1_000).unwrap().1,
            Resume::Resumed { missed: 3, .. }
        ));
        let (subscription, resume) = hub.subscribe(KEY, after(1, 1), 1_000).unwrap();
        assert_eq!(resume, Resume::Reset(ResetReason::BeyondWindow));
        assert!(subscription.try_next().is_none());
        hub.publish(KEY, frame(1, 6), 1_000);
        assert_eq!(drain(&subscription), [6]);
        assert_eq!(
            hub.subscribe(KEY, after(0, 5), 1_000).unwrap().1,
            Resume::Reset(ResetReason::EpochChanged)
        );
        assert_eq!(
            hub.subscribe("a/u2", after(1, 5), 1_000).err(),
            Some(NotResumable::Foreign)
        );
        assert_eq!(
            hub.subscribe(KEY, after(1, 7), 1_000).err(),
            Some(NotResumable::Ahead)
        );
        // A user the window has nothing of cannot be resumed either.
        let other = "a/u3";
        let since = Since::After(Position {
            epoch: epoch(other, 1),
            offset: 4,
        });
        assert_eq!(
            hub.subscribe(other, since, 1_000).unwrap().1,
            Resume::Reset(ResetReason::BeyondWindow)
        );
    }

    #[test]
    fn what_the_per_user_bound_drops_is_freed_and_no_longer_counted() {
        let limits = HistoryLimits {
            max_events_per_user: 2,
            ..ROOMY
        };
        let hub = Arc::new(StreamHub::new(64, limits));
        for offset in 1..=5 {
            hub.publish(KEY, frame(1, offset), 1_000);
        }
        let stats = hub.history();
        let one = cost(&frame(1, 1));
        assert_eq!(
            (stats.events, stats.bytes, stats.evicted_count),
            (2, 2 * one, 3)
        );
        // Aged out, they go from the order without being counted twice.
        hub.expire(1_000_000);
        let stats = hub.history();
        assert_eq!((stats.events, stats.bytes, stats.evicted_age), (0, 0, 2));
        assert_eq!(hub.last_position(KEY), None);
    }

    #[test]
    fn a_gap_in_offsets_starts_the_window_over() {
        let hub = Arc::new(StreamHub::new(64, ROOMY));
        hub.publish(KEY, frame(1, 1), 1_000);
        hub.publish(KEY, frame(1, 2), 1_000);
        hub.publish(KEY, frame(1, 4), 1_000);
        assert_eq!(
            hub.subscribe(KEY, after(1, 2), 1_000).unwrap().1,
            Resume::Reset(ResetReason::BeyondWindow)
        );
        assert!(matches!(
            hub.subscribe(KEY, after(1, 3), 1_000).unwrap().1,
            Resume::Resumed { missed: 1, .. }
        ));
        assert!(hub.publish(KEY, frame(1, 3), 1_000).repeated);
    }

    #[test]
    fn age_and_the_byte_bound_evict_oldest_first_and_time_requests_see_it() {
        let hub = Arc::new(StreamHub::new(64, ROOMY));
        for offset in 1..=4 {
            hub.publish(
                KEY,
                frame_of(KEY, 1, offset, i64::try_from(offset).unwrap() * 10_000),
                40_000,
            );
        }
        assert_eq!(hub.history().events, 4);
        // At 75 s, with 60 s of age kept, 1 (10 s) is gone.
        hub.expire(75_000);
        let stats = hub.history();
        assert_eq!((stats.events, stats.evicted_age), (3, 1));
        assert_eq!(
            hub.subscribe(KEY, after(1, 0), 75_000).unwrap().1,
            Resume::Reset(ResetReason::BeyondWindow)
        );
        // Since 20 s: 2, 3 and 4; since 15 s, the same. Since 10 s, 1 would be missing.
        let (subscription, resume) = hub.subscribe(KEY, Since::Time(20_000), 75_000).unwrap();
        assert!(matches!(resume, Resume::Resumed { missed: 3, .. }));
        assert_eq!(drain(&subscription), [2, 3, 4]);
        assert!(matches!(
            hub.subscribe(KEY, Since::Time(15_000), 75_000).unwrap().1,
            Resume::Resumed { missed: 3, .. }
        ));
        assert_eq!(
            hub.subscribe(KEY, Since::Time(10_000), 75_000).unwrap().1,
            Resume::Reset(ResetReason::BeyondWindow)
        );
        // Since a time with nothing after it: nothing missed, for anyone.
        assert_eq!(
            hub.subscribe("a/u9", Since::Time(70_000), 75_000)
                .unwrap()
                .1,
            Resume::Resumed {
                missed: 0,
                through: None
            }
        );
        // All aged out: the user's record goes once nobody listens.
        drop(subscription);
        hub.expire(1_000_000);
        assert_eq!(hub.history().events, 0);

        let one = cost(&frame(1, 1));
        let tight = Arc::new(StreamHub::new(
            64,
            HistoryLimits {
                max_bytes: 2 * one,
                ..ROOMY
            },
        ));
        for offset in 1..=3 {
            tight.publish(
                KEY,
                frame_of(KEY, 1, offset, 1_000 + i64::try_from(offset).unwrap()),
                2_000,
            );
        }
        let stats = tight.history();
        assert_eq!(
            (stats.events, stats.bytes, stats.evicted_bytes),
            (2, 2 * one, 1)
        );
        // The bytes bound dropped an event written at 1001 ms: no time at or before it
        // can be served, for any user.
        assert_eq!(
            tight
                .subscribe("a/u9", Since::Time(1_001), 2_000)
                .unwrap()
                .1,
            Resume::Reset(ResetReason::BeyondWindow)
        );
    }
}
