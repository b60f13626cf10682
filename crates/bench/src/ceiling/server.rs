//! `fanout bench ceiling-server`: the ceiling's minimal server, a process of its own so
//! that its CPU time and write syscalls are only its own.
//!
//! It accepts WebSocket connections as the edge does (tokio-tungstenite, the same
//! buffer sizes, Nagle off) and makes the clients' setup as short as the protocol
//! allows: ActionCable's welcome, then the subscription confirmed and a count of 0;
//! or `/realtime`'s authresponse and a count of 0. No token is checked. On `push` it
//! writes count frames, each built once and shared by every connection it goes to:
//!
//! - push-rate: one frame at a time to one connection after another (round robin), at
//!   the rate of the spec for its duration; the count is when the frame was due (Unix
//!   microseconds), so a server that falls behind shows it in the latency. A count is
//!   state, as on the edge: a frame due to a connection that has a newer one due too is
//!   not written (coalesced), so a server behind by more than a round writes the newest
//!   round;
//! - group-message: one frame to every connection, the count when the round began.
//!
//! The connections are split over one writer task per core, each with its own share of
//! the rate; no task is woken per frame and nothing is queued: a frame is written when
//! it is due, and a full socket holds its writer up.
//!
//! It talks to the bench as a worker does: commands on stdin (`push <connections>`,
//! `finish`), JSON lines on stdout ([`ServerMessage`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_schema::unix_micros;
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::Pattern;
use crate::worker::Protocol;

/// What the server does; passed as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSpec {
    pub pattern: Pattern,
    pub protocol: Protocol,
    /// push-rate: frames per second over every connection (`None`: as fast as it
    /// writes).
    pub rate: Option<u64>,
    pub duration_seconds: f64,
}

/// What the server writes to stdout, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// Accepting on 127.0.0.1:`port`.
    Listening { port: u16 },
    /// A `push` is done: the frames it wrote, those that failed, and those coalesced.
    Pushed {
        frames: u64,
        failures: u64,
        coalesced: u64,
    },
    /// After `finish`: every frame written since the first `push`, and the socket
    /// writes made for them.
    Report {
        connections: u64,
        frames: u64,
        failures: u64,
        coalesced: u64,
        socket_writes: u64,
    },
}

/// ActionCable's subprotocol, which the client must see echoed.
const CABLE_SUBPROTOCOL: &str = "actioncable-v1-json";
const WELCOME: &str = r#"{"type":"welcome"}"#;
const CONFIRM: &str =
    r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#;
const AUTH_SUCCESS: &str = r#"{"type":"authresponse","success":true}"#;
/// A connection's setup may take this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames a writer writes between yields when the rate is unbounded.
const UNBOUNDED_BATCH: u64 = 256;

/// The count frame of a protocol, as the edge writes it: what comes before the count
/// and after it.
#[derive(Debug, Clone, Copy)]
struct CountFrame {
    before: &'static str,
    after: &'static str,
}

impl CountFrame {
    fn of(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Cable => Self {
                before: r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","message":{"type":"unread_count","count":"#,
                after: "}}",
            },
            Protocol::Realtime => Self {
                before: r#"{"type":"unread_count","count":"#,
                after: "}",
            },
        }
    }

    fn with_count(self, count: u64) -> Utf8Bytes {
        let digits = count.to_string();
        let mut frame = String::with_capacity(self.before.len() + digits.len() + self.after.len());
        frame.push_str(self.before);
        frame.push_str(&digits);
        frame.push_str(self.after);
        Utf8Bytes::from(frame)
    }
}

/// Runs the server until stdin says `finish` (or closes).
pub async fn run(spec: ServerSpec) -> anyhow::Result<()> {
    crate::system::raise_open_file_limit();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the ceiling server")?;
    let port = listener.local_addr()?.port();
    let socket_writes = Arc::new(AtomicU64::new(0));
    let (sockets_tx, mut sockets) = mpsc::unbounded_channel();
    let accepting = tokio::spawn(accept(
        listener,
        spec.protocol,
        socket_writes.clone(),
        sockets_tx,
    ));
    emit(&ServerMessage::Listening { port });

    let frame = CountFrame::of(spec.protocol);
    let duration = Duration::from_secs_f64(spec.duration_seconds.max(0.0));
    let mut writers: Vec<Writer> = Vec::new();
    let mut connections = 0;
    let mut total = Written::default();
    let mut writes_before = 0;
    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let mut words = command.split_whitespace();
        match words.next() {
            Some("push") => {
                if writers.is_empty() {
                    // The run's connections: as many as the clients have subscribed.
                    let subscribed = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let taken = take_connections(&mut sockets, subscribed).await;
                    connections = taken.len() as u64;
                    writers = Writer::start_all(taken, frame);
                    writes_before = socket_writes.load(Ordering::Relaxed);
                }
                let work = match spec.pattern {
                    Pattern::PushRate => Work::Rate {
                        per_second: spec.rate.map(|rate| rate as f64),
                        total_connections: connections,
                        started: Instant::now(),
                        started_us: unix_micros(),
                        duration,
                    },
                    Pattern::GroupMessage => Work::Each {
                        frame: frame.with_count(unix_micros()),
                    },
                };
                let written = Writer::run_all(&writers, work).await;
                total.add(written);
                emit(&ServerMessage::Pushed {
                    frames: written.frames,
                    failures: written.failures,
                    coalesced: written.coalesced,
                });
            }
            Some("finish") => break,
            _ => {}
        }
    }
    accepting.abort();
    emit(&ServerMessage::Report {
        connections,
        frames: total.frames,
        failures: total.failures,
        coalesced: total.coalesced,
        socket_writes: socket_writes
            .load(Ordering::Relaxed)
            .saturating_sub(writes_before),
    });
    Ok(())
}

/// The connections set up so far, waiting (at most [`SETUP_TIMEOUT`]) until there
/// are `subscribed`: a client counts itself subscribed on the count of 0, a moment
/// before its connection reaches the writers.
async fn take_connections(
    sockets: &mut mpsc::UnboundedReceiver<Socket>,
    subscribed: usize,
) -> Vec<Socket> {
    let mut taken = Vec::with_capacity(subscribed);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        while let Ok(socket) = sockets.try_recv() {
            taken.push(socket);
        }
        if taken.len() >= subscribed {
            return taken;
        }
        match tokio::time::timeout_at(deadline, sockets.recv()).await {
            Ok(Some(socket)) => taken.push(socket),
            Ok(None) | Err(_) => return taken,
        }
    }
}

fn emit(message: &ServerMessage) {
    if let Ok(line) = serde_json::to_string(message) {
        println!("{line}");
    }
}

type Socket = WebSocketStream<CountedStream>;

/// Accepts connections and sets each up in a task of its own; the set-up ones go to
/// `sockets`.
async fn accept(
    listener: TcpListener,
    protocol: Protocol,
    socket_writes: Arc<AtomicU64>,
    sockets: mpsc::UnboundedSender<Socket>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: the client sees it fail.
                tracing::warn!(%error, "ceiling server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = CountedStream {
            inner: stream,
            writes: socket_writes.clone(),
        };
        let sockets = sockets.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(SETUP_TIMEOUT, set_up(stream, protocol)).await {
                Ok(Ok(socket)) => {
                    let _ = sockets.send(socket);
                }
                Ok(Err(error)) => tracing::warn!(%error, "ceiling server: a setup failed"),
                Err(_) => tracing::warn!("ceiling server: a setup timed out"),
            }
        });
    }
}

/// Upgrades, then welcomes and subscribes (or authenticates) without checking anything,
/// and sends the count of 0 the client waits for.
async fn set_up(stream: CountedStream, protocol: Protocol) -> anyhow::Result<Socket> {
    // tungstenite's callback type: its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let echo_subprotocol = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|offer| offer.trim() == CABLE_SUBPROTOCOL);
        if offered {
            response.headers_mut().insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(CABLE_SUBPROTOCOL),
            );
        }
        Ok(response)
    };
    // As the edge's: a small read buffer, every frame written as it is sent.
    let config = WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0);
    let mut socket =
        tokio_tungstenite::accept_hdr_async_with_config(stream, echo_subprotocol, Some(config))
            .await
            .context("upgrading")?;
    let (expected, replies): (&str, &[&str]) = match protocol {
        Protocol::Cable => {
            socket.send(Message::text(WELCOME)).await?;
            (r#""subscribe""#, &[CONFIRM])
        }
        Protocol::Realtime => (r#""authrequest""#, &[AUTH_SUCCESS]),
    };
    loop {
        let frame = socket
            .next()
            .await
            .context("closed during setup")?
            .context("reading during setup")?;
        if let Message::Text(text) = frame
            && text.as_str().contains(expected)
        {
            break;
        }
    }
    for reply in replies {
        socket.send(Message::text(*reply)).await?;
    }
    socket
        .send(Message::Text(CountFrame::of(protocol).with_count(0)))
        .await?;
    Ok(socket)
}

/// What one `push` asks of every writer.
#[derive(Debug, Clone)]
enum Work {
    /// Frames at `per_second` over `total_connections`, round robin, for `duration`
    /// from `started` (`started_us` in Unix microseconds); each writer takes its share.
    Rate {
        per_second: Option<f64>,
        total_connections: u64,
        started: Instant,
        started_us: u64,
        duration: Duration,
    },
    /// This frame to every connection.
    Each { frame: Utf8Bytes },
}

/// Frames written, writes that failed, and frames not written for a newer one to the
/// same connection.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    frames: u64,
    failures: u64,
    coalesced: u64,
}

impl Written {
    fn add(&mut self, other: Self) {
        self.frames += other.frames;
        self.failures += other.failures;
        self.coalesced += other.coalesced;
    }
}

/// One writer task, owning its share of the connections.
struct Writer {
    work: mpsc::UnboundedSender<(Work, oneshot::Sender<Written>)>,
}

impl Writer {
    /// One writer per core (as the runtime has worker threads), connection `i` to
    /// writer `i % writers`.
    fn start_all(sockets: Vec<Socket>, frame: CountFrame) -> Vec<Self> {
        let count = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(sockets.len().max(1));
        let mut shares: Vec<Vec<Socket>> = (0..count).map(|_| Vec::new()).collect();
        for (index, socket) in sockets.into_iter().enumerate() {
            shares[index % count].push(socket);
        }
        shares
            .into_iter()
            .map(|share| {
                let (work, commands) = mpsc::unbounded_channel();
                tokio::spawn(write_share(share, commands, frame));
                Self { work }
            })
            .collect()
    }

    /// Gives every writer `work` and waits until each has done it.
    async fn run_all(writers: &[Self], work: Work) -> Written {
        let mut done = Vec::new();
        for writer in writers {
            let (done_tx, done_rx) = oneshot::channel();
            if writer.work.send((work.clone(), done_tx)).is_ok() {
                done.push(done_rx);
            }
        }
        let mut total = Written::default();
        for written in done {
            if let Ok(written) = written.await {
                total.add(written);
            }
        }
        total
    }
}

/// A writer: does each `push`'s work on its connections.
async fn write_share(
    mut sockets: Vec<Socket>,
    mut commands: mpsc::UnboundedReceiver<(Work, oneshot::Sender<Written>)>,
    count_frame: CountFrame,
) {
    let mut next = 0;
    while let Some((work, done)) = commands.recv().await {
        let mut written = Written::default();
        match work {
            Work::Each { frame } => {
                for socket in &mut sockets {
                    write(socket, &frame, &mut written).await;
                }
            }
            Work::Rate {
                per_second,
                total_connections,
                started,
                started_us,
                duration,
            } => {
                // This writer's share of the rate: its share of the connections.
                let share = sockets.len() as f64 / total_connections.max(1) as f64;
                write_at_rate(
                    &mut sockets,
                    &mut next,
                    count_frame,
                    per_second.map(|rate| rate * share),
                    (started, started_us, duration),
                    &mut written,
                )
                .await;
            }
        }
        let _ = done.send(written);
    }
}

/// Writes frames round robin over `sockets` from `next` on, each when it is due at
/// `per_second` (`None`: as fast as they go), until `duration` from `started` is over;
/// every frame due within one tick is the same, its count the time the first of them
/// was due. Behind by more than one round, it skips to the newest round: the frames
/// before it would each be followed by a newer one to the same connection.
async fn write_at_rate(
    sockets: &mut [Socket],
    next: &mut usize,
    frame: CountFrame,
    per_second: Option<f64>,
    (started, started_us, duration): (Instant, u64, Duration),
    written: &mut Written,
) {
    if sockets.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let round = sockets.len() as u64;
    let mut sent = 0_u64;
    while started.elapsed() < duration {
        let due = match per_second {
            Some(rate) => {
                tick.tick().await;
                (started.elapsed().min(duration).as_secs_f64() * rate) as u64
            }
            None => {
                tokio::task::yield_now().await;
                sent + UNBOUNDED_BATCH
            }
        };
        if due <= sent {
            continue;
        }
        if due - sent > round {
            let skipped = due - round - sent;
            written.coalesced += skipped;
            sent += skipped;
            *next = (*next + usize::try_from(skipped % round).unwrap_or(0)) % sockets.len();
        }
        let stamp = match per_second {
            Some(rate) => started_us + (sent as f64 / rate * 1e6) as u64,
            None => unix_micros(),
        };
        let shared = frame.with_count(stamp);
        while sent < due {
            write(&mut sockets[*next], &shared, written).await;
            *next = (*next + 1) % sockets.len();
            sent += 1;
        }
    }
}

/// Writes one frame (one `sendto`: the write buffer is 0).
async fn write(socket: &mut Socket, frame: &Utf8Bytes, written: &mut Written) {
    match socket.send(Message::Text(frame.clone())).await {
        Ok(()) => written.frames += 1,
        Err(_) => written.failures += 1,
    }
}

/// A TCP stream that counts its writes: each `poll_write` that wrote something is one
/// `sendto`, each `poll_write_vectored` one `writev`.
struct CountedStream {
    inner: TcpStream,
    writes: Arc<AtomicU64>,
}

impl CountedStream {
    fn count(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(context, buffer);
        self.count(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(context, buffers);
        self.count(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_frames_are_the_edges_and_read_by_the_clients() {
        let cable = CountFrame::of(Protocol::Cable).with_count(1_700_000_000_000_000);
        assert_eq!(
            cable.as_str(),
            r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","message":{"type":"unread_count","count":1700000000000000}}"#
        );
        let realtime = CountFrame::of(Protocol::Realtime).with_count(7);
        assert_eq!(realtime.as_str(), r#"{"type":"unread_count","count":7}"#);
    }
}
