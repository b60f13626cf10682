//! One test per ActionCable frame kind: the exact bytes Rails sends, and the client
//! commands the official `@rails/actioncable` client sends.
#![allow(clippy::unwrap_used)]

use fanout_protocol::cable::{self, Command, CommandError, DisconnectReason};

const IDENTIFIER: &str = r#"{"channel":"PartnerChannel"}"#;

#[test]
fn welcome_frame() {
    assert_eq!(cable::welcome(), r#"{"type":"welcome"}"#);
}

#[test]
fn ping_frame() {
    assert_eq!(
        cable::ping(1_700_000_000),
        r#"{"type":"ping","message":1700000000}"#
    );
}

#[test]
fn confirm_subscription_frame_echoes_identifier() {
    assert_eq!(
        cable::confirm_subscription(IDENTIFIER),
        r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#
    );
}

#[test]
fn reject_subscription_frame_echoes_identifier() {
    assert_eq!(
        cable::reject_subscription(r#"{"channel":"Nope"}"#),
        r#"{"identifier":"{\"channel\":\"Nope\"}","type":"reject_subscription"}"#
    );
}

#[test]
fn unread_count_message_frame() {
    assert_eq!(
        cable::unread_count(IDENTIFIER, 42),
        r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","message":{"type":"unread_count","count":42}}"#
    );
}

#[test]
fn disconnect_frames() {
    assert_eq!(
        cable::disconnect(DisconnectReason::Unauthorized, false),
        r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
    );
    assert_eq!(
        cable::disconnect(DisconnectReason::ServerRestart, true),
        r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
    );
    assert_eq!(
        cable::disconnect(DisconnectReason::WrongShard, false),
        r#"{"type":"disconnect","reason":"wrong_shard","reconnect":false}"#
    );
}

#[test]
fn identifier_is_echoed_byte_for_byte_whatever_its_key_order_or_extra_keys() {
    // The client compares identifiers as strings, so key order, spacing and extra keys
    // must survive untouched.
    let identifier = r#"{ "partner":"acme", "channel" : "PartnerChannel","x":[1,2]}"#;
    let frame = cable::confirm_subscription(identifier);
    let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(parsed["identifier"].as_str().unwrap(), identifier);
    assert_eq!(
        cable::parse_identifier(identifier).unwrap().channel,
        "PartnerChannel"
    );
}

#[test]
fn subscribe_command_as_the_official_client_sends_it() {
    let frame = br#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
    assert_eq!(
        cable::decode_command(frame).unwrap(),
        Command::Subscribe {
            identifier: IDENTIFIER.to_owned(),
            history: None,
        }
    );
}

/// As `@anycable/core`'s `ActionCableExtendedProtocol` sends them: a subscribe with a
/// history request, a `history` command for a restored subscription, and `pong`.
#[test]
fn extended_protocol_commands_as_anycable_web_sends_them() {
    use fanout_protocol::cable::HistoryRequest;
    use fanout_protocol::stream::{Epoch, Position};
    let first = br#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}","history":{"since":1700000000,"streams":{}}}"#;
    assert_eq!(
        cable::decode_command(first).unwrap(),
        Command::Subscribe {
            identifier: IDENTIFIER.to_owned(),
            history: Some(HistoryRequest {
                since: Some(1_700_000_000),
                streams: vec![],
            }),
        }
    );
    let history = br#"{"identifier":"{\"channel\":\"PartnerChannel\"}","command":"history","history":{"since":1700000000,"streams":{"events-0000abcd":{"epoch":"17-0000abcd","offset":32},"other":{"epoch":"x123","offset":1}}}}"#;
    assert_eq!(
        cable::decode_command(history).unwrap(),
        Command::History {
            identifier: IDENTIFIER.to_owned(),
            history: HistoryRequest {
                since: Some(1_700_000_000),
                streams: vec![
                    (
                        "events-0000abcd".to_owned(),
                        Some(Position {
                            epoch: Epoch {
                                epoch: 17,
                                tag: 0xabcd
                            },
                            offset: 32
                        })
                    ),
                    ("other".to_owned(), None),
                ],
            },
        }
    );
    for bad in [
        &br#"{"identifier":"{}","command":"history"}"#[..],
        br#"{"identifier":"{}","command":"history","history":{"streams":{"s":{"epoch":"1-00000000"}}}}"#,
        br#"{"identifier":"{}","command":"history","history":{"since":-1}}"#,
        br#"{"identifier":"{}","command":"subscribe","history":[1]}"#,
    ] {
        assert_eq!(
            cable::decode_command(bad),
            Err(cable::CommandError::BadHistory),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        cable::decode_command(br#"{"command":"pong"}"#).unwrap(),
        Command::Pong
    );
}

#[test]
fn extended_protocol_frames() {
    use fanout_protocol::stream::Epoch;
    let epoch = Epoch {
        epoch: 17,
        tag: 0xabcd,
    };
    let frame = cable::stream_message_ext(IDENTIFIER, r#"{"event":"x"}"#, epoch, 3);
    let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"identifier": IDENTIFIER, "message": {"event": "x"},
            "stream_id": "events-0000abcd", "epoch": "17-0000abcd", "offset": 3})
    );
    assert_eq!(
        cable::welcome_ext("s1", None),
        r#"{"type":"welcome","sid":"s1"}"#
    );
    assert_eq!(
        cable::welcome_ext("s2", Some(&[IDENTIFIER])),
        r#"{"type":"welcome","sid":"s2","restored":true,"restored_ids":["{\"channel\":\"PartnerChannel\"}"]}"#
    );
    assert_eq!(
        cable::reject_history(IDENTIFIER, "beyond_window"),
        r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"reject_history","reason":"beyond_window"}"#
    );
    assert_eq!(
        cable::negotiate_subprotocol(["actioncable-v1-ext-json"]),
        Some(cable::EXT_SUBPROTOCOL)
    );
}

#[test]
fn unsubscribe_command() {
    let frame = br#"{"command":"unsubscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
    assert_eq!(
        cable::decode_command(frame).unwrap(),
        Command::Unsubscribe {
            identifier: IDENTIFIER.to_owned()
        }
    );
}

#[test]
fn message_command() {
    let frame = br#"{"command":"message","identifier":"{\"channel\":\"PartnerChannel\"}","data":"{\"action\":\"x\"}"}"#;
    assert_eq!(
        cable::decode_command(frame).unwrap(),
        Command::Message {
            identifier: IDENTIFIER.to_owned(),
            data: r#"{"action":"x"}"#.to_owned()
        }
    );
}

#[test]
fn malformed_commands_are_errors_not_panics() {
    let cases: [(&[u8], CommandError); 8] = [
        (b"not json", CommandError::Malformed),
        (b"[1,2]", CommandError::Malformed),
        (b"\xff\xfe", CommandError::Malformed),
        (br#"{"identifier":"{}"}"#, CommandError::UnknownCommand),
        (
            br#"{"command":"dance","identifier":"{}"}"#,
            CommandError::UnknownCommand,
        ),
        (
            br#"{"command":"subscribe","identifier":{"channel":"PartnerChannel"}}"#,
            CommandError::BadIdentifier,
        ),
        (br#"{"command":"subscribe"}"#, CommandError::BadIdentifier),
        (
            br#"{"command":"message","identifier":"{}","data":{"a":1}}"#,
            CommandError::BadData,
        ),
    ];
    for (frame, expected) in cases {
        assert_eq!(
            cable::decode_command(frame),
            Err(expected),
            "{:?}",
            String::from_utf8_lossy(frame)
        );
    }
}

#[test]
fn invalid_utf8_anywhere_in_the_frame_is_malformed() {
    // Found by the cable_decode fuzz target: serde_json skips the bytes of a field it
    // ignores without checking them, so a frame that is not UTF-8 (and so not JSON) was
    // decoded as long as the bad bytes sat in an unknown field.
    let frame = b"{\"command\":\"subscribe\",\"identifier\":\"{}\",\"ident\":\"\xa7\"}";
    assert_eq!(cable::decode_command(frame), Err(CommandError::Malformed));
    let frame = b"{\"command\":\"subscribe\",\"identifier\":\"{}\",\"x\":{\"\xff\":1}}";
    assert_eq!(cable::decode_command(frame), Err(CommandError::Malformed));
}

#[test]
fn identifier_without_channel_is_not_a_channel() {
    assert_eq!(cable::parse_identifier("{}"), None);
    assert_eq!(cable::parse_identifier("garbage"), None);
    assert_eq!(cable::parse_identifier(r#"{"channel":7}"#), None);
}

#[test]
fn subprotocol_negotiation_follows_rails() {
    // What the official client offers.
    assert_eq!(
        cable::negotiate_subprotocol(["actioncable-v1-json, actioncable-unsupported"]),
        Some("actioncable-v1-json")
    );
    // websocket-driver keeps the client's order: the first offer Rails lists wins.
    assert_eq!(
        cable::negotiate_subprotocol(["actioncable-unsupported", "actioncable-v1-json"]),
        Some("actioncable-unsupported")
    );
    assert_eq!(
        cable::negotiate_subprotocol(["graphql-ws, actioncable-v1-json"]),
        Some("actioncable-v1-json")
    );
    // A client from a protocol version we do not speak still gets a handshake naming
    // the marker, so it knows to give up rather than retry.
    assert_eq!(
        cable::negotiate_subprotocol(["actioncable-v2-json, actioncable-unsupported"]),
        Some("actioncable-unsupported")
    );
    // Nothing in common, or no offer: no header, and the connection proceeds.
    assert_eq!(cable::negotiate_subprotocol(["graphql-ws"]), None);
    assert_eq!(cable::negotiate_subprotocol([]), None);
}

proptest::proptest! {
    #[test]
    fn decode_never_panics(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = cable::decode_command(&frame);
    }

    #[test]
    fn any_identifier_round_trips_through_frames(identifier in "\\PC*") {
        let frame = cable::unread_count(&identifier, 3);
        let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
        proptest::prop_assert_eq!(parsed["identifier"].as_str().unwrap(), identifier.as_str());
        proptest::prop_assert_eq!(parsed["message"]["count"].as_u64(), Some(3));
    }
}
