//! The node's stream hub: which sessions hold a stream subscription for which user, and
//! the one place a user-streams record becomes a frame body, rendered once and shared
//! by every subscribed session of its user.
//!
//! Each subscription has a bounded queue (`edge.max_stream_queue`). A session whose
//! client reads too slowly to keep up fills it; the hub then drops that subscription (its
//! session sees the queue end and tells its client, who subscribes again) rather than
//! hold its events without bound. A repeated record (a router replaying after a crash
//! writes the same event at the same position again) is delivered once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

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

struct Listener {
    id: u64,
    sender: mpsc::Sender<Arc<StreamFrame>>,
}

#[derive(Default)]
struct Listeners {
    /// The position last delivered, while the user has subscribers.
    last: Option<(u64, u64)>,
    listeners: Vec<Listener>,
}

/// Stream subscriptions by `partner/user` key.
pub struct StreamHub {
    users: Mutex<HashMap<Box<str>, Listeners>>,
    next_id: AtomicU64,
    queue: usize,
}

impl StreamHub {
    /// A hub whose subscriptions queue at most `queue` events each.
    pub fn new(queue: usize) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            queue: queue.max(1),
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
        let (sender, receiver) = mpsc::channel(self.queue);
        self.lock()
            .entry(Box::from(key))
            .or_default()
            .listeners
            .push(Listener { id, sender });
        EventSubscription {
            hub: Arc::clone(self),
            key: Box::from(key),
            id,
            receiver,
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
        entry.listeners.retain(|listener| {
            match listener.sender.try_send(Arc::clone(&frame)) {
                Ok(()) => {
                    published.queued += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    published.overflowed += 1;
                    false
                }
                // Its session is gone; its drop removes it too.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Listeners>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One session's stream subscription; dropping it unsubscribes.
pub struct EventSubscription {
    hub: Arc<StreamHub>,
    key: Box<str>,
    id: u64,
    /// The user's events, in position order. `None` from `recv` means the hub ended the
    /// subscription: its queue overflowed.
    pub receiver: mpsc::Receiver<Arc<StreamFrame>>,
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
        let mut first = hub.subscribe("a/u1");
        let mut second = hub.subscribe("a/u1");
        let mut other_partner = hub.subscribe("b/u1");
        assert_eq!(hub.publish("a/u1", frame(1, 1)).queued, 2);
        assert!(hub.publish("a/u1", frame(1, 1)).repeated);
        assert_eq!(hub.publish("a/u1", frame(1, 2)).queued, 2);
        // A new epoch starts over.
        assert_eq!(hub.publish("a/u1", frame(2, 1)).queued, 2);
        for subscription in [&mut first, &mut second] {
            let offsets: Vec<(u64, u64)> =
                std::iter::from_fn(|| subscription.receiver.try_recv().ok())
                    .map(|frame| (frame.epoch, frame.offset))
                    .collect();
            assert_eq!(offsets, [(1, 1), (1, 2), (2, 1)]);
        }
        assert!(other_partner.receiver.try_recv().is_err());
        assert_eq!(hub.publish("nobody/u9", frame(1, 1)).queued, 0);
    }

    #[test]
    fn a_full_queue_ends_that_subscription_only_after_what_it_holds() {
        let hub = Arc::new(StreamHub::new(2));
        let mut slow = hub.subscribe("a/u1");
        let mut fast = hub.subscribe("a/u1");
        for offset in 1..=2 {
            hub.publish("a/u1", frame(1, offset));
            fast.receiver.try_recv().unwrap();
        }
        let published = hub.publish("a/u1", frame(1, 3));
        assert_eq!((published.queued, published.overflowed), (1, 1));
        assert_eq!(fast.receiver.try_recv().unwrap().offset, 3);
        assert_eq!(slow.receiver.try_recv().unwrap().offset, 1);
        assert_eq!(slow.receiver.try_recv().unwrap().offset, 2);
        assert_eq!(
            slow.receiver.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
        assert_eq!(hub.subscriptions(), 1);
        drop(fast);
        assert_eq!(hub.subscriptions(), 0);
        assert!(!hub.is_subscribed("a/u1"));
    }
}
