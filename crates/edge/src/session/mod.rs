//! One session layer for every protocol. [`run`] drives a connection from just after
//! the WebSocket upgrade to its close: admission (the token, the partner's origin
//! allow-list and connection limit, the table's readiness), the select loop, the limits
//! every protocol shares (frame size, command rate), pushes and their metrics, the drain
//! and the goodbye. What differs between protocols is a state machine without I/O
//! ([`Session`]): it turns client frames and count changes into frames to write, and the
//! pure codecs of `fanout_protocol` give those frames their bytes.
//!
//! Adding a protocol or a channel means writing its state machine (and its codec);
//! nothing here changes.

mod cable;
mod realtime;

use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

pub use crate::close::{CloseReason, Goodbye, Protocol};
pub use cable::{Cable, PARTNER_CHANNEL};
pub use realtime::{MAX_AUTH_FAILURES, Realtime};

use crate::auth::AuthError;
use crate::auth::Identity;
use crate::limits::{CommandRate, Limit};
use crate::node::{Admitted, Node, Refused, Subscribed, SubscriptionRefused};
use crate::restore::SavedSession;
use crate::streams::{EventSubscription, NotResumable, Resume, Since, StreamFrame};
use crate::table::{CountSubscription, CountValue};
use crate::telemetry::{Handshake, Ignored, SessionRestore, StreamResume, StreamSubscribe};

/// How long a session that has been told to leave may take before it is dropped: a
/// client that stopped reading cannot hold up a drain.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Stream events taken from the queue for one write (one flush).
const EVENTS_PER_WRITE: usize = 64;

/// How long a subscription whose position is past this node's last event of the user
/// waits for the node to catch up (the client saw the event on a node further ahead)
/// before the position is refused as a future offset.
const AHEAD_WAIT: Duration = Duration::from_secs(2);

/// How often such a subscription looks again.
const AHEAD_RETRY: Duration = Duration::from_millis(20);

/// How long a close waits for the client's closing frame. Waiting lets the client read
/// the close code before the TCP connection ends; not waiting forever bounds a drain.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A token and the partner it is for, as a client presented them.
#[derive(Debug, Default)]
pub struct Credentials {
    pub partner: Option<String>,
    pub token: Option<String>,
    /// The `sid` of a session to restore (the extended protocol's reconnect).
    pub restore: Option<String>,
}

/// What a state machine asks the driver to write or record.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// A frame that answers the client.
    Reply(String),
    /// A frame that delivers a count: a push. `source_time` is the source event time of
    /// the change it delivers (for the delivery latency); `None` when it only answers
    /// with the current state. Bytes, as the user's sessions share a change's frame.
    Push {
        frame: Utf8Bytes,
        source_time: Option<i64>,
    },
    /// A client frame not acted on.
    Ignored(Ignored),
    /// A limit refused something without ending the session.
    Limited(Limit),
    /// Count changes replaced by a newer one before they were written.
    Coalesced(u64),
    /// A frame that delivers a stream event.
    Event {
        frame: String,
        source_time: Option<i64>,
    },
}

/// A state machine's request for the user's event stream: with the subscription's own
/// token (RoomChannel's `pubsub_token`, and the partner it names if any), or, without
/// one, for the connection's user; from `since`. With `reopen`, it replaces the stream
/// subscription the session holds (or restored), for the same user.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamRequest {
    pub token: Option<String>,
    pub partner: Option<String>,
    pub since: Since,
    pub reopen: bool,
}

impl Default for StreamRequest {
    fn default() -> Self {
        Self {
            token: None,
            partner: None,
            since: Since::Now,
            reopen: false,
        }
    }
}

/// How a stream subscription started: from where, or why not from the position asked
/// (it is live then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub resume: Result<Resume, NotResumable>,
}

/// What a state machine asks of the driver besides writing.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    OpenStream(StreamRequest),
    CloseStream,
}

/// What a state machine produced for one input, in order, and what it asks.
#[derive(Debug, Default)]
pub struct Outbox(Vec<Output>, Option<Box<Request>>);

impl Outbox {
    /// Asks for the user's event stream; the driver answers with
    /// [`Session::stream_opened`].
    pub fn open_stream(&mut self, request: StreamRequest) {
        self.1 = Some(Box::new(Request::OpenStream(request)));
    }

    /// Ends the event stream subscription.
    pub fn close_stream(&mut self) {
        self.1 = Some(Box::new(Request::CloseStream));
    }

    pub fn event(&mut self, frame: String, source_time: Option<i64>) {
        self.0.push(Output::Event { frame, source_time });
    }

    pub fn reply(&mut self, frame: String) {
        self.0.push(Output::Reply(frame));
    }

    pub fn push(&mut self, frame: impl Into<Utf8Bytes>, source_time: Option<i64>) {
        self.0.push(Output::Push {
            frame: frame.into(),
            source_time,
        });
    }

    pub fn ignored(&mut self, reason: Ignored) {
        self.0.push(Output::Ignored(reason));
    }

    pub fn limited(&mut self, limit: Limit) {
        self.0.push(Output::Limited(limit));
    }

    /// The newest count, marked seen; the changes it replaced are counted as coalesced.
    pub fn take_count(&mut self, counts: &mut CountSubscription) -> CountValue {
        let (value, skipped) = counts.take();
        if skipped > 0 {
            self.0.push(Output::Coalesced(skipped));
        }
        value
    }

    /// Takes what was produced, leaving the outbox empty and unallocated (an idle
    /// connection holds no buffer).
    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn has_request(&self) -> bool {
        self.1.is_some()
    }

    fn take_request(&mut self) -> Option<Request> {
        self.1.take().map(|request| *request)
    }
}

/// What a state machine says after a refused token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// The client may present another token.
    TryAgain,
    /// The connection closes as unauthorized.
    Close,
}

/// A protocol's session as a state machine: inputs in, [`Outbox`] entries out, no I/O.
/// The driver calls it in this order: credentials (those the upgrade request carried,
/// or else from frames before auth), then, once admitted and the table has caught up,
/// [`Session::open`], then frames, count changes and ping ticks until the session ends.
pub trait Session {
    const PROTOCOL: Protocol;

    /// How long a client may take to authenticate in band; `None` for none.
    fn auth_timeout(&self) -> Option<Duration>;

    /// A text frame before authentication; `Some` when it presents credentials.
    fn before_auth(&mut self, frame: &[u8], out: &mut Outbox) -> Option<Credentials>;

    /// The presented token was refused.
    fn token_refused(&mut self, error: AuthError, out: &mut Outbox) -> AfterRefusal;

    /// The token was good, but the partner's origin allow-list or connection limit
    /// refused the connection, which closes for `reason`.
    fn admission_refused(&mut self, reason: CloseReason, out: &mut Outbox);

    /// Whether the session may open without a token (ActionCable without `jwt`: it then
    /// authenticates each stream subscription by its own token).
    fn admits_anonymous(&self) -> bool {
        false
    }

    /// Admitted, and the table has caught up: the session's first frames. `counts` is
    /// `None` for a session opened without credentials.
    fn open(&mut self, counts: Option<&mut CountSubscription>, out: &mut Outbox);

    /// A text frame after [`Session::open`].
    fn on_text(&mut self, frame: &[u8], counts: Option<&mut CountSubscription>, out: &mut Outbox);

    /// The answer to [`Outbox::open_stream`]: subscribed, or refused for a reason.
    fn stream_opened(&mut self, result: Result<Opened, StreamSubscribe>, out: &mut Outbox);

    /// An event of the user's stream (only while subscribed).
    fn on_event(&mut self, frame: &StreamFrame, out: &mut Outbox);

    /// The stream subscription ended: the client fell `max_stream_queue` events behind.
    fn stream_overflowed(&mut self, out: &mut Outbox);

    /// A binary frame, at any time: neither protocol speaks binary.
    fn on_binary(&mut self, out: &mut Outbox);

    /// Whether count changes are wanted now.
    fn wants_counts(&self) -> bool;

    /// The user's count changed (only while [`Session::wants_counts`]): `value`, just
    /// taken from `counts`, whose [`CountSubscription::frame`] shares a change's frame
    /// among the user's sessions.
    fn on_count(&mut self, counts: &CountSubscription, value: CountValue, out: &mut Outbox);

    /// The period of the server's pings after [`Session::open`]; `None` for none.
    fn ping_interval(&self) -> Option<Duration>;

    /// A ping is due.
    fn on_ping(&mut self, unix_seconds: u64, out: &mut Outbox);

    /// The id its session can be restored by once closed (the extended protocol's
    /// `sid`); `None` for a protocol that restores nothing.
    fn restore_id(&self) -> Option<&str> {
        None
    }

    /// Its subscriptions, to be restored.
    fn saved(&self) -> Vec<Box<str>> {
        Vec::new()
    }

    /// Takes back a closed session's subscriptions, before [`Session::open`].
    fn restore(&mut self, _subscriptions: Vec<Box<str>>) {}
}

/// Runs one connection's session from just after the upgrade until it ends, and
/// records why it ended. `origin` is the upgrade request's `Origin` header;
/// `credentials` what the request carried (ActionCable's query; without a token, a
/// session that [`Session::admits_anonymous`] opens unauthenticated), `None` for a
/// client that authenticates in band; `shutdown` is this session's turn to leave in the
/// drain. A session told to leave that cannot (its client stopped reading, so the
/// goodbye cannot be written) is dropped after [`GOODBYE_GRACE`].
///
/// Not an `async fn`: the future is as large as its largest state for the connection's
/// whole life, and an `async fn` keeps a copy of every argument it moved elsewhere
/// (`protocol` into the driver, `origin` and `credentials` into the opening). Here the
/// driver is built before the future and the opening's arguments are boxed.
pub fn run<'a, S, P>(
    socket: &'a mut S,
    node: &'a Node,
    protocol: P,
    origin: Option<String>,
    credentials: Option<Credentials>,
    shutdown: &'a CancellationToken,
) -> impl Future<Output = CloseReason> + 'a
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
    P: Session + 'a,
{
    let mut driver = Driver {
        socket,
        node,
        protocol,
        rate: CommandRate::new(node.config.max_commands_per_second, Instant::now()),
        out: Outbox::default(),
        connection: Connection::Admitting,
        events: None,
        restoring: None,
    };
    let opening = Box::new(Opening {
        origin,
        credentials,
    });
    async move {
        let _open = node.metrics.open_connection(P::PROTOCOL);
        let ended = {
            let session = driver.session(opening);
            tokio::pin!(session);
            tokio::select! {
                ended = &mut session => Some(ended),
                () = shutdown.cancelled() => None,
            }
        };
        // Told to leave: whatever the session was doing (waiting for its client's
        // token, for the table, for its next frame, writing) it stops there, and says
        // goodbye. Handled here rather than by every wait of the session, whose
        // futures would otherwise each hold a cancellation future.
        let ended = match ended {
            Some(ended) => ended,
            None => {
                // Boxed: only sessions being told to leave need the goodbye's state.
                let goodbye = Box::pin(tokio::time::timeout(
                    GOODBYE_GRACE,
                    driver.close(CloseReason::ServerRestart),
                ));
                goodbye.await.unwrap_or(Ok(CloseReason::ServerRestart))
            }
        };
        driver.save();
        let reason = ended.unwrap_or(CloseReason::Error);
        node.metrics.closed(P::PROTOCOL, reason);
        reason
    }
}

/// What a session opens with: the upgrade's origin and credentials. Boxed, as the
/// session reads them once.
struct Opening {
    origin: Option<String>,
    credentials: Option<Credentials>,
}

/// A session's stream subscription, its user, and what its own token admitted (held as
/// long).
struct Events {
    subscription: EventSubscription,
    identity: Identity,
    admitted: Option<Subscribed>,
}

/// What a restoring session holds until its client asks for its stream's history, and
/// what a restorable one needs to be saved.
struct Restoring {
    /// The user of the stream subscription restored, not yet reopened.
    stream: Option<(Identity, Option<Subscribed>)>,
    /// The page's origin, which a restore must come from again.
    origin: Option<String>,
    /// Whether the session opened: only then is it saved.
    opened: bool,
}

/// Who the connection is.
enum Connection {
    /// Not authenticated yet.
    Admitting,
    /// Authenticated as a user.
    Admitted(Admitted),
    /// Opened without a token: its stream subscriptions' tokens are checked for the
    /// partner its upgrade named and the origin of its page. Boxed: few connections are.
    Anonymous(Box<Anonymous>),
}

struct Anonymous {
    partner: Option<String>,
    origin: Option<String>,
}

impl Connection {
    fn identity(&self) -> Option<&crate::auth::Identity> {
        match self {
            Self::Admitted(admitted) => Some(&admitted.identity),
            Self::Admitting | Self::Anonymous(_) => None,
        }
    }
}

/// One socket read, sorted.
enum Read {
    Text(Utf8Bytes),
    Binary,
    /// A control frame: answered by the WebSocket layer.
    Nothing,
    /// The session ends, with a goodbye if the client is still there.
    End(CloseReason),
}

struct Driver<'a, S, P> {
    socket: &'a mut S,
    node: &'a Node,
    protocol: P,
    rate: CommandRate,
    out: Outbox,
    connection: Connection,
    /// The stream subscription. Boxed: most connections hold none.
    events: Option<Box<Events>>,
    /// For a session that can be restored (the extended protocol): boxed, as few are.
    restoring: Option<Box<Restoring>>,
}

impl<S, P> Driver<'_, S, P>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
    P: Session,
{
    /// The session: its opening, then its frames, count changes, events and pings until
    /// it ends. What it holds here, it holds for the connection's whole life.
    async fn session(&mut self, opening: Box<Opening>) -> Result<CloseReason, WsError> {
        // Boxed: a session passes through its opening once, and the opening's state
        // (the admission, the readiness wait, the restore) would otherwise size every
        // session for its whole life.
        let mut counts = match Box::pin(self.open(*opening)).await? {
            Ok(counts) => counts,
            Err(reason) => return Ok(reason),
        };
        let mut ping = self.protocol.ping_interval().map(|period| {
            let mut ping = tokio::time::interval_at(Instant::now() + period, period);
            ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ping
        });
        loop {
            tokio::select! {
                biased;
                incoming = self.socket.next() => {
                    let read = self.read(incoming)?;
                    if let Some(reason) = self.on_read(read, counts.as_mut()) {
                        return self.close(reason).await;
                    }
                    if self.out.has_request() {
                        // Boxed: few frames ask for anything, and what serving them
                        // holds would otherwise size every session for its life.
                        Box::pin(self.serve_requests()).await;
                    }
                },
                () = count_changed(counts.as_mut()), if self.protocol.wants_counts() => {
                    if let Some(counts) = counts.as_mut() {
                        let value = self.out.take_count(counts);
                        self.protocol.on_count(counts, value, &mut self.out);
                    }
                }
                event = next_event(self.events.as_deref()) => match event {
                    Some(frame) => self.protocol.on_event(&frame, &mut self.out),
                    None => {
                        self.events = None;
                        self.node.metrics.stream_overflowed();
                        self.protocol.stream_overflowed(&mut self.out);
                    }
                },
                () = tick(ping.as_mut()) => {
                    let unix_seconds = u64::try_from(fanout_schema::unix_millis() / 1000).unwrap_or(0);
                    self.protocol.on_ping(unix_seconds, &mut self.out);
                }
            }
            self.take_ready(counts.as_mut());
            self.write().await?;
        }
    }

    /// Hands one socket read to the state machine; `Some` when the session ends.
    fn on_read(
        &mut self,
        read: Read,
        counts: Option<&mut CountSubscription>,
    ) -> Option<CloseReason> {
        match read {
            Read::Text(frame) => {
                self.protocol
                    .on_text(frame.as_bytes(), counts, &mut self.out);
            }
            Read::Binary => self.protocol.on_binary(&mut self.out),
            Read::Nothing => {}
            Read::End(reason) => return Some(reason),
        }
        None
    }

    /// From the upgrade to the session's first frames: the restore, the admission or
    /// an anonymous opening, the wait for the table, [`Session::open`]. `Ok(Err)`: the
    /// session ended, its client told why. `Ok(Ok)`: the user's count, if the session
    /// has a user.
    async fn open(
        &mut self,
        opening: Opening,
    ) -> Result<Result<Option<CountSubscription>, CloseReason>, WsError> {
        let Opening {
            origin,
            mut credentials,
        } = opening;
        let restore = credentials
            .as_mut()
            .and_then(|credentials| credentials.restore.take());
        if self.protocol.restore_id().is_some() {
            self.restoring = Some(Box::new(Restoring {
                stream: None,
                origin: origin.clone(),
                opened: false,
            }));
        }
        let anonymous = self.protocol.admits_anonymous()
            && credentials
                .as_ref()
                .is_some_and(|credentials| credentials.token.is_none());
        if let Some(sid) = restore
            && self.restoring.is_some()
            && self.restore(&sid, origin.as_deref())
        {
            self.node.metrics.session_restore(SessionRestore::Restored);
        } else if anonymous {
            self.connection = Connection::Anonymous(Box::new(Anonymous {
                partner: credentials.and_then(|credentials| credentials.partner),
                origin,
            }));
        } else {
            match self.admit(origin, credentials).await? {
                Ok(admitted) => self.connection = Connection::Admitted(admitted),
                Err(reason) => return Ok(Err(reason)),
            }
        }
        self.node.metrics.handshake(Handshake::Accepted);
        // No first frame, and so no count, before the table has caught up: a count read
        // from a table still loading could be older than one the client already shows.
        if !table_caught_up(&self.node.ready).await {
            return self.close(CloseReason::ServerRestart).await.map(Err);
        }
        // Asked once ready, when the node knows the topics' partition count: a user
        // this node does not read is refused, never answered with a count of 0.
        if let Some(identity) = self.connection.identity()
            && !self.node.holds(identity, P::PROTOCOL)
        {
            self.protocol
                .admission_refused(CloseReason::WrongShard, &mut self.out);
            return self.close(CloseReason::WrongShard).await.map(Err);
        }
        let mut counts = self
            .connection
            .identity()
            .map(|identity| self.node.table.subscription(&identity.key()));
        self.protocol.open(counts.as_mut(), &mut self.out);
        if let Some(restoring) = self.restoring.as_mut() {
            restoring.opened = true;
        }
        self.write().await?;
        Ok(Ok(counts))
    }

    /// Credentials, from the upgrade or in band, through [`Node::admit`]. `Err`: the
    /// session ended, its client told why.
    async fn admit(
        &mut self,
        origin: Option<String>,
        mut from_upgrade: Option<Credentials>,
    ) -> Result<Result<Admitted, CloseReason>, WsError> {
        // Boxed: the deadline exists only until the client has authenticated.
        let mut deadline = self
            .protocol
            .auth_timeout()
            .map(|timeout| Box::pin(tokio::time::sleep(timeout)));
        loop {
            let credentials = match from_upgrade.take() {
                Some(credentials) => credentials,
                None => loop {
                    tokio::select! {
                        biased;
                        () = until(deadline.as_mut()) => {
                            self.node.metrics.handshake(Handshake::AuthTimeout);
                            self.node.metrics.limited(Limit::AuthTimeout);
                            return self.close(CloseReason::AuthTimeout).await.map(Err);
                        }
                        incoming = self.socket.next() => match self.read(incoming)? {
                            Read::Text(frame) => {
                                let presented = self.protocol.before_auth(frame.as_bytes(), &mut self.out);
                                if let Some(credentials) = presented {
                                    break credentials;
                                }
                            }
                            Read::Binary => self.protocol.on_binary(&mut self.out),
                            Read::Nothing => {}
                            Read::End(reason) => return self.close(reason).await.map(Err),
                        },
                    }
                    self.write().await?;
                },
            };
            let refused = match self.node.admit(
                credentials.partner.as_deref(),
                credentials.token.as_deref(),
                origin.as_deref(),
            ) {
                Ok(admitted) => return Ok(Ok(admitted)),
                Err(refused) => refused,
            };
            let reason = match refused {
                Refused::Token(error) => {
                    if self.protocol.token_refused(error, &mut self.out) == AfterRefusal::Close {
                        self.node.metrics.handshake(Handshake::Unauthorized);
                        return self.close(CloseReason::Unauthorized).await.map(Err);
                    }
                    self.write().await?;
                    continue;
                }
                Refused::Origin => CloseReason::OriginNotAllowed,
                Refused::PartnerFull => CloseReason::ConnectionLimit,
            };
            self.node.metrics.handshake(Handshake::Limited);
            self.protocol.admission_refused(reason, &mut self.out);
            return self.close(reason).await.map(Err);
        }
    }

    /// What else is ready now goes out in the same write (one flush, one wakeup): a
    /// count change that came with an event, and the events queued behind it.
    fn take_ready(&mut self, counts: Option<&mut CountSubscription>) {
        if self.protocol.wants_counts()
            && let Some(counts) = counts
            && counts.has_changed()
        {
            let value = self.out.take_count(counts);
            self.protocol.on_count(counts, value, &mut self.out);
        }
        for _ in 0..EVENTS_PER_WRITE {
            let Some(frame) = self
                .events
                .as_ref()
                .and_then(|events| events.subscription.try_next())
            else {
                break;
            };
            self.protocol.on_event(&frame, &mut self.out);
        }
    }

    /// Acts on what the state machine asked for with its last input, and on what it
    /// asks in answer.
    async fn serve_requests(&mut self) {
        while let Some(request) = self.out.take_request() {
            match request {
                Request::CloseStream => {
                    self.events = None;
                    if let Some(restoring) = self.restoring.as_mut() {
                        restoring.stream = None;
                    }
                }
                Request::OpenStream(request) => {
                    let result = self.open_stream(request).await;
                    self.node.metrics.stream_subscribe(match result {
                        Ok(_) => StreamSubscribe::Accepted,
                        Err(refused) => refused,
                    });
                    self.protocol.stream_opened(result, &mut self.out);
                }
            }
        }
    }

    /// Restores the session saved under `sid`: its connection, its places, its
    /// subscriptions. False when there is none to restore (then the client connects
    /// as a new one).
    fn restore(&mut self, sid: &str, origin: Option<&str>) -> bool {
        let Some(saved) = self.node.sessions.take(sid, origin) else {
            self.node.metrics.session_restore(SessionRestore::Unknown);
            return false;
        };
        let SavedSession {
            connection,
            partner,
            origin,
            stream,
            subscriptions,
        } = saved;
        let (admitted, subscribed) = match self.node.readmit(connection, stream.clone()) {
            Ok(places) => places,
            Err(limit) => {
                self.node.metrics.limited(limit);
                self.node.metrics.session_restore(SessionRestore::Unknown);
                return false;
            }
        };
        self.connection = match admitted {
            Some(admitted) => Connection::Admitted(admitted),
            None => Connection::Anonymous(Box::new(Anonymous { partner, origin })),
        };
        if let (Some(restoring), Some(identity)) = (self.restoring.as_mut(), stream) {
            restoring.stream = Some((identity, subscribed));
        }
        self.protocol.restore(subscriptions);
        true
    }

    /// Saves a restorable session that opened, for its client's reconnect.
    fn save(&mut self) {
        let Some(restoring) = self.restoring.take().filter(|restoring| restoring.opened) else {
            return;
        };
        let Some(sid) = self.protocol.restore_id() else {
            return;
        };
        let (connection, partner) = match &self.connection {
            Connection::Admitted(admitted) => (Some(admitted.identity.clone()), None),
            Connection::Anonymous(anonymous) => (None, anonymous.partner.clone()),
            Connection::Admitting => return,
        };
        let stream = match self.events.take() {
            Some(events) => Some(events.identity),
            None => restoring.stream.map(|(identity, _)| identity),
        };
        let saved = SavedSession {
            connection,
            partner,
            origin: restoring.origin,
            stream,
            subscriptions: self.protocol.saved(),
        };
        self.node.sessions.save(sid, saved);
    }

    /// Subscribes the session to the stream of the request's user (the one its token
    /// names, the one of the subscription it reopens, or the connection's), from the
    /// position it names. A position past this node's last event of the user is given
    /// [`AHEAD_WAIT`] to be caught up with; a position refused subscribes live.
    async fn open_stream(&mut self, request: StreamRequest) -> Result<Opened, StreamSubscribe> {
        if self.events.is_some() && !request.reopen {
            return Err(StreamSubscribe::AlreadySubscribed);
        }
        let connection = self.connection.identity();
        let (partner, origin) = match &self.connection {
            Connection::Anonymous(anonymous) => {
                (anonymous.partner.as_deref(), anonymous.origin.as_deref())
            }
            Connection::Admitting | Connection::Admitted(_) => (None, None),
        };
        let reopened = if request.reopen {
            self.events
                .take()
                .map(|events| (events.identity, events.admitted))
                .or_else(|| {
                    self.restoring
                        .as_mut()
                        .and_then(|restoring| restoring.stream.take())
                })
        } else {
            None
        };
        let (identity, held) = match (request.token, reopened) {
            (_, Some(reopened)) => reopened,
            (Some(token), None) => {
                let subscribed = self
                    .node
                    .admit_subscription(
                        connection,
                        request.partner.as_deref().or(partner),
                        &token,
                        origin,
                        P::PROTOCOL,
                    )
                    .map_err(|refused| match refused {
                        SubscriptionRefused::Token => StreamSubscribe::Unauthorized,
                        SubscriptionRefused::PartnerMismatch => StreamSubscribe::PartnerMismatch,
                        SubscriptionRefused::Origin => StreamSubscribe::OriginNotAllowed,
                        SubscriptionRefused::PartnerFull => StreamSubscribe::ConnectionLimit,
                        SubscriptionRefused::WrongShard => StreamSubscribe::WrongShard,
                    })?;
                (subscribed.identity.clone(), Some(subscribed))
            }
            (None, None) => {
                let identity = connection.ok_or(StreamSubscribe::NoIdentity)?;
                (identity.clone(), None)
            }
        };
        let key = identity.key();
        let streams = &self.node.streams;
        let deadline = Instant::now() + AHEAD_WAIT;
        let (subscription, resume) = loop {
            let now_ms = fanout_schema::unix_millis();
            match streams.subscribe(&key, request.since, now_ms) {
                Ok((subscription, resume)) => break (subscription, Ok(resume)),
                Err(NotResumable::Ahead) if Instant::now() < deadline => {
                    tokio::time::sleep(AHEAD_RETRY).await;
                }
                Err(refused) => match streams.subscribe(&key, Since::Now, now_ms) {
                    Ok((subscription, _)) => break (subscription, Err(refused)),
                    Err(_) => return Err(StreamSubscribe::NoIdentity),
                },
            }
        };
        if request.since != Since::Now {
            self.node.metrics.stream_resumed(match resume {
                Ok(Resume::Live | Resume::Resumed { .. }) => StreamResume::Resumed,
                Ok(Resume::Reset(fanout_protocol::realtime::ResetReason::BeyondWindow)) => {
                    StreamResume::ResetBeyondWindow
                }
                Ok(Resume::Reset(fanout_protocol::realtime::ResetReason::EpochChanged)) => {
                    StreamResume::ResetEpochChanged
                }
                Err(NotResumable::Foreign) => StreamResume::ForeignPosition,
                Err(NotResumable::Ahead) => StreamResume::FutureOffset,
            });
        }
        self.events = Some(Box::new(Events {
            subscription,
            identity,
            admitted: held,
        }));
        Ok(Opened { resume })
    }

    /// Sorts one socket read, applying the limits every protocol shares.
    fn read(&mut self, incoming: Option<Result<Message, WsError>>) -> Result<Read, WsError> {
        let message = match incoming {
            None => return Ok(Read::End(CloseReason::Client)),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(_))) => {
                // The WebSocket layer refused a frame over `max_frame_bytes` and cannot
                // read on: say why instead of just dropping the connection.
                self.node.metrics.limited(Limit::FrameSize);
                return Ok(Read::End(CloseReason::FrameTooLarge));
            }
            Some(Err(error)) => return Err(error),
        };
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && !self.rate.allow(Instant::now())
        {
            self.node.metrics.limited(Limit::CommandRate);
            return Ok(Read::End(CloseReason::RateLimited));
        }
        Ok(match message {
            Message::Text(frame) => Read::Text(frame),
            Message::Binary(_) => Read::Binary,
            // Close replies, pings and pongs are answered by the WebSocket layer.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                Read::Nothing
            }
        })
    }

    /// Writes what the state machine produced, in one flush, and records it. The
    /// WebSocket layer buffers the frames until the flush (up to the edge's write batch,
    /// `server::WRITE_BATCH_BYTES`), so that they go out in one syscall.
    ///
    /// Every session holds this future whenever it writes: it waits only for the
    /// socket's readiness, holding no frame across a wait, to stay small.
    async fn write(&mut self) -> Result<(), WsError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut outputs = self.out.take().into_iter();
        loop {
            std::future::poll_fn(|cx| self.socket.poll_ready_unpin(cx)).await?;
            let Some(output) = outputs.next() else {
                break;
            };
            let metrics = &self.node.metrics;
            match output {
                Output::Reply(frame) => self.socket.start_send_unpin(text(frame))?,
                Output::Push { frame, source_time } => {
                    self.socket.start_send_unpin(Message::Text(frame))?;
                    metrics.pushed(source_time);
                }
                Output::Event { frame, source_time } => {
                    self.socket.start_send_unpin(text(frame))?;
                    metrics.stream_pushed(source_time);
                }
                Output::Ignored(reason) => metrics.ignored_frame(P::PROTOCOL, reason),
                Output::Limited(limit) => metrics.limited(limit),
                Output::Coalesced(skipped) => metrics.coalesced(skipped),
            }
        }
        std::future::poll_fn(|cx| self.socket.poll_flush_unpin(cx)).await
    }

    /// Ends the session for `reason`: what is pending, then the protocol's goodbye, then
    /// a moment for the client's closing frame. A client that is gone cannot be told,
    /// so write errors here do not change the reason.
    async fn close(&mut self, reason: CloseReason) -> Result<CloseReason, WsError> {
        let Some(goodbye) = reason.goodbye(P::PROTOCOL) else {
            return Ok(reason);
        };
        // Boxed: it runs once per session, at its end, and need not size every session.
        let _ = Box::pin(self.say_goodbye(goodbye)).await;
        Ok(reason)
    }

    async fn say_goodbye(&mut self, goodbye: Goodbye) -> Result<(), WsError> {
        self.write().await?;
        if let Some(frame) = goodbye.last_frame {
            self.socket.send(text(frame)).await?;
        }
        let frame = goodbye.close.map(|(code, reason)| CloseFrame {
            code: code.into(),
            reason: reason.into(),
        });
        self.socket.send(Message::Close(frame)).await?;
        let client_closed = async {
            while let Some(Ok(message)) = self.socket.next().await {
                if message.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, client_closed).await;
        self.socket.close().await
    }
}

/// Whether the table has caught up; false when the feed is gone (the edge is stopping).
async fn table_caught_up(ready: &tokio::sync::watch::Receiver<bool>) -> bool {
    let mut ready = ready.clone();
    ready.wait_for(|ready| *ready).await.is_ok()
}

fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

/// The next change of the count, or never for a session without one: a poll of the
/// subscription, which holds the waker, so that the future every session holds for its
/// whole life is a reference.
fn count_changed(mut counts: Option<&mut CountSubscription>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match counts.as_deref_mut() {
        Some(counts) => counts.poll_changed(cx),
        None => std::task::Poll::Pending,
    })
}

/// The next stream event (`None`: the hub ended the subscription), or never without one.
fn next_event(
    events: Option<&Events>,
) -> impl std::future::Future<Output = Option<std::sync::Arc<StreamFrame>>> + '_ {
    std::future::poll_fn(move |cx| match events {
        Some(events) => events.subscription.poll_next(cx),
        None => std::task::Poll::Pending,
    })
}

/// The next tick of `interval`, or never. A poll of the interval rather than its
/// `tick()` future, which every session would hold.
fn tick(mut interval: Option<&mut Interval>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match interval.as_deref_mut() {
        Some(interval) => interval.poll_tick(cx).map(|_| ()),
        None => std::task::Poll::Pending,
    })
}

/// Completes when `deadline` passes, or never.
async fn until(deadline: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(deadline) => deadline.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
