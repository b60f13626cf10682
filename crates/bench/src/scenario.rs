//! What a WebSocket scenario is asked to do: the named scenarios with their defaults,
//! and the options of the command line, the running deployment it may name included.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::worker::Protocol;

/// `push-rate`'s default count records per second: above what one edge delivers here
/// (so it is saturated and coalesces), below the producer's own maximum, which would
/// take the CPU the edge needs (`--rate 0`).
pub const DEFAULT_PUSH_RATE: u64 = 200_000;

/// Connections an edge of scale-out holds when `--edges` is not given: an edge may
/// have 20000 open files here, and needs a few hundred besides its connections.
pub const CONNECTIONS_PER_EDGE: u64 = 18_000;

/// scale-out's default recipients of each `MessageCreated` of its group message: well
/// inside what ingest takes in one event (100000 recipients, 1 MiB a record).
pub const DEFAULT_RECIPIENTS_PER_EVENT: u64 = 20_000;

/// Records of a round a partition of the topics keyed by user holds in scale-out:
/// librdkafka's mock cluster keeps the last 100000 records and 5 MiB of a partition,
/// and a user's stream event is a few hundred bytes.
pub const USERS_PER_PARTITION: u64 = 20_000;

/// The named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N connections subscribed and held: the edge's RSS per connection.
    Idle,
    /// One message to every connected user: produce → every socket.
    GroupMessage,
    /// A steady rate of changes spread over the connected users.
    Steady,
    /// Count records written straight to unread-counts as fast as the producer can:
    /// pushes delivered per second, router not in the loop.
    PushRate,
    /// N clients connecting at once: authenticated handshakes per second.
    ConnectStorm,
    /// Several edge processes, N connections over all of them, then one group message
    /// to every connected user: produce → every socket.
    ScaleOut,
    /// One message with `--data-bytes` of data to every connected user, each subscribed
    /// to its event stream too: produce → every socket latency of `message.created`.
    Stream,
    /// Stream subscribers on one edge with events flowing (`--rate`), the edge killed
    /// and started again: how long after it is ready every client has every event it
    /// missed, with no gap and no repeat; and the history window's memory per event.
    ReconnectStorm,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::GroupMessage => "group-message",
            Self::Steady => "steady",
            Self::PushRate => "push-rate",
            Self::ConnectStorm => "connect-storm",
            Self::ScaleOut => "scale-out",
            Self::Stream => "stream",
            Self::ReconnectStorm => "reconnect-storm",
        }
    }

    pub(crate) fn default_connections(self) -> u64 {
        match self {
            Self::Idle => 19_000,
            Self::GroupMessage | Self::ConnectStorm | Self::Stream | Self::ReconnectStorm => 10_000,
            Self::Steady => 15_000,
            Self::PushRate => 2_000,
            Self::ScaleOut => 60_000,
        }
    }

    pub(crate) fn default_duration(self) -> Duration {
        match self {
            Self::Idle | Self::ScaleOut => Duration::from_secs(5),
            Self::Steady => Duration::from_secs(30),
            Self::PushRate => Duration::from_secs(10),
            // The warm-up before the restart: what fills the window.
            Self::ReconnectStorm => Duration::from_secs(30),
            Self::GroupMessage | Self::ConnectStorm | Self::Stream => Duration::ZERO,
        }
    }

    /// Scenarios whose events go through ingest and router.
    pub(crate) fn needs_pipeline(self) -> bool {
        matches!(
            self,
            Self::GroupMessage
                | Self::Steady
                | Self::Stream
                | Self::ReconnectStorm
                | Self::ScaleOut
        )
    }

    /// The protocol the clients speak unless `--protocol` says: `/realtime` for
    /// reconnect-storm (the only one its clients resume on), ActionCable otherwise.
    pub(crate) fn default_protocol(self) -> Protocol {
        match self {
            Self::ReconnectStorm => Protocol::Realtime,
            _ => Protocol::Cable,
        }
    }
}

/// Options of the WebSocket scenarios. Without `--edge-url` the bench starts what it
/// needs itself: an embedded Kafka, edge processes, and ingest and router processes.
#[derive(Debug, Clone, clap::Args)]
pub struct WsBenchOptions {
    /// Connections (default: the scenario's).
    #[arg(long)]
    pub connections: Option<u64>,
    /// Client worker processes (default: one per 15000 connections; at most 18000 each).
    #[arg(long)]
    pub workers: Option<usize>,
    /// The clients' protocol (default: cable; reconnect-storm: realtime, the only one
    /// it supports).
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// How long the load runs (idle, scale-out: how long connections are held;
    /// reconnect-storm: the warm-up before the edge is restarted, default 30).
    #[arg(long)]
    pub duration_seconds: Option<f64>,
    /// steady: changes per second (default 20000). push-rate: count records per
    /// second (default 200000; 0: as fast as the producer goes). reconnect-storm:
    /// stream events per second, spread round robin over the users (default 5000).
    #[arg(long)]
    pub rate: Option<u64>,
    /// group-message, stream: messages sent, one after the other, each to every user.
    #[arg(long, default_value_t = 5)]
    pub messages: u64,
    /// Each client also subscribes to its user's event stream (RoomChannel on /cable,
    /// subscribe_events on /realtime): what streams cost the counts. Always on in
    /// stream, which measures the events instead of the counts.
    #[arg(long)]
    pub events: bool,
    /// group-message, stream, reconnect-storm: bytes of `data` each message carries
    /// (default: 0, and 1024 in stream and reconnect-storm).
    #[arg(long)]
    pub data_bytes: Option<usize>,
    /// scale-out: recipients of each `MessageCreated` its group message is split into
    /// (default 20000; ingest takes at most 100000 and 1 MiB a record).
    #[arg(long)]
    pub recipients_per_event: Option<u64>,
    /// Edge processes to start (scale-out: one per 18000 connections, others: 1).
    #[arg(long)]
    pub edges: Option<usize>,
    /// Partitions of the topics the bench creates (scale-out: the topics keyed by user
    /// get at least one per 20000 connections, so that its group message fits in what
    /// the embedded broker keeps).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Connections being set up at once per worker (connect-storm: all at once).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// The Kafka (`host:port`) the deployment the bench starts runs on, instead of an
    /// embedded one; the run's topics are created there. For where the embedded
    /// broker (librdkafka's mock cluster) is not like a real one: it keeps only the last
    /// 5 MiB of each partition, deleting from the front as records arrive, and cannot
    /// look an offset up by time (reconnect-storm's restarted edge reads its window back
    /// from it only as far as it keeps).
    #[arg(long)]
    pub local_brokers: Option<String>,
    /// A librdkafka setting (`property=value`; repeat for several) for every Kafka
    /// client of the deployment the bench starts, after the bench's own
    /// (`fetch.wait.max.ms=5`, `socket.nagle.disable=true`). E.g.
    /// `fetch.error.backoff.ms=0` for reconnect-storm on the embedded broker (see
    /// docs/benchmarks.md).
    #[arg(long = "kafka-client", value_name = "PROPERTY=VALUE", value_parser = parse_setting)]
    pub kafka_client: Vec<(String, String)>,
    /// Also measure the ceiling (`fanout bench ceiling`) with the same connections and
    /// pattern once the deployment is stopped, and state the edge's figures against
    /// it: on in push-rate (`--ceiling=false` to skip), off in group-message; not for
    /// the other scenarios.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ceiling: Option<bool>,
    /// Where `<scenario>.json`, `<scenario>.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub external: ExternalTarget,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A deployment already running, instead of one the bench starts: named by
/// `--edge-url`; without it the other fields are not used.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExternalTarget {
    /// A running edge (`ws://host:port`; repeat for several) instead of starting one.
    #[arg(long = "edge-url")]
    pub edge_urls: Vec<String>,
    /// The pid of each running edge, in `--edge-url` order, to read its RSS.
    #[arg(long = "edge-pid")]
    pub edge_pids: Vec<u32>,
    /// The running deployment's Kafka (needed by group-message, steady, push-rate).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The running deployment's partner code.
    #[arg(long)]
    pub partner: Option<String>,
    /// That partner's signing secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// The running deployment's topic prefix, if any.
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

/// `property=value`, as `--kafka-client` takes it.
pub(crate) fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((property, value)) if !property.trim().is_empty() => {
            Ok((property.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected property=value, got {text:?}")),
    }
}

impl WsBenchOptions {
    /// The clients' protocol: `--protocol`, or the scenario's default.
    pub(crate) fn protocol_of(&self, scenario: Scenario) -> Protocol {
        self.protocol.unwrap_or_else(|| scenario.default_protocol())
    }

    /// Connections: `--connections`, or the scenario's default.
    pub(crate) fn connections_of(&self, scenario: Scenario) -> u64 {
        self.connections
            .unwrap_or_else(|| scenario.default_connections())
    }

    /// Edge processes of a deployment the bench starts: `--edges`, or one (scale-out:
    /// one per [`CONNECTIONS_PER_EDGE`]).
    pub(crate) fn edges_of(&self, scenario: Scenario) -> usize {
        self.edges.unwrap_or_else(|| match scenario {
            Scenario::ScaleOut => usize::try_from(
                self.connections_of(scenario)
                    .div_ceil(CONNECTIONS_PER_EDGE)
                    .max(1),
            )
            .unwrap_or(usize::MAX),
            _ => 1,
        })
    }

    /// Partitions of the topics keyed by user, if not `--partitions`: scale-out's
    /// group message writes a record per user to each, all at once, and a partition
    /// must hold its share until every edge has read it.
    pub(crate) fn user_partitions_of(&self, scenario: Scenario) -> Option<i32> {
        (scenario == Scenario::ScaleOut).then(|| {
            let needed = self.connections_of(scenario).div_ceil(USERS_PER_PARTITION);
            i32::try_from(needed)
                .unwrap_or(i32::MAX)
                .max(self.partitions)
        })
    }
}

impl ExternalTarget {
    /// Whether the run measures a running deployment (`--edge-url` given).
    pub(crate) fn is_named(&self) -> bool {
        !self.edge_urls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        options: WsBenchOptions,
    }

    fn options(args: &[&str]) -> WsBenchOptions {
        Command::parse_from(std::iter::once("bench").chain(args.iter().copied())).options
    }

    #[test]
    fn scale_out_has_an_edge_per_18000_connections_and_a_user_partition_per_20000() {
        let default = options(&[]);
        assert_eq!(default.edges_of(Scenario::ScaleOut), 4);
        assert_eq!(default.user_partitions_of(Scenario::ScaleOut), Some(4));
        let large = options(&["--connections", "500000"]);
        assert_eq!(large.edges_of(Scenario::ScaleOut), 28);
        assert_eq!(large.user_partitions_of(Scenario::ScaleOut), Some(25));
        assert_eq!(large.edges_of(Scenario::Idle), 1);
        assert_eq!(large.user_partitions_of(Scenario::GroupMessage), None);
        let named = options(&["--connections", "300", "--edges", "2", "--partitions", "8"]);
        assert_eq!(named.edges_of(Scenario::ScaleOut), 2);
        assert_eq!(named.user_partitions_of(Scenario::ScaleOut), Some(8));
    }

    #[test]
    fn kafka_client_settings_are_property_equals_value() {
        assert_eq!(
            parse_setting("fetch.error.backoff.ms=0"),
            Ok(("fetch.error.backoff.ms".to_owned(), "0".to_owned()))
        );
        assert_eq!(
            parse_setting("client.id=a=b"),
            Ok(("client.id".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_setting("fetch.error.backoff.ms").is_err());
        assert!(parse_setting("=0").is_err());
    }
}
