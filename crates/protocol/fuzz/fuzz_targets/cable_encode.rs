//! Any identifier string through every encoder: the frame is JSON, echoes the identifier
//! exactly, and is escaped as ActiveSupport escapes it (no raw `<`, `>`, `&`, U+2028,
//! U+2029 or control characters).
#![no_main]

use fanout_protocol::cable;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn assert_escaped_like_active_support(frame: &str) {
    let raw = frame.chars().find(|character| {
        matches!(
            character,
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}'
        )
    });
    assert_eq!(raw, None, "unescaped character in {frame:?}");
}

fuzz_target!(|input: (u64, &str)| {
    let (count, identifier) = input;

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
        let parsed: Value = serde_json::from_str(&frame).expect("frame is JSON");
        assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{frame}");
        assert_eq!(parsed["type"].as_str(), Some(reply_type), "{frame}");
        // Rails' key order: identifier first, then type.
        assert!(frame.starts_with(r#"{"identifier":""#), "{frame}");
        assert_escaped_like_active_support(&frame);
    }

    let frame = cable::unread_count(identifier, count);
    let parsed: Value = serde_json::from_str(&frame).expect("frame is JSON");
    assert_eq!(parsed["identifier"].as_str(), Some(identifier), "{frame}");
    assert_eq!(parsed["message"]["type"].as_str(), Some("unread_count"));
    assert_eq!(parsed["message"]["count"].as_u64(), Some(count));
    assert!(frame.starts_with(r#"{"identifier":""#), "{frame}");
    assert_escaped_like_active_support(&frame);

    let frame = cable::ping(count);
    let parsed: Value = serde_json::from_str(&frame).expect("ping is JSON");
    assert_eq!(parsed["message"].as_u64(), Some(count));

    // The same string as Sec-WebSocket-Protocol header values, one per line.
    let offered = cable::negotiate_subprotocol(identifier.lines());
    if offered.is_some() {
        assert!(identifier.contains(cable::SUBPROTOCOL));
    }
    let with_ours = identifier.lines().chain([cable::SUBPROTOCOL]);
    assert_eq!(
        cable::negotiate_subprotocol(with_ours),
        Some(cable::SUBPROTOCOL)
    );
});
