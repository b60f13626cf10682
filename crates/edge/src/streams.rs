//! The node's stream hub: which sessions hold a stream subscription for which user, and
//! the one place a user-streams record becomes a frame body, rendered once and shared
//! by every subscribed session of its user.
//!
//! Each subscription has a bounded queue (`edge.max_stream_queue`). A session whose
//! client reads too slowly to keep up fills it; the hub then drops that subscription (its
//! session sees the queue end and tells its client, who subscribes again) rather than
//! hold its events without bound. A repeated record (a router replaying after a crash
//! writes the same event at the same position again) is delivered once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A stream event ready for every session of its user.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamFrame {
    pub epoch: u64,
    pub offset: u64,
    /// The event's body (`fanout_protocol::stream::event_body`), which each protocol
    /// wraps in its frame.
    pub body: Box<str>,
    /// Source event time, Unix milliseconds, when known.
    pub source_time: Option<i64>,
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

#[derive(Default)]
struct Listeners {
    /// The position last delivered, while the user has subscribers.
    last: Option<(u64, u64)>,
    listeners: Vec<Listener>,
}

/// Stream subscriptions by `partner/user` key.
pub struct StreamHub {
    users: Mutex<HashMap<Arc<str>, Listeners>>,
    next_id: AtomicU64,
    capacity: usize,
}

impl StreamHub {
    /// A hub whose subscriptions queue at most `capacity` events each.
    pub fn new(capacity: usize) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Whether anyone holds a subscription for `key`: a record for nobody is not even
    /// rendered.
    pub fn is_subscribed(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Subscribes to `key`'s events from now on.
    pub fn subscribe(self: &Arc<Self>, key: &str) -> EventSubscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
        });
        let mut users = self.lock();
        let key = match users.get_key_value(key) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(key),
        };
        let entry = users.entry(Arc::clone(&key)).or_default();
        entry.listeners.reserve_exact(1);
        entry.listeners.push(Listener {
            id,
            queue: Arc::clone(&queue),
        });
        EventSubscription {
            hub: Arc::clone(self),
            key,
            id,
            queue,
        }
    }

    /// Queues `frame` for every subscription of `key`, unless its position was already
    /// delivered (same epoch, offset not above the last). A full queue ends its
    /// subscription.
    pub fn publish(&self, key: &str, frame: StreamFrame) -> Published {
        let mut published = Published {
            queued: 0,
            overflowed: 0,
            repeated: false,
        };
        let mut users = self.lock();
        let Some(entry) = users.get_mut(key) else {
            return published;
        };
        if let Some((epoch, offset)) = entry.last
            && epoch == frame.epoch
            && frame.offset <= offset
        {
            published.repeated = true;
            return published;
        }
        entry.last = Some((frame.epoch, frame.offset));
        let frame = Arc::new(frame);
        let capacity = self.capacity;
        entry
            .listeners
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
        if entry.listeners.is_empty() {
            users.remove(key);
        }
        published
    }

    /// Subscriptions held now.
    pub fn subscriptions(&self) -> usize {
        self.lock()
            .values()
            .map(|entry| entry.listeners.len())
            .sum()
    }

    fn remove(&self, key: &str, id: u64) {
        let mut users = self.lock();
        if let Some(entry) = users.get_mut(key) {
            entry.listeners.retain(|listener| listener.id != id);
            if entry.listeners.is_empty() {
                users.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Listeners>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn frame(epoch: u64, offset: u64) -> StreamFrame {
        StreamFrame {
            epoch,
            offset,
            body: format!("{{\"offset\":{offset}}}").into(),
            source_time: None,
        }
    }

    #[test]
    fn every_session_of_the_user_gets_each_position_once_and_no_one_else_does() {
        let hub = Arc::new(StreamHub::new(8));
        let first = hub.subscribe("a/u1");
        let second = hub.subscribe("a/u1");
        let other_partner = hub.subscribe("b/u1");
        assert_eq!(hub.publish("a/u1", frame(1, 1)).queued, 2);
        assert!(hub.publish("a/u1", frame(1, 1)).repeated);
        assert_eq!(hub.publish("a/u1", frame(1, 2)).queued, 2);
        // A new epoch starts over.
        assert_eq!(hub.publish("a/u1", frame(2, 1)).queued, 2);
        for subscription in [&first, &second] {
            let offsets: Vec<(u64, u64)> = std::iter::from_fn(|| subscription.try_next())
                .map(|frame| (frame.epoch, frame.offset))
                .collect();
            assert_eq!(offsets, [(1, 1), (1, 2), (2, 1)]);
        }
        assert!(other_partner.try_next().is_none());
        assert_eq!(hub.publish("nobody/u9", frame(1, 1)).queued, 0);
    }

    #[test]
    fn a_full_queue_ends_that_subscription_only_after_what_it_holds() {
        let hub = Arc::new(StreamHub::new(2));
        let slow = hub.subscribe("a/u1");
        let fast = hub.subscribe("a/u1");
        for offset in 1..=2 {
            hub.publish("a/u1", frame(1, offset));
            fast.try_next().unwrap();
        }
        let published = hub.publish("a/u1", frame(1, 3));
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
        assert!(!hub.is_subscribed("a/u1"));
    }
}
