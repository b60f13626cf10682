//! fanout's wire schema, generated from `proto/` at build time.
//!
//! `v1` holds the public input ([`v1::MessageEvent`]) and the records the stages
//! exchange ([`v1::UserEvent`], [`v1::UserState`], [`v1::UnreadCount`]). Every message
//! also implements serde's `Serialize`/`Deserialize` in the proto3 JSON mapping.
//!
//! The helpers here are the one place that knows how records are keyed, and the clock
//! that stamps and measures `occurred_at_ms`.

pub mod data;

pub mod v1 {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/fanout.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/fanout.v1.serde.rs"));
}

/// The separator between partner and user in record keys.
pub const KEY_SEPARATOR: char = '/';

/// The record key of a user's records on user-events, router-state and unread-counts.
///
/// Partner codes never contain [`KEY_SEPARATOR`] (ingest refuses such events), so the
/// key splits unambiguously at its first separator even if the user id contains one.
pub fn user_key(partner: &str, user: &str) -> String {
    let mut key = String::with_capacity(partner.len() + 1 + user.len());
    key.push_str(partner);
    key.push(KEY_SEPARATOR);
    key.push_str(user);
    key
}

/// Whether `partner` is a valid partner code: 1 to 64 ASCII letters, digits, `-`, `_`
/// or `.` (never [`KEY_SEPARATOR`]).
pub fn is_valid_partner(partner: &str) -> bool {
    !partner.is_empty()
        && partner.len() <= 64
        && partner
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Splits a record key made by [`user_key`] into `(partner, user)`.
pub fn split_user_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(KEY_SEPARATOR)
}

/// Microseconds since the Unix epoch (0 before it): the one clock of fanout's
/// timestamps, [`unix_millis`] included. Unsigned, because its users (the bench's send
/// and receive stamps, which also travel as unread counts) keep times as `u64`.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch: the clock of `occurred_at_ms` and of every latency
/// measured against it. [`unix_micros`] in milliseconds, rounded down.
pub fn unix_millis() -> i64 {
    i64::try_from(unix_micros() / 1000).unwrap_or(i64::MAX)
}

/// The `content-type` header value that marks a record as proto3 JSON.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The `content-type` header value for protobuf (also assumed when the header is absent).
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// The header that names the content type of a record's value.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn user_key_round_trips_even_with_separator_in_user() {
        let key = user_key("acme", "team/alice");
        assert_eq!(key, "acme/team/alice");
        assert_eq!(split_user_key(&key), Some(("acme", "team/alice")));
        assert_eq!(split_user_key("nokey"), None);
    }

    #[test]
    fn unix_millis_is_unix_micros_in_milliseconds() {
        let before_us = unix_micros();
        let millis = unix_millis();
        let after_us = unix_micros();
        let before_ms = i64::try_from(before_us / 1000).unwrap();
        let after_ms = i64::try_from(after_us / 1000).unwrap();
        assert!(
            before_ms <= millis && millis <= after_ms,
            "{before_us} {millis} {after_us}"
        );
    }

    #[test]
    fn message_event_json_is_the_proto3_mapping() {
        let event = v1::MessageEvent {
            event_id: "e1".into(),
            partner: "acme".into(),
            occurred_at_ms: 1_700_000_000_000,
            data: Some(data::parse_data(r#"{"text":"hi"}"#).unwrap()),
            event: Some(v1::message_event::Event::MessageCreated(
                v1::MessageCreated {
                    conversation_id: "c1".into(),
                    seq: 7,
                    message_id: "m7".into(),
                    sender: "alice".into(),
                    recipients: vec!["bob".into()],
                },
            )),
        };
        let json = serde_json::to_value(&event).unwrap();
        // proto3 JSON: lowerCamelCase names, 64-bit integers as strings.
        assert_eq!(
            json,
            serde_json::json!({
                "eventId": "e1",
                "partner": "acme",
                "occurredAtMs": "1700000000000",
                "data": {"text": "hi"},
                "messageCreated": {
                    "conversationId": "c1",
                    "seq": "7",
                    "messageId": "m7",
                    "sender": "alice",
                    "recipients": ["bob"]
                }
            })
        );
        let parsed: v1::MessageEvent = serde_json::from_value(json).unwrap();
        assert_eq!(parsed, event);
        // And the protobuf form round-trips as well.
        let decoded = v1::MessageEvent::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn notification_and_notify_have_their_json_form() {
        let parsed: v1::MessageEvent = serde_json::from_str(
            r#"{"partner":"acme","data":{"state":"typing"},
                "notification":{"event":"typing.started","recipients":["bob","carol"]}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed.event,
            Some(v1::message_event::Event::Notification(v1::Notification {
                event: "typing.started".into(),
                recipients: vec!["bob".into(), "carol".into()],
            }))
        );
        assert_eq!(
            data::render_data(parsed.data.as_ref().unwrap()).unwrap(),
            r#"{"state":"typing"}"#
        );
        let read: v1::MessageEvent = serde_json::from_str(
            r#"{"partner":"acme","messageRead":{"conversationId":"c1","seq":"2","user":"bob","notify":["alice"]}}"#,
        )
        .unwrap();
        let Some(v1::message_event::Event::MessageRead(read)) = read.event else {
            panic!("not a read: {read:?}");
        };
        assert_eq!(read.notify, vec!["alice".to_owned()]);
        // `data` is optional; JSON null is no data.
        let without: v1::MessageEvent =
            serde_json::from_str(r#"{"partner":"acme","data":null}"#).unwrap();
        assert_eq!(without.data, None);
    }

    #[test]
    fn json_accepts_numbers_for_64_bit_fields_and_original_field_names() {
        let parsed: v1::MessageEvent = serde_json::from_str(
            r#"{"event_id":"e2","partner":"acme","occurred_at_ms":5,
                "conversation_read":{"conversation_id":"c1","seq":3,"user":"bob"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.occurred_at_ms, 5);
        assert_eq!(
            parsed.event,
            Some(v1::message_event::Event::ConversationRead(
                v1::ConversationRead {
                    conversation_id: "c1".into(),
                    seq: 3,
                    user: "bob".into(),
                    notify: Vec::new(),
                }
            ))
        );
    }
}
