//! Any client frame: `decode_command` never panics, and whatever identifier it accepts
//! comes back byte for byte in every frame the server echoes it in.
#![no_main]

use fanout_protocol::cable::{self, Command};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;

fuzz_target!(|frame: &[u8]| {
    let Ok(command) = cable::decode_command(frame) else {
        return;
    };
    if command == Command::Pong {
        return;
    }
    let identifier = command.identifier();

    // What decode_command accepted is JSON text: UTF-8, and the grammar as serde's
    // IgnoredAny checks it.
    let text = std::str::from_utf8(frame).expect("accepted frame is UTF-8");
    serde_json::from_str::<IgnoredAny>(text).expect("accepted frame is JSON");
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
    ] {
        let parsed: Value = serde_json::from_str(&reply).expect("reply is JSON");
        assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{reply}");
    }

    // The identifier is client-controlled JSON-in-a-string: parsing it must not panic.
    let _ = cable::parse_identifier(identifier);

    // Re-serialized by serde_json, the same command decodes to the same value.
    let mut canonical = serde_json::Map::new();
    let command_name = match &command {
        Command::Subscribe { history: None, .. } => "subscribe",
        // A history request is not re-serialized here: its own tests cover its shape.
        Command::Subscribe { .. } | Command::History { .. } => return,
        Command::Pong => unreachable!("returned above"),
        Command::Unsubscribe { .. } => "unsubscribe",
        Command::Message { data, .. } => {
            canonical.insert("data".to_owned(), Value::from(data.as_str()));
            "message"
        }
    };
    canonical.insert("command".to_owned(), Value::from(command_name));
    canonical.insert("identifier".to_owned(), Value::from(identifier));
    let canonical = serde_json::to_vec(&canonical).expect("a map of strings serializes");
    assert_eq!(cable::decode_command(&canonical).as_ref(), Ok(&command));
});
