//! fanout's edge: an in-memory table of unread counts fed from the unread-counts topic,
//! and WebSocket sessions that get the current count on subscribe and every change
//! after it, and each user's event stream from user-streams. [`Edge`] is the stage: built from its config, run under a cancellation
//! token, as ingest and the router are.
//!
//! - [`node`]: the node's shared state, and the one admission check.
//! - [`close`]: why a session ended, and what each protocol tells its client.
//! - [`session`]: the one session driver (admission, limits, pushes, drain, goodbye)
//!   and each protocol's state machine: ActionCable on `/cable`, JSON on `/realtime`.
//! - [`server`]: the accept loop and the WebSocket handshake.
//! - [`table`]: the count table; a count is state, so each subscriber sees only the
//!   newest value (a slow client costs one pending count, never a queue).
//! - [`streams`]: the stream hub: users' recent events (the history window), rendered
//!   once, queued (bounded) for each subscribed session, replayed to a resuming one.
//! - [`restore`]: closed extended-protocol sessions, restorable by `sid` for a while.
//! - [`feed`]: reads unread-counts by `assign` (no group) and reports when caught up;
//!   reads user-streams into the stream hub.
//! - [`auth`]: HS256 JWT verification against per-partner secrets; [`replay`]: each
//!   token id accepted once per node until it expires; `secrets`: hot reload of the
//!   partner secrets file.
//! - [`shard`]: which users an edge reading only some partitions answers for.
//! - [`limits`]: connection limits (node, partner), command rate, origin allow-lists.
//! - [`drain`]: on shutdown, sessions told to leave spread over a window.
//! - [`telemetry`]: one method per notable event, logging and counting it.

pub mod auth;
pub mod close;
mod config;
pub mod drain;
pub mod feed;
pub mod frames;
pub mod fuzzing;
pub mod limits;
pub mod node;
pub mod replay;
pub mod restore;
pub mod secrets;
pub mod server;
pub mod session;
pub mod shard;
pub mod streams;
pub mod table;
pub mod telemetry;
#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::sync::Arc;

use fanout_kafka::{KafkaSettings, StageHealth};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{
    EdgeConfig, MIN_SECRET_BYTES, PartnerConfig, PartnerSecrets, SecretConfig, SecretsFile,
    SecretsFileError, parse_secrets_file, read_secrets_file,
};
pub use node::Node;
pub use telemetry::EdgeMetrics;

use crate::feed::{Feed, FeedError};
use crate::table::CountTable;

/// Why the edge could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("registering the edge's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("edge.secrets_file: {0}")]
    SecretsFile(#[from] SecretsFileError),
    #[error("the client listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("edge feed: {0}")]
    Feed(#[from] FeedError),
}

/// The edge stage: a node's count table and stream hub, their feed from unread-counts
/// and user-streams, and the
/// WebSocket server on a listener the caller bound.
pub struct Edge {
    node: Arc<Node>,
    feed: Feed,
    listener: TcpListener,
    address: SocketAddr,
}

impl Edge {
    /// Builds the stage; nothing runs until [`Edge::run`]. Fails when
    /// `edge.secrets_file` cannot be read or the metrics cannot be registered.
    pub fn new(
        config: EdgeConfig,
        kafka: KafkaSettings,
        topics: &fanout_kafka::Topics,
        listener: TcpListener,
        registry: &prometheus::Registry,
        health: StageHealth,
    ) -> Result<Self, EdgeError> {
        let metrics = EdgeMetrics::new(registry)?;
        let file = match &config.secrets_file {
            Some(path) => read_secrets_file(path)?,
            None => SecretsFile::new(),
        };
        let address = listener.local_addr().map_err(EdgeError::Listener)?;
        let table = Arc::new(CountTable::new());
        let (ready_tx, ready_rx) = watch::channel(false);
        let node = Arc::new(Node::new(
            config,
            &file,
            table.clone(),
            metrics.clone(),
            ready_rx,
        ));
        let feed = Feed {
            kafka,
            topic: topics.unread_counts.clone(),
            streams_topic: topics.user_streams.clone(),
            streams: node.streams.clone(),
            shard: node.shard.clone(),
            table,
            metrics,
            ready: ready_tx,
            health,
        };
        Ok(Self {
            node,
            feed,
            listener,
            address,
        })
    }

    /// The node's shared state: its table, metrics, limits and readiness.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Feeds the table and serves clients until `shutdown`, then drains the sessions.
    /// A feed that fails stops the server too, and its error is returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EdgeError> {
        let Self {
            node,
            feed,
            listener,
            ..
        } = self;
        // The server stops with the stage, or when the feed fails.
        let server_shutdown = shutdown.child_token();
        let feed = {
            let server_shutdown = server_shutdown.clone();
            async move {
                let fed = feed::run(feed, shutdown).await;
                if fed.is_err() {
                    server_shutdown.cancel();
                }
                fed
            }
        };
        let ((), fed) = tokio::join!(server::serve(listener, node, server_shutdown), feed);
        Ok(fed?)
    }
}
