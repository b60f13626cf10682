//! The node's shared state: what every connection of this edge reads, and the one
//! admission check they all pass.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::config::{EdgeConfig, SecretsFile};
use crate::limits::{ConnectionLimits, Limit, PartnerPlace, origin_allowed};
use crate::restore::SessionStore;
use crate::shard::{Holds, Shard};
use crate::streams::StreamHub;
use crate::table::CountTable;
use crate::telemetry::EdgeMetrics;

/// Everything a connection needs, shared by all of them.
pub struct Node {
    pub table: Arc<CountTable>,
    /// The sessions subscribed to users' event streams.
    pub streams: Arc<StreamHub>,
    pub auth: Authenticator,
    pub config: EdgeConfig,
    pub metrics: EdgeMetrics,
    pub limits: ConnectionLimits,
    /// True once the count table has caught up with unread-counts.
    pub ready: watch::Receiver<bool>,
    /// Closed extended-protocol sessions that can be restored by `sid`.
    pub sessions: SessionStore,
    /// The partitions this node reads: the users it answers for.
    pub shard: Arc<Shard>,
}

/// What a connection that passed [`Node::admit`] holds for its life.
pub struct Admitted {
    pub identity: Identity,
    /// Its place under the partner's connection limit, given back when dropped.
    _place: PartnerPlace,
}

/// What a connection that authenticated by subscribing (a RoomChannel `pubsub_token`)
/// holds for the subscription's life: the user, and the connection's place under its
/// partner's limit unless the connection already had one.
pub struct Subscribed {
    pub identity: Identity,
    _place: Option<PartnerPlace>,
}

/// Why [`Node::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token: the protocol tells the client why.
    Token(AuthError),
    /// The page's origin is not on the allow-list of the partner the token named.
    Origin,
    /// The partner is at its connection limit on this node.
    PartnerFull,
}

/// Why [`Node::admit_subscription`] refused a stream subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionRefused {
    Token,
    PartnerMismatch,
    Origin,
    PartnerFull,
    /// The token's user is served by another shard.
    WrongShard,
}

impl Node {
    /// A node for `config`, its partners' secrets those of the config plus `file`'s.
    pub fn new(
        config: EdgeConfig,
        file: &SecretsFile,
        table: Arc<CountTable>,
        metrics: EdgeMetrics,
        ready: watch::Receiver<bool>,
    ) -> Self {
        Self {
            table,
            streams: Arc::new(StreamHub::new(
                config.max_stream_queue,
                config.history.limits(),
            )),
            auth: Authenticator::new(&config, &config.merged_secrets(file)),
            limits: ConnectionLimits::new(&config),
            sessions: SessionStore::new(
                std::time::Duration::from_millis(config.session_restore_ttl_ms),
                config.max_connections,
            ),
            shard: Arc::new(Shard::new(&config.partitions)),
            config,
            metrics,
            ready,
        }
    }

    /// Whether this node answers for `identity`'s user; a refusal is counted (and
    /// logged) here, for `protocol`. Asked only once the node is ready, when the feed
    /// has learned the topics' partition count.
    pub fn holds(&self, identity: &Identity, protocol: crate::close::Protocol) -> bool {
        match self.shard.holds(&identity.key()) {
            Holds::Yes => true,
            Holds::No { partition } => {
                self.metrics.wrong_shard(protocol, partition);
                false
            }
        }
    }

    /// The partner's origin allow-list (empty: any origin).
    pub fn allowed_origins(&self, partner: &str) -> &[String] {
        self.config
            .partners
            .get(partner)
            .map(|partner| partner.allowed_origins.as_slice())
            .unwrap_or_default()
    }

    /// The check of a stream subscription's own token (RoomChannel's `pubsub_token`),
    /// for a connection admitted as `connection` (`None`: it authenticated nothing
    /// yet). The token is verified for the connection's partner, else for the one
    /// `partner` or its claim names; it is not spent (it is presented again on every
    /// reconnect). A user this node does not hold is refused. A connection without a
    /// partner place takes one now.
    pub fn admit_subscription(
        &self,
        connection: Option<&Identity>,
        partner: Option<&str>,
        token: &str,
        origin: Option<&str>,
        protocol: crate::close::Protocol,
    ) -> Result<Subscribed, SubscriptionRefused> {
        let partner = connection
            .map(|identity| identity.partner.as_str())
            .or(partner);
        let identity = self
            .auth
            .authenticate_subscription(partner, Some(token))
            .map_err(|error| {
                self.metrics.auth_failed(partner.is_some(), error);
                match error {
                    AuthError::PartnerMismatch => SubscriptionRefused::PartnerMismatch,
                    _ => SubscriptionRefused::Token,
                }
            })?;
        if !self.holds(&identity, protocol) {
            return Err(SubscriptionRefused::WrongShard);
        }
        if connection.is_some() {
            return Ok(Subscribed {
                identity,
                _place: None,
            });
        }
        if !origin_allowed(self.allowed_origins(&identity.partner), origin) {
            self.metrics.limited(Limit::Origin);
            return Err(SubscriptionRefused::Origin);
        }
        let place = self
            .limits
            .partner_place(&identity.partner)
            .map_err(|limit| {
                self.metrics.limited(limit);
                SubscriptionRefused::PartnerFull
            })?;
        Ok(Subscribed {
            identity,
            _place: Some(place),
        })
    }

    /// A restored session's places again, without its tokens (spent, or presented only
    /// when it first subscribed): its `sid` stands for them. `connection` is the user
    /// the connection authenticated as; `stream` the user whose stream it subscribed
    /// to, which takes a place of its own when the connection has none.
    pub fn readmit(
        &self,
        connection: Option<Identity>,
        stream: Option<Identity>,
    ) -> Result<(Option<Admitted>, Option<Subscribed>), Limit> {
        let admitted = match connection {
            Some(identity) => Some(Admitted {
                _place: self.limits.partner_place(&identity.partner)?,
                identity,
            }),
            None => None,
        };
        let subscribed = match stream {
            Some(identity) => Some(Subscribed {
                _place: match admitted {
                    Some(_) => None,
                    None => Some(self.limits.partner_place(&identity.partner)?),
                },
                identity,
            }),
            None => None,
        };
        Ok((admitted, subscribed))
    }

    /// The one admission check of every protocol: the token (spent either way), then
    /// what the partner it names allows, the page's origin and a place under the
    /// partner's connection limit.
    pub fn admit(
        &self,
        partner: Option<&str>,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Admitted, Refused> {
        let identity = self.auth.authenticate(partner, token).map_err(|error| {
            self.metrics
                .auth_failed(partner.is_some_and(|partner| !partner.is_empty()), error);
            Refused::Token(error)
        })?;
        if !origin_allowed(self.allowed_origins(&identity.partner), origin) {
            self.metrics.limited(Limit::Origin);
            return Err(Refused::Origin);
        }
        let place = self
            .limits
            .partner_place(&identity.partner)
            .map_err(|limit| {
                self.metrics.limited(limit);
                Refused::PartnerFull
            })?;
        Ok(Admitted {
            identity,
            _place: place,
        })
    }
}
