//! Pure decoding, validation and fan-out of message events. No I/O.

use fanout_schema::v1::{self, message_event::Event, user_event::Kind};
use fanout_schema::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, KEY_SEPARATOR};
use prost::Message;
use serde::{Deserialize, Serialize};

/// Bounds on what ingest accepts; anything past them goes to dead-letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest record value accepted, in bytes.
    pub max_record_bytes: usize,
    /// Most recipients one message may name.
    pub max_recipients: usize,
    /// Longest partner, user, conversation or message id, in bytes.
    pub max_id_bytes: usize,
    /// Largest per-conversation sequence number (2^53, the largest integer JavaScript
    /// clients represent exactly).
    pub max_seq: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_recipients: 100_000,
            max_id_bytes: 256,
            max_seq: 1 << 53,
        }
    }
}

/// Why a record went to dead-letter. [`Rejection::reason`] is the `fanout-error` header
/// and the metric label: a short, bounded vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("record of {size} bytes exceeds the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("unsupported content-type {0:?}")]
    UnsupportedContentType(String),
    #[error("not a protobuf MessageEvent: {0}")]
    UndecodableProtobuf(String),
    #[error("not a JSON MessageEvent: {0}")]
    UndecodableJson(String),
    #[error("the event names none of the known event kinds")]
    UnknownEvent,
    #[error("partner is missing")]
    MissingPartner,
    #[error("partner {0:?} is not a valid partner code")]
    InvalidPartner(String),
    #[error("{field} is missing")]
    MissingField { field: &'static str },
    #[error("{field} is longer than {limit} bytes")]
    IdTooLong { field: &'static str, limit: usize },
    #[error("the message names no recipient other than its sender")]
    NoRecipients,
    #[error("{count} recipients exceed the limit of {limit}")]
    TooManyRecipients { count: usize, limit: usize },
    #[error("seq {seq} is outside 1..={max}")]
    InvalidSeq { seq: u64, max: u64 },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::UnsupportedContentType(_) => "unsupported_content_type",
            Self::UndecodableProtobuf(_) | Self::UndecodableJson(_) => "undecodable",
            Self::UnknownEvent => "unknown_event",
            Self::MissingPartner => "missing_partner",
            Self::InvalidPartner(_) => "invalid_partner",
            Self::MissingField { .. } => "missing_field",
            Self::IdTooLong { .. } => "id_too_long",
            Self::NoRecipients => "no_recipients",
            Self::TooManyRecipients { .. } => "too_many_recipients",
            Self::InvalidSeq { .. } => "invalid_seq",
        }
    }

    /// Every reason, for pre-registering metric label values.
    pub const REASONS: [&'static str; 11] = [
        "oversized",
        "unsupported_content_type",
        "undecodable",
        "unknown_event",
        "missing_partner",
        "invalid_partner",
        "missing_field",
        "id_too_long",
        "no_recipients",
        "too_many_recipients",
        "invalid_seq",
    ];
}

/// Decodes a record value: protobuf unless `content_type` says JSON (proto3 mapping).
pub fn decode_event(
    value: &[u8],
    content_type: Option<&[u8]>,
    limits: &IngestLimits,
) -> Result<v1::MessageEvent, Rejection> {
    if value.len() > limits.max_record_bytes {
        return Err(Rejection::Oversized {
            size: value.len(),
            limit: limits.max_record_bytes,
        });
    }
    let media_type = content_type
        .map(|raw| {
            let text = String::from_utf8_lossy(raw);
            // Parameters such as `; charset=utf-8` do not change the format.
            text.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media_type.as_str() {
        "" | CONTENT_TYPE_PROTOBUF | "application/protobuf" => v1::MessageEvent::decode(value)
            .map_err(|error| Rejection::UndecodableProtobuf(error.to_string())),
        CONTENT_TYPE_JSON => serde_json::from_slice(value)
            .map_err(|error| Rejection::UndecodableJson(error.to_string())),
        other => Err(Rejection::UnsupportedContentType(other.to_owned())),
    }
}

fn check_id(field: &'static str, value: &str, limits: &IngestLimits) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::MissingField { field });
    }
    if value.len() > limits.max_id_bytes {
        return Err(Rejection::IdTooLong {
            field,
            limit: limits.max_id_bytes,
        });
    }
    Ok(())
}

fn check_seq(seq: u64, limits: &IngestLimits) -> Result<(), Rejection> {
    if seq == 0 || seq > limits.max_seq {
        return Err(Rejection::InvalidSeq {
            seq,
            max: limits.max_seq,
        });
    }
    Ok(())
}

fn check_recipients(
    recipients: &[String],
    sender: Option<&str>,
    limits: &IngestLimits,
) -> Result<(), Rejection> {
    if recipients.len() > limits.max_recipients {
        return Err(Rejection::TooManyRecipients {
            count: recipients.len(),
            limit: limits.max_recipients,
        });
    }
    for recipient in recipients {
        check_id("recipient", recipient, limits)?;
    }
    if !recipients
        .iter()
        .any(|recipient| Some(recipient.as_str()) != sender)
    {
        return Err(Rejection::NoRecipients);
    }
    Ok(())
}

/// Checks everything fan-out and the router rely on.
pub fn validate(event: &v1::MessageEvent, limits: &IngestLimits) -> Result<(), Rejection> {
    if event.partner.is_empty() {
        return Err(Rejection::MissingPartner);
    }
    if !fanout_schema::is_valid_partner(&event.partner) {
        return Err(Rejection::InvalidPartner(
            event.partner.chars().take(80).collect(),
        ));
    }
    if event.event_id.len() > limits.max_id_bytes {
        return Err(Rejection::IdTooLong {
            field: "event_id",
            limit: limits.max_id_bytes,
        });
    }
    match &event.event {
        None => Err(Rejection::UnknownEvent),
        Some(Event::MessageCreated(created)) => {
            check_id("conversation_id", &created.conversation_id, limits)?;
            check_seq(created.seq, limits)?;
            check_id("sender", &created.sender, limits)?;
            if created.message_id.len() > limits.max_id_bytes {
                return Err(Rejection::IdTooLong {
                    field: "message_id",
                    limit: limits.max_id_bytes,
                });
            }
            check_recipients(&created.recipients, Some(&created.sender), limits)
        }
        Some(Event::MessageRead(read)) => {
            check_id("conversation_id", &read.conversation_id, limits)?;
            check_seq(read.seq, limits)?;
            check_id("user", &read.user, limits)
        }
        Some(Event::ConversationRead(read)) => {
            check_id("conversation_id", &read.conversation_id, limits)?;
            check_seq(read.seq, limits)?;
            check_id("user", &read.user, limits)
        }
        Some(Event::MessageDeleted(deleted)) => {
            check_id("conversation_id", &deleted.conversation_id, limits)?;
            check_seq(deleted.seq, limits)?;
            check_recipients(&deleted.recipients, None, limits)
        }
        // Not accepted yet: its validation and fan-out come next.
        Some(Event::Notification(_)) => Err(Rejection::UnknownEvent),
    }
}

/// One user event per affected user: each distinct recipient other than the sender of
/// a created message, the reader of a read, each distinct recipient of a deletion.
/// Expects a [`validate`]d event.
pub fn fan_out(event: &v1::MessageEvent) -> Vec<v1::UserEvent> {
    debug_assert!(!event.partner.contains(KEY_SEPARATOR));
    let user_event = |user: &str, kind: Kind, conversation_id: &str, seq: u64| v1::UserEvent {
        partner: event.partner.clone(),
        user: user.to_owned(),
        event_id: event.event_id.clone(),
        occurred_at_ms: event.occurred_at_ms,
        kind: kind as i32,
        conversation_id: conversation_id.to_owned(),
        seq,
        ..v1::UserEvent::default()
    };
    match &event.event {
        None => Vec::new(),
        Some(Event::MessageCreated(created)) => distinct(&created.recipients)
            .filter(|recipient| *recipient != created.sender)
            .map(|recipient| {
                user_event(
                    recipient,
                    Kind::Created,
                    &created.conversation_id,
                    created.seq,
                )
            })
            .collect(),
        Some(Event::MessageRead(read)) => {
            vec![user_event(
                &read.user,
                Kind::MessageRead,
                &read.conversation_id,
                read.seq,
            )]
        }
        Some(Event::ConversationRead(read)) => vec![user_event(
            &read.user,
            Kind::ConversationRead,
            &read.conversation_id,
            read.seq,
        )],
        Some(Event::MessageDeleted(deleted)) => distinct(&deleted.recipients)
            .map(|recipient| {
                user_event(
                    recipient,
                    Kind::Deleted,
                    &deleted.conversation_id,
                    deleted.seq,
                )
            })
            .collect(),
        Some(Event::Notification(_)) => Vec::new(),
    }
}

/// The recipients in order of first appearance, each once.
fn distinct(recipients: &[String]) -> impl Iterator<Item = &str> {
    let mut seen = std::collections::HashSet::with_capacity(recipients.len());
    recipients
        .iter()
        .map(String::as_str)
        .filter(move |recipient| seen.insert(*recipient))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn created(partner: &str, sender: &str, recipients: &[&str], seq: u64) -> v1::MessageEvent {
        v1::MessageEvent {
            event_id: format!("e{seq}"),
            partner: partner.into(),
            occurred_at_ms: 1000,
            data: None,
            event: Some(Event::MessageCreated(v1::MessageCreated {
                conversation_id: "c1".into(),
                seq,
                message_id: format!("m{seq}"),
                sender: sender.into(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            })),
        }
    }

    #[test]
    fn created_fans_out_to_distinct_recipients_except_the_sender() {
        let event = created("acme", "alice", &["bob", "alice", "carol", "bob"], 3);
        validate(&event, &IngestLimits::default()).unwrap();
        let users: Vec<_> = fan_out(&event)
            .into_iter()
            .map(|e| (e.user, e.kind, e.seq))
            .collect();
        assert_eq!(
            users,
            vec![
                ("bob".into(), Kind::Created as i32, 3),
                ("carol".into(), Kind::Created as i32, 3)
            ]
        );
    }

    #[test]
    fn protobuf_and_json_decode_to_the_same_event() {
        let event = created("acme", "alice", &["bob"], 1);
        let limits = IngestLimits::default();
        let from_proto = decode_event(&event.encode_to_vec(), None, &limits).unwrap();
        let json = serde_json::to_vec(&event).unwrap();
        let from_json =
            decode_event(&json, Some(b"application/json; charset=utf-8"), &limits).unwrap();
        assert_eq!(from_proto, event);
        assert_eq!(from_json, event);
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason() {
        let limits = IngestLimits::default();
        let reason = |value: &[u8], content_type: Option<&[u8]>| {
            decode_event(value, content_type, &limits)
                .and_then(|event| validate(&event, &limits).map(|()| event))
                .unwrap_err()
                .reason()
        };
        assert_eq!(reason(b"\xff\xff\xff", None), "undecodable");
        assert_eq!(
            reason(b"{not json", Some(b"application/json")),
            "undecodable"
        );
        assert_eq!(reason(b"x", Some(b"text/csv")), "unsupported_content_type");
        assert_eq!(
            reason(&vec![0u8; limits.max_record_bytes + 1], None),
            "oversized"
        );
        // Valid protobuf with no oneof set: an event kind this version does not know.
        let unknown = v1::MessageEvent {
            partner: "acme".into(),
            ..Default::default()
        };
        assert_eq!(reason(&unknown.encode_to_vec(), None), "unknown_event");
        let cases = [
            (created("", "a", &["b"], 1), "missing_partner"),
            (created("ac/me", "a", &["b"], 1), "invalid_partner"),
            (created("acme", "a", &["a"], 1), "no_recipients"),
            (created("acme", "a", &[], 1), "no_recipients"),
            (created("acme", "a", &["b"], 0), "invalid_seq"),
            (created("acme", "a", &["b"], u64::MAX), "invalid_seq"),
            (created("acme", "", &["b"], 1), "missing_field"),
            (created("acme", "a", &[""], 1), "missing_field"),
            (created("acme", &"x".repeat(300), &["b"], 1), "id_too_long"),
        ];
        for (event, expected) in cases {
            assert_eq!(reason(&event.encode_to_vec(), None), expected, "{event:?}");
        }
        let too_many: Vec<String> = (0..=limits.max_recipients)
            .map(|i| format!("u{i}"))
            .collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert_eq!(
            validate(&created("acme", "a", &refs, 1), &limits)
                .unwrap_err()
                .reason(),
            "too_many_recipients"
        );
    }

    #[test]
    fn reads_and_deletes_fan_out_to_their_users() {
        let read = v1::MessageEvent {
            partner: "acme".into(),
            event: Some(Event::ConversationRead(v1::ConversationRead {
                conversation_id: "c1".into(),
                seq: 4,
                user: "bob".into(),
                notify: Vec::new(),
            })),
            ..Default::default()
        };
        let events = fan_out(&read);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].user.as_str()),
            (Kind::ConversationRead as i32, "bob")
        );
        let deleted = v1::MessageEvent {
            partner: "acme".into(),
            event: Some(Event::MessageDeleted(v1::MessageDeleted {
                conversation_id: "c1".into(),
                seq: 2,
                message_id: "m2".into(),
                recipients: vec!["bob".into(), "carol".into()],
            })),
            ..Default::default()
        };
        validate(&deleted, &IngestLimits::default()).unwrap();
        let kinds: Vec<_> = fan_out(&deleted)
            .into_iter()
            .map(|e| (e.user, e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("bob".into(), Kind::Deleted as i32),
                ("carol".into(), Kind::Deleted as i32)
            ]
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let all = [
            Rejection::Oversized { size: 0, limit: 0 },
            Rejection::UnsupportedContentType(String::new()),
            Rejection::UndecodableProtobuf(String::new()),
            Rejection::UndecodableJson(String::new()),
            Rejection::UnknownEvent,
            Rejection::MissingPartner,
            Rejection::InvalidPartner(String::new()),
            Rejection::MissingField { field: "x" },
            Rejection::IdTooLong {
                field: "x",
                limit: 0,
            },
            Rejection::NoRecipients,
            Rejection::TooManyRecipients { count: 0, limit: 0 },
            Rejection::InvalidSeq { seq: 0, max: 0 },
        ];
        for rejection in all {
            assert!(
                Rejection::REASONS.contains(&rejection.reason()),
                "{rejection:?}"
            );
        }
    }
}
