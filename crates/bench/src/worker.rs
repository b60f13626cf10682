//! `fanout bench worker`: one process of WebSocket clients. The bench starts several, so
//! that N can exceed one process's open-file limit, and talks to each over its stdin
//! (commands, one per line) and stdout (JSON lines: [`WorkerMessage`]).
//!
//! A client is one task: bind a source address on 127.0.0.0/8 (so N can exceed one
//! address's ephemeral ports), connect, upgrade, authenticate, subscribe, then record
//! every count pushed to it. Counts of 0 (the initial count of a fresh user) are not
//! pushes of the run and are not recorded.
//!
//! A resuming client ([`Events::Resumed`], reconnect-storm) checks the position of every
//! stream event it gets (no gap, no repeat), and when its connection drops it
//! reconnects as browser clients do (exponential backoff, full jitter, a fresh token)
//! and resubscribes from the last position it has; what it received after the drop is
//! in its [`ClientRecovery`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use fanout_schema::unix_micros;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};

mod churn;
pub use churn::{Churn, ChurnProgress, ChurnReport};

/// The WebSocket protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// ActionCable on `/cable`: token in the query, subscribe to PartnerChannel.
    Cable,
    /// The JSON protocol on `/realtime`: `authrequest` in band.
    Realtime,
}

/// How a pushed count tells its latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencySource {
    /// The count is the send time in Unix microseconds (count records written straight
    /// to unread-counts): latency is computed here, into a histogram.
    CountIsSendTime,
    /// Counts come from the router: every receipt (user, count, time) is reported and
    /// the bench, which knows when the event behind each count was sent, computes it.
    Receipts,
}

/// Whether the clients also subscribe to their user's event stream (RoomChannel on
/// `/cable`, `subscribe_events` on `/realtime`), and which frames a run measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Events {
    /// Counts only.
    #[default]
    Off,
    /// Subscribed to both; counts are measured, events received and not measured.
    Subscribed,
    /// Subscribed to both; `message.created` events are measured (their
    /// `unread_count` tells which message), counts received and not measured.
    Measured,
    /// `/realtime` only. Subscribed to both; every event's position is checked, and a
    /// dropped connection is made again and the stream resumed from the last position
    /// (reconnect-storm).
    Resumed,
}

/// What one worker does; passed as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    /// `ws://host:port` of each edge; connection `i` goes to edge `i % len`.
    pub edge_urls: Vec<String>,
    pub protocol: Protocol,
    pub partner: String,
    pub secret: String,
    /// User `i` is `{user_prefix}{i}`.
    pub user_prefix: String,
    /// This worker's connections are users `first_user..first_user + connections`.
    pub first_user: u64,
    pub connections: u64,
    /// Source addresses, each used for at most `per_source_address` connections.
    pub source_addresses: Vec<Ipv4Addr>,
    pub per_source_address: u64,
    /// Connections being set up at once; 0 means all at once.
    pub connect_concurrency: usize,
    pub latency: LatencySource,
    #[serde(default)]
    pub events: Events,
    /// Whether connections come and go (soak, overload).
    #[serde(default)]
    pub churn: Churn,
}

/// What a worker writes to stdout, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkerMessage {
    /// Tokens minted; waiting for `connect`.
    Ready,
    Progress(Progress),
    Report(Box<WorkerReport>),
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Connections with the welcome (or authresponse) received.
    pub authenticated: u64,
    /// Connections subscribed, with their initial count received.
    pub subscribed: u64,
    pub failed: u64,
    /// Counts above 0 received.
    pub pushes: u64,
    /// Resuming clients only.
    #[serde(default)]
    pub streams: StreamProgress,
    /// Churning clients only.
    #[serde(default)]
    pub churn: ChurnProgress,
}

impl Progress {
    /// Both added up.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            authenticated: self.authenticated + other.authenticated,
            subscribed: self.subscribed + other.subscribed,
            failed: self.failed + other.failed,
            pushes: self.pushes + other.pushes,
            streams: self.streams.plus(&other.streams),
            churn: self.churn.plus(&other.churn),
        }
    }
}

/// How far resuming clients ([`Events::Resumed`]) are, over a worker's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    /// Clients that received at least one event: they have a position to resume from.
    pub positioned: u64,
    /// Clients whose connection dropped at least once.
    pub dropped: u64,
    /// Clients subscribed again after their first drop.
    pub resubscribed: u64,
    /// Event frames received.
    pub events: u64,
    /// Resubscriptions answered `reset` (the window no longer covered the position).
    pub resets: u64,
    /// Events a client never got: offsets skipped past its last one.
    pub gaps: u64,
    /// Events a client got again: at or below its last offset.
    pub repeats: u64,
    /// Events under another epoch than the client's last one.
    pub epoch_changes: u64,
}

impl StreamProgress {
    /// Both added up.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            positioned: self.positioned + other.positioned,
            dropped: self.dropped + other.dropped,
            resubscribed: self.resubscribed + other.resubscribed,
            events: self.events + other.events,
            resets: self.resets + other.resets,
            gaps: self.gaps + other.gaps,
            repeats: self.repeats + other.repeats,
            epoch_changes: self.epoch_changes + other.epoch_changes,
        }
    }
}

/// What one resuming client saw of its connection dropping and coming back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientRecovery {
    pub user: u64,
    /// Unix microseconds of its first drop; 0: it never dropped.
    pub dropped_us: u64,
    /// The offset of the last event it had at its first drop (0: none).
    pub from_offset: u64,
    /// Connection attempts after the first drop, the one that held included.
    pub attempts: u32,
    /// Unix microseconds its last resubscription was confirmed; 0: none was.
    pub resubscribed_us: u64,
    /// The `missed` the edge announced, over its resubscriptions.
    pub missed: u64,
    /// A resubscription was answered `reset`.
    pub reset: bool,
    /// (offset, Unix microseconds) of the events received after the first drop, the
    /// first [`MAX_RECORDED_AFTER_DROP`] of them.
    pub received: Vec<(u64, u64)>,
}

/// Events a resuming client records after its drop: well past the few a user has
/// while its edge restarts (at 5000/s over 10000 users, one per user every 2 s).
pub const MAX_RECORDED_AFTER_DROP: usize = 256;

/// A worker's final report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub progress: Progress,
    /// Unix microseconds when `connect` was received, when the last connection was
    /// authenticated and subscribed, and of the first and last push.
    pub connect_started_us: u64,
    pub last_authenticated_us: u64,
    pub last_subscribed_us: u64,
    pub first_push_us: u64,
    pub last_push_us: u64,
    /// Failures by message, at most a few kinds.
    pub errors: Vec<(String, u64)>,
    /// Push latency in microseconds as (value, count) pairs (`CountIsSendTime`).
    pub latency_us: Vec<(u64, u64)>,
    /// Connect start to welcome/authresponse, microseconds, as (value, count) pairs.
    pub handshake_us: Vec<(u64, u64)>,
    /// (user, count, Unix microseconds) of every push (`Receipts`).
    pub receipts: Vec<(u64, u64, u64)>,
    /// Every resuming client's recovery ([`Events::Resumed`]).
    #[serde(default)]
    pub recoveries: Vec<ClientRecovery>,
    /// Churning clients' final state ([`Churn`]).
    #[serde(default)]
    pub churn: ChurnReport,
}

/// Histograms span 1 µs to 10 minutes at 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

/// A histogram as (value, count) pairs, the form workers report.
pub fn histogram_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|value| (value.value_iterated_to(), value.count_at_value()))
        .collect()
}

/// Kinds of failure a worker reports; more are counted as failed, not named.
const MAX_ERROR_KINDS: usize = 8;

/// Adds `count` failures of kind `error` to (kind, count) pairs; a new kind only while
/// there are fewer than `max_kinds`.
pub fn tally_error(errors: &mut Vec<(String, u64)>, error: &str, count: u64, max_kinds: usize) {
    if let Some(entry) = errors.iter_mut().find(|(known, _)| known == error) {
        entry.1 += count;
    } else if errors.len() < max_kinds {
        errors.push((error.to_owned(), count));
    }
}

#[derive(Default)]
struct Shared {
    authenticated: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    pushes: AtomicU64,
    last_authenticated_us: AtomicU64,
    last_subscribed_us: AtomicU64,
    first_push_us: AtomicU64,
    last_push_us: AtomicU64,
    errors: Mutex<Vec<(String, u64)>>,
    latency: Mutex<Option<Histogram<u64>>>,
    handshake: Mutex<Option<Histogram<u64>>>,
    receipts: Mutex<Vec<(u64, u64, u64)>>,
    streams: StreamCounters,
    /// Each resuming client's recovery, written by its task.
    recoveries: Mutex<Vec<Arc<Mutex<ClientRecovery>>>>,
    churn: churn::ChurnState,
}

/// [`StreamProgress`], counted as it happens.
#[derive(Default)]
struct StreamCounters {
    positioned: AtomicU64,
    dropped: AtomicU64,
    resubscribed: AtomicU64,
    events: AtomicU64,
    resets: AtomicU64,
    gaps: AtomicU64,
    repeats: AtomicU64,
    epoch_changes: AtomicU64,
}

impl StreamCounters {
    fn read(&self) -> StreamProgress {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StreamProgress {
            positioned: read(&self.positioned),
            dropped: read(&self.dropped),
            resubscribed: read(&self.resubscribed),
            events: read(&self.events),
            resets: read(&self.resets),
            gaps: read(&self.gaps),
            repeats: read(&self.repeats),
            epoch_changes: read(&self.epoch_changes),
        }
    }

    fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}

impl Shared {
    fn progress(&self) -> Progress {
        Progress {
            authenticated: self.authenticated.load(Ordering::Relaxed),
            subscribed: self.subscribed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            streams: self.streams.read(),
            churn: self.churn.progress(),
        }
    }

    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        tally_error(&mut errors, &error, 1, MAX_ERROR_KINDS);
    }

    fn record(histogram: &Mutex<Option<Histogram<u64>>>, value: u64) {
        let mut histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(histogram) = histogram.as_mut() {
            histogram.saturating_record(value.max(1));
        }
    }

    fn push_received(&self, latency: LatencySource, user: u64, count: u64) {
        let now = unix_micros();
        self.pushes.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .first_push_us
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_push_us.fetch_max(now, Ordering::Relaxed);
        match latency {
            LatencySource::CountIsSendTime => {
                Self::record(&self.latency, now.saturating_sub(count));
            }
            LatencySource::Receipts => self
                .receipts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((user, count, now)),
        }
    }
}

fn emit(message: &WorkerMessage) {
    if let Ok(line) = serde_json::to_string(message) {
        println!("{line}");
    }
}

/// Runs a worker until its stdin says `finish` (or closes).
pub async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    anyhow::ensure!(!spec.edge_urls.is_empty(), "no edge URL");
    anyhow::ensure!(!spec.source_addresses.is_empty(), "no source address");
    super::system::raise_open_file_limit();
    let edges = spec
        .edge_urls
        .iter()
        .map(|url| edge_address(url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tokens = Vec::with_capacity(usize::try_from(spec.connections).unwrap_or(0));
    for index in 0..spec.connections {
        let user = format!("{}{}", spec.user_prefix, spec.first_user + index);
        tokens.push(fanout_app::tools::mint_token(
            &spec.secret,
            &user,
            Duration::from_secs(24 * 3600),
            None,
            None,
        )?);
    }
    let shared = Arc::new(Shared {
        latency: Mutex::new(Some(new_histogram()?)),
        handshake: Mutex::new(Some(new_histogram()?)),
        ..Shared::default()
    });
    emit(&WorkerMessage::Ready);

    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut connect_started_us = 0;
    let mut reporter: Option<tokio::task::JoinHandle<()>> = None;
    let mut schedule: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(command) = commands.next_line().await? {
        match command.trim() {
            "connect" if connect_started_us == 0 => {
                connect_started_us = unix_micros();
                let tokens = std::mem::take(&mut tokens);
                match spec.churn {
                    Churn::Off => start_clients(&spec, &edges, tokens, &shared),
                    churn => schedule = churn::start(&spec, &edges, tokens, &shared, churn),
                }
                let shared = shared.clone();
                reporter = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        tick.tick().await;
                        emit(&WorkerMessage::Progress(shared.progress()));
                    }
                }));
            }
            // Soak: no more reconnections, so that every client is connected at the end.
            "quiesce" => {
                if let Some(schedule) = schedule.take() {
                    schedule.abort();
                }
            }
            "finish" => break,
            _ => {}
        }
    }
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    let take = |histogram: &Mutex<Option<Histogram<u64>>>| {
        histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|histogram| histogram_pairs(&histogram))
            .unwrap_or_default()
    };
    let report = WorkerReport {
        progress: shared.progress(),
        connect_started_us,
        last_authenticated_us: shared.last_authenticated_us.load(Ordering::Relaxed),
        last_subscribed_us: shared.last_subscribed_us.load(Ordering::Relaxed),
        first_push_us: shared.first_push_us.load(Ordering::Relaxed),
        last_push_us: shared.last_push_us.load(Ordering::Relaxed),
        errors: std::mem::take(&mut *shared.errors.lock().unwrap_or_else(PoisonError::into_inner)),
        latency_us: take(&shared.latency),
        handshake_us: take(&shared.handshake),
        receipts: std::mem::take(
            &mut *shared
                .receipts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ),
        recoveries: shared
            .recoveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|recovery| {
                recovery
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .collect(),
        churn: shared.churn.report(),
    };
    emit(&WorkerMessage::Report(Box::new(report)));
    Ok(())
}

/// `ws://host:port` (any path is ignored) to a socket address.
fn edge_address(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = url::Url::parse(url).with_context(|| format!("edge URL {url}"))?;
    let addresses = parsed
        .socket_addrs(|| Some(80))
        .with_context(|| format!("resolving {url}"))?;
    addresses
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{url} has no IPv4 address"))
}

fn start_clients(
    spec: &WorkerSpec,
    edges: &[SocketAddr],
    tokens: Vec<String>,
    shared: &Arc<Shared>,
) {
    let permits = if spec.connect_concurrency == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        spec.connect_concurrency
    };
    let setup = Arc::new(tokio::sync::Semaphore::new(permits));
    let spec = Arc::new(spec.clone());
    for (index, token) in (0_u64..).zip(tokens) {
        let user_index = spec.first_user + index;
        let edge = edges[usize::try_from(user_index).unwrap_or(0) % edges.len()];
        let source_slot = usize::try_from(index / spec.per_source_address.max(1)).unwrap_or(0);
        let source = spec.source_addresses[source_slot % spec.source_addresses.len()];
        let recovery = (spec.events == Events::Resumed).then(|| {
            let recovery = Arc::new(Mutex::new(ClientRecovery {
                user: user_index,
                ..ClientRecovery::default()
            }));
            shared
                .recoveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(recovery.clone());
            recovery
        });
        let shared = shared.clone();
        let setup = setup.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let client = Client {
                spec: &spec,
                shared: &shared,
                user_index,
                edge,
                source,
            };
            let run = match recovery {
                Some(recovery) => client.run_resuming(token, &setup, &recovery).await,
                None => client.run(token, &setup).await,
            };
            if let Err(error) = run {
                shared.fail(error);
            }
        });
    }
}

struct Client<'a> {
    spec: &'a WorkerSpec,
    shared: &'a Shared,
    user_index: u64,
    edge: SocketAddr,
    source: Ipv4Addr,
}

const SUBSCRIBE: &str =
    r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
const SUBSCRIBE_EVENTS_CABLE: &str =
    r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\"}"}"#;
const SUBSCRIBE_EVENTS_REALTIME: &str = r#"{"type":"subscribe_events"}"#;
/// Longest a connection may take to be subscribed; and a resuming client, to be
/// subscribed again after a drop.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// A resuming client's reconnection delays: before attempt n (0, 1, ...) a uniformly
/// random wait below `RECONNECT_BASE · 2^n`, at most `RECONNECT_MAX` ("full jitter", as
/// browser clients such as centrifuge-js do), so that 10000 dropped clients do not
/// return at once.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A connection set up and subscribed.
struct SetUp {
    socket: Socket,
    /// The events subscription's reply (empty without events).
    reply: String,
    /// The last count the edge sent during the setup: the user's count then.
    count: u64,
}

/// Which connection of a client a setup makes.
#[derive(Debug, Clone, Copy)]
enum Attempt<'a> {
    /// Its first: counted as authenticated, its handshake latency measured.
    First { started_us: u64 },
    /// A resuming client's next, resubscribing after this position (`None`: it had no
    /// event yet).
    Again { since: Option<&'a StreamPosition> },
}

/// Where a resuming client is in its user's stream: the epoch, as the frames spell
/// it, and the offset of the last event received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamPosition {
    epoch: String,
    offset: u64,
}

/// What one more event was to the position before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The client's first event.
    First,
    /// The next offset.
    Next,
    /// Offsets skipped: events never received.
    Gap(u64),
    /// At or below the last offset: received before.
    Repeat,
    /// Under another epoch.
    NewEpoch,
}

/// Moves `position` on by an event at `(epoch, offset)`; a repeat leaves it.
fn step(position: &mut Option<StreamPosition>, epoch: &str, offset: u64) -> Step {
    match position {
        None => {
            *position = Some(StreamPosition {
                epoch: epoch.to_owned(),
                offset,
            });
            Step::First
        }
        Some(last) if last.epoch == epoch => {
            if offset <= last.offset {
                return Step::Repeat;
            }
            let skipped = offset - last.offset - 1;
            last.offset = offset;
            if skipped == 0 {
                Step::Next
            } else {
                Step::Gap(skipped)
            }
        }
        Some(last) => {
            last.epoch = epoch.to_owned();
            last.offset = offset;
            Step::NewEpoch
        }
    }
}

/// The delay before reconnection attempt `attempt`, `unit` a uniform draw in [0, 1).
fn reconnect_delay(attempt: u32, unit: f64) -> Duration {
    let ceiling = RECONNECT_BASE
        .saturating_mul(1_u32 << attempt.min(16))
        .min(RECONNECT_MAX);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

impl Client<'_> {
    /// The first connection: set up (under `setup`, which bounds how many connect at
    /// once) and subscribed, counted as such.
    async fn subscribe_first(
        &self,
        token: &str,
        setup: &tokio::sync::Semaphore,
    ) -> Result<SetUp, String> {
        let permit = setup.acquire().await.map_err(|error| error.to_string())?;
        let started_us = unix_micros();
        // Boxed, and gone once set up: a task is as large as its future's largest
        // state for its whole life, and the setup's (the upgrade's request and
        // response) is several times what a connection keeps to read its frames.
        let setup_future = Box::pin(self.setup(token, Attempt::First { started_us }));
        let set_up = tokio::time::timeout(SETUP_TIMEOUT, setup_future)
            .await
            .map_err(|_| "setup timed out".to_owned())??;
        drop(permit);
        self.shared.subscribed.fetch_add(1, Ordering::Relaxed);
        self.shared
            .last_subscribed_us
            .fetch_max(unix_micros(), Ordering::Relaxed);
        Ok(set_up)
    }

    async fn run(&self, token: String, setup: &tokio::sync::Semaphore) -> Result<(), String> {
        let mut socket = self.subscribe_first(&token, setup).await?.socket;
        // Not needed again: held for the connection's life, it would be a few hundred
        // bytes a connection.
        drop(token);
        while let Some(frame) = socket.next().await {
            match frame.map_err(|error| format!("read: {error}"))? {
                Message::Text(text) => {
                    let measured = if is_event(text.as_str()) {
                        (self.spec.events == Events::Measured)
                            .then(|| event_unread_count(text.as_str()))
                            .flatten()
                    } else if self.spec.events == Events::Measured {
                        None
                    } else {
                        unread_count(text.as_str())
                    };
                    if let Some(count) = measured
                        && count > 0
                    {
                        self.shared
                            .push_received(self.spec.latency, self.user_index, count);
                    } else if text.as_str().contains(r#""disconnect""#) {
                        return Err("disconnected by the edge".to_owned());
                    }
                }
                Message::Close(_) => return Err("closed by the edge".to_owned()),
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Err("connection ended".to_owned())
    }

    /// A resuming client: subscribes, then reads its events, checking each position;
    /// each time its connection drops, connects and resubscribes from the last position
    /// it has, and notes in `recovery` what came after its first drop.
    async fn run_resuming(
        &self,
        token: String,
        setup: &tokio::sync::Semaphore,
        recovery: &Mutex<ClientRecovery>,
    ) -> Result<(), String> {
        let mut socket = self.subscribe_first(&token, setup).await?.socket;
        let mut position = None;
        let mut positioned = false;
        let mut dropped = false;
        loop {
            let after_drop = dropped.then_some(recovery);
            self.read_events(&mut socket, &mut position, &mut positioned, after_drop)
                .await?;
            drop(socket);
            if !dropped {
                dropped = true;
                StreamCounters::add(&self.shared.streams.dropped, 1);
                let mut recovery = recovery.lock().unwrap_or_else(PoisonError::into_inner);
                recovery.dropped_us = unix_micros();
                recovery.from_offset = position
                    .as_ref()
                    .map_or(0, |position: &StreamPosition| position.offset);
            }
            let SetUp {
                socket: again,
                reply,
                ..
            } = self.reconnect(position.as_ref(), recovery).await?;
            socket = again;
            let mut recovery = recovery.lock().unwrap_or_else(PoisonError::into_inner);
            if recovery.resubscribed_us == 0 {
                StreamCounters::add(&self.shared.streams.resubscribed, 1);
            }
            recovery.resubscribed_us = unix_micros();
            recovery.missed += count_field(&reply, "missed").unwrap_or(0);
            if reply.contains(r#""recovery":"reset""#) {
                // The client must fetch its state afresh; it takes the stream from the
                // next event on.
                recovery.reset = true;
                position = None;
                StreamCounters::add(&self.shared.streams.resets, 1);
            }
        }
    }

    /// Reads a resuming client's frames until its connection ends, moving `position`
    /// on with each event (`positioned` once it had one); after the first drop,
    /// `recovery` records each event.
    async fn read_events(
        &self,
        socket: &mut Socket,
        position: &mut Option<StreamPosition>,
        positioned: &mut bool,
        recovery: Option<&Mutex<ClientRecovery>>,
    ) -> Result<(), String> {
        let streams = &self.shared.streams;
        while let Some(frame) = socket.next().await {
            let Ok(frame) = frame else {
                // A read error is a dropped connection, as a close is.
                return Ok(());
            };
            match frame {
                Message::Text(text) => {
                    let text = text.as_str();
                    if let Some((epoch, offset)) = event_position(text) {
                        StreamCounters::add(&streams.events, 1);
                        match step(position, epoch, offset) {
                            Step::First if !*positioned => {
                                *positioned = true;
                                StreamCounters::add(&streams.positioned, 1);
                            }
                            // After a reset: the client starts over from this event.
                            Step::First | Step::Next => {}
                            Step::Gap(skipped) => StreamCounters::add(&streams.gaps, skipped),
                            Step::Repeat => StreamCounters::add(&streams.repeats, 1),
                            Step::NewEpoch => StreamCounters::add(&streams.epoch_changes, 1),
                        }
                        if let Some(recovery) = recovery {
                            let mut recovery =
                                recovery.lock().unwrap_or_else(PoisonError::into_inner);
                            if recovery.received.len() < MAX_RECORDED_AFTER_DROP {
                                recovery.received.push((offset, unix_micros()));
                            }
                        }
                    } else if text.contains(r#""type":"events_ended""#) {
                        return Err("event stream ended by the edge".to_owned());
                    }
                }
                Message::Close(_) => return Ok(()),
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(())
    }

    /// Connects again after a drop, with backoff and a fresh token, until subscribed
    /// from `since` or [`SETUP_TIMEOUT`] passed; returns the socket and the edge's
    /// `subscribed` reply.
    async fn reconnect(
        &self,
        since: Option<&StreamPosition>,
        recovery: &Mutex<ClientRecovery>,
    ) -> Result<SetUp, String> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        let user = format!("{}{}", self.spec.user_prefix, self.user_index);
        let mut attempt = 0;
        loop {
            let delay = reconnect_delay(attempt, rand::random::<f64>());
            tokio::time::sleep(delay).await;
            attempt += 1;
            recovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .attempts = attempt;
            let token = fanout_app::tools::mint_token(
                &self.spec.secret,
                &user,
                Duration::from_secs(24 * 3600),
                None,
                None,
            )
            .map_err(|error| format!("minting a token: {error}"))?;
            // Boxed as the first setup is (see `subscribe_first`).
            let setup = Box::pin(self.setup(&token, Attempt::Again { since }));
            match tokio::time::timeout_at(deadline, setup).await {
                Ok(Ok(subscribed)) => return Ok(subscribed),
                // Refused, reset or cut off while the edge restarts: try again.
                Ok(Err(error)) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("reconnecting: {error}"));
                }
                Ok(Err(_)) => {}
                Err(_) => return Err("reconnecting timed out".to_owned()),
            }
        }
    }

    /// Connects, upgrades, authenticates and subscribes; returns once the initial count
    /// arrived (and with events, once they are subscribed, with the reply).
    async fn setup(&self, token: &str, attempt: Attempt<'_>) -> Result<SetUp, String> {
        let socket = TcpSocket::new_v4().map_err(|error| format!("socket: {error}"))?;
        socket
            .bind(SocketAddr::new(self.source.into(), 0))
            .map_err(|error| format!("bind {}: {error}", self.source))?;
        let stream = socket
            .connect(self.edge)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let _ = stream.set_nodelay(true);
        let url = match self.spec.protocol {
            Protocol::Cable => format!(
                "ws://{}/cable?jwt={token}&partner={}",
                self.edge, self.spec.partner
            ),
            Protocol::Realtime => format!("ws://{}/realtime", self.edge),
        };
        let mut request = url
            .into_client_request()
            .map_err(|error| format!("request: {error}"))?;
        if self.spec.protocol == Protocol::Cable {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("actioncable-v1-json"),
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut socket, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|error| format!("upgrade: {error}"))?;
        if self.spec.protocol == Protocol::Realtime {
            let auth = serde_json::json!({
                "type": "authrequest",
                "token": token,
                "partner": self.spec.partner,
            });
            send_text(&mut socket, auth.to_string()).await?;
        }
        let mut authenticated = false;
        let mut counted = false;
        let mut count = 0;
        while let Some(frame) = socket.next().await {
            let Message::Text(text) = frame.map_err(|error| format!("read: {error}"))? else {
                continue;
            };
            let text = text.as_str();
            if !authenticated {
                let welcomed = match self.spec.protocol {
                    Protocol::Cable => text.contains(r#""welcome""#),
                    Protocol::Realtime => {
                        text.contains(r#""authresponse""#) && text.contains(r#""success":true"#)
                    }
                };
                if welcomed {
                    authenticated = true;
                    if let Attempt::First { started_us } = attempt {
                        let now = unix_micros();
                        self.shared.authenticated.fetch_add(1, Ordering::Relaxed);
                        self.shared
                            .last_authenticated_us
                            .fetch_max(now, Ordering::Relaxed);
                        Shared::record(&self.shared.handshake, now.saturating_sub(started_us));
                    }
                    if self.spec.protocol == Protocol::Cable {
                        send_text(&mut socket, SUBSCRIBE.to_owned()).await?;
                    }
                    continue;
                }
                if text.contains("unauthorized") || text.contains(r#""success":false"#) {
                    return Err("unauthorized".to_owned());
                }
                continue;
            }
            let pushed = unread_count(text);
            if let Some(pushed) = pushed {
                count = pushed;
            }
            if !counted && pushed.is_some() {
                if self.spec.events == Events::Off {
                    return Ok(SetUp {
                        socket,
                        reply: String::new(),
                        count,
                    });
                }
                counted = true;
                let subscribe = match (self.spec.protocol, attempt) {
                    (Protocol::Cable, _) => SUBSCRIBE_EVENTS_CABLE.to_owned(),
                    (Protocol::Realtime, Attempt::Again { since: Some(since) }) => {
                        serde_json::json!({
                            "type": "subscribe_events",
                            "since": {"epoch": since.epoch, "offset": since.offset},
                        })
                        .to_string()
                    }
                    (Protocol::Realtime, _) => SUBSCRIBE_EVENTS_REALTIME.to_owned(),
                };
                send_text(&mut socket, subscribe).await?;
                continue;
            }
            let events_confirmed = match self.spec.protocol {
                Protocol::Cable => {
                    text.contains("confirm_subscription") && text.contains("RoomChannel")
                }
                Protocol::Realtime => text.contains(r#""type":"subscribed""#),
            };
            if counted && events_confirmed {
                return Ok(SetUp {
                    socket,
                    reply: text.to_owned(),
                    count,
                });
            }
            if text.contains("reject_subscription") {
                return Err("subscription rejected".to_owned());
            }
            if counted && text.contains(r#""type":"error""#) {
                return Err(format!("subscription refused: {text}"));
            }
        }
        Err("connection ended during setup".to_owned())
    }
}

async fn send_text(socket: &mut Socket, text: String) -> Result<(), String> {
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|error| format!("send: {error}"))
}

/// The count of an `unread_count` frame of either protocol, without a JSON parse: the
/// clients share the machine with the edge, so they stay cheap.
fn unread_count(frame: &str) -> Option<u64> {
    if !frame.contains(r#""unread_count""#) {
        return None;
    }
    let (_, after) = frame.split_once(r#""count":"#)?;
    let digits = after
        .find(|character: char| !character.is_ascii_digit())
        .map_or(after, |end| &after[..end]);
    digits.parse().ok()
}

/// The epoch and offset of a `/realtime` `event` frame (its last two fields), without
/// a JSON parse.
fn event_position(frame: &str) -> Option<(&str, u64)> {
    if !frame.starts_with(r#"{"type":"event","#) {
        return None;
    }
    let (_, after) = frame.rsplit_once(r#""epoch":""#)?;
    let (epoch, rest) = after.split_once('"')?;
    Some((epoch, count_field(rest, "offset")?))
}

/// The last `"name":N` of a frame, N a whole number.
fn count_field(frame: &str, name: &str) -> Option<u64> {
    let (_, after) = frame.rsplit_once(&format!(r#""{name}":"#))?;
    let digits = after
        .find(|character: char| !character.is_ascii_digit())
        .map_or(after, |end| &after[..end]);
    digits.parse().ok()
}

/// Whether a frame of either protocol is a `message.created` stream event.
fn is_event(frame: &str) -> bool {
    frame.contains(r#""event":"message.created""#)
}

/// The `unread_count` a stream event carries (the user's count after it).
fn event_unread_count(frame: &str) -> Option<u64> {
    let (_, after) = frame.rsplit_once(r#""unread_count":"#)?;
    let digits = after
        .find(|character: char| !character.is_ascii_digit())
        .map_or(after, |end| &after[..end]);
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_told_from_counts_and_read_on_both_protocols() {
        let realtime = r#"{"type":"event","event":"message.created","data":{"text":""unread_count":9"},"conversation_id":"g","seq":3,"unread_count":3,"epoch":"7","offset":3}"#;
        let cable = r#"{"identifier":"{"channel":"RoomChannel"}","message":{"event":"message.created","data":{},"unread_count":12,"epoch":"7","offset":12}}"#;
        assert!(is_event(realtime) && is_event(cable));
        assert_eq!(event_unread_count(realtime), Some(3));
        assert_eq!(event_unread_count(cable), Some(12));
        assert!(!is_event(&fanout_protocol_frames::cable()));
    }

    #[test]
    fn counts_are_read_from_both_protocols() {
        let cable = fanout_protocol_frames::cable();
        assert_eq!(unread_count(&cable), Some(42));
        assert_eq!(
            unread_count(r#"{"type":"unread_count","count":7}"#),
            Some(7)
        );
        assert_eq!(
            unread_count(r#"{"type":"unread_count","count":1700000000000000,"id":3}"#),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(unread_count(r#"{"type":"ping","message":17}"#), None);
    }

    #[test]
    fn event_positions_are_read_from_realtime_event_frames_only() {
        let event = r#"{"type":"event","event":"bench.storm","data":{"text":"\"epoch\":\"9-0\",\"offset\":99"},"unread_count":0,"epoch":"1700000000000042-0a1b2c3d","offset":17}"#;
        assert_eq!(
            event_position(event),
            Some(("1700000000000042-0a1b2c3d", 17))
        );
        let reply = r#"{"type":"subscribed","recovery":"resumed","missed":3,"id":2}"#;
        assert_eq!(event_position(reply), None);
        assert_eq!(count_field(reply, "missed"), Some(3));
        assert_eq!(count_field(reply, "offset"), None);
    }

    #[test]
    fn each_event_is_the_next_a_gap_a_repeat_or_a_new_epoch() {
        let mut position = None;
        assert_eq!(step(&mut position, "1-a", 4), Step::First);
        assert_eq!(step(&mut position, "1-a", 5), Step::Next);
        assert_eq!(step(&mut position, "1-a", 5), Step::Repeat);
        assert_eq!(step(&mut position, "1-a", 3), Step::Repeat);
        assert_eq!(step(&mut position, "1-a", 8), Step::Gap(2));
        assert_eq!(step(&mut position, "1-a", 9), Step::Next);
        assert_eq!(step(&mut position, "2-a", 1), Step::NewEpoch);
        assert_eq!(step(&mut position, "2-a", 2), Step::Next);
        assert_eq!(
            position,
            Some(StreamPosition {
                epoch: "2-a".to_owned(),
                offset: 2
            })
        );
    }

    #[test]
    fn reconnection_delays_grow_to_a_ceiling_with_full_jitter() {
        assert_eq!(reconnect_delay(0, 0.0), Duration::ZERO);
        assert_eq!(reconnect_delay(0, 0.5), Duration::from_millis(250));
        assert_eq!(reconnect_delay(2, 0.5), Duration::from_secs(1));
        assert_eq!(reconnect_delay(10, 0.5), RECONNECT_MAX / 2);
        assert_eq!(reconnect_delay(u32::MAX, 1.0), RECONNECT_MAX);
    }

    mod fanout_protocol_frames {
        pub fn cable() -> String {
            r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","message":{"type":"unread_count","count":42}}"#
                .to_owned()
        }
    }
}
