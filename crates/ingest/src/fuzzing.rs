//! Fuzz entry points: any bytes as a record value, through ingest's own decoder,
//! validator and fan-out, exactly as a record off message-events goes. They panic only
//! when a property below does not hold. `fuzz/` at the repository root calls them from
//! cargo-fuzz targets, and the corpus replay test (`crates/fanout/tests/fuzz_corpus.rs`)
//! calls them on every seed.

use fanout_schema::data::{parse_data, render_data};
use fanout_schema::v1::{self, message_event::Event, user_event::Kind};
use fanout_schema::{CONTENT_TYPE_JSON, split_user_key};
use prost::Message;

use crate::events::{IngestLimits, decode_event, fan_out, validate};

/// Small bounds, so that inputs of a few hundred bytes reach every limit.
pub fn limits() -> IngestLimits {
    IngestLimits {
        max_record_bytes: 64 * 1024,
        max_recipients: 8,
        max_id_bytes: 32,
        max_data_bytes: 512,
        ..IngestLimits::default()
    }
}

/// A record without a content type (protobuf).
pub fn protobuf_record(value: &[u8]) {
    record(value, None);
}

/// A record with `content-type: application/json` (proto3 JSON).
pub fn json_record(value: &[u8]) {
    record(value, Some(CONTENT_TYPE_JSON.as_bytes()));
}

/// Decodes and validates `value`; for an event that passes, checks that:
/// - it reads back the same from its protobuf encoding and from its proto3 JSON
///   rendering, with the same `data` rendering (the api and ingest take either form);
/// - its `data` rendering is a JSON object that renders to itself when read again;
/// - fan-out names each affected user once, keyed `partner/user`, with the event's
///   data, and the sender of a created message exactly once as `KIND_SENT`.
fn record(value: &[u8], content_type: Option<&[u8]>) {
    let limits = limits();
    let Ok(event) = decode_event(value, content_type, &limits) else {
        return;
    };
    let Ok(valid) = validate(event, &limits) else {
        return;
    };
    let event = valid.event();

    let from_protobuf = v1::MessageEvent::decode(event.encode_to_vec().as_slice());
    assert_eq!(from_protobuf.as_ref(), Ok(event), "protobuf round trip");
    // `data` compared as rendered: JSON reads a protobuf NullValue back as a Value
    // with no kind, which is null too.
    let without_data = |event: &v1::MessageEvent| v1::MessageEvent {
        data: None,
        ..event.clone()
    };
    let json = serde_json::to_vec(event).unwrap_or_default();
    let from_json = decode_event(&json, Some(CONTENT_TYPE_JSON.as_bytes()), &limits);
    assert_eq!(
        from_json.as_ref().map(without_data),
        Ok(without_data(event)),
        "JSON round trip"
    );
    let revalidated = from_json.map(|event| validate(event, &limits));
    assert!(
        matches!(&revalidated, Ok(Ok(again)) if again.data_json() == valid.data_json()),
        "the JSON form validates to the same data: {revalidated:?}"
    );

    if !valid.data_json().is_empty() {
        let reread = parse_data(valid.data_json()).map(|data| render_data(&data));
        assert!(
            matches!(&reread, Ok(Ok(rendered)) if rendered == valid.data_json()),
            "data {:?} renders again as {reread:?}",
            valid.data_json()
        );
    }

    let user_events: Vec<v1::UserEvent> = fan_out(&valid).collect();
    let mut users: Vec<&str> = user_events.iter().map(|user| user.user.as_str()).collect();
    users.sort_unstable();
    let before = users.len();
    users.dedup();
    assert_eq!(before, users.len(), "a user twice in {user_events:?}");
    for user_event in &user_events {
        assert_eq!(user_event.partner, event.partner);
        assert_eq!(user_event.data_json, valid.data_json());
        assert!(!user_event.user.is_empty());
        let key = fanout_schema::user_key(&user_event.partner, &user_event.user);
        assert_eq!(
            split_user_key(&key),
            Some((user_event.partner.as_str(), user_event.user.as_str()))
        );
    }
    if let Some(Event::MessageCreated(created)) = &event.event {
        let sent: Vec<&str> = user_events
            .iter()
            .filter(|user| user.kind == i32::from(Kind::Sent))
            .map(|user| user.user.as_str())
            .collect();
        assert_eq!(sent, [created.sender.as_str()]);
    }
}
