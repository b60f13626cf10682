//! The ActionCable session (`/cable`) as a state machine: authenticated by the upgrade
//! request's query (or, without `jwt`, by each RoomChannel subscription's
//! `pubsub_token`), `welcome` once admitted, pings every `ping_interval_ms`, and
//! subscriptions to its channels: `PartnerChannel` gets the current count and every
//! change; `RoomChannel` gets the user's event stream, as Chatwoot's does. A new channel
//! is a [`Channel`] variant and its arms here.

use std::time::Duration;

use fanout_protocol::cable::{self, Command};

use super::{AfterRefusal, CloseReason, Credentials, Outbox, Protocol, Session, StreamRequest};
use crate::auth::AuthError;
use crate::config::EdgeConfig;
use crate::limits::Limit;
use crate::streams::StreamFrame;
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

/// One subscription: its identifier, echoed byte for byte in its frames.
struct Subscription {
    identifier: String,
    channel: Channel,
}

pub struct Cable {
    subscriptions: Vec<Subscription>,
    /// A RoomChannel subscribe waiting for the driver's answer.
    pending_room: Option<Box<str>>,
    // Copies of the config every connection holds: kept small.
    max_subscriptions: u16,
    ping_interval_ms: u32,
}

impl Cable {
    pub fn new(config: &EdgeConfig) -> Self {
        Self {
            subscriptions: Vec::new(),
            pending_room: None,
            max_subscriptions: u16::try_from(config.max_subscriptions_per_connection)
                .unwrap_or(u16::MAX),
            ping_interval_ms: u32::try_from(config.ping_interval_ms).unwrap_or(u32::MAX),
        }
    }

    fn subscribe(
        &mut self,
        identifier: String,
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
            .any(|subscription| subscription.identifier == identifier)
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
                let others_missed_a_change = counts.receiver.has_changed().unwrap_or(false);
                let value = out.take_count(counts);
                out.reply(cable::confirm_subscription(&identifier));
                out.push(cable::unread_count(&identifier, value.count), None);
                if others_missed_a_change {
                    self.on_count(value, out);
                }
            }
            Channel::Room => {
                // Confirmed or rejected once the driver has checked the token.
                out.open_stream(StreamRequest {
                    token: parsed.pubsub_token,
                    partner: parsed.partner,
                });
                self.pending_room = Some(identifier.into_boxed_str());
                return;
            }
        }
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

    fn open(&mut self, _counts: Option<&mut CountSubscription>, out: &mut Outbox) {
        out.reply(cable::welcome());
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
        match command {
            Command::Subscribe { identifier } => self.subscribe(identifier, counts, out),
            Command::Unsubscribe { identifier } => {
                let room = self.subscriptions.iter().any(|subscription| {
                    subscription.identifier == identifier && subscription.channel == Channel::Room
                });
                if room {
                    out.close_stream();
                }
                self.subscriptions
                    .retain(|subscription| subscription.identifier != identifier);
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

    fn on_count(&mut self, value: CountValue, out: &mut Outbox) {
        for subscription in &self.subscriptions {
            match subscription.channel {
                Channel::Partner => out.push(
                    cable::unread_count(&subscription.identifier, value.count),
                    value.source_time(),
                ),
                Channel::Room => {}
            }
        }
    }

    fn stream_opened(&mut self, result: Result<(), StreamSubscribe>, out: &mut Outbox) {
        let Some(identifier) = self.pending_room.take() else {
            return;
        };
        if result.is_err() {
            out.reply(cable::reject_subscription(&identifier));
            return;
        }
        out.reply(cable::confirm_subscription(&identifier));
        self.subscriptions.reserve_exact(1);
        self.subscriptions.push(Subscription {
            identifier: identifier.into_string(),
            channel: Channel::Room,
        });
    }

    fn on_event(&mut self, frame: &StreamFrame, out: &mut Outbox) {
        for subscription in &self.subscriptions {
            if subscription.channel == Channel::Room {
                out.event(
                    cable::stream_message(&subscription.identifier, &frame.body),
                    frame.source_time,
                );
            }
        }
    }

    fn stream_overflowed(&mut self, out: &mut Outbox) {
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
        let mut cable = Cable::new(&EdgeConfig::default());
        let mut out = Outbox::default();
        assert!(!cable.wants_counts());
        cable.on_text(SUBSCRIBE.as_bytes(), Some(&mut counts), &mut out);
        assert_eq!(
            out.take(),
            vec![
                Output::Reply(cable::confirm_subscription(IDENTIFIER)),
                Output::Push {
                    frame: cable::unread_count(IDENTIFIER, 4),
                    source_time: None
                },
            ]
        );
        assert!(cable.wants_counts());
        cable.on_count(value(5, 2, 1_700_000_000_000), &mut out);
        assert_eq!(
            out.take(),
            vec![Output::Push {
                frame: cable::unread_count(IDENTIFIER, 5),
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
        let mut cable = Cable::new(&config);
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
