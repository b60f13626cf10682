//! The ActionCable session (`/cable`) as a state machine: authenticated by the upgrade
//! request's query (or, without `jwt`, by each RoomChannel subscription's
//! `pubsub_token`), `welcome` once admitted, pings every `ping_interval_ms`, and
//! subscriptions to its channels: `PartnerChannel` gets the current count and every
//! change; `RoomChannel` gets the user's event stream, as Chatwoot's does. A new channel
//! is a [`Channel`] variant and its arms here.
//!
//! A client that offers `actioncable-v1-ext-json` (AnyCable's extended protocol, which
//! `@anycable/web` speaks) also gets: a `sid` in `welcome`, by which it can restore the
//! session on reconnect (`welcome` with `restored`); RoomChannel messages with their
//! `stream_id`, `epoch` and `offset`; and `history` (with a subscribe, or on its own),
//! answered with the missed events then `confirm_history`, or with `reject_history`
//! when the window no longer holds them all. A plain `actioncable-v1-json` client sees
//! none of it.

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::cable::{self, Command, HistoryRequest};
use fanout_protocol::stream::Epoch;

use super::{
    AfterRefusal, CloseReason, Credentials, Opened, Outbox, Protocol, Session, StreamRequest,
};
use crate::auth::AuthError;
use crate::config::EdgeConfig;
use crate::frames::Shape;
use crate::limits::Limit;
use crate::streams::{NotResumable, Resume, Since, StreamFrame};
use crate::table::{CountSubscription, CountValue};
use crate::telemetry::{Ignored, StreamSubscribe};

/// The channel of the user's unread count.
pub const PARTNER_CHANNEL: &str = "PartnerChannel";

/// The channel of the user's event stream, as Chatwoot names it.
pub const ROOM_CHANNEL: &str = "RoomChannel";

/// The message a RoomChannel subscription gets before the server ends it because the
/// client fell behind (then `reject_subscription`, which the official client turns
/// into its `rejected` callback): subscribe again.
pub(super) const STREAM_OVERFLOW: &str =
    r#"{"event":"fanout.stream_ended","data":{"reason":"overflow"}}"#;

/// The channels a client can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// The user's unread count.
    Partner,
    /// The user's event stream.
    Room,
}

impl Channel {
    fn named(name: &str) -> Option<Self> {
        match name {
            PARTNER_CHANNEL => Some(Self::Partner),
            ROOM_CHANNEL => Some(Self::Room),
            _ => None,
        }
    }
}

/// One subscription: its identifier, echoed byte for byte in its frames (shared, as the
/// key of the frames it shares with the user's other sessions).
struct Subscription {
    identifier: Arc<str>,
    channel: Channel,
}

/// A RoomChannel request waiting for the driver's answer.
struct PendingRoom {
    identifier: Arc<str>,
    /// A subscribe (answered with `confirm_subscription`), not a `history` for a
    /// subscription held.
    subscribing: bool,
    /// How the history request is answered, when there was one.
    history: Option<HistoryAsked>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HistoryAsked {
    /// Answered by how the stream started.
    Answer,
    /// The position's epoch is not one fanout wrote: rejected whatever happens.
    Invalid,
}

/// The extended protocol's state. Boxed: plain clients carry none of it.
struct Extended {
    sid: String,
    /// The identifiers restored, for `welcome`; `None` for a new session.
    restored: Option<Vec<Box<str>>>,
    /// `confirm_history` for this identifier is due once the event at this offset
    /// (the last missed one) was written.
    confirm_after: Option<(Arc<str>, u64)>,
}

pub struct Cable {
    subscriptions: Vec<Subscription>,
    /// A RoomChannel subscribe or history waiting for the driver's answer.
    pending_room: Option<Box<PendingRoom>>,
    extended: Option<Box<Extended>>,
    // Copies of the config every connection holds: kept small.
    max_subscriptions: u16,
    ping_interval_ms: u32,
}

/// Where a history request asks the stream to start, and whether its position was
/// unreadable.
fn since_of(history: &HistoryRequest) -> (Since, Option<HistoryAsked>) {
    match history.streams.first() {
        Some((_, Some(position))) => (Since::After(*position), Some(HistoryAsked::Answer)),
        Some((_, None)) => (Since::Now, Some(HistoryAsked::Invalid)),
        None => match history.since {
            Some(seconds) => (
                Since::Time(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)),
                Some(HistoryAsked::Answer),
            ),
            None => (Since::Now, Some(HistoryAsked::Answer)),
        },
    }
}

/// Why history is rejected, as `reject_history`'s `reason`.
fn rejection(resume: Result<Resume, NotResumable>) -> Option<&'static str> {
    match resume {
        Ok(Resume::Live | Resume::Resumed { .. }) => None,
        Ok(Resume::Reset(reason)) => Some(reason.as_str()),
        Err(NotResumable::Foreign) => Some("foreign_position"),
        Err(NotResumable::Ahead) => Some("future_offset"),
    }
}

impl Cable {
    /// A plain ActionCable session; with `extended`, one speaking the extended
    /// protocol, whose session can be restored by `sid`.
    pub fn new(config: &EdgeConfig, extended: Option<String>) -> Self {
        Self {
            subscriptions: Vec::new(),
            pending_room: None,
            extended: extended.map(|sid| {
                Box::new(Extended {
                    sid,
                    restored: None,
                    confirm_after: None,
                })
            }),
            max_subscriptions: u16::try_from(config.max_subscriptions_per_connection)
                .unwrap_or(u16::MAX),
            ping_interval_ms: u32::try_from(config.ping_interval_ms).unwrap_or(u32::MAX),
        }
    }

    fn channel_of(&self, identifier: &str) -> Option<Channel> {
        self.subscriptions
            .iter()
            .find(|subscription| *subscription.identifier == *identifier)
            .map(|subscription| subscription.channel)
    }

    /// A `history` for a subscription held: RoomChannel's stream starts again from the
    /// position given; a count has no history, and is confirmed with the current one.
    fn history(
        &mut self,
        identifier: String,
        history: &HistoryRequest,
        counts: Option<&mut CountSubscription>,
        out: &mut Outbox,
    ) {
        match self.channel_of(&identifier) {
            None => {
                out.ignored(Ignored::UnknownSubscription);
                out.reply(cable::reject_history(&identifier, "not_subscribed"));
            }
            Some(Channel::Partner) => {
                if let Some(counts) = counts {
                    let value = out.take_count(counts);
                    self.on_count(counts, value, out);
                }
                out.reply(cable::confirm_history(&identifier));
            }
            Some(Channel::Room) => {
                let (since, asked) = since_of(history);
                out.open_stream(StreamRequest {
                    token: None,
                    partner: None,
                    since,
                    reopen: true,
                });
                self.pending_room = Some(Box::new(PendingRoom {
                    identifier: identifier.into(),
                    subscribing: false,
                    history: asked,
                }));
            }
        }
    }

    fn subscribe(
        &mut self,
        identifier: String,
        history: Option<&HistoryRequest>,
        counts: Option<&mut CountSubscription>,
        out: &mut Outbox,
    ) {
        let Some(parsed) = cable::parse_identifier(&identifier) else {
            out.ignored(Ignored::BadIdentifier);
            return;
        };
        let Some(channel) = Channel::named(&parsed.channel) else {
            out.reply(cable::reject_subscription(&identifier));
            return;
        };
        if self
            .subscriptions
            .iter()
            .any(|subscription| *subscription.identifier == *identifier)
        {
            // Rails ignores a subscribe to an identifier already subscribed.
            out.ignored(Ignored::DuplicateSubscribe);
            return;
        }
        if self.subscriptions.len() >= usize::from(self.max_subscriptions) {
            out.limited(Limit::Subscriptions);
            out.reply(cable::reject_subscription(&identifier));
            return;
        }
        match channel {
            Channel::Partner => {
                let Some(counts) = counts else {
                    // A connection without `jwt` has no user of its own to count for.
                    out.reply(cable::reject_subscription(&identifier));
                    return;
                };
                // A change not yet pushed to the existing subscriptions goes to them
                // too, since reading the value below marks it seen.
                let others_missed_a_change = counts.has_changed();
                let value = out.take_count(counts);
                out.reply(cable::confirm_subscription(&identifier));
                let identifier = Arc::from(identifier);
                out.push(
                    counts.frame(&value, Shape::Cable(&identifier), || {
                        cable::unread_count(&identifier, value.count)
                    }),
                    None,
                );
                if others_missed_a_change {
                    self.on_count(counts, value, out);
                }
                self.add(identifier, channel);
            }
            Channel::Room => {
                // Confirmed or rejected once the driver has checked the token.
                let (since, asked) = history.map_or((Since::Now, None), since_of);
                out.open_stream(StreamRequest {
                    token: parsed.pubsub_token,
                    partner: parsed.partner,
                    since,
                    reopen: false,
                });
                self.pending_room = Some(Box::new(PendingRoom {
                    identifier: identifier.into(),
                    subscribing: true,
                    history: asked,
                }));
            }
        }
    }

    fn add(&mut self, identifier: Arc<str>, channel: Channel) {
        // Most clients subscribe once: room for exactly one more, not Vec's four, which
        // every idle connection would carry.
        self.subscriptions.reserve_exact(1);
        self.subscriptions.push(Subscription {
            identifier,
            channel,
        });
    }
}

impl Session for Cable {
    const PROTOCOL: Protocol = Protocol::Cable;

    fn auth_timeout(&self) -> Option<Duration> {
        None
    }

    fn before_auth(&mut self, _frame: &[u8], _out: &mut Outbox) -> Option<Credentials> {
        // Never called: the upgrade's query carries the credentials.
        None
    }

    fn token_refused(&mut self, _error: AuthError, _out: &mut Outbox) -> AfterRefusal {
        // The query had the only token; the goodbye says `unauthorized`.
        AfterRefusal::Close
    }

    fn admission_refused(&mut self, _reason: CloseReason, _out: &mut Outbox) {}

    fn admits_anonymous(&self) -> bool {
        true
    }

    fn open(&mut self, counts: Option<&mut CountSubscription>, out: &mut Outbox) {
        let Some(extended) = self.extended.as_mut() else {
            out.reply(cable::welcome());
            return;
        };
        let Some(restored) = extended.restored.take() else {
            out.reply(cable::welcome_ext(&extended.sid, None));
            return;
        };
        let identifiers: Vec<&str> = restored.iter().map(AsRef::as_ref).collect();
        out.reply(cable::welcome_ext(&extended.sid, Some(&identifiers)));
        // The count may have changed while the client was away.
        if self.wants_counts()
            && let Some(counts) = counts
        {
            let value = out.take_count(counts);
            self.on_count(counts, value, out);
        }
    }

    fn on_text(&mut self, frame: &[u8], counts: Option<&mut CountSubscription>, out: &mut Outbox) {
        let command = match cable::decode_command(frame) {
            Ok(command) => command,
            Err(error) => {
                // Rails logs and ignores what it cannot execute; so do we.
                out.ignored(Ignored::Command(error));
                return;
            }
        };
        let extended = self.extended.is_some();
        match command {
            Command::Subscribe {
                identifier,
                history,
            } => {
                // A plain client's history field means nothing to it.
                let history = history.filter(|_| extended);
                self.subscribe(identifier, history.as_ref(), counts, out);
            }
            Command::History {
                identifier,
                history,
            } if extended => self.history(identifier, &history, counts, out),
            Command::History { .. } => out.ignored(Ignored::Command(
                fanout_protocol::cable::CommandError::UnknownCommand,
            )),
            Command::Pong => {}
            Command::Unsubscribe { identifier } => {
                let room = self.subscriptions.iter().any(|subscription| {
                    *subscription.identifier == *identifier && subscription.channel == Channel::Room
                });
                if room {
                    out.close_stream();
                }
                self.subscriptions
                    .retain(|subscription| *subscription.identifier != *identifier);
            }
            // PartnerChannel has no actions: like Rails for an unknown action, no reply.
            Command::Message { .. } => out.ignored(Ignored::UnknownAction),
        }
    }

    fn on_binary(&mut self, out: &mut Outbox) {
        out.ignored(Ignored::Binary);
    }

    fn wants_counts(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|subscription| subscription.channel == Channel::Partner)
    }

    fn on_count(&mut self, counts: &CountSubscription, value: CountValue, out: &mut Outbox) {
        for subscription in &self.subscriptions {
            match subscription.channel {
                Channel::Partner => out.push(
                    counts.frame(&value, Shape::Cable(&subscription.identifier), || {
                        cable::unread_count(&subscription.identifier, value.count)
                    }),
                    value.source_time(),
                ),
                Channel::Room => {}
            }
        }
    }

    fn stream_opened(&mut self, result: Result<Opened, StreamSubscribe>, out: &mut Outbox) {
        let Some(pending) = self.pending_room.take() else {
            return;
        };
        let PendingRoom {
            identifier,
            subscribing,
            history,
        } = *pending;
        let opened = match result {
            Ok(opened) => opened,
            Err(_) if subscribing => {
                out.reply(cable::reject_subscription(&identifier));
                return;
            }
            Err(_) => {
                out.reply(cable::reject_history(&identifier, "unavailable"));
                return;
            }
        };
        if subscribing {
            out.reply(cable::confirm_subscription(&identifier));
            self.add(Arc::clone(&identifier), Channel::Room);
        }
        let Some(asked) = history else {
            return;
        };
        let rejected = match asked {
            HistoryAsked::Invalid => Some("invalid_position"),
            HistoryAsked::Answer => rejection(opened.resume),
        };
        if let Some(reason) = rejected {
            out.reply(cable::reject_history(&identifier, reason));
            return;
        }
        match opened.resume {
            Ok(Resume::Resumed {
                through: Some(offset),
                ..
            }) => {
                if let Some(extended) = self.extended.as_mut() {
                    extended.confirm_after = Some((identifier, offset));
                }
            }
            _ => out.reply(cable::confirm_history(&identifier)),
        }
    }

    fn on_event(&mut self, frame: &StreamFrame, out: &mut Outbox) {
        let epoch: Option<Epoch> = self.extended.as_ref().map(|_| frame.epoch);
        for subscription in &self.subscriptions {
            if subscription.channel == Channel::Room {
                let message = match epoch {
                    Some(epoch) => cable::stream_message_ext(
                        &subscription.identifier,
                        &frame.body,
                        epoch,
                        frame.offset,
                    ),
                    None => cable::stream_message(&subscription.identifier, &frame.body),
                };
                out.event(message, frame.source_time);
            }
        }
        if let Some(extended) = self.extended.as_mut()
            && let Some((identifier, offset)) = extended.confirm_after.take()
        {
            if offset == frame.offset {
                out.reply(cable::confirm_history(&identifier));
            } else {
                extended.confirm_after = Some((identifier, offset));
            }
        }
    }

    fn stream_overflowed(&mut self, out: &mut Outbox) {
        if let Some(extended) = self.extended.as_mut() {
            extended.confirm_after = None;
        }
        let mut ended = Vec::new();
        self.subscriptions.retain(|subscription| {
            let room = subscription.channel == Channel::Room;
            if room {
                ended.push(subscription.identifier.clone());
            }
            !room
        });
        for identifier in ended {
            out.reply(cable::stream_message(&identifier, STREAM_OVERFLOW));
            out.reply(cable::reject_subscription(&identifier));
        }
    }

    fn ping_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(u64::from(self.ping_interval_ms)))
    }

    fn on_ping(&mut self, unix_seconds: u64, out: &mut Outbox) {
        out.reply(cable::ping(unix_seconds));
    }

    fn restore_id(&self) -> Option<&str> {
        self.extended.as_ref().map(|extended| extended.sid.as_str())
    }

    fn saved(&self) -> Vec<Box<str>> {
        self.subscriptions
            .iter()
            .map(|subscription| Box::from(&*subscription.identifier))
            .collect()
    }

    fn restore(&mut self, subscriptions: Vec<Box<str>>) {
        let Some(extended) = self.extended.as_mut() else {
            return;
        };
        for identifier in &subscriptions {
            let channel = cable::parse_identifier(identifier)
                .and_then(|parsed| Channel::named(&parsed.channel));
            if let Some(channel) = channel {
                self.subscriptions.push(Subscription {
                    identifier: Arc::from(&**identifier),
                    channel,
                });
            }
        }
        extended.restored = Some(subscriptions);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::session::Output;
    use crate::table::CountTable;

    const IDENTIFIER: &str = r#"{"channel":"PartnerChannel"}"#;
    const SUBSCRIBE: &str =
        r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;

    fn value(count: u64, version: u64, occurred_at_ms: i64) -> CountValue {
        CountValue {
            count,
            version,
            occurred_at_ms,
            changes: 0,
        }
    }

    /// The state machine alone: no socket, no runtime.
    #[test]
    fn a_subscription_gets_the_count_and_then_every_change_with_its_source_time() {
        let table = CountTable::new();
        table.apply("acme/bob", value(4, 1, 0));
        let mut counts = table.subscription("acme/bob");
        let mut cable = Cable::new(&EdgeConfig::default(), None);
        let mut out = Outbox::default();
        assert!(!cable.wants_counts());
        cable.on_text(SUBSCRIBE.as_bytes(), Some(&mut counts), &mut out);
        assert_eq!(
            out.take(),
            vec![
                Output::Reply(cable::confirm_subscription(IDENTIFIER)),
                Output::Push {
                    frame: cable::unread_count(IDENTIFIER, 4).into(),
                    source_time: None
                },
            ]
        );
        assert!(cable.wants_counts());
        table.apply("acme/bob", value(5, 2, 1_700_000_000_000));
        let taken = out.take_count(&mut counts);
        cable.on_count(&counts, taken, &mut out);
        assert_eq!(
            out.take(),
            vec![Output::Push {
                frame: cable::unread_count(IDENTIFIER, 5).into(),
                source_time: Some(1_700_000_000_000)
            }]
        );
        cable.on_text(SUBSCRIBE.as_bytes(), Some(&mut counts), &mut out);
        assert_eq!(
            out.take(),
            vec![Output::Ignored(Ignored::DuplicateSubscribe)]
        );
    }

    #[test]
    fn subscriptions_past_the_limit_are_rejected_and_counted() {
        let table = CountTable::new();
        let mut counts = table.subscription("acme/bob");
        let config = EdgeConfig {
            max_subscriptions_per_connection: 1,
            ..EdgeConfig::default()
        };
        let mut cable = Cable::new(&config, None);
        let mut out = Outbox::default();
        cable.on_text(SUBSCRIBE.as_bytes(), Some(&mut counts), &mut out);
        out.take();
        let second =
            r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\",\"n\":2}"}"#;
        cable.on_text(second.as_bytes(), Some(&mut counts), &mut out);
        assert_eq!(
            out.take(),
            vec![
                Output::Limited(Limit::Subscriptions),
                Output::Reply(cable::reject_subscription(
                    r#"{"channel":"PartnerChannel","n":2}"#
                )),
            ]
        );
    }
}
