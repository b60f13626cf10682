//! API keys: which partner a bearer key acts for.
//!
//! Keys are held only as SHA-256 digests. A presented key is hashed and its digest
//! looked up; the match is confirmed by a constant-time comparison of the digests, so
//! neither the lookup nor the comparison tells an attacker how close a guess came to a
//! key (a digest shares nothing with the key that can be tuned byte by byte).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKey;

/// A key's digest: what is kept of it, and what the rate limit counts by.
pub type KeyDigest = [u8; 32];

/// Who a request acts as: a partner, through one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub partner: Arc<str>,
    pub key: KeyDigest,
}

/// Every live key of every partner; replaced whole when the keys file changes.
#[derive(Default)]
pub struct KeyRing {
    by_digest: RwLock<HashMap<KeyDigest, Arc<str>>>,
}

fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

impl KeyRing {
    pub fn new(keys: &BTreeMap<String, Vec<ApiKey>>) -> Self {
        let ring = Self::default();
        ring.replace(keys);
        ring
    }

    /// Puts `keys` in place of every key held; returns how many keys are live.
    pub fn replace(&self, keys: &BTreeMap<String, Vec<ApiKey>>) -> usize {
        let mut by_digest = HashMap::new();
        for (partner, partner_keys) in keys {
            let partner: Arc<str> = Arc::from(partner.as_str());
            for ApiKey(key) in partner_keys {
                by_digest.insert(digest(key.as_bytes()), partner.clone());
            }
        }
        let live = by_digest.len();
        *self
            .by_digest
            .write()
            .unwrap_or_else(PoisonError::into_inner) = by_digest;
        live
    }

    /// The caller a presented key acts as, if it is a live key.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented.as_bytes());
        let by_digest = self
            .by_digest
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let (held, partner) = by_digest.get_key_value(&presented)?;
        bool::from(held.ct_eq(&presented)).then(|| Caller {
            partner: partner.clone(),
            key: *held,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<ApiKey>> {
        entries
            .iter()
            .map(|(partner, keys)| {
                (
                    (*partner).to_owned(),
                    keys.iter().map(|key| ApiKey((*key).to_owned())).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn each_key_acts_for_its_own_partner_and_replacing_retires_old_keys() {
        let ring = KeyRing::new(&keys(&[
            (
                "acme",
                &[
                    "acme-old-key-0123456789abcdef",
                    "acme-new-key-0123456789abcdef",
                ],
            ),
            ("globex", &["globex-key-0123456789abcdefgh"]),
        ]));
        for (key, partner) in [
            ("acme-old-key-0123456789abcdef", "acme"),
            ("acme-new-key-0123456789abcdef", "acme"),
            ("globex-key-0123456789abcdefgh", "globex"),
        ] {
            assert_eq!(&*ring.authenticate(key).unwrap().partner, partner);
        }
        assert!(ring.authenticate("acme-old-key-0123456789abcdeX").is_none());
        assert!(ring.authenticate("").is_none());
        let old = ring.authenticate("acme-old-key-0123456789abcdef").unwrap();
        let new = ring.authenticate("acme-new-key-0123456789abcdef").unwrap();
        assert_ne!(old.key, new.key, "each key is rate-limited on its own");

        assert_eq!(
            ring.replace(&keys(&[("acme", &["acme-new-key-0123456789abcdef"])])),
            1
        );
        assert!(ring.authenticate("acme-old-key-0123456789abcdef").is_none());
        assert!(ring.authenticate("globex-key-0123456789abcdefgh").is_none());
        assert!(ring.authenticate("acme-new-key-0123456789abcdef").is_some());
    }
}
