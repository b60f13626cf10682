//! Clients whose connections come and go over a run ([`Churn`]).
//!
//! - `soak`'s ([`Churn::Reconnect`]): each client subscribes (to counts; a stream
//!   client on `/realtime` to its events too), follows its user's count and stream
//!   position, and when the worker's schedule picks it (a fraction of the worker's
//!   clients a minute, spread evenly) closes its connection and connects again with a
//!   fresh token, resuming its stream from the last position it has. At the end it
//!   reports its last count and the first and last offset it received, for the bench to
//!   compare with its own recount.
//! - `overload`'s ([`Churn::Refused`]): each client connects again and again to an edge
//!   that is at its `max_connections`, and times how long the edge takes to refuse it
//!   (HTTP 503, the documented answer, on both protocols).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, http};

use super::{
    Attempt, Client, Events, MAX_ERROR_KINDS, Protocol, SETUP_TIMEOUT, SetUp, Shared, Socket, Step,
    StreamCounters, StreamPosition, WorkerSpec, event_position, reconnect_delay, step, tally_error,
    unread_count,
};

/// What a worker's clients do besides holding their connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Churn {
    /// Nothing: the other scenarios.
    #[default]
    Off,
    /// `soak`: this fraction of the worker's clients reconnects each minute (picked at
    /// random, one at a time, evenly spread), and every client reports its last count
    /// and stream offsets.
    Reconnect { fraction_per_minute: f64 },
    /// `overload`: each client connects again and again, a uniformly random wait below
    /// `retry_max_ms` between attempts, expecting to be refused.
    Refused { retry_max_ms: u64 },
}

/// How far a worker's churning clients are (in [`super::Progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChurnProgress {
    /// Connections set up and not dropped since.
    pub connected: u64,
    /// Connections closed because the schedule picked them.
    pub reconnects: u64,
    /// Connections the edge or the network ended without the schedule asking.
    pub unexpected_drops: u64,
    /// Stream events received (soak's stream clients).
    pub events: u64,
    /// Attempts refused with HTTP 503 (overload).
    pub refused: u64,
    /// Attempts upgraded instead of refused (overload: the edge let more in than its
    /// limit).
    pub accepted: u64,
    /// Attempts that ended any other way (overload).
    pub other: u64,
}

impl ChurnProgress {
    /// Both added up.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            connected: self.connected + other.connected,
            reconnects: self.reconnects + other.reconnects,
            unexpected_drops: self.unexpected_drops + other.unexpected_drops,
            events: self.events + other.events,
            refused: self.refused + other.refused,
            accepted: self.accepted + other.accepted,
            other: self.other + other.other,
        }
    }
}

/// What a worker's churning clients report at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    /// `Reconnect`: (user, the last count it received) of every client.
    pub final_counts: Vec<(u64, u64)>,
    /// `Reconnect`, stream clients: (user, first offset, last offset) of the events it
    /// received (0 for none).
    pub stream_offsets: Vec<(u64, u64, u64)>,
    /// `Refused`: microseconds from the start of an attempt (before its TCP connect)
    /// to the refusal, as (value, count) pairs.
    pub refused_us: Vec<(u64, u64)>,
    /// `Refused`: attempts that ended other than in a refusal, by kind.
    pub other: Vec<(String, u64)>,
}

/// What churning clients share with their worker.
#[derive(Default)]
pub(super) struct ChurnState {
    connected: AtomicU64,
    reconnects: AtomicU64,
    unexpected_drops: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
    accepted: AtomicU64,
    other: AtomicU64,
    clients: std::sync::Mutex<Vec<Arc<ChurnClient>>>,
    refusals: std::sync::Mutex<Option<Histogram<u64>>>,
    other_kinds: std::sync::Mutex<Vec<(String, u64)>>,
}

impl ChurnState {
    pub(super) fn progress(&self) -> ChurnProgress {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ChurnProgress {
            connected: read(&self.connected),
            reconnects: read(&self.reconnects),
            unexpected_drops: read(&self.unexpected_drops),
            events: read(&self.events),
            refused: read(&self.refused),
            accepted: read(&self.accepted),
            other: read(&self.other),
        }
    }

    /// The report, once the clients are told to finish.
    pub(super) fn report(&self) -> ChurnReport {
        let clients = lock(&self.clients);
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ChurnReport {
            final_counts: clients
                .iter()
                .map(|client| (client.user, read(&client.count)))
                .collect(),
            stream_offsets: clients
                .iter()
                .filter(|client| client.stream)
                .map(|client| {
                    (
                        client.user,
                        read(&client.first_offset),
                        read(&client.last_offset),
                    )
                })
                .collect(),
            refused_us: lock(&self.refusals)
                .as_ref()
                .map(super::histogram_pairs)
                .unwrap_or_default(),
            other: lock(&self.other_kinds).clone(),
        }
    }

    fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    fn other_outcome(&self, kind: String) {
        Self::add(&self.other, 1);
        tally_error(&mut lock(&self.other_kinds), &kind, 1, MAX_ERROR_KINDS);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One soak client as the worker and its schedule see it.
struct ChurnClient {
    user: u64,
    stream: bool,
    count: AtomicU64,
    first_offset: AtomicU64,
    last_offset: AtomicU64,
    /// The schedule's "reconnect now".
    wake: tokio::sync::Notify,
}

/// Starts the worker's clients as `churn` says, with `tokens` (one per client); returns
/// the reconnection schedule's task, if there is one (aborted to stop reconnecting).
pub(super) fn start(
    spec: &WorkerSpec,
    edges: &[std::net::SocketAddr],
    tokens: Vec<String>,
    shared: &Arc<Shared>,
    churn: Churn,
) -> Option<tokio::task::JoinHandle<()>> {
    if let Ok(histogram) = super::new_histogram() {
        *lock(&shared.churn.refusals) = Some(histogram);
    }
    let permits = if spec.connect_concurrency == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        spec.connect_concurrency
    };
    let setup = Arc::new(tokio::sync::Semaphore::new(permits));
    let spec = Arc::new(spec.clone());
    let mut clients = Vec::with_capacity(tokens.len());
    for (index, token) in (0_u64..).zip(tokens) {
        let user_index = spec.first_user + index;
        let edge = edges[usize::try_from(user_index).unwrap_or(0) % edges.len()];
        let source_slot = usize::try_from(index / spec.per_source_address.max(1)).unwrap_or(0);
        let source = spec.source_addresses[source_slot % spec.source_addresses.len()];
        let state = Arc::new(ChurnClient {
            user: user_index,
            stream: spec.events != Events::Off,
            count: AtomicU64::new(0),
            first_offset: AtomicU64::new(0),
            last_offset: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        });
        clients.push(state.clone());
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
            let run = match churn {
                Churn::Refused { retry_max_ms } => {
                    client
                        .run_refused(&token, Duration::from_millis(retry_max_ms))
                        .await
                }
                Churn::Reconnect { .. } | Churn::Off => {
                    client.run_reconnecting(token, &setup, &state).await
                }
            };
            if let Err(error) = run {
                shared.fail(error);
            }
        });
    }
    *lock(&shared.churn.clients) = clients.clone();
    match churn {
        Churn::Reconnect {
            fraction_per_minute,
        } if fraction_per_minute > 0.0 && !clients.is_empty() => {
            let per_minute = fraction_per_minute * clients.len() as f64;
            let period = Duration::from_secs_f64(60.0 / per_minute);
            Some(tokio::spawn(schedule(clients, period)))
        }
        _ => None,
    }
}

/// Picks a client at random every `period` and tells it to reconnect.
async fn schedule(clients: Vec<Arc<ChurnClient>>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        let index = rand::random_range(0..clients.len());
        clients[index].wake.notify_one();
    }
}

/// How a connection of a soak client ended.
enum Ended {
    /// The schedule asked it to reconnect.
    Asked,
    /// The edge or the network ended it.
    Dropped,
}

/// How one attempt of an overload client ended.
enum Outcome {
    /// HTTP 503 to the upgrade, after this long.
    Refused(Duration),
    /// The upgrade succeeded.
    Accepted(Box<Socket>),
    /// Anything else.
    Other(String),
}

/// Longest an overload client's attempt may take before it counts as unanswered.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

impl Client<'_> {
    /// A soak client: subscribed, following its count and stream; reconnecting when
    /// asked, or when its connection ends, from the last position it has.
    async fn run_reconnecting(
        &self,
        token: String,
        setup: &tokio::sync::Semaphore,
        state: &ChurnClient,
    ) -> Result<(), String> {
        let churn = &self.shared.churn;
        let first = self.subscribe_first(&token, setup).await?;
        drop(token);
        state.count.store(first.count, Ordering::Relaxed);
        let mut socket = first.socket;
        let mut position: Option<StreamPosition> = None;
        loop {
            ChurnState::add(&churn.connected, 1);
            let ended = self.follow(&mut socket, &mut position, state).await;
            churn.connected.fetch_sub(1, Ordering::Relaxed);
            match ended {
                Ended::Asked => {
                    ChurnState::add(&churn.reconnects, 1);
                    // A clean close, as a page navigating away: the edge sees the
                    // close frame, not a reset.
                    let _ = socket.close(None).await;
                }
                Ended::Dropped => ChurnState::add(&churn.unexpected_drops, 1),
            }
            drop(socket);
            let again = self.connect_again(position.as_ref()).await?;
            if again.reply.contains(r#""recovery":"reset""#) {
                // The window lost what it missed: the stream is no longer exact, and
                // the bench reports it, with the edge's reason; the client goes on
                // from the next event.
                StreamCounters::add(&self.shared.streams.resets, 1);
                let last = position.as_ref().map_or(0, |position| position.offset);
                tally_error(
                    &mut lock(&self.shared.errors),
                    &format!("reset after offset {last}: {}", again.reply),
                    1,
                    MAX_ERROR_KINDS,
                );
                position = None;
            }
            state.count.store(again.count, Ordering::Relaxed);
            socket = again.socket;
        }
    }

    /// Reads a soak client's frames until the schedule wakes it or the connection ends.
    async fn follow(
        &self,
        socket: &mut Socket,
        position: &mut Option<StreamPosition>,
        state: &ChurnClient,
    ) -> Ended {
        loop {
            let frame = tokio::select! {
                () = state.wake.notified() => return Ended::Asked,
                frame = socket.next() => frame,
            };
            let Some(Ok(frame)) = frame else {
                return Ended::Dropped;
            };
            match frame {
                Message::Text(text) => {
                    let text = text.as_str();
                    if let Some((epoch, offset)) = event_position(text) {
                        self.stream_event(position, state, epoch, offset);
                    } else if let Some(count) = unread_count(text) {
                        state.count.store(count, Ordering::Relaxed);
                        self.shared.pushes.fetch_add(1, Ordering::Relaxed);
                    } else if text.contains(r#""type":"disconnect""#) {
                        return Ended::Dropped;
                    }
                }
                Message::Close(_) => return Ended::Dropped,
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn stream_event(
        &self,
        position: &mut Option<StreamPosition>,
        state: &ChurnClient,
        epoch: &str,
        offset: u64,
    ) {
        let streams = &self.shared.streams;
        ChurnState::add(&self.shared.churn.events, 1);
        StreamCounters::add(&streams.events, 1);
        match step(position, epoch, offset) {
            Step::First => {
                let _ = state.first_offset.compare_exchange(
                    0,
                    offset,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Step::Next => {}
            Step::Gap(skipped) => StreamCounters::add(&streams.gaps, skipped),
            Step::Repeat => StreamCounters::add(&streams.repeats, 1),
            Step::NewEpoch => StreamCounters::add(&streams.epoch_changes, 1),
        }
        if let Some(position) = position {
            state.last_offset.store(position.offset, Ordering::Relaxed);
        }
    }

    /// Connects again with a fresh token (backoff with full jitter between failed
    /// attempts), subscribed from `since`, within [`SETUP_TIMEOUT`].
    async fn connect_again(&self, since: Option<&StreamPosition>) -> Result<SetUp, String> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        let user = format!("{}{}", self.spec.user_prefix, self.user_index);
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                tokio::time::sleep(reconnect_delay(attempt, rand::random::<f64>())).await;
            }
            attempt += 1;
            let token = fanout_app::tools::mint_token(
                &self.spec.secret,
                &user,
                Duration::from_secs(24 * 3600),
                None,
                None,
            )
            .map_err(|error| format!("minting a token: {error}"))?;
            let setup = Box::pin(self.setup(&token, Attempt::Again { since }));
            match tokio::time::timeout_at(deadline, setup).await {
                Ok(Ok(set_up)) => return Ok(set_up),
                Ok(Err(error)) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("reconnecting: {error}"));
                }
                Ok(Err(_)) => {}
                Err(_) => return Err("reconnecting timed out".to_owned()),
            }
        }
    }

    /// An overload client: attempts until the worker finishes, each timed to its
    /// refusal.
    async fn run_refused(&self, token: &str, retry_max: Duration) -> Result<(), String> {
        let churn = &self.shared.churn;
        loop {
            match self.attempt(token).await {
                Outcome::Refused(took) => {
                    ChurnState::add(&churn.refused, 1);
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    if let Some(histogram) = lock(&churn.refusals).as_mut() {
                        histogram.saturating_record(micros.max(1));
                    }
                }
                Outcome::Accepted(socket) => {
                    ChurnState::add(&churn.accepted, 1);
                    let mut socket = *socket;
                    let _ = socket.close(None).await;
                }
                Outcome::Other(kind) => churn.other_outcome(kind),
            }
            tokio::time::sleep(retry_max.mul_f64(rand::random::<f64>())).await;
        }
    }

    /// One connection attempt up to the upgrade's answer.
    async fn attempt(&self, token: &str) -> Outcome {
        let started = Instant::now();
        let attempt = async {
            let socket = TcpSocket::new_v4().map_err(|error| format!("socket: {error}"))?;
            socket
                .bind(std::net::SocketAddr::new(self.source.into(), 0))
                .map_err(|error| format!("bind: {}", error.kind()))?;
            let stream = socket
                .connect(self.edge)
                .await
                .map_err(|error| format!("connect: {}", error.kind()))?;
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
            Ok::<_, String>(
                tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await,
            )
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Err(_) => Outcome::Other("no answer in 30 s".to_owned()),
            Ok(Err(error)) => Outcome::Other(error),
            Ok(Ok(Ok((socket, _response)))) => Outcome::Accepted(Box::new(socket)),
            Ok(Ok(Err(WsError::Http(response))))
                if response.status() == http::StatusCode::SERVICE_UNAVAILABLE =>
            {
                Outcome::Refused(started.elapsed())
            }
            Ok(Ok(Err(WsError::Http(response)))) => {
                Outcome::Other(format!("HTTP {}", response.status().as_u16()))
            }
            Ok(Ok(Err(error))) => Outcome::Other(format!("upgrade: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_reads_back_as_written() {
        for churn in [
            Churn::Off,
            Churn::Reconnect {
                fraction_per_minute: 0.01,
            },
            Churn::Refused { retry_max_ms: 200 },
        ] {
            let text = serde_json::to_string(&churn).unwrap_or_default();
            let read: Churn = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(read, churn, "{text}");
        }
    }
}
