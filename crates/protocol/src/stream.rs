//! The body of a stream event, rendered once per event and shared by every session of
//! its user: ActionCable wraps it as a channel message (`{"identifier":..,"message":
//! BODY}`), `/realtime` as an `event` push (`{"type":"event",...BODY's fields}`).
//!
//! And a stream position as clients see it: `epoch` is a string, `"<epoch>-<tag>"`,
//! where the tag (eight hex digits, [`stream_tag`]) names whose stream it is, so that a
//! position presented for the wrong stream is told apart from one that is merely old.

use std::fmt;

use crate::json::{push_string, push_u64};

/// The tag of the stream of `key` (`partner/user`): 32-bit FNV-1a of its bytes. Not a
/// secret and not unique; it lets a position from another user's stream be refused
/// with a clear reason instead of resuming the wrong offsets.
pub fn stream_tag(key: &str) -> u32 {
    key.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A stream's epoch as clients see and present it: the router's epoch and the stream's
/// tag, written `"<epoch>-<tag as 8 hex digits>"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Epoch {
    pub epoch: u64,
    pub tag: u32,
}

impl Epoch {
    /// Parses `"<epoch>-<tag>"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, tag) = text.split_once('-')?;
        if epoch.is_empty() || !epoch.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        if tag.len() != 8 || !tag.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            epoch: epoch.parse().ok()?,
            tag: u32::from_str_radix(tag, 16).ok()?,
        })
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{:08x}", self.epoch, self.tag)
    }
}

/// A position a client presents: the last event it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

/// The ActionCable extended protocol's `stream_id` of the stream tagged `tag`.
pub fn stream_id(tag: u32) -> String {
    format!("events-{tag:08x}")
}

/// A stream event's fields, as the router wrote them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The event's name: `message.created`, ..., or a partner notification's.
    pub event: &'a str,
    /// The partner's data as JSON text (an object); empty when the event had none.
    pub data_json: &'a str,
    pub conversation_id: &'a str,
    pub seq: u64,
    pub message_id: &'a str,
    pub sender: &'a str,
    pub reader: &'a str,
    pub unread_count: u64,
    pub epoch: Epoch,
    pub offset: u64,
}

/// `{"event":NAME,"data":{..},"conversation_id":..,"seq":N,"message_id":..,"sender":..,
/// "reader":..,"unread_count":N,"epoch":"E-T","offset":N}`: `data` is the partner's,
/// or, without it, the event's own fields; the event's fields appear where it has them;
/// `epoch` is a string ([`Epoch`]), as AnyCable's. `data_json` must be a JSON object: the caller
/// checks what it did not write itself.
pub fn event_body(fields: &EventFields<'_>) -> String {
    let mut own = String::with_capacity(96);
    push_fields(&mut own, fields);
    let mut body = String::with_capacity(fields.data_json.len() + 2 * own.len() + 96);
    body.push_str(r#"{"event":"#);
    push_string(&mut body, fields.event);
    body.push_str(r#","data":"#);
    if fields.data_json.is_empty() {
        body.push('{');
        body.push_str(own.strip_prefix(',').unwrap_or(&own));
        body.push('}');
    } else {
        body.push_str(fields.data_json);
    }
    body.push_str(&own);
    body.push_str(r#","unread_count":"#);
    push_u64(&mut body, fields.unread_count);
    body.push_str(r#","epoch":""#);
    body.push_str(&fields.epoch.to_string());
    body.push_str(r#"","offset":"#);
    push_u64(&mut body, fields.offset);
    body.push('}');
    body
}

/// `,"conversation_id":..,"seq":N,...` for the fields the event has.
fn push_fields(out: &mut String, fields: &EventFields<'_>) {
    push_named(out, "conversation_id", fields.conversation_id);
    if fields.seq > 0 {
        out.push_str(r#","seq":"#);
        push_u64(out, fields.seq);
    }
    push_named(out, "message_id", fields.message_id);
    push_named(out, "sender", fields.sender);
    push_named(out, "reader", fields.reader);
}

/// `,"name":"value"`, unless `value` is empty.
fn push_named(out: &mut String, name: &str, value: &str) {
    if !value.is_empty() {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        push_string(out, value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn an_epoch_reads_back_as_written_and_nothing_else_parses() {
        let epoch = Epoch {
            epoch: 1_700_000_000_000_042,
            tag: stream_tag("acme/bob"),
        };
        assert_eq!(Epoch::parse(&epoch.to_string()), Some(epoch));
        assert_ne!(stream_tag("acme/bob"), stream_tag("acme/bo"));
        for bad in [
            "",
            "5",
            "5-",
            "-00000001",
            "5-1",
            "5-0000000g",
            "x-00000001",
            "5-000000001",
            "+5-00000001",
        ] {
            assert_eq!(Epoch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_partners_data_is_delivered_as_it_is() {
        let body = event_body(&EventFields {
            event: "message.created",
            data_json: r#"{"content":"<hi>","n":1.5}"#,
            conversation_id: "c1",
            seq: 7,
            message_id: "m7",
            sender: "ann",
            unread_count: 3,
            epoch: Epoch {
                epoch: 1_700_000_000_000_042,
                tag: 0xab,
            },
            offset: 12,
            ..EventFields::default()
        });
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"event":"message.created","data":{"content":"<hi>","n":1.5},
                "conversation_id":"c1","seq":7,"message_id":"m7","sender":"ann",
                "unread_count":3,"epoch":"1700000000000042-000000ab","offset":12})
        );
        assert!(body.contains(r#""data":{"content":"<hi>","n":1.5}"#));
    }

    #[test]
    fn without_data_the_events_own_fields_are_the_data() {
        let body = event_body(&EventFields {
            event: "message.read",
            conversation_id: "c\"1",
            seq: 2,
            reader: "bob",
            unread_count: 0,
            epoch: Epoch { epoch: 5, tag: 1 },
            offset: 1,
            ..EventFields::default()
        });
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed["data"],
            json!({"conversation_id":"c\"1","seq":2,"reader":"bob"})
        );
        assert_eq!(parsed["reader"], "bob");
        let notification = event_body(&EventFields {
            event: "typing.started",
            epoch: Epoch { epoch: 5, tag: 1 },
            offset: 2,
            ..EventFields::default()
        });
        let parsed: Value = serde_json::from_str(&notification).unwrap();
        assert_eq!(
            parsed,
            json!({"event":"typing.started","data":{},"unread_count":0,"epoch":"5-00000001","offset":2})
        );
    }
}
