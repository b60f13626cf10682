//! Fuzz entry points: each takes any bytes, runs them through the real decoder and
//! panics only when a property the protocol promises does not hold. `fuzz/` at the
//! repository root calls them from cargo-fuzz targets, and the corpus replay test
//! (`crates/fanout/tests/fuzz_corpus.rs`) calls them on every seed.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::cable::{self, Command};
use crate::realtime::{self, AuthErrorCode, ClientFrame, ErrorCode, RequestId};

/// Any `/realtime` client frame: `realtime::decode` never panics; an accepted frame,
/// written again in canonical form, decodes to the same request; and the id it read
/// (from a request or an error) comes back byte for byte in every reply.
pub fn realtime_frame(frame: &[u8]) {
    let decoded = realtime::decode(frame);
    let id = match &decoded {
        Ok(request) => request.id(),
        Err(error) => error.id.as_ref(),
    };
    if let Some(id) = id {
        assert_eq!(RequestId::parse(id.as_json()).as_ref(), Some(id));
        for reply in [
            realtime::error(ErrorCode::Malformed, Some(id)),
            realtime::auth_failure(AuthErrorCode::MalformedToken, Some(id)),
            realtime::auth_success(Some(id)),
            realtime::unread_count(3, Some(id)),
            realtime::pong(Some(id)),
            realtime::subscribed(Some(id), None),
        ] {
            assert_eq!(echoed_id(&reply).as_deref(), Some(id.as_json()), "{reply}");
        }
    }
    let Ok(request) = decoded else {
        return;
    };
    let canonical = canonical_realtime(&request);
    assert_eq!(
        realtime::decode(canonical.as_bytes()).as_ref(),
        Ok(&request),
        "{canonical}"
    );
}

/// The raw JSON text of a reply's `id`; `None` when the reply is not a JSON object.
fn echoed_id(reply: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<IgnoredAny>(reply).ok()?;
    let parsed: Reply<'_> = serde_json::from_str(reply).ok()?;
    parsed.id.map(|id| id.get().to_owned())
}

/// `request` as serde_json writes it, the id as the client wrote it.
fn canonical_realtime(request: &ClientFrame) -> String {
    let mut fields = serde_json::Map::new();
    let frame_type = match request {
        ClientFrame::AuthRequest { token, partner, .. } => {
            fields.insert("token".to_owned(), Value::from(token.as_str()));
            fields.insert("partner".to_owned(), Value::from(partner.as_str()));
            "authrequest"
        }
        ClientFrame::GetUnreadCount { .. } => "get_unread_count",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::SubscribeEvents { since, .. } => {
            if let Some(position) = since {
                let mut since = serde_json::Map::new();
                since.insert("epoch".to_owned(), Value::from(position.epoch.to_string()));
                since.insert("offset".to_owned(), Value::from(position.offset));
                fields.insert("since".to_owned(), Value::Object(since));
            }
            "subscribe_events"
        }
    };
    fields.insert("type".to_owned(), Value::from(frame_type));
    let mut text = Value::Object(fields).to_string();
    if let Some(id) = request.id() {
        // The id is raw JSON (a number may be past what `Value` holds): spliced in.
        text.pop();
        text.push_str(r#","id":"#);
        text.push_str(id.as_json());
        text.push('}');
    }
    text
}

/// Any ActionCable client frame: `decode_command` never panics, an accepted frame is
/// JSON, and the identifier it accepted comes back byte for byte in every frame the
/// server echoes it in; re-serialized by serde_json, the command decodes the same.
pub fn cable_command(frame: &[u8]) {
    let Ok(command) = cable::decode_command(frame) else {
        return;
    };
    if command == Command::Pong {
        return;
    }
    let identifier = command.identifier();

    // What decode_command accepted is JSON text: UTF-8, and the grammar as serde's
    // IgnoredAny checks it.
    let Ok(text) = std::str::from_utf8(frame) else {
        panic!("an accepted frame is not UTF-8");
    };
    assert!(
        serde_json::from_str::<IgnoredAny>(text).is_ok(),
        "an accepted frame is not JSON"
    );
    // Its `identifier` is the string serde_json's Value finds there. Value is stricter
    // than the JSON grammar in fields decode_command never reads (numbers past f64,
    // lone surrogate escapes: the grammar allows both, and JavaScript's JSON.parse reads
    // them), so only compare when Value takes the frame.
    if let Ok(reference) = serde_json::from_str::<Value>(text) {
        assert_eq!(reference["identifier"].as_str(), Some(identifier));
    }

    // The official client matches replies to subscriptions by comparing identifier
    // strings, so the echo must be exact.
    for reply in [
        cable::confirm_subscription(identifier),
        cable::reject_subscription(identifier),
        cable::unread_count(identifier, 7),
        cable::confirm_history(identifier),
        cable::reject_history(identifier, "beyond_window"),
        cable::stream_message(identifier, "{}"),
    ] {
        let parsed = serde_json::from_str::<Value>(&reply).unwrap_or(Value::Null);
        assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{reply}");
    }

    // The identifier is client-controlled JSON-in-a-string: parsing it must not panic.
    let _ = cable::parse_identifier(identifier);

    // Re-serialized by serde_json, the same command decodes to the same value.
    let mut canonical = serde_json::Map::new();
    let command_name = match &command {
        Command::Subscribe { history: None, .. } => "subscribe",
        // A history request is not re-serialized here: an epoch fanout did not write is
        // kept as `None`, so its text cannot be written back.
        Command::Subscribe { .. } | Command::History { .. } | Command::Pong => return,
        Command::Unsubscribe { .. } => "unsubscribe",
        Command::Message { data, .. } => {
            canonical.insert("data".to_owned(), Value::from(data.as_str()));
            "message"
        }
    };
    canonical.insert("command".to_owned(), Value::from(command_name));
    canonical.insert("identifier".to_owned(), Value::from(identifier));
    let canonical = Value::Object(canonical).to_string();
    assert_eq!(
        cable::decode_command(canonical.as_bytes()).as_ref(),
        Ok(&command)
    );
}

/// Any identifier and count through every ActionCable encoder: the first 8 bytes are
/// the count (little-endian, zero-padded), the rest the identifier (UTF-8; anything
/// else is skipped, as a WebSocket text frame cannot carry it). Each frame is JSON,
/// echoes the identifier exactly, and is escaped as ActiveSupport escapes it (no raw
/// `<`, `>`, `&`, U+2028, U+2029 or control characters).
pub fn cable_encode(input: &[u8]) {
    let (count_bytes, rest) = input.split_at(input.len().min(8));
    let mut count = [0_u8; 8];
    count[..count_bytes.len()].copy_from_slice(count_bytes);
    let count = u64::from_le_bytes(count);
    let Ok(identifier) = std::str::from_utf8(rest) else {
        return;
    };

    for (reply_type, frame) in [
        (
            "confirm_subscription",
            cable::confirm_subscription(identifier),
        ),
        (
            "reject_subscription",
            cable::reject_subscription(identifier),
        ),
    ] {
        let parsed = serde_json::from_str::<Value>(&frame).unwrap_or(Value::Null);
        assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{frame}");
        assert_eq!(parsed["type"].as_str(), Some(reply_type), "{frame}");
        // Rails' key order: identifier first, then type.
        assert!(frame.starts_with(r#"{"identifier":""#), "{frame}");
        assert_escaped_like_active_support(&frame);
    }

    let frame = cable::unread_count(identifier, count);
    let parsed = serde_json::from_str::<Value>(&frame).unwrap_or(Value::Null);
    assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{frame}");
    assert_eq!(parsed["message"]["type"].as_str(), Some("unread_count"));
    assert_eq!(parsed["message"]["count"].as_u64(), Some(count));
    assert!(frame.starts_with(r#"{"identifier":""#), "{frame}");
    assert_escaped_like_active_support(&frame);

    let frame = cable::ping(count);
    let parsed = serde_json::from_str::<Value>(&frame).unwrap_or(Value::Null);
    assert_eq!(parsed["message"].as_u64(), Some(count));

    let frame = cable::welcome_ext(identifier, Some(&[identifier, "x"]));
    let parsed = serde_json::from_str::<Value>(&frame).unwrap_or(Value::Null);
    assert_eq!(parsed["sid"].as_str(), Some(identifier), "{frame}");
    assert_eq!(
        parsed["restored_ids"][0].as_str(),
        Some(identifier),
        "{frame}"
    );

    // The same string as Sec-WebSocket-Protocol header values, one per line: what is
    // picked is one of the server's, offered by the client; offered after the string,
    // ours is picked unless the string offered one of the server's first.
    let offered = cable::negotiate_subprotocol(identifier.lines());
    if let Some(picked) = offered {
        assert!(cable::SERVER_SUBPROTOCOLS.contains(&picked));
        assert!(identifier.contains(picked));
    }
    let with_ours = identifier.lines().chain([cable::SUBPROTOCOL]);
    assert_eq!(
        cable::negotiate_subprotocol(with_ours),
        Some(offered.unwrap_or(cable::SUBPROTOCOL))
    );
}

fn assert_escaped_like_active_support(frame: &str) {
    let raw = frame.chars().find(|character| {
        matches!(
            character,
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}'
        )
    });
    assert_eq!(raw, None, "unescaped character in {frame:?}");
}
