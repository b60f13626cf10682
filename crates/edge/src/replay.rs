//! Replay protection: each token id (`jti`) is accepted once per node until its token
//! expires, in bounded memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};

/// Why a token id was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Seen before, and its token has not expired.
    Replayed,
    /// `capacity` unexpired ids are held: nothing can be checked, so nothing is taken.
    Full,
}

/// Token ids seen, each until its expiry. Ids are kept as 128-bit keyed hashes of
/// partner and id, so an entry costs the same whatever the id's length, and a client
/// cannot pick ids that collide.
pub struct ReplayCache {
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    hasher_high: std::collections::hash_map::RandomState,
    state: Mutex<State>,
}

struct State {
    /// Key → expiry (Unix seconds, leeway included).
    expiries: HashMap<u128, i64>,
    /// No sweep before this time: a sweep that freed nothing is not repeated at once.
    next_sweep: i64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            hasher: std::collections::hash_map::RandomState::new(),
            hasher_high: std::collections::hash_map::RandomState::new(),
            state: Mutex::new(State {
                expiries: HashMap::new(),
                next_sweep: i64::MIN,
            }),
        }
    }

    fn key(&self, partner: &str, jti: &str) -> u128 {
        let hash = |state: &std::collections::hash_map::RandomState| {
            let mut hasher = state.build_hasher();
            hasher.write(partner.as_bytes());
            hasher.write_u8(0xff);
            hasher.write(jti.as_bytes());
            hasher.finish()
        };
        (u128::from(hash(&self.hasher_high)) << 64) | u128::from(hash(&self.hasher))
    }

    /// Takes `jti` of `partner`'s token, which expires at `expires_at` (Unix seconds),
    /// unless it was taken before and has not expired.
    pub fn take(&self, partner: &str, jti: &str, expires_at: i64, now: i64) -> Result<(), Refusal> {
        let key = self.key(partner, jti);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .expiries
            .get(&key)
            .is_some_and(|expiry| *expiry >= now)
        {
            return Err(Refusal::Replayed);
        }
        if state.expiries.len() >= self.capacity && !state.expiries.contains_key(&key) {
            if now >= state.next_sweep {
                state.expiries.retain(|_, expiry| *expiry >= now);
                state.next_sweep = now + 1;
            }
            if state.expiries.len() >= self.capacity {
                return Err(Refusal::Full);
            }
        }
        state.expiries.insert(key, expires_at);
        Ok(())
    }

    /// Ids held now (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expiries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_taken_once_until_it_expires() {
        let cache = ReplayCache::new(10);
        assert_eq!(cache.take("acme", "j1", 100, 50), Ok(()));
        assert_eq!(cache.take("acme", "j1", 100, 60), Err(Refusal::Replayed));
        // The same id from another partner is another token.
        assert_eq!(cache.take("globex", "j1", 100, 60), Ok(()));
        // Once expired, the token itself is refused by `exp`; the id may be reused.
        assert_eq!(cache.take("acme", "j1", 200, 101), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_until_ids_expire_and_never_grows() {
        let cache = ReplayCache::new(3);
        for (index, jti) in ["a", "b", "c"].iter().enumerate() {
            let expiry = 100 + i64::try_from(index).unwrap_or(0);
            assert_eq!(cache.take("acme", jti, expiry, 10), Ok(()));
        }
        assert_eq!(cache.take("acme", "d", 500, 10), Err(Refusal::Full));
        assert_eq!(cache.len(), 3);
        // Replays are still refused as replays.
        assert_eq!(cache.take("acme", "a", 100, 11), Err(Refusal::Replayed));
        // At 101, "a" (expiry 100) has expired and makes room.
        assert_eq!(cache.take("acme", "d", 500, 101), Ok(()));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.take("acme", "e", 500, 101), Err(Refusal::Full));
    }
}

/// Helpers for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A token id no other call returns.
    pub fn fresh_id() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("id-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }
}
