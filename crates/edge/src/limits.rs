//! Per-node and per-partner connection limits, and the per-connection command rate.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::EdgeConfig;

/// A limit that refused something: the `limit` label of `fanout_edge_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    FrameSize,
    Subscriptions,
    CommandRate,
    HandshakeTimeout,
    AuthTimeout,
    PartnerConnections,
    NodeConnections,
    Origin,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrameSize => "frame_size",
            Self::Subscriptions => "subscriptions",
            Self::CommandRate => "command_rate",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::AuthTimeout => "auth_timeout",
            Self::PartnerConnections => "partner_connections",
            Self::NodeConnections => "node_connections",
            Self::Origin => "origin",
        }
    }
}

/// A place under the partner's connection limit, given back when dropped; empty for a
/// partner with no limit of its own (the node's still applies).
pub struct PartnerPlace {
    _permit: Option<OwnedSemaphorePermit>,
}

/// The node's and the partners' connection limits, each a semaphore with one permit
/// per connection.
pub struct ConnectionLimits {
    node: Arc<Semaphore>,
    node_max: usize,
    /// Only partners with a `max_connections` of their own.
    partners: HashMap<String, Arc<Semaphore>>,
}

impl ConnectionLimits {
    pub fn new(config: &EdgeConfig) -> Self {
        let semaphore = |max: usize| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
        Self {
            node: semaphore(config.max_connections),
            node_max: config.max_connections.min(Semaphore::MAX_PERMITS),
            partners: config
                .partners
                .iter()
                .filter_map(|(code, partner)| {
                    partner
                        .max_connections
                        .map(|max| (code.clone(), semaphore(max)))
                })
                .collect(),
        }
    }

    /// A place for one more connection on this node, from accept to close.
    pub fn node_place(&self) -> Result<OwnedSemaphorePermit, Limit> {
        self.node
            .clone()
            .try_acquire_owned()
            .map_err(|_| Limit::NodeConnections)
    }

    /// A place for one more authenticated connection of `partner`.
    pub fn partner_place(&self, partner: &str) -> Result<PartnerPlace, Limit> {
        match self.partners.get(partner) {
            None => Ok(PartnerPlace { _permit: None }),
            Some(semaphore) => semaphore
                .clone()
                .try_acquire_owned()
                .map(|permit| PartnerPlace {
                    _permit: Some(permit),
                })
                .map_err(|_| Limit::PartnerConnections),
        }
    }

    /// Whether `partner` is at its limit now (checked before an ActionCable upgrade,
    /// so that a full partner gets HTTP 503 rather than a connection to close).
    pub fn partner_is_full(&self, partner: &str) -> bool {
        self.partners
            .get(partner)
            .is_some_and(|semaphore| semaphore.available_permits() == 0)
    }

    /// Connections open on this node now.
    pub fn node_connections(&self) -> usize {
        self.node_max - self.node.available_permits()
    }
}

/// A token bucket: `per_second` commands a second, in bursts of up to as many.
#[derive(Debug)]
pub struct CommandRate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl CommandRate {
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Counts one command at `now`; false when it is over the rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `origin` (the request's `Origin` header, if any) may connect for a partner
/// whose allow-list is `allowed`. An empty list allows any; a request without `Origin`
/// does not come from a browser page, which is what the list protects against.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(origin) => {
            allowed.is_empty()
                || allowed
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::PartnerConfig;
    use std::time::Duration;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let mut config = EdgeConfig {
            max_connections: 2,
            ..EdgeConfig::default()
        };
        config.partners.insert(
            "acme".into(),
            PartnerConfig {
                max_connections: Some(1),
                ..PartnerConfig::default()
            },
        );
        let limits = ConnectionLimits::new(&config);
        let first = limits.node_place().unwrap();
        let second = limits.node_place().unwrap();
        assert_eq!(limits.node_connections(), 2);
        assert_eq!(limits.node_place().err(), Some(Limit::NodeConnections));
        drop(first);
        assert!(limits.node_place().is_ok());
        drop(second);
        assert_eq!(limits.node_connections(), 0);

        let acme = limits.partner_place("acme").unwrap();
        assert!(limits.partner_is_full("acme"));
        assert_eq!(
            limits.partner_place("acme").err(),
            Some(Limit::PartnerConnections)
        );
        // No limit of its own: always a place (the node's limit still applies).
        let _globex: Vec<PartnerPlace> = (0..3)
            .map(|_| limits.partner_place("globex").unwrap())
            .collect();
        drop(acme);
        assert!(!limits.partner_is_full("acme"));
        let _again = limits.partner_place("acme").unwrap();
        assert!(limits.partner_is_full("acme"));
    }

    #[test]
    fn command_rate_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut rate = CommandRate::new(10, start);
        assert_eq!((0..20).filter(|_| rate.allow(start)).count(), 10);
        // 100 ms later, one more.
        let later = start + Duration::from_millis(100);
        assert!(rate.allow(later));
        assert!(!rate.allow(later));
        // A quiet second refills the burst, never more.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| rate.allow(much_later)).count(), 10);
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.acme.com".to_owned()];
        assert!(origin_allowed(&allowed, Some("https://app.acme.com")));
        assert!(origin_allowed(&allowed, Some("HTTPS://APP.ACME.COM")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example")));
        assert!(!origin_allowed(
            &allowed,
            Some("https://app.acme.com.evil.example")
        ));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&[], Some("https://anything.example")));
    }
}
