//! The ActionCable session of one connection (`/cable`), generic over the socket's
//! `Sink`/`Stream` so it can be driven without a network in tests.

use std::time::Duration;

use fanout_protocol::cable::{self, Command, DisconnectReason};
use fanout_protocol::realtime::{CLOSE_MESSAGE_TOO_BIG, CLOSE_RATE_LIMITED};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::close::CloseReason;
use crate::config::EdgeConfig;
use crate::limits::{CommandRate, Limit};
use crate::metrics::EdgeMetrics;
use crate::table::{CountSubscription, CountTable, CountValue};

/// The protocol's label in metrics.
pub const PROTOCOL: &str = "cable";

/// The one channel fanout serves.
pub const PARTNER_CHANNEL: &str = "PartnerChannel";

/// A session's timings and limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub ping_interval: Duration,
    pub max_subscriptions: usize,
    pub max_commands_per_second: u32,
}

impl From<&EdgeConfig> for SessionSettings {
    fn from(config: &EdgeConfig) -> Self {
        Self {
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            max_subscriptions: config.max_subscriptions_per_connection,
            max_commands_per_second: config.max_commands_per_second,
        }
    }
}

fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

/// Refuses a connection the way Rails does: the `unauthorized` disconnect frame, with
/// `reconnect: false` so the official client stops trying, then a close. No welcome.
pub async fn refuse<S>(socket: &mut S) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    socket
        .send(text(cable::disconnect(
            DisconnectReason::Unauthorized,
            false,
        )))
        .await?;
    socket.close().await
}

/// Closes with a close code (ActionCable clients ignore it; it tells the rest).
pub async fn close<S>(socket: &mut S, code: u16, reason: &'static str) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    socket.send(Message::Close(Some(frame))).await?;
    socket.close().await
}

/// The rare ends of a session: an optional disconnect frame, then a close (with a code,
/// if given). Callers box it where they await it, so that its future does not size
/// every session for its whole life.
async fn goodbye<S>(
    socket: &mut S,
    disconnect: Option<(DisconnectReason, bool)>,
    code: Option<(u16, &'static str)>,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    if let Some((reason, reconnect)) = disconnect {
        socket
            .send(text(cable::disconnect(reason, reconnect)))
            .await?;
    }
    match code {
        Some((code, reason)) => close(socket, code, reason).await,
        None => socket.close().await,
    }
}

/// Runs an authenticated session until the client leaves, a limit ends it, or
/// `shutdown` is cancelled.
pub async fn run<S>(
    socket: &mut S,
    identity: &Identity,
    table: &CountTable,
    settings: SessionSettings,
    metrics: &EdgeMetrics,
    shutdown: &CancellationToken,
) -> Result<CloseReason, WsError>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut counts = table.subscription(&identity.key());
    let mut subscriptions: Vec<String> = Vec::new();
    let mut rate = CommandRate::new(settings.max_commands_per_second, Instant::now());
    socket.send(text(cable::welcome())).await?;
    let ping_interval = settings.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                Box::pin(goodbye(socket, Some((DisconnectReason::ServerRestart, true)), None)).await?;
                return Ok(CloseReason::ServerRestart);
            }
            incoming = socket.next() => {
                let message = match incoming {
                    None => return Ok(CloseReason::Client),
                    Some(Err(WsError::Capacity(_))) => {
                        // The WebSocket layer refused a frame over `max_frame_bytes`
                        // and cannot read on: say why instead of just dropping.
                        metrics.limited(Limit::FrameSize);
                        let too_big = Some((CLOSE_MESSAGE_TOO_BIG, "frame too large"));
                        let _ = Box::pin(goodbye(socket, None, too_big)).await;
                        return Ok(CloseReason::FrameTooLarge);
                    }
                    Some(message) => message?,
                };
                if matches!(message, Message::Text(_) | Message::Binary(_)) && !rate.allow(Instant::now()) {
                    metrics.limited(Limit::CommandRate);
                    let disconnect = Some((DisconnectReason::InvalidRequest, false));
                    let code = Some((CLOSE_RATE_LIMITED, "too many commands"));
                    Box::pin(goodbye(socket, disconnect, code)).await?;
                    return Ok(CloseReason::RateLimited);
                }
                match message {
                    Message::Text(frame) => {
                        Box::pin(handle_command(socket, frame.as_bytes(), &mut subscriptions, &mut counts, settings, metrics)).await?;
                    }
                    Message::Binary(_) => metrics.ignored_frame(PROTOCOL, "binary"),
                    // Close replies, pings and pongs are answered by the WebSocket layer.
                    Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            changed = counts.receiver.changed(), if !subscriptions.is_empty() => {
                if changed.is_err() {
                    // The table is gone: the edge is shutting down.
                    socket.close().await?;
                    return Ok(CloseReason::ServerRestart);
                }
                let (value, skipped) = counts.take();
                metrics.coalesced(skipped);
                push(socket, &subscriptions, value, metrics).await?;
            }
            _ = ping.tick() => {
                socket.send(text(cable::ping(unix_seconds()))).await?;
            }
        }
    }
}

async fn handle_command<S>(
    socket: &mut S,
    frame: &[u8],
    subscriptions: &mut Vec<String>,
    counts: &mut CountSubscription,
    settings: SessionSettings,
    metrics: &EdgeMetrics,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let command = match cable::decode_command(frame) {
        Ok(command) => command,
        Err(error) => {
            // Rails logs and ignores what it cannot execute; so do we.
            metrics.ignored_frame(PROTOCOL, error.as_str());
            return Ok(());
        }
    };
    match command {
        Command::Subscribe { identifier } => {
            let Some(channel) = cable::parse_identifier(&identifier) else {
                metrics.ignored_frame(PROTOCOL, "bad_identifier");
                return Ok(());
            };
            if channel.channel != PARTNER_CHANNEL {
                return socket
                    .send(text(cable::reject_subscription(&identifier)))
                    .await;
            }
            if subscriptions.contains(&identifier) {
                // Rails ignores a subscribe to an identifier already subscribed.
                metrics.ignored_frame(PROTOCOL, "duplicate_subscribe");
                return Ok(());
            }
            if subscriptions.len() >= settings.max_subscriptions {
                metrics.limited(Limit::Subscriptions);
                return socket
                    .send(text(cable::reject_subscription(&identifier)))
                    .await;
            }
            // A change not yet pushed to the existing subscriptions goes to them too,
            // since reading the value below marks it seen.
            let others_missed_a_change = counts.receiver.has_changed().unwrap_or(false);
            let (value, skipped) = counts.take();
            metrics.coalesced(skipped);
            socket
                .feed(text(cable::confirm_subscription(&identifier)))
                .await?;
            socket
                .feed(text(cable::unread_count(&identifier, value.count)))
                .await?;
            metrics.pushed(0);
            if others_missed_a_change {
                push(socket, subscriptions, value, metrics).await?;
            }
            subscriptions.push(identifier);
            socket.flush().await
        }
        Command::Unsubscribe { identifier } => {
            subscriptions.retain(|subscribed| *subscribed != identifier);
            Ok(())
        }
        // PartnerChannel has no actions: like Rails for an unknown action, no reply.
        Command::Message { .. } => {
            metrics.ignored_frame(PROTOCOL, "unknown_action");
            Ok(())
        }
    }
}

async fn push<S>(
    socket: &mut S,
    subscriptions: &[String],
    value: CountValue,
    metrics: &EdgeMetrics,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    for identifier in subscriptions {
        socket
            .feed(text(cable::unread_count(identifier, value.count)))
            .await?;
    }
    socket.flush().await?;
    for _ in subscriptions {
        metrics.pushed(value.occurred_at_ms);
    }
    Ok(())
}

fn unix_seconds() -> u64 {
    u64::try_from(crate::server::unix_millis() / 1000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_socket::{ChannelSocket, Peer};

    struct Harness {
        peer: Peer,
        table: std::sync::Arc<CountTable>,
        shutdown: CancellationToken,
        metrics: EdgeMetrics,
        session: tokio::task::JoinHandle<Result<CloseReason, WsError>>,
    }

    fn start() -> Harness {
        start_with(SessionSettings::from(&EdgeConfig::default()))
    }

    fn start_with(settings: SessionSettings) -> Harness {
        let (mut socket, peer) = ChannelSocket::pair();
        let table = std::sync::Arc::new(CountTable::new());
        let shutdown = CancellationToken::new();
        let metrics = EdgeMetrics::new(&prometheus::Registry::new()).unwrap();
        let session = {
            let table = table.clone();
            let shutdown = shutdown.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let identity = Identity {
                    partner: "acme".into(),
                    user: "bob".into(),
                };
                run(
                    &mut socket,
                    &identity,
                    &table,
                    settings,
                    &metrics,
                    &shutdown,
                )
                .await
            })
        };
        Harness {
            peer,
            table,
            shutdown,
            metrics,
            session,
        }
    }

    impl Harness {
        fn send(&self, frame: &str) {
            self.peer.send(frame);
        }

        async fn next(&mut self) -> String {
            self.peer.next().await
        }

        fn set_count(&self, count: u64, version: u64) {
            self.table.apply(
                "acme/bob",
                CountValue {
                    count,
                    version,
                    occurred_at_ms: 0,
                    changes: 0,
                },
            );
        }
    }

    const SUBSCRIBE: &str =
        r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
    const CONFIRM: &str =
        r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#;

    fn count_frame(count: u64) -> String {
        cable::unread_count(r#"{"channel":"PartnerChannel"}"#, count)
    }

    #[tokio::test(start_paused = true)]
    async fn welcome_subscribe_count_and_changes() {
        let mut harness = start();
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        harness.set_count(4, 1);
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(4));
        harness.set_count(5, 2);
        assert_eq!(harness.next().await, count_frame(5));
        // An older version never reaches the client.
        harness.set_count(99, 1);
        harness.set_count(6, 3);
        assert_eq!(harness.next().await, count_frame(6));
    }

    #[tokio::test(start_paused = true)]
    async fn commands_sent_before_the_welcome_are_processed_after_it() {
        let mut harness = start();
        // Queued before the session has run at all.
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(0));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_three_seconds() {
        let mut harness = start();
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        let ping = harness.next().await;
        let parsed: serde_json::Value = serde_json::from_str(&ping).unwrap();
        assert_eq!(parsed["type"], "ping");
        assert!(parsed["message"].as_u64().unwrap() > 1_600_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_subscribe_is_ignored_and_unknown_channel_rejected() {
        let mut harness = start();
        harness.next().await;
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(0));
        harness.send(SUBSCRIBE);
        harness.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"AdminChannel\"}"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"identifier":"{\"channel\":\"AdminChannel\"}","type":"reject_subscription"}"#
        );
        assert_eq!(
            harness
                .metrics
                .ignored_frame_count(PROTOCOL, "duplicate_subscribe"),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_frames_are_ignored_without_closing() {
        let mut harness = start();
        harness.next().await;
        for frame in [
            "garbage",
            "{}",
            r#"{"command":"subscribe","identifier":7}"#,
            r#"{"command":"dance"}"#,
        ] {
            harness.send(frame);
        }
        harness
            .peer
            .to_session
            .unbounded_send(Ok(Message::Binary(vec![1, 2, 3].into())))
            .unwrap();
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(
            harness.metrics.ignored_frame_count(PROTOCOL, "malformed"),
            1
        );
        assert_eq!(
            harness
                .metrics
                .ignored_frame_count(PROTOCOL, "unknown_command"),
            2
        );
        assert_eq!(
            harness
                .metrics
                .ignored_frame_count(PROTOCOL, "bad_identifier"),
            1
        );
        assert_eq!(harness.metrics.ignored_frame_count(PROTOCOL, "binary"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unsubscribe_stops_pushes() {
        let mut harness = start();
        harness.next().await;
        harness.send(SUBSCRIBE);
        harness.next().await;
        harness.next().await;
        harness
            .send(r#"{"command":"unsubscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#);
        tokio::task::yield_now().await;
        harness.set_count(3, 1);
        // The next frame is the ping 3 s after the start, not a count.
        let frame = harness.next().await;
        assert!(frame.starts_with(r#"{"type":"ping""#), "{frame}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_server_restart_with_reconnect() {
        let mut harness = start();
        harness.next().await;
        harness.shutdown.cancel();
        assert_eq!(
            harness.next().await,
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        assert!(harness.peer.from_session.next().await.is_none());
        harness.session.await.unwrap().unwrap();
    }
}
