//! Pure decoding, validation and fan-out of message events. No I/O.

use fanout_schema::data::{DataError, data_from_json, render_data};
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
    /// Largest `data` an event may carry, in bytes of its JSON rendering.
    pub max_data_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_recipients: 100_000,
            max_id_bytes: 256,
            max_seq: 1 << 53,
            max_data_bytes: 16 * 1024,
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
    #[error("data is not a JSON object")]
    DataNotObject,
    #[error("data cannot be carried as JSON: {0}")]
    InvalidData(String),
    #[error("data of {size} bytes (as JSON) exceeds the limit of {limit}")]
    DataTooLarge { size: usize, limit: usize },
    #[error(
        "notification event {0:?} is not a lowercase dotted name of at most {MAX_EVENT_NAME_BYTES} bytes"
    )]
    InvalidEventName(String),
    #[error("notification event {0:?} is one of fanout's own names")]
    ReservedEventName(String),
}

/// Longest notification event name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 64;

/// The event names fanout delivers itself; partners' notifications may not use them, nor
/// anything starting with [`RESERVED_EVENT_PREFIX`].
pub const RESERVED_EVENT_NAMES: [&str; 4] = [
    "message.created",
    "message.read",
    "message.deleted",
    "conversation.read",
];
/// The prefix of names fanout keeps for itself.
pub const RESERVED_EVENT_PREFIX: &str = "fanout.";

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
            Self::DataNotObject => "data_not_object",
            Self::InvalidData(_) => "invalid_data",
            Self::DataTooLarge { .. } => "data_too_large",
            Self::InvalidEventName(_) => "invalid_event_name",
            Self::ReservedEventName(_) => "reserved_event_name",
        }
    }

    /// Every reason, for pre-registering metric label values.
    pub const REASONS: [&'static str; 16] = [
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
        "data_not_object",
        "invalid_data",
        "data_too_large",
        "invalid_event_name",
        "reserved_event_name",
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
        CONTENT_TYPE_JSON => {
            serde_json::from_slice(value).map_err(|error| json_rejection(value, &error))
        }
        other => Err(Rejection::UnsupportedContentType(other.to_owned())),
    }
}

/// Why a JSON record did not decode: `data` by name when it is what failed (decoded a
/// second time, only for records that failed), otherwise undecodable.
fn json_rejection(value: &[u8], error: &serde_json::Error) -> Rejection {
    if let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(value)
        && let Some(data) = fields.remove("data")
        && !data.is_null()
    {
        match data_from_json(data) {
            Err(DataError::NotAnObject) => return Rejection::DataNotObject,
            Err(DataError::Invalid(detail)) => return Rejection::InvalidData(detail),
            Ok(_) => {}
        }
    }
    Rejection::UndecodableJson(error.to_string())
}

/// At most 80 characters of a refused value, for the rejection's detail.
fn excerpt(value: &str) -> String {
    value.chars().take(80).collect()
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

/// Users named to receive something (read receipts): any number up to
/// `max_recipients`, possibly none, each a valid id.
fn check_users(
    field: &'static str,
    users: &[String],
    limits: &IngestLimits,
) -> Result<(), Rejection> {
    if users.len() > limits.max_recipients {
        return Err(Rejection::TooManyRecipients {
            count: users.len(),
            limit: limits.max_recipients,
        });
    }
    users
        .iter()
        .try_for_each(|user| check_id(field, user, limits))
}

/// A notification's event name: `[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*`, at most
/// [`MAX_EVENT_NAME_BYTES`], none of fanout's own.
fn check_event_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::MissingField { field: "event" });
    }
    let is_segment = |segment: &str| {
        let mut bytes = segment.bytes();
        bytes.next().is_some_and(|first| first.is_ascii_lowercase())
            && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    };
    if name.len() > MAX_EVENT_NAME_BYTES || !name.split('.').all(is_segment) {
        return Err(Rejection::InvalidEventName(excerpt(name)));
    }
    if RESERVED_EVENT_NAMES.contains(&name) || name.starts_with(RESERVED_EVENT_PREFIX) {
        return Err(Rejection::ReservedEventName(name.to_owned()));
    }
    Ok(())
}

/// `data` rendered as fanout delivers it (empty when the event carries none), within
/// `max_data_bytes`.
fn check_data(
    data: Option<&fanout_schema::data::Struct>,
    limits: &IngestLimits,
) -> Result<String, Rejection> {
    let Some(data) = data else {
        return Ok(String::new());
    };
    let rendered = render_data(data).map_err(|error| match error {
        DataError::NotAnObject => Rejection::DataNotObject,
        DataError::Invalid(detail) => Rejection::InvalidData(detail),
    })?;
    if rendered.len() > limits.max_data_bytes {
        return Err(Rejection::DataTooLarge {
            size: rendered.len(),
            limit: limits.max_data_bytes,
        });
    }
    Ok(rendered)
}

/// A message event that passed [`validate`], with its `data` rendered once: what
/// [`fan_out`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    event: v1::MessageEvent,
    data_json: String,
}

impl ValidEvent {
    pub fn event(&self) -> &v1::MessageEvent {
        &self.event
    }

    /// The event's `data` as JSON text (see `fanout_schema::data`); empty without data.
    pub fn data_json(&self) -> &str {
        &self.data_json
    }

    pub fn into_event(self) -> v1::MessageEvent {
        self.event
    }
}

/// Checks everything fan-out and the router rely on, and renders `data`.
pub fn validate(event: v1::MessageEvent, limits: &IngestLimits) -> Result<ValidEvent, Rejection> {
    check_fields(&event, limits)?;
    let data_json = check_data(event.data.as_ref(), limits)?;
    Ok(ValidEvent { event, data_json })
}

fn check_fields(event: &v1::MessageEvent, limits: &IngestLimits) -> Result<(), Rejection> {
    if event.partner.is_empty() {
        return Err(Rejection::MissingPartner);
    }
    if !fanout_schema::is_valid_partner(&event.partner) {
        return Err(Rejection::InvalidPartner(excerpt(&event.partner)));
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
            check_id("user", &read.user, limits)?;
            check_users("notify", &read.notify, limits)
        }
        Some(Event::ConversationRead(read)) => {
            check_id("conversation_id", &read.conversation_id, limits)?;
            check_seq(read.seq, limits)?;
            check_id("user", &read.user, limits)?;
            check_users("notify", &read.notify, limits)
        }
        Some(Event::MessageDeleted(deleted)) => {
            check_id("conversation_id", &deleted.conversation_id, limits)?;
            check_seq(deleted.seq, limits)?;
            check_recipients(&deleted.recipients, None, limits)
        }
        Some(Event::Notification(notification)) => {
            // The event id is how a repeated notification is known: required.
            if event.event_id.is_empty() {
                return Err(Rejection::MissingField { field: "event_id" });
            }
            check_event_name(&notification.event)?;
            check_recipients(&notification.recipients, None, limits)
        }
    }
}

/// One user event per affected user, each carrying the event's data: each distinct
/// recipient other than the sender of a created message (`KIND_CREATED`) and the sender
/// itself (`KIND_SENT`, which never counts); the reader of a read, with its distinct
/// `notify` users other than the reader; each distinct recipient of a deletion or of a
/// notification (`KIND_NOTIFICATION`). Lazy: a message to many recipients is encoded one
/// user event at a time.
pub fn fan_out(valid: &ValidEvent) -> impl Iterator<Item = v1::UserEvent> + '_ {
    let event = &valid.event;
    debug_assert!(!event.partner.contains(KEY_SEPARATOR));
    let base = v1::UserEvent {
        partner: event.partner.clone(),
        event_id: event.event_id.clone(),
        occurred_at_ms: event.occurred_at_ms,
        data_json: valid.data_json.clone(),
        ..v1::UserEvent::default()
    };
    // The fields every user's copy shares, and who gets which kind.
    let (shared, targets): (v1::UserEvent, Vec<(&str, Kind)>) = match &event.event {
        None => (base, Vec::new()),
        Some(Event::MessageCreated(created)) => (
            v1::UserEvent {
                conversation_id: created.conversation_id.clone(),
                seq: created.seq,
                message_id: created.message_id.clone(),
                sender: created.sender.clone(),
                ..base
            },
            distinct(&created.recipients)
                .filter(|recipient| *recipient != created.sender)
                .map(|recipient| (recipient, Kind::Created))
                .chain(std::iter::once((created.sender.as_str(), Kind::Sent)))
                .collect(),
        ),
        Some(Event::MessageRead(read)) => (
            v1::UserEvent {
                conversation_id: read.conversation_id.clone(),
                seq: read.seq,
                message_id: read.message_id.clone(),
                notify: notified(&read.notify, &read.user),
                ..base
            },
            vec![(read.user.as_str(), Kind::MessageRead)],
        ),
        Some(Event::ConversationRead(read)) => (
            v1::UserEvent {
                conversation_id: read.conversation_id.clone(),
                seq: read.seq,
                notify: notified(&read.notify, &read.user),
                ..base
            },
            vec![(read.user.as_str(), Kind::ConversationRead)],
        ),
        Some(Event::MessageDeleted(deleted)) => (
            v1::UserEvent {
                conversation_id: deleted.conversation_id.clone(),
                seq: deleted.seq,
                message_id: deleted.message_id.clone(),
                ..base
            },
            distinct(&deleted.recipients)
                .map(|recipient| (recipient, Kind::Deleted))
                .collect(),
        ),
        Some(Event::Notification(notification)) => (
            v1::UserEvent {
                event_name: notification.event.clone(),
                ..base
            },
            distinct(&notification.recipients)
                .map(|recipient| (recipient, Kind::Notification))
                .collect(),
        ),
    };
    targets.into_iter().map(move |(user, kind)| v1::UserEvent {
        user: user.to_owned(),
        kind: kind.into(),
        ..shared.clone()
    })
}

/// A read's `notify` users, each once, without the reader (who has the read itself).
fn notified(notify: &[String], reader: &str) -> Vec<String> {
    distinct(notify)
        .filter(|user| *user != reader)
        .map(str::to_owned)
        .collect()
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

    /// The user events of a valid event.
    fn fan(event: v1::MessageEvent) -> Vec<v1::UserEvent> {
        fan_out(&validate(event, &IngestLimits::default()).unwrap()).collect()
    }

    fn with_data(mut event: v1::MessageEvent, json: &str) -> v1::MessageEvent {
        event.data = Some(fanout_schema::data::parse_data(json).unwrap());
        event
    }

    fn read(user: &str, notify: &[&str]) -> v1::MessageEvent {
        v1::MessageEvent {
            event_id: "r1".into(),
            partner: "acme".into(),
            event: Some(Event::MessageRead(v1::MessageRead {
                conversation_id: "c1".into(),
                seq: 2,
                user: user.into(),
                message_id: "m2".into(),
                notify: notify.iter().map(|u| (*u).to_owned()).collect(),
            })),
            ..Default::default()
        }
    }

    fn notification(name: &str, recipients: &[&str]) -> v1::MessageEvent {
        v1::MessageEvent {
            event_id: "n1".into(),
            partner: "acme".into(),
            occurred_at_ms: 5,
            event: Some(Event::Notification(v1::Notification {
                event: name.into(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn created_fans_out_to_distinct_recipients_except_the_sender_and_a_copy_to_the_sender() {
        let event = created("acme", "alice", &["bob", "alice", "carol", "bob"], 3);
        let users: Vec<_> = fan(event)
            .into_iter()
            .map(|e| (e.user, e.kind, e.seq, e.message_id, e.sender))
            .collect();
        let row = |user: &str, kind: Kind| {
            (
                user.to_owned(),
                kind as i32,
                3,
                "m3".to_owned(),
                "alice".to_owned(),
            )
        };
        assert_eq!(
            users,
            vec![
                row("bob", Kind::Created),
                row("carol", Kind::Created),
                row("alice", Kind::Sent),
            ]
        );
    }

    #[test]
    fn every_user_event_carries_the_rendered_data() {
        let sent = r#"{"text": "hi", "author": {"name": "Alice", "id": 7}, "score": 1.0}"#;
        let rendered = r#"{"author":{"id":7,"name":"Alice"},"score":1,"text":"hi"}"#;
        let events = [
            created("acme", "alice", &["bob", "carol"], 3),
            read("bob", &["alice"]),
            notification("typing.started", &["bob"]),
        ];
        for event in events {
            for user_event in fan(with_data(event, sent)) {
                assert_eq!(user_event.data_json, rendered, "{user_event:?}");
            }
        }
        // Without data, no data; `{}` is an empty object.
        assert!(
            fan(created("acme", "a", &["b"], 1))
                .iter()
                .all(|e| e.data_json.is_empty())
        );
        let empty = fan(with_data(created("acme", "a", &["b"], 1), "{}"));
        assert!(empty.iter().all(|e| e.data_json == "{}"));
    }

    #[test]
    fn reads_carry_their_notify_users_once_without_the_reader() {
        let events = fan(read("bob", &["alice", "bob", "carol", "alice"]));
        assert_eq!(
            events.len(),
            1,
            "one event, the reader's: the router sends receipts"
        );
        let event = &events[0];
        assert_eq!(
            (event.user.as_str(), event.kind, event.message_id.as_str()),
            ("bob", Kind::MessageRead as i32, "m2")
        );
        assert_eq!(event.notify, vec!["alice".to_owned(), "carol".to_owned()]);
        let conversation_read = v1::MessageEvent {
            partner: "acme".into(),
            event: Some(Event::ConversationRead(v1::ConversationRead {
                conversation_id: "c1".into(),
                seq: 9,
                user: "bob".into(),
                notify: vec!["alice".into()],
            })),
            ..Default::default()
        };
        let events = fan(conversation_read);
        assert_eq!(
            (events[0].kind, events[0].seq, events[0].notify.clone()),
            (Kind::ConversationRead as i32, 9, vec!["alice".to_owned()])
        );
    }

    #[test]
    fn notifications_fan_out_to_distinct_recipients() {
        let events = fan(notification("typing.started", &["bob", "carol", "bob"]));
        let users: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.user.as_str(),
                    e.kind,
                    e.event_name.as_str(),
                    e.occurred_at_ms,
                )
            })
            .collect();
        assert_eq!(
            users,
            vec![
                ("bob", Kind::Notification as i32, "typing.started", 5),
                ("carol", Kind::Notification as i32, "typing.started", 5),
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.conversation_id.is_empty() && e.seq == 0)
        );
    }

    #[test]
    fn event_names_are_lowercase_dotted_and_not_fanouts_own() {
        let limits = IngestLimits::default();
        let reason = |name: &str| {
            validate(notification(name, &["bob"]), &limits)
                .err()
                .map(|rejection| rejection.reason())
        };
        for good in [
            "typing",
            "typing.started",
            "a1_b.c2",
            "x.y.z",
            &"a".repeat(64),
            "message.updated",
            "fanout",
        ] {
            assert_eq!(reason(good), None, "{good}");
        }
        for bad in [
            "Typing",
            "typing.",
            ".typing",
            "typing..started",
            "1typing",
            "typing.1x",
            "typing-started",
            "typing started",
            "_x",
            "typing.Started",
            "tÿping",
            &"a".repeat(65),
        ] {
            assert_eq!(reason(bad), Some("invalid_event_name"), "{bad}");
        }
        for reserved in [
            "message.created",
            "message.read",
            "message.deleted",
            "conversation.read",
            "fanout.x",
            "fanout.reset.all",
        ] {
            assert_eq!(reason(reserved), Some("reserved_event_name"), "{reserved}");
        }
        assert_eq!(reason(""), Some("missing_field"));
        let mut anonymous = notification("typing", &["bob"]);
        anonymous.event_id.clear();
        assert_eq!(
            validate(anonymous, &limits).unwrap_err().to_string(),
            Rejection::MissingField { field: "event_id" }.to_string()
        );
        assert_eq!(
            validate(notification("typing", &[]), &limits)
                .unwrap_err()
                .reason(),
            "no_recipients"
        );
        assert_eq!(
            validate(notification("typing", &["bob", ""]), &limits)
                .unwrap_err()
                .reason(),
            "missing_field"
        );
    }

    #[test]
    fn notify_users_are_checked_as_recipients_are() {
        let limits = IngestLimits {
            max_recipients: 3,
            ..IngestLimits::default()
        };
        let reason = |event| {
            validate(event, &limits)
                .err()
                .map(|rejection| rejection.reason())
        };
        assert_eq!(reason(read("bob", &[])), None);
        assert_eq!(reason(read("bob", &["a", "b", "c"])), None);
        assert_eq!(
            reason(read("bob", &["a", "b", "c", "d"])),
            Some("too_many_recipients")
        );
        assert_eq!(reason(read("bob", &["a", ""])), Some("missing_field"));
        let long = "x".repeat(limits.max_id_bytes + 1);
        assert_eq!(reason(read("bob", &[long.as_str()])), Some("id_too_long"));
    }

    #[test]
    fn data_is_a_bounded_json_object() {
        let limits = IngestLimits {
            max_data_bytes: 20,
            ..IngestLimits::default()
        };
        let check = |event: v1::MessageEvent| {
            validate(event, &limits).map(|valid| valid.data_json().to_owned())
        };
        // Measured on the rendering: 20 bytes pass, 21 do not.
        let twenty = r#"{"t":"0123456789ab"}"#;
        assert_eq!(twenty.len(), 20);
        assert_eq!(
            check(with_data(created("acme", "a", &["b"], 1), twenty)).unwrap(),
            twenty
        );
        let over = with_data(created("acme", "a", &["b"], 1), r#"{"t":"0123456789abc"}"#);
        assert_eq!(
            check(over).unwrap_err(),
            Rejection::DataTooLarge {
                size: 21,
                limit: 20
            }
        );
        // Whitespace the partner sent does not count against it.
        let spaced = with_data(
            created("acme", "a", &["b"], 1),
            r#"{ "t" :  "0123456789ab" }"#,
        );
        assert_eq!(check(spaced).unwrap(), twenty);
        // Protobuf can carry what JSON cannot.
        let mut not_finite = created("acme", "a", &["b"], 1);
        not_finite.data = Some(
            [("n".to_owned(), fanout_schema::data::Value::from(f64::NAN))]
                .into_iter()
                .collect(),
        );
        let bytes = not_finite.encode_to_vec();
        let decoded = decode_event(&bytes, None, &limits).unwrap();
        assert_eq!(check(decoded).unwrap_err().reason(), "invalid_data");
    }

    #[test]
    fn json_records_name_bad_data() {
        let limits = IngestLimits::default();
        let reason = |json: &str| {
            decode_event(json.as_bytes(), Some(b"application/json"), &limits)
                .and_then(|event| validate(event, &limits))
                .err()
                .map(|rejection| rejection.reason())
        };
        let event = |data: &str| {
            format!(
                r#"{{"eventId":"n1","partner":"acme","data":{data},"notification":{{"event":"typing","recipients":["bob"]}}}}"#
            )
        };
        assert_eq!(reason(&event(r#"{"text":"hi"}"#)), None);
        assert_eq!(reason(&event("null")), None);
        for not_object in [r#""hi""#, "[1,2]", "3", "true"] {
            assert_eq!(
                reason(&event(not_object)),
                Some("data_not_object"),
                "{not_object}"
            );
        }
        assert_eq!(
            reason(&event(r#"{"id":9007199254740993}"#)),
            Some("invalid_data")
        );
        // Not about data: still undecodable.
        assert_eq!(
            reason(r#"{"partner":"acme","data":{},"notification":"x"}"#),
            Some("undecodable")
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
                .and_then(|event| validate(event, &limits))
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
            validate(created("acme", "a", &refs, 1), &limits)
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
        let events = fan(read);
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
        let kinds: Vec<_> = fan(deleted).into_iter().map(|e| (e.user, e.kind)).collect();
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
            Rejection::DataNotObject,
            Rejection::InvalidData(String::new()),
            Rejection::DataTooLarge { size: 0, limit: 0 },
            Rejection::InvalidEventName(String::new()),
            Rejection::ReservedEventName(String::new()),
        ];
        for reason in Rejection::REASONS {
            assert!(
                all.iter().any(|rejection| rejection.reason() == reason),
                "{reason}"
            );
        }
        for rejection in all {
            assert!(
                Rejection::REASONS.contains(&rejection.reason()),
                "{rejection:?}"
            );
        }
    }
}
