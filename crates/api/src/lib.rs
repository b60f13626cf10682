//! `fanout api`: HTTP for services that do not speak Kafka. Publishes message events
//! (checked exactly as ingest checks a record, answered once Kafka acknowledged them)
//! and answers a user's unread count and a message's read receipts from tables read
//! out of unread-counts and read-receipts. Stateless apart from those tables, which it
//! rebuilds from Kafka on start; ready once they caught up.
//!
//! [`Api`] is the stage: built on a bound listener, run under a cancellation token.

pub mod config;
pub mod feed;
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod publish;
pub mod receipts;
pub mod shards;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_ingest::IngestLimits;
use fanout_kafka::{KafkaSettings, StageHealth, Topics};
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, ApiKey, ApiPartner};
pub use metrics::ApiMetrics;

use crate::config::{KeysFile, parse_keys_file, read_keys_file};
use crate::feed::{Feed, Tables};
use crate::http::ApiState;
use crate::keys::KeyRing;
use crate::shards::ShardMap;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("api keys file {0}")]
    KeysFile(String),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("the api's table feed: {0}")]
    Feed(#[from] feed::FeedError),
    #[error("api.{0}")]
    Shards(#[from] fanout_kafka::InvalidSetting),
}

/// The api stage.
pub struct Api {
    state: Arc<ApiState>,
    listener: TcpListener,
    kafka: KafkaSettings,
    counts_topic: String,
    receipts_topic: String,
}

impl Api {
    /// Builds the stage: keys loaded (config and `keys_file`), producer created,
    /// metrics registered. Nothing is read or served until [`Api::run`].
    pub fn new(
        config: ApiConfig,
        ingest_limits: IngestLimits,
        kafka: KafkaSettings,
        topics: &Topics,
        listener: TcpListener,
        registry: &Registry,
        health: StageHealth,
    ) -> Result<Self, ApiError> {
        let metrics = ApiMetrics::new(registry)?;
        let file = match &config.keys_file {
            Some(path) => read_keys_file(path)
                .map_err(|reason| ApiError::KeysFile(format!("{}: {reason}", path.display())))?,
            None => KeysFile::new(),
        };
        let merged = config.merged_keys(&file).map_err(ApiError::KeysFile)?;
        let keys = KeyRing::new(&merged);
        metrics.keys_loaded(Ok(merged.values().map(Vec::len).sum()));
        let mut producer_config = kafka.producer_config();
        producer_config.set("message.timeout.ms", config.publish_timeout_ms.to_string());
        // Not idempotent: a publish gives up after `publish_timeout_ms`, and an
        // idempotent producer whose records timed out must re-establish its producer
        // epoch with the broker, which a broker may refuse for good (tansu 0.6 answers
        // every later record with an unknown error). A retried record may then be
        // written twice, which processing absorbs (every transition is idempotent);
        // one request in flight per broker keeps a partition's records in order.
        producer_config.set("enable.idempotence", "false");
        producer_config.set("max.in.flight.requests.per.connection", "1");
        let producer: FutureProducer = producer_config.create().map_err(ApiError::Producer)?;
        let shards = ShardMap::new(&config.shards)?;
        let state = Arc::new(ApiState {
            shards,
            config,
            limits: ingest_limits,
            keys,
            rates: Mutex::new(HashMap::new()),
            tables: Arc::new(Tables::default()),
            producer,
            topic: topics.message_events.clone(),
            metrics,
            health,
        });
        Ok(Self {
            state,
            listener,
            kafka,
            counts_topic: topics.unread_counts.clone(),
            receipts_topic: topics.read_receipts.clone(),
        })
    }

    /// The stage's metrics (shared with its tasks).
    pub fn metrics(&self) -> &ApiMetrics {
        &self.state.metrics
    }

    pub fn address(&self) -> Result<SocketAddr, ApiError> {
        self.listener.local_addr().map_err(ApiError::Listener)
    }

    /// Serves until `shutdown`: the feed fills the tables, the keys file is watched,
    /// requests are answered. On shutdown it stops accepting, finishes the requests in
    /// flight (their events acknowledged or answered unavailable), then returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ApiError> {
        let Self {
            state,
            listener,
            kafka,
            counts_topic,
            receipts_topic,
        } = self;
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "api listening");
        }
        let mut feed = tokio::spawn(feed::run(
            Feed {
                kafka,
                counts_topic,
                receipts_topic,
                tables: state.tables.clone(),
                shard_partitions: state.shards.as_ref().map(ShardMap::partition_count),
                metrics: state.metrics.clone(),
                health: state.health.clone(),
            },
            shutdown.clone(),
        ));
        let keys_watch = state
            .config
            .keys_file
            .clone()
            .map(|path| tokio::spawn(watch_keys(path, state.clone(), shutdown.clone())));
        let serve = axum::serve(listener, http::router(state.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        // The feed ends only on shutdown, or on an error that leaves the tables stale
        // for good: then the api stops too (its supervisor says why) rather than
        // answering from them.
        let (served, fed) = tokio::select! {
            served = serve => {
                shutdown.cancel();
                (served, feed.await)
            }
            fed = &mut feed => {
                shutdown.cancel();
                (Ok(()), fed)
            }
        };
        if let Some(keys_watch) = keys_watch {
            keys_watch.abort();
        }
        let fed = match fed {
            Ok(result) => result.map_err(ApiError::from),
            Err(join) => Err(ApiError::Feed(feed::FeedError::Setup(join.to_string()))),
        };
        served.map_err(ApiError::Listener)?;
        fed
    }
}

/// Re-reads `api.keys_file` every `keys_reload_interval_ms` until `shutdown` (as the
/// edge re-reads its secrets file): a changed file replaces the file's keys (those in
/// the config stay); one that does not parse leaves the previous keys in use.
async fn watch_keys(path: PathBuf, state: Arc<ApiState>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(state.config.keys_reload_interval_ms);
    let shown = path.display().to_string();
    fanout_edge::secrets::watch_file(path, interval, shutdown, |read| {
        let parsed = read.and_then(|bytes| {
            std::str::from_utf8(bytes)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(parse_keys_file)
                .and_then(|file| state.config.merged_keys(&file))
                .map_err(|reason| format!("{shown}: {reason}"))
        });
        match parsed {
            Ok(merged) => {
                let live = state.keys.replace(&merged);
                state.metrics.keys_loaded(Ok(live));
            }
            Err(reason) => state.metrics.keys_loaded(Err(&reason)),
        }
    })
    .await;
}
