//! Sessions of extended-protocol clients (`actioncable-v1-ext-json`) kept for a while
//! after their connection closed, by `sid`, so that a client reconnecting to this node
//! gets them back (`welcome` with `restored`) without subscribing again. A session is
//! restored once: the restored one gets a new `sid`. A client that reconnects to
//! another node, or after this one restarted, is unknown there: it subscribes again
//! and recovers its events from the history window, which every node has.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Identity;

/// A new session id: 128 random bits, hex. It is the session's credential while it can
/// be restored, so it is as unguessable as a token and never logged.
pub fn new_sid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What a closed session leaves to be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    /// The user the connection authenticated as; `None` for one opened without a token.
    pub connection: Option<Identity>,
    /// The partner an unauthenticated connection's upgrade named.
    pub partner: Option<String>,
    /// The page's origin: a restore must come from the same.
    pub origin: Option<String>,
    /// The user whose event stream it was subscribed to.
    pub stream: Option<Identity>,
    /// The protocol's subscriptions, by identifier.
    pub subscriptions: Vec<Box<str>>,
}

/// Saved sessions by sid, each until its time is up; at most `capacity` of them (the
/// oldest go first).
pub struct SessionStore {
    inner: Mutex<Saved>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Saved {
    sessions: HashMap<Box<str>, (Instant, SavedSession)>,
    /// Saved sids, oldest first, with when they expire.
    order: VecDeque<(Instant, Box<str>)>,
}

impl SessionStore {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Saved::default()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Keeps `session` under `sid` until the time to live has passed.
    pub fn save(&self, sid: &str, session: SavedSession) {
        let now = Instant::now();
        let mut saved = self.lock();
        Self::expire(&mut saved, now);
        while saved.sessions.len() >= self.capacity {
            let Some((_, oldest)) = saved.order.pop_front() else {
                break;
            };
            saved.sessions.remove(&oldest);
        }
        let expires = now + self.ttl;
        let sid: Box<str> = sid.into();
        saved.order.push_back((expires, sid.clone()));
        saved.sessions.insert(sid, (expires, session));
    }

    /// The session saved under `sid`, taken (a sid restores once), if it has not
    /// expired and `origin` is the one it was opened from.
    pub fn take(&self, sid: &str, origin: Option<&str>) -> Option<SavedSession> {
        let now = Instant::now();
        let mut saved = self.lock();
        Self::expire(&mut saved, now);
        let (_, session) = saved.sessions.remove(sid)?;
        (session.origin.as_deref() == origin).then_some(session)
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(saved: &mut Saved, now: Instant) {
        while let Some((expires, _)) = saved.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, sid)) = saved.order.pop_front()
                && saved
                    .sessions
                    .get(&sid)
                    .is_some_and(|(expires, _)| *expires <= now)
            {
                saved.sessions.remove(&sid);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Saved> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn session(origin: Option<&str>) -> SavedSession {
        SavedSession {
            connection: None,
            partner: Some("acme".into()),
            origin: origin.map(str::to_owned),
            stream: Some(Identity {
                partner: "acme".into(),
                user: "bob".into(),
            }),
            subscriptions: vec![r#"{"channel":"RoomChannel"}"#.into()],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_restored_once_from_its_origin_until_it_expires() {
        let store = SessionStore::new(Duration::from_secs(60), 10);
        let sid = new_sid();
        assert_eq!(sid.len(), 32);
        assert_ne!(sid, new_sid());
        store.save(&sid, session(Some("https://a.example")));
        assert_eq!(store.take(&sid, Some("https://b.example")), None);
        store.save(&sid, session(Some("https://a.example")));
        assert_eq!(
            store.take(&sid, Some("https://a.example")),
            Some(session(Some("https://a.example")))
        );
        assert_eq!(store.take(&sid, Some("https://a.example")), None);
        store.save(&sid, session(None));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(store.take(&sid, None), None);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_capacity_the_oldest_session_goes() {
        let store = SessionStore::new(Duration::from_secs(60), 2);
        for sid in ["a", "b", "c"] {
            store.save(sid, session(None));
        }
        assert_eq!(store.len(), 2);
        assert_eq!(store.take("a", None), None);
        assert!(store.take("c", None).is_some());
    }
}
