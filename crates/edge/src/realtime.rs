//! The JSON "RealTime API" session of one connection (`/realtime`), generic over the
//! socket's `Sink`/`Stream` so it can be driven without a network in tests.
//!
//! The client authenticates in band: until an `authrequest` succeeds it gets `pong`s
//! and errors, never data. After [`MAX_AUTH_FAILURES`] refused tokens the connection
//! closes with 4401; with no success within `auth_timeout_ms`, with 4408. Once
//! authenticated it gets its count right after the `authresponse` and every change
//! after it. On shutdown every client gets 1012 (service restart) and reconnects.
//! Limits close with their own codes: 1009 (frame size), 4429 (requests per second),
//! 4403 (origin not allowed for the token's partner), 1013 (connection limit).

use std::time::Duration;

use fanout_protocol::realtime::{
    self, AuthErrorCode, CLOSE_AUTH_FAILED, CLOSE_AUTH_TIMEOUT, CLOSE_MESSAGE_TOO_BIG,
    CLOSE_ORIGIN_NOT_ALLOWED, CLOSE_RATE_LIMITED, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER,
    ClientFrame, ErrorCode, FrameError, RequestId,
};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::close::CloseReason;
use crate::limits::{CommandRate, Limit};
use crate::server::Edge;
use crate::table::CountSubscription;

/// The protocol's label in metrics.
pub const PROTOCOL: &str = "realtime";

/// Refused `authrequest`s one connection may make before it is closed with 4401: a
/// client with a stale token gets its answer, a token guesser gets little.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// How long a close waits for the client's closing frame. Waiting lets the client read
/// our close code before the TCP connection ends; not waiting forever bounds a drain.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

/// Runs one `/realtime` connection, from just after the upgrade until the client leaves
/// or the edge closes it. `origin` is the upgrade request's `Origin` header.
pub async fn run<S>(
    socket: &mut S,
    edge: &Edge,
    origin: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<CloseReason, WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _open = edge.metrics.open_connection(PROTOCOL);
    let mut rate = CommandRate::new(edge.config.max_commands_per_second, Instant::now());
    let auth_timeout = Duration::from_millis(edge.config.auth_timeout_ms);
    let (identity, auth_id) =
        match authenticate(socket, edge, auth_timeout, &mut rate, shutdown).await? {
            Authenticated::Yes(identity, auth_id) => (identity, auth_id),
            Authenticated::No(reason) => return Ok(reason),
        };
    // The partner named by the token decides the page's origin and its share of the
    // node; the token is spent either way.
    let _partner_slot = match edge.admit(&identity.partner, origin) {
        Ok(slot) => slot,
        Err(reason) => {
            edge.metrics.handshake("limited");
            let (code, close_code, why) = match reason {
                CloseReason::OriginNotAllowed => (
                    AuthErrorCode::OriginNotAllowed,
                    CLOSE_ORIGIN_NOT_ALLOWED,
                    "origin not allowed",
                ),
                _ => (
                    AuthErrorCode::TryAgainLater,
                    CLOSE_TRY_AGAIN_LATER,
                    "connection limit",
                ),
            };
            socket
                .send(text(realtime::auth_failure(code, auth_id.as_ref())))
                .await?;
            close(socket, close_code, why).await?;
            return Ok(reason);
        }
    };
    edge.metrics.handshake("accepted");
    // No authresponse, and so no count, before the table has caught up: a count read
    // from a table still loading could be older than one the client has already shown.
    let mut ready = edge.ready.clone();
    let caught_up = tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        // An error means the feed is gone: the edge is stopping.
        caught_up = ready.wait_for(|ready| *ready) => caught_up.is_ok(),
    };
    if !caught_up {
        close(socket, CLOSE_SERVICE_RESTART, "server restart").await?;
        return Ok(CloseReason::ServerRestart);
    }
    serve(
        socket,
        edge,
        &identity,
        auth_id.as_ref(),
        &mut rate,
        shutdown,
    )
    .await
}

/// How the unauthenticated part of a connection ended.
enum Authenticated {
    Yes(Identity, Option<RequestId>),
    No(CloseReason),
}

/// Before auth: answers pings, refuses everything else, and tries each `authrequest`.
async fn authenticate<S>(
    socket: &mut S,
    edge: &Edge,
    auth_timeout: Duration,
    rate: &mut CommandRate,
    shutdown: &CancellationToken,
) -> Result<Authenticated, WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let metrics = &edge.metrics;
    let deadline = tokio::time::sleep_until(Instant::now() + auth_timeout);
    tokio::pin!(deadline);
    let mut failures = 0;
    loop {
        let frame = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                close(socket, CLOSE_SERVICE_RESTART, "server restart").await?;
                return Ok(Authenticated::No(CloseReason::ServerRestart));
            }
            () = &mut deadline => {
                metrics.handshake("auth_timeout");
                metrics.limited(Limit::AuthTimeout);
                close(socket, CLOSE_AUTH_TIMEOUT, "auth timeout").await?;
                return Ok(Authenticated::No(CloseReason::AuthTimeout));
            }
            incoming = socket.next() => match read_request(socket, incoming, edge, rate).await? {
                Incoming::Request(frame) => frame,
                Incoming::Answered => continue,
                Incoming::Ended(reason) => return Ok(Authenticated::No(reason)),
            },
        };
        match frame {
            ClientFrame::Ping { id } => socket.send(text(realtime::pong(id.as_ref()))).await?,
            ClientFrame::GetUnreadCount { id } => {
                metrics.ignored_frame(PROTOCOL, ErrorCode::NotAuthenticated.as_str());
                socket
                    .send(text(realtime::error(
                        ErrorCode::NotAuthenticated,
                        id.as_ref(),
                    )))
                    .await?;
            }
            ClientFrame::AuthRequest { token, partner, id } => {
                match edge.auth.authenticate(Some(&partner), Some(&token)) {
                    Ok(identity) => return Ok(Authenticated::Yes(identity, id)),
                    Err(error) => {
                        metrics.auth_failed(!partner.is_empty(), error.reason());
                        failures += 1;
                        socket
                            .send(text(realtime::auth_failure(error.code(), id.as_ref())))
                            .await?;
                        if failures >= MAX_AUTH_FAILURES {
                            metrics.handshake("unauthorized");
                            close(socket, CLOSE_AUTH_FAILED, "authentication failed").await?;
                            return Ok(Authenticated::No(CloseReason::Unauthorized));
                        }
                    }
                }
            }
        }
    }
}

/// After auth: the count right away, every change after it, and replies to requests.
async fn serve<S>(
    socket: &mut S,
    edge: &Edge,
    identity: &Identity,
    auth_id: Option<&RequestId>,
    rate: &mut CommandRate,
    shutdown: &CancellationToken,
) -> Result<CloseReason, WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let metrics = &edge.metrics;
    let mut counts = edge.table.subscription(&identity.key());
    let (value, _) = counts.take();
    socket.feed(text(realtime::auth_success(auth_id))).await?;
    socket
        .feed(text(realtime::unread_count(value.count, None)))
        .await?;
    socket.flush().await?;
    metrics.pushed(0);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                close(socket, CLOSE_SERVICE_RESTART, "server restart").await?;
                return Ok(CloseReason::ServerRestart);
            }
            incoming = socket.next() => {
                let frame = match read_request(socket, incoming, edge, rate).await? {
                    Incoming::Request(frame) => frame,
                    Incoming::Answered => continue,
                    Incoming::Ended(reason) => return Ok(reason),
                };
                match frame {
                    ClientFrame::Ping { id } => {
                        socket.send(text(realtime::pong(id.as_ref()))).await?;
                    }
                    ClientFrame::GetUnreadCount { id } => {
                        reply_count(socket, &mut counts, id.as_ref(), edge).await?;
                    }
                    ClientFrame::AuthRequest { id, .. } => {
                        metrics.ignored_frame(PROTOCOL, ErrorCode::AlreadyAuthenticated.as_str());
                        socket
                            .send(text(realtime::error(ErrorCode::AlreadyAuthenticated, id.as_ref())))
                            .await?;
                    }
                }
            }
            changed = counts.receiver.changed() => {
                if changed.is_err() {
                    // The table is gone: the edge is stopping.
                    close(socket, CLOSE_SERVICE_RESTART, "server restart").await?;
                    return Ok(CloseReason::ServerRestart);
                }
                let (value, skipped) = counts.take();
                metrics.coalesced(skipped);
                socket.send(text(realtime::unread_count(value.count, None))).await?;
                metrics.pushed(value.occurred_at_ms);
            }
        }
    }
}

/// Replies to `get_unread_count` with the newest count. A change not yet pushed is
/// delivered by this reply (it carries the same count), so it is not pushed again.
async fn reply_count<S>(
    socket: &mut S,
    counts: &mut CountSubscription,
    id: Option<&RequestId>,
    edge: &Edge,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let unseen_change = counts.receiver.has_changed().unwrap_or(false);
    let (value, skipped) = counts.take();
    edge.metrics.coalesced(skipped);
    socket
        .send(text(realtime::unread_count(value.count, id)))
        .await?;
    edge.metrics.pushed(if unseen_change {
        value.occurred_at_ms
    } else {
        0
    });
    Ok(())
}

/// What a socket read came to.
enum Incoming {
    /// A request for the caller to handle.
    Request(ClientFrame),
    /// Nothing to do, or already answered (an error reply).
    Answered,
    /// The connection is over.
    Ended(CloseReason),
}

/// Decodes one socket read, answering what is not a request: a frame that does not
/// decode gets an `error` reply (its `id` echoed when it had a readable one). A frame
/// over the size limit or over the command rate closes the connection.
async fn read_request<S>(
    socket: &mut S,
    incoming: Option<Result<Message, WsError>>,
    edge: &Edge,
    rate: &mut CommandRate,
) -> Result<Incoming, WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let metrics = &edge.metrics;
    let message = match incoming {
        None => return Ok(Incoming::Ended(CloseReason::Client)),
        Some(Ok(message)) => message,
        Some(Err(WsError::Capacity(_))) => {
            // The WebSocket layer refuses a frame over `max_frame_bytes` and cannot read
            // on; say why instead of just dropping the connection.
            metrics.limited(Limit::FrameSize);
            let frame = CloseFrame {
                code: CLOSE_MESSAGE_TOO_BIG.into(),
                reason: "frame too large".into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return Ok(Incoming::Ended(CloseReason::FrameTooLarge));
        }
        Some(Err(error)) => return Err(error),
    };
    if matches!(message, Message::Text(_) | Message::Binary(_)) && !rate.allow(Instant::now()) {
        metrics.limited(Limit::CommandRate);
        close(socket, CLOSE_RATE_LIMITED, "too many requests").await?;
        return Ok(Incoming::Ended(CloseReason::RateLimited));
    }
    match message {
        Message::Text(frame) => match realtime::decode(frame.as_bytes()) {
            Ok(request) => Ok(Incoming::Request(request)),
            Err(FrameError { kind, id }) => {
                metrics.ignored_frame(PROTOCOL, kind.as_str());
                socket
                    .send(text(realtime::error(kind.reply_code(), id.as_ref())))
                    .await?;
                Ok(Incoming::Answered)
            }
        },
        Message::Binary(_) => {
            metrics.ignored_frame(PROTOCOL, "binary");
            socket
                .send(text(realtime::error(ErrorCode::Malformed, None)))
                .await?;
            Ok(Incoming::Answered)
        }
        // Close replies, pings and pongs are answered by the WebSocket layer.
        Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
            Ok(Incoming::Answered)
        }
    }
}

/// Closes with `code`, then waits a moment for the client's closing frame.
async fn close<S>(socket: &mut S, code: u16, reason: &'static str) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    socket.send(Message::Close(Some(frame))).await?;
    let client_closed = async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, client_closed).await;
    socket.close().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{EdgeConfig, PartnerConfig, SecretConfig};
    use crate::metrics::EdgeMetrics;
    use crate::table::{CountTable, CountValue};
    use crate::test_socket::{ChannelSocket, Peer};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::sync::Arc;
    use tokio::sync::watch;

    const SECRET: &str = "acme-secret-0123456789";

    struct Harness {
        peer: Peer,
        edge: Arc<Edge>,
        ready: watch::Sender<bool>,
        shutdown: CancellationToken,
        session: tokio::task::JoinHandle<Result<CloseReason, WsError>>,
    }

    fn start() -> Harness {
        start_with(true)
    }

    fn start_with(ready: bool) -> Harness {
        start_configured(ready, |_| {})
    }

    fn start_configured(ready: bool, configure: impl FnOnce(&mut EdgeConfig)) -> Harness {
        let (mut socket, peer) = ChannelSocket::pair();
        let mut config = EdgeConfig::default();
        config.partners.insert(
            "acme".to_owned(),
            PartnerConfig {
                secrets: vec![SecretConfig {
                    kid: None,
                    secret: SECRET.to_owned(),
                }],
                ..PartnerConfig::default()
            },
        );
        configure(&mut config);
        let (ready_tx, ready_rx) = watch::channel(ready);
        let metrics = EdgeMetrics::new(&prometheus::Registry::new()).unwrap();
        let edge =
            Arc::new(Edge::new(config, Arc::new(CountTable::new()), metrics, ready_rx).unwrap());
        let shutdown = CancellationToken::new();
        let session = {
            let edge = edge.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                run(&mut socket, &edge, Some("https://app.acme.com"), &shutdown).await
            })
        };
        Harness {
            peer,
            edge,
            ready: ready_tx,
            shutdown,
            session,
        }
    }

    fn token(secret: &str, user: &str, expires_in_seconds: i64) -> String {
        let now = crate::server::unix_millis() / 1000;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({
                "uniqueId": user,
                "exp": now + expires_in_seconds,
                "iat": now,
                "jti": crate::replay::tests_support::fresh_id(),
            }),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn auth_request(token: &str, partner: &str, id: &str) -> String {
        format!(r#"{{"type":"authrequest","token":"{token}","partner":"{partner}","id":{id}}}"#)
    }

    impl Harness {
        fn send(&self, frame: &str) {
            self.peer.send(frame);
        }

        async fn next(&mut self) -> String {
            self.peer.next().await
        }

        /// The close frame's code and reason; then the session ends.
        async fn next_close(&mut self) -> (u16, String) {
            let close = match self.peer.from_session.next().await.unwrap() {
                Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
                other => panic!("expected a close, got {other:?}"),
            };
            assert!(self.peer.from_session.next().await.is_none());
            close
        }

        fn set_count(&self, count: u64, version: u64) {
            self.edge.table.apply(
                "acme/bob",
                CountValue {
                    count,
                    version,
                    occurred_at_ms: 0,
                    changes: 0,
                },
            );
        }

        async fn authenticate(&mut self) {
            self.send(&auth_request(
                &token(SECRET, "bob", 60),
                "acme",
                r#""auth""#,
            ));
            assert_eq!(
                self.next().await,
                r#"{"type":"authresponse","success":true,"id":"auth"}"#
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn auth_then_the_count_then_every_change() {
        let mut harness = start();
        harness.set_count(4, 1);
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":4}"#);
        harness.set_count(5, 2);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":5}"#);
        // An older version never reaches the client.
        harness.set_count(99, 1);
        harness.set_count(6, 3);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":6}"#);
        harness.send(r#"{"type":"get_unread_count","id":"q1"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":6,"id":"q1"}"#
        );
        harness.send(r#"{"type":"get_unread_count","id":12}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":6,"id":12}"#
        );
        assert_eq!(harness.edge.metrics.handshake_count("accepted"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_delivers_a_change_is_not_followed_by_the_same_push() {
        let mut harness = start();
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
        // Both are pending when the session next runs; the request is served first
        // and its reply carries the new count.
        harness.set_count(8, 1);
        harness.send(r#"{"type":"get_unread_count","id":1}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":8,"id":1}"#
        );
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn before_auth_pings_are_answered_and_everything_else_refused() {
        let mut harness = start();
        harness.set_count(3, 1);
        harness.send(r#"{"type":"ping","id":"p"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong","id":"p"}"#);
        harness.send(r#"{"type":"get_unread_count","id":"x"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"not_authenticated","id":"x"}"#
        );
        harness.send(r#"{"type":"subscribe","id":2}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"unknown_type","id":2}"#
        );
        harness.send("garbage");
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        harness.send(r#"{"type":"authrequest","partner":"acme","id":3}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed","id":3}"#
        );
        harness
            .peer
            .to_session
            .unbounded_send(Ok(Message::Binary(vec![1, 2].into())))
            .unwrap();
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        // A count change reaches no one before auth.
        harness.set_count(4, 2);
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        let metrics = &harness.edge.metrics;
        assert_eq!(
            metrics.ignored_frame_count(PROTOCOL, "not_authenticated"),
            1
        );
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "unknown_type"), 1);
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "not_json"), 1);
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "missing_field"), 1);
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "binary"), 1);
        // Malformed requests are not failed auth attempts.
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":4}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn after_auth_requests_are_served_and_a_second_auth_refused() {
        let mut harness = start();
        harness.authenticate().await;
        harness.next().await;
        harness.send(r#"{"type":"ping","id":-1.5}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong","id":-1.5}"#);
        harness.send(&auth_request(&token(SECRET, "eve", 60), "acme", "9"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"already_authenticated","id":9}"#
        );
        harness.send(r#"{"type":"get_unread_count","id":"z","id":"y"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        harness.send(r#"{"id":"t"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed","id":"t"}"#
        );
        // Still bob's count: the second token changed nothing.
        harness.edge.table.apply(
            "acme/eve",
            CountValue {
                count: 50,
                version: 1,
                occurred_at_ms: 0,
                changes: 0,
            },
        );
        harness.send(r#"{"type":"get_unread_count"}"#);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
        let metrics = &harness.edge.metrics;
        assert_eq!(
            metrics.ignored_frame_count(PROTOCOL, "already_authenticated"),
            1
        );
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "duplicate_key"), 1);
        assert_eq!(metrics.ignored_frame_count(PROTOCOL, "missing_type"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn three_refused_tokens_close_with_4401() {
        let mut harness = start();
        harness.send(&auth_request(
            &token("wrong-secret", "bob", 60),
            "acme",
            "1",
        ));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"invalid_signature","id":1}"#
        );
        harness.send(&auth_request(&token(SECRET, "bob", -600), "acme", "2"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"expired","id":2}"#
        );
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        harness.send(&auth_request(&token(SECRET, "bob", 60), "initech", "3"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"unknown_partner","id":3}"#
        );
        assert_eq!(
            harness.next_close().await,
            (4401, "authentication failed".to_owned())
        );
        harness.session.await.unwrap().unwrap();
        let metrics = &harness.edge.metrics;
        assert_eq!(metrics.auth_failure_count("invalid_signature"), 1);
        assert_eq!(metrics.auth_failure_count("expired"), 1);
        assert_eq!(metrics.auth_failure_count("unknown_partner"), 1);
        assert_eq!(metrics.handshake_count("unauthorized"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_token_after_two_refused_ones_is_accepted() {
        let mut harness = start();
        for id in ["1", "2"] {
            harness.send(&auth_request("not-a-jwt", "acme", id));
            assert_eq!(
                harness.next().await,
                format!(
                    r#"{{"type":"authresponse","success":false,"error":"malformed_token","id":{id}}}"#
                )
            );
        }
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn no_auth_in_time_closes_with_4408() {
        let mut harness = start();
        let started = Instant::now();
        // Requests do not extend the deadline.
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        assert_eq!(
            harness.next_close().await,
            (4408, "auth timeout".to_owned())
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(10_000) && waited < Duration::from_millis(12_000),
            "{waited:?}"
        );
        assert_eq!(harness.edge.metrics.handshake_count("auth_timeout"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_authresponse_waits_for_a_caught_up_table() {
        let mut harness = start_with(false);
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        let early = tokio::time::timeout(Duration::from_secs(30), harness.next()).await;
        assert!(early.is_err(), "replied before ready: {early:?}");
        harness.set_count(2, 1);
        harness.ready.send(true).unwrap();
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":true,"id":1}"#
        );
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":2}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_with_1012_before_and_after_auth() {
        let mut before = start();
        before.shutdown.cancel();
        assert_eq!(
            before.next_close().await,
            (1012, "server restart".to_owned())
        );
        before.session.await.unwrap().unwrap();

        let mut after = start();
        after.authenticate().await;
        after.next().await;
        after.shutdown.cancel();
        assert_eq!(
            after.next_close().await,
            (1012, "server restart".to_owned())
        );
        after.session.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_closes_with_1009() {
        let mut harness = start();
        harness
            .peer
            .to_session
            .unbounded_send(Err(WsError::Capacity(
                tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                    size: 100_000,
                    max_size: 65_536,
                },
            )))
            .unwrap();
        match harness.peer.from_session.next().await.unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
            other => panic!("expected a close, got {other:?}"),
        }
        assert_eq!(
            harness.session.await.unwrap().unwrap(),
            CloseReason::FrameTooLarge
        );
        assert_eq!(harness.edge.metrics.limited_count("frame_size"), 1);
    }

    async fn close_code(harness: &mut Harness) -> u16 {
        loop {
            match harness.peer.from_session.next().await.unwrap() {
                Message::Close(Some(frame)) => return u16::from(frame.code),
                Message::Text(_) => {}
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn more_requests_per_second_than_allowed_close_with_4429() {
        let mut harness = start_configured(true, |config| config.max_commands_per_second = 5);
        harness.authenticate().await;
        // A burst of five is fine; the sixth in the same instant is not.
        for _ in 0..6 {
            harness.send(r#"{"type":"ping"}"#);
        }
        assert_eq!(close_code(&mut harness).await, 4429);
        assert_eq!(
            harness.session.await.unwrap().unwrap(),
            CloseReason::RateLimited
        );
        assert_eq!(harness.edge.metrics.limited_count("command_rate"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_off_the_partners_list_is_refused_after_auth() {
        let mut harness = start_configured(true, |config| {
            if let Some(acme) = config.partners.get_mut("acme") {
                acme.allowed_origins = vec!["https://other.acme.com".to_owned()];
            }
        });
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"origin_not_allowed","id":1}"#
        );
        assert_eq!(close_code(&mut harness).await, 4403);
        assert_eq!(
            harness.session.await.unwrap().unwrap(),
            CloseReason::OriginNotAllowed
        );
        assert_eq!(harness.edge.metrics.limited_count("origin"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_partner_gets_try_again_later_and_1013() {
        let mut harness = start_configured(true, |config| {
            if let Some(acme) = config.partners.get_mut("acme") {
                acme.max_connections = Some(1);
            }
        });
        // Another connection of the partner holds its one place.
        let held = harness.edge.limits.partner_slot("acme").unwrap();
        assert!(held.is_some());
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"try_again_later","id":1}"#
        );
        assert_eq!(close_code(&mut harness).await, 1013);
        assert_eq!(harness.edge.metrics.limited_count("partner_connections"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_the_session_had_no_turn_for_are_coalesced() {
        let mut harness = start();
        harness.authenticate().await;
        // 10 000 changes arrive before the session runs again: it holds one value, not
        // a queue, and writes only the newest.
        for version in 1..=10_000 {
            harness.set_count(version, version);
        }
        tokio::task::yield_now().await;
        let mut last = String::new();
        while let Ok(Some(Message::Text(frame))) =
            tokio::time::timeout(Duration::from_millis(50), harness.peer.from_session.next()).await
        {
            last = frame.to_string();
        }
        assert_eq!(last, r#"{"type":"unread_count","count":10000}"#);
        let coalesced = harness.edge.metrics.coalesced_count();
        assert!(coalesced >= 9_990, "{coalesced}");
    }
}
