//! Harness for the cross-stage tests: a real Kafka protocol implementation (librdkafka's
//! mock cluster, in process) with topics of their own, the stages wired exactly as
//! `fanout dev` wires them, and real WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_app::config::Config;
use fanout_app::stages::{self, SpawnedEdge, Stage};
use fanout_edge::{PartnerConfig, SecretConfig};
use fanout_kafka::{EmbeddedKafka, KafkaSettings, Topics};
use fanout_schema::v1::{self, message_event::Event};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails (a deadline, not
/// a timing assertion: on a healthy run every wait ends in milliseconds).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Every log line written through it, kept in memory: a `tracing_subscriber` writer
/// (`.with_writer(move || log.clone())`) for tests that search what was logged.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A partner of the test, with its secret.
#[derive(Clone)]
pub struct TestPartner {
    pub code: String,
    pub secret: String,
}

impl TestPartner {
    pub fn new(code: &str) -> Self {
        Self {
            code: code.to_owned(),
            secret: format!("{code}-secret-{}", fanout_app::tools::random_hex(8)),
        }
    }

    /// A good token of this partner's for `user`.
    pub fn token(&self, user: &str) -> String {
        TokenBuilder::new(user).sign(&self.secret)
    }

    /// A stream subscription's token for `user` (RoomChannel's `pubsub_token`).
    pub fn stream_token(&self, user: &str) -> String {
        TokenBuilder::new(user).stream().sign(&self.secret)
    }
}

/// Debian's `package`, installed with apt-get (as root) if `command --version_flag`
/// does not run: what a test needs, the test command provides.
pub fn ensure_debian_package(package: &str, command: &str, version_flag: &str) {
    let present = std::process::Command::new(command)
        .arg(version_flag)
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return;
    }
    let lock_path = std::env::temp_dir().join(format!("fanout-{package}-install.lock"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .status()
    };
    if !install().is_ok_and(|status| status.success()) {
        let updated = std::process::Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .unwrap();
        assert!(updated.success(), "apt-get update failed");
        assert!(
            install().unwrap().success(),
            "apt-get install {package} failed"
        );
    }
    lock.unlock().unwrap();
}

pub mod anycable;
pub mod api;
pub mod fault_proxy;
pub mod metrics_doc;
pub mod netns;
pub mod node;
pub mod process;
pub mod proxy;
pub mod scenarios;
pub mod schemathesis;
pub mod streams;
pub mod tansu;
pub mod token;

pub use token::{Hmac, TokenBuilder, unix_seconds};

/// The Kafka a test runs against.
pub enum Broker {
    /// librdkafka's mock cluster, in process (supports fault injection).
    Embedded(EmbeddedKafka),
    /// A tansu broker process.
    Tansu(tansu::TansuBroker),
}

/// A Kafka with this test's own topics and groups, and a config for it.
pub struct TestCluster {
    /// `None` only once dropped.
    broker: Option<Broker>,
    pub config: Config,
}

impl Drop for TestCluster {
    /// A test that fails unwinds without stopping its stages, and its runtime drops
    /// their Kafka consumers only after the test's locals, this cluster among them; a
    /// consumer's drop waits until it has left its group, which, with the embedded
    /// cluster gone, is forever: the failure would hang instead of being reported. So a
    /// failing test leaves the embedded cluster running (its process ends soon anyway).
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(Broker::Embedded(kafka)) = self.broker.take()
        {
            std::mem::forget(kafka);
        }
    }
}

impl TestCluster {
    /// On the embedded mock cluster.
    pub fn start(partitions: i32, partners: &[TestPartner]) -> Self {
        init_logging();
        let prefix = format!("t{}-", fanout_app::tools::random_hex(4));
        let topics = Topics::with_prefix(&prefix);
        let kafka =
            EmbeddedKafka::start(1, &topics.with_partitions(partitions, partitions)).unwrap();
        let bootstrap = kafka.bootstrap_servers().to_owned();
        Self::configure(Broker::Embedded(kafka), &bootstrap, &prefix, partners)
    }

    /// On a real broker process (tansu), installed if missing.
    pub fn start_tansu(partitions: i32, partners: &[TestPartner]) -> Self {
        init_logging();
        let prefix = format!("t{}-", fanout_app::tools::random_hex(4));
        let topics = Topics::with_prefix(&prefix);
        let broker = tansu::TansuBroker::start();
        for (topic, topic_partitions) in topics.with_partitions(partitions, partitions) {
            broker.create_topic(&topic, topic_partitions);
        }
        let bootstrap = broker.bootstrap_servers();
        Self::configure(Broker::Tansu(broker), &bootstrap, &prefix, partners)
    }

    /// The embedded cluster, for fault injection.
    pub fn embedded(&self) -> &EmbeddedKafka {
        match &self.broker {
            Some(Broker::Embedded(kafka)) => kafka,
            _ => panic!("fault injection needs the embedded cluster"),
        }
    }

    /// The tansu broker process, to stop and restart it.
    pub fn tansu(&mut self) -> &mut tansu::TansuBroker {
        match &mut self.broker {
            Some(Broker::Tansu(broker)) => broker,
            _ => panic!("stopping the broker process needs tansu"),
        }
    }

    fn configure(broker: Broker, bootstrap: &str, prefix: &str, partners: &[TestPartner]) -> Self {
        let mut config = Config {
            kafka: KafkaSettings::new(bootstrap),
            topics: Topics::with_prefix(prefix),
            ..Config::default()
        };
        config.ingest.group_id = format!("{prefix}ingest");
        config.router.group_id = format!("{prefix}router");
        // Everyone told at once when an edge stops; the drain test sets a window.
        config.edge.drain_window_ms = 0;
        config.edge.partners = partners
            .iter()
            .map(|partner| {
                (
                    partner.code.clone(),
                    PartnerConfig {
                        secrets: vec![SecretConfig {
                            kid: None,
                            secret: partner.secret.clone(),
                        }],
                        ..PartnerConfig::default()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        config.validate().unwrap();
        Self {
            broker: Some(broker),
            config,
        }
    }

    pub fn producer(&self) -> FutureProducer {
        self.config
            .kafka
            .client_config(&[("message.timeout.ms", "30000"), ("linger.ms", "0")])
            .create()
            .unwrap()
    }
}

/// Stages running in this process, each under its own token so a test can stop one.
pub struct RunningStages {
    pub shutdown: CancellationToken,
    pub stages: Vec<Stage>,
}

impl RunningStages {
    /// The health of the (first) stage that has one.
    pub fn health(&self) -> fanout_kafka::StageHealth {
        self.stages
            .iter()
            .find_map(|stage| stage.health.clone())
            .expect("a stage with a readiness condition")
    }

    /// Whether any stage has stopped (by error or otherwise).
    pub fn any_stopped(&self) -> bool {
        self.stages.iter().any(|stage| stage.task.is_finished())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        stages::supervise(self.stages, self.shutdown).await.unwrap();
    }
}

pub fn start_ingest(config: &Config) -> (RunningStages, fanout_ingest::IngestMetrics) {
    start_one(stages::spawn_ingest, config)
}

pub fn start_router(config: &Config) -> (RunningStages, fanout_router::RouterMetrics) {
    start_one(stages::spawn_router, config)
}

type SpawnStage<M> =
    fn(&Config, &prometheus::Registry, CancellationToken) -> anyhow::Result<(stages::Stage, M)>;

/// One stage under a token of its own, with its metrics in a registry of their own.
fn start_one<M>(spawn: SpawnStage<M>, config: &Config) -> (RunningStages, M) {
    let shutdown = CancellationToken::new();
    let (stage, metrics) = spawn(config, &prometheus::Registry::new(), shutdown.clone()).unwrap();
    (
        RunningStages {
            shutdown,
            stages: vec![stage],
        },
        metrics,
    )
}

pub struct RunningEdge {
    pub node: Arc<fanout_edge::Node>,
    pub address: SocketAddr,
    pub running: RunningStages,
    /// The edge's metrics, in a registry of their own.
    pub registry: prometheus::Registry,
}

/// Starts an edge on a free loopback port and waits until its table is caught up.
pub async fn start_edge(config: &Config) -> RunningEdge {
    start_edge_at(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts an edge listening on `address` and waits until its table is caught up: given
/// the address of an edge that has stopped, this is that edge restarted, as its clients
/// see it. The stopped edge's connections may linger in TIME_WAIT; tokio's bind sets
/// SO_REUSEADDR on Unix, so the port can be taken again at once.
pub async fn start_edge_at(config: &Config, address: SocketAddr) -> RunningEdge {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|error| panic!("binding an edge to {address}: {error}"));
    let registry = prometheus::Registry::new();
    let SpawnedEdge {
        stage,
        node,
        address,
    } = stages::spawn_edge(config, listener, &registry, shutdown.clone()).unwrap();
    let mut ready = node.ready.clone();
    tokio::time::timeout(DEADLINE, ready.wait_for(|ready| *ready))
        .await
        .expect("edge never became ready")
        .unwrap();
    RunningEdge {
        node,
        address,
        running: RunningStages {
            shutdown,
            stages: vec![stage],
        },
        registry,
    }
}

/// Ingest, the router and an edge, the whole path, each as [`start_ingest`],
/// [`start_router`] and [`start_edge`] start it.
pub struct RunningPipeline {
    pub ingest: RunningStages,
    pub ingest_metrics: fanout_ingest::IngestMetrics,
    pub router: RunningStages,
    pub router_metrics: fanout_router::RouterMetrics,
    pub edge: RunningEdge,
}

/// Starts ingest, the router and an edge, and waits until the edge's table is caught up.
pub async fn start_pipeline(config: &Config) -> RunningPipeline {
    let (ingest, ingest_metrics) = start_ingest(config);
    let (router, router_metrics) = start_router(config);
    let edge = start_edge(config).await;
    RunningPipeline {
        ingest,
        ingest_metrics,
        router,
        router_metrics,
        edge,
    }
}

impl RunningPipeline {
    /// Each stage's health: ingest's, the router's, the edge's.
    pub fn healths(&self) -> [fanout_kafka::StageHealth; 3] {
        [
            self.ingest.health(),
            self.router.health(),
            self.edge.running.health(),
        ]
    }

    /// Whether any stage has stopped (by error or otherwise).
    pub fn any_stopped(&self) -> bool {
        self.ingest.any_stopped() || self.router.any_stopped() || self.edge.running.any_stopped()
    }

    /// Stops ingest, then the router, then the edge.
    pub async fn stop(self) {
        self.ingest.stop().await;
        self.router.stop().await;
        self.edge.running.stop().await;
    }
}

/// Produces raw bytes to `topic`, keyed by `key`, with optional headers.
pub async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            DEADLINE,
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
}

/// Produces a message event as protobuf, keyed by its conversation.
pub async fn produce_event(producer: &FutureProducer, config: &Config, event: &v1::MessageEvent) {
    let key = match &event.event {
        Some(Event::MessageCreated(e)) => e.conversation_id.clone(),
        Some(Event::MessageRead(e)) => e.conversation_id.clone(),
        Some(Event::ConversationRead(e)) => e.conversation_id.clone(),
        Some(Event::MessageDeleted(e)) => e.conversation_id.clone(),
        Some(Event::Notification(_)) | None => String::new(),
    };
    produce_raw(
        producer,
        &config.topics.message_events,
        &key,
        &event.encode_to_vec(),
        &[],
    )
    .await;
}

/// Builders for message events.
pub mod event {
    use super::*;

    fn wrap(partner: &str, id: String, event: Event) -> v1::MessageEvent {
        v1::MessageEvent {
            event_id: id,
            partner: partner.to_owned(),
            occurred_at_ms: fanout_schema::unix_millis(),
            data: None,
            event: Some(event),
        }
    }

    pub fn created(
        partner: &str,
        conversation: &str,
        seq: u64,
        from: &str,
        to: &[&str],
    ) -> v1::MessageEvent {
        wrap(
            partner,
            format!("{partner}-{conversation}-{seq}-created"),
            Event::MessageCreated(v1::MessageCreated {
                conversation_id: conversation.to_owned(),
                seq,
                message_id: format!("m{seq}"),
                sender: from.to_owned(),
                recipients: to.iter().map(|user| (*user).to_owned()).collect(),
            }),
        )
    }

    pub fn message_read(
        partner: &str,
        conversation: &str,
        seq: u64,
        user: &str,
    ) -> v1::MessageEvent {
        wrap(
            partner,
            format!("{partner}-{conversation}-{seq}-read-{user}"),
            Event::MessageRead(v1::MessageRead {
                conversation_id: conversation.to_owned(),
                seq,
                user: user.to_owned(),
                message_id: format!("m{seq}"),
                notify: Vec::new(),
            }),
        )
    }

    pub fn conversation_read(
        partner: &str,
        conversation: &str,
        seq: u64,
        user: &str,
    ) -> v1::MessageEvent {
        wrap(
            partner,
            format!("{partner}-{conversation}-{seq}-convread-{user}"),
            Event::ConversationRead(v1::ConversationRead {
                conversation_id: conversation.to_owned(),
                seq,
                user: user.to_owned(),
                notify: Vec::new(),
            }),
        )
    }

    /// `event` carrying the partner's `data` (a JSON object), which every kind may carry.
    /// Message `seq` of `conversation` from `sam` to `user`, its data `{"n": seq}`: a
    /// stream whose events a client can check one by one against 1, 2, 3, ...
    pub fn numbered(partner: &str, conversation: &str, seq: u64, user: &str) -> v1::MessageEvent {
        with_data(
            created(partner, conversation, seq, "sam", &[user]),
            &serde_json::json!({ "n": seq }),
        )
    }

    pub fn with_data(mut event: v1::MessageEvent, data: &serde_json::Value) -> v1::MessageEvent {
        let data = fanout_schema::data::data_from_json(data.clone())
            .unwrap_or_else(|error| panic!("{data} cannot be an event's data: {error}"));
        event.data = Some(data);
        event
    }

    /// A read (`message_read`, `conversation_read`) naming `users` to be told of it: each
    /// gets the read receipt on its stream.
    pub fn notifying(mut event: v1::MessageEvent, users: &[&str]) -> v1::MessageEvent {
        let notify = users.iter().map(|user| (*user).to_owned()).collect();
        match &mut event.event {
            Some(Event::MessageRead(read)) => read.notify = notify,
            Some(Event::ConversationRead(read)) => read.notify = notify,
            other => panic!("only reads name users to notify, not {other:?}"),
        }
        event
    }

    pub fn deleted(partner: &str, conversation: &str, seq: u64, to: &[&str]) -> v1::MessageEvent {
        wrap(
            partner,
            format!("{partner}-{conversation}-{seq}-deleted"),
            Event::MessageDeleted(v1::MessageDeleted {
                conversation_id: conversation.to_owned(),
                seq,
                message_id: format!("m{seq}"),
                recipients: to.iter().map(|user| (*user).to_owned()).collect(),
            }),
        )
    }
}

/// The identifier the official client sends for `{channel: "PartnerChannel"}`.
pub const PARTNER_CHANNEL_IDENTIFIER: &str = r#"{"channel":"PartnerChannel"}"#;

/// The frame the edge sends for a count on the PartnerChannel subscription.
pub fn count_frame(count: u64) -> String {
    fanout_protocol_frames::unread_count(PARTNER_CHANNEL_IDENTIFIER, count)
}

mod fanout_protocol_frames {
    /// Built by hand here rather than with the codec under test.
    pub fn unread_count(identifier: &str, count: u64) -> String {
        let identifier_json = serde_json::to_string(identifier).unwrap();
        format!(
            r#"{{"identifier":{identifier_json},"message":{{"type":"unread_count","count":{count}}}}}"#
        )
    }
}

/// The identifier Chatwoot's clients send for RoomChannel, as `JSON.stringify({channel:
/// "RoomChannel", pubsub_token})` writes it: `{"channel":"RoomChannel","pubsub_token":".."}`.
pub fn room_channel_identifier(pubsub_token: &str) -> String {
    format!(
        r#"{{"channel":"RoomChannel","pubsub_token":{}}}"#,
        serde_json::to_string(pubsub_token).unwrap()
    )
}

/// One user's event stream as a client receives it, checked event by event against what
/// the test produced. Positions are checked as the design states them, not as the edge
/// computes them: the first event is at `offset` 1, each next one at one more, all under
/// one `epoch`, a string `"<digits>-<8 hex digits>"` (the epoch and the stream's tag, as
/// docs/streams.md writes it), learned from the first event.
#[derive(Debug, Default)]
pub struct StreamCheck {
    epoch: Option<String>,
    offset: u64,
}

impl StreamCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asserts that `received` (the event as a client got it: `{"event":..,"data":..,
    /// ..,"epoch":..,"offset":..}`) is `expected` (every field but `epoch` and `offset`)
    /// at the stream's next position.
    pub fn next(&mut self, received: &serde_json::Value, expected: serde_json::Value) {
        let mut fields = received
            .as_object()
            .unwrap_or_else(|| panic!("a stream event is an object: {received}"))
            .clone();
        let epoch = fields.remove("epoch");
        let offset = fields.remove("offset");
        assert_eq!(
            serde_json::Value::Object(fields),
            expected,
            "the event (epoch and offset aside)"
        );
        let epoch = match epoch {
            Some(serde_json::Value::String(epoch)) => epoch,
            other => panic!("the epoch is a string, not {other:?}: {received}"),
        };
        let well_formed = epoch.split_once('-').is_some_and(|(number, tag)| {
            !number.is_empty()
                && number.bytes().all(|byte| byte.is_ascii_digit())
                && tag.len() == 8
                && tag.bytes().all(|byte| byte.is_ascii_hexdigit())
        });
        assert!(well_formed, "the epoch is <digits>-<tag>: {received}");
        let first_epoch = self.epoch.get_or_insert_with(|| epoch.clone());
        assert_eq!(&epoch, first_epoch, "the epoch changed: {received}");
        self.offset += 1;
        assert_eq!(
            offset,
            Some(serde_json::Value::from(self.offset)),
            "the offset after {} events: {received}",
            self.offset - 1
        );
    }
}

/// A real WebSocket client speaking ActionCable's wire format.
pub struct CableClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub protocol: Option<String>,
}

impl CableClient {
    /// Connects offering what the official client offers.
    pub async fn connect(address: SocketAddr, partner: &str, token: &str) -> Self {
        Self::connect_offering(
            address,
            partner,
            token,
            Some("actioncable-v1-json, actioncable-unsupported"),
        )
        .await
    }

    /// Connects offering `subprotocols` (the `Sec-WebSocket-Protocol` value), if any.
    pub async fn connect_offering(
        address: SocketAddr,
        partner: &str,
        token: &str,
        subprotocols: Option<&str>,
    ) -> Self {
        let url = format!("ws://{address}/cable?jwt={token}&partner={partner}");
        Self::connect_url(&url, subprotocols).await
    }

    /// Connects to `url` (`ws://host:port/cable?jwt=...&partner=...`) offering
    /// `subprotocols`, if any.
    pub async fn connect_url(url: &str, subprotocols: Option<&str>) -> Self {
        let mut request = url.into_client_request().unwrap();
        if let Some(offer) = subprotocols {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_str(offer).unwrap(),
            );
        }
        let (socket, response) =
            tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
                .await
                .expect("connect timed out")
                .unwrap();
        let protocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|value| value.to_str().unwrap().to_owned());
        Self { socket, protocol }
    }

    /// The next text frame that is not a ping; `None` once the server has closed.
    pub async fn next_frame(&mut self) -> Option<String> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .expect("no frame before the deadline");
            match message {
                None => return None,
                Some(Err(error)) => panic!("socket error: {error}"),
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str().to_owned();
                    if text.starts_with(r#"{"type":"ping""#) {
                        continue;
                    }
                    return Some(text);
                }
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Expects the welcome, subscribes to PartnerChannel and expects the confirmation;
    /// returns the first count frame.
    pub async fn welcome_and_subscribe(&mut self) -> String {
        assert_eq!(
            self.next_frame().await.as_deref(),
            Some(r#"{"type":"welcome"}"#)
        );
        self.send_text(
            r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#,
        )
        .await;
        assert_eq!(
            self.next_frame().await.as_deref(),
            Some(
                r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#
            )
        );
        self.next_frame()
            .await
            .expect("a count after the confirmation")
    }
}

/// What a `/realtime` client read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeFrame {
    Text(String),
    /// The server's close frame: code and reason (1005 when it sent none).
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

/// A real WebSocket client of the JSON `/realtime` protocol.
pub struct RealtimeClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RealtimeClient {
    pub async fn connect(address: SocketAddr) -> Self {
        let url = format!("ws://{address}/realtime");
        let (socket, _response) =
            tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect timed out")
                .unwrap();
        Self { socket }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Sends an `authrequest` with `id` (raw JSON) and returns the reply.
    pub async fn authenticate(&mut self, partner: &str, token: &str, id: &str) -> String {
        let request = format!(
            r#"{{"type":"authrequest","token":{},"partner":{},"id":{id}}}"#,
            serde_json::to_string(token).unwrap(),
            serde_json::to_string(partner).unwrap(),
        );
        self.send_text(&request).await;
        self.next_text().await
    }

    /// The next frame; after a close frame, completes the closing handshake.
    pub async fn next(&mut self) -> RealtimeFrame {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .expect("no frame before the deadline");
            match message {
                None | Some(Err(_)) => return RealtimeFrame::Ended,
                Some(Ok(Message::Text(text))) => {
                    return RealtimeFrame::Text(text.as_str().to_owned());
                }
                Some(Ok(Message::Close(frame))) => {
                    // Reading on sends our closing frame and sees the connection end.
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(DEADLINE, self.socket.next()).await
                    {
                    }
                    let (code, reason) = frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.as_str().to_owned())
                    });
                    return RealtimeFrame::Close(code, reason);
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame however long it takes; `None` once the connection ends.
    pub async fn next_forever(&mut self) -> Option<String> {
        loop {
            match self.socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => return Some(text.as_str().to_owned()),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame, which must be a text frame.
    pub async fn next_text(&mut self) -> String {
        match self.next().await {
            RealtimeFrame::Text(text) => text,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a close: its code and reason.
    pub async fn next_close(&mut self) -> (u16, String) {
        match self.next().await {
            RealtimeFrame::Close(code, reason) => (code, reason),
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

/// Waits until `edge` has seen `key`'s stream event at `offset`.
pub async fn wait_for_stream_position(edge: &RunningEdge, key: &str, offset: u64) {
    wait_until(&format!("the edge to hold {key}'s event {offset}"), || {
        edge.node
            .streams
            .last_position(key)
            .is_some_and(|(_, last)| last == offset)
    })
    .await;
}

/// Waits until `condition` holds, polling; fails the test at the deadline.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A record on dead-letter: the original's key and payload, and the headers ingest adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: String,
    pub payload: Vec<u8>,
    /// `fanout-error`: the rejection's reason.
    pub error: Option<String>,
    /// `fanout-source`: `topic/partition/offset` of the original.
    pub source: Option<String>,
}

/// Reads the dead-letter topic (one partition) from its beginning.
pub struct DeadLetterReader(rdkafka::consumer::StreamConsumer);

impl DeadLetterReader {
    pub fn new(config: &Config) -> Self {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::StreamConsumer =
            config.kafka.assign_consumer_config().create().unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(&config.topics.dead_letter, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        Self(consumer)
    }

    /// The next record; fails the test at the deadline.
    pub async fn next(&self) -> DeadLetter {
        use rdkafka::Message as _;
        use rdkafka::message::Headers as _;
        let message = tokio::time::timeout(DEADLINE, self.0.recv())
            .await
            .expect("no dead-letter record before the deadline")
            .unwrap();
        let header = |name: &str| {
            message
                .headers()?
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8(value.to_vec()).unwrap())
        };
        DeadLetter {
            key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            payload: message.payload().unwrap_or_default().to_vec(),
            error: header("fanout-error"),
            source: header("fanout-source"),
        }
    }
}

/// Records written to a topic so far, to wait until a stage has written something.
pub struct TopicWatermarks {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
}

impl TopicWatermarks {
    pub fn new(config: &Config, topic: &str) -> Self {
        Self {
            consumer: config.kafka.assign_consumer_config().create().unwrap(),
            topic: topic.to_owned(),
        }
    }

    /// The sum of the topic's partitions' high watermarks.
    pub fn total(&self) -> i64 {
        use rdkafka::consumer::Consumer as _;
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), DEADLINE)
            .unwrap();
        let topic = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.topic)
            .expect("the topic's metadata");
        topic
            .partitions()
            .iter()
            .map(|partition| {
                self.consumer
                    .fetch_watermarks(&self.topic, partition.id(), DEADLINE)
                    .unwrap()
                    .1
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(epoch: &str, offset: u64) -> serde_json::Value {
        json!({"event": "message.created", "data": {}, "epoch": epoch, "offset": offset})
    }

    fn expected() -> serde_json::Value {
        json!({"event": "message.created", "data": {}})
    }

    #[test]
    fn a_stream_check_takes_offsets_one_by_one_under_one_epoch() {
        let mut check = StreamCheck::new();
        check.next(&event("17-0000abcd", 1), expected());
        check.next(&event("17-0000abcd", 2), expected());
    }

    #[test]
    #[should_panic(expected = "the offset after 1 events")]
    fn a_stream_check_refuses_a_skipped_offset() {
        let mut check = StreamCheck::new();
        check.next(&event("17-0000abcd", 1), expected());
        check.next(&event("17-0000abcd", 3), expected());
    }

    #[test]
    #[should_panic(expected = "the offset after 0 events")]
    fn a_stream_check_refuses_a_first_offset_other_than_1() {
        StreamCheck::new().next(&event("17-0000abcd", 0), expected());
    }

    #[test]
    #[should_panic(expected = "the epoch changed")]
    fn a_stream_check_refuses_a_new_epoch() {
        let mut check = StreamCheck::new();
        check.next(&event("17-0000abcd", 1), expected());
        check.next(&event("18-0000abcd", 2), expected());
    }

    #[test]
    #[should_panic(expected = "the epoch is <digits>-<tag>")]
    fn a_stream_check_refuses_an_epoch_without_its_tag() {
        StreamCheck::new().next(&event("17", 1), expected());
    }

    #[test]
    #[should_panic(expected = "the epoch is a string")]
    fn a_stream_check_refuses_a_numeric_epoch() {
        let received = json!({"event": "message.created", "data": {}, "epoch": 17, "offset": 1});
        StreamCheck::new().next(&received, expected());
    }

    #[test]
    #[should_panic(expected = "the event (epoch and offset aside)")]
    fn a_stream_check_refuses_other_data() {
        let received =
            json!({"event": "message.created", "data": {"a": 1}, "epoch": "1", "offset": 1});
        StreamCheck::new().next(&received, expected());
    }
}
