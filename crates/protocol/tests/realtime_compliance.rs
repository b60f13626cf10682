//! One test per `/realtime` frame kind, with the exact bytes, the `id` echo rule and
//! every way a client frame can be refused.
#![allow(clippy::unwrap_used)]

use fanout_protocol::realtime::{
    self, AuthErrorCode, ClientFrame, ErrorCode, FrameError, FrameErrorKind, RequestId,
};
use proptest::prelude::*;

fn id(json: &str) -> RequestId {
    RequestId::parse(json).unwrap()
}

fn refused(frame: &str) -> FrameError {
    realtime::decode(frame.as_bytes()).unwrap_err()
}

// Server frames.

#[test]
fn auth_success_frame() {
    assert_eq!(
        realtime::auth_success(None),
        r#"{"type":"authresponse","success":true}"#
    );
    assert_eq!(
        realtime::auth_success(Some(&id(r#""a1""#))),
        r#"{"type":"authresponse","success":true,"id":"a1"}"#
    );
}

#[test]
fn auth_failure_frame() {
    assert_eq!(
        realtime::auth_failure(AuthErrorCode::Expired, None),
        r#"{"type":"authresponse","success":false,"error":"expired"}"#
    );
    assert_eq!(
        realtime::auth_failure(AuthErrorCode::InvalidSignature, Some(&id("7"))),
        r#"{"type":"authresponse","success":false,"error":"invalid_signature","id":7}"#
    );
}

#[test]
fn unread_count_push_and_reply_frames() {
    assert_eq!(
        realtime::unread_count(42, None),
        r#"{"type":"unread_count","count":42}"#
    );
    assert_eq!(
        realtime::unread_count(u64::MAX, Some(&id(r#""q""#))),
        r#"{"type":"unread_count","count":18446744073709551615,"id":"q"}"#
    );
}

#[test]
fn pong_frame() {
    assert_eq!(realtime::pong(None), r#"{"type":"pong"}"#);
    assert_eq!(realtime::pong(Some(&id("3"))), r#"{"type":"pong","id":3}"#);
}

#[test]
fn error_frame() {
    assert_eq!(
        realtime::error(ErrorCode::NotAuthenticated, Some(&id(r#""x""#))),
        r#"{"type":"error","error":"not_authenticated","id":"x"}"#
    );
    assert_eq!(
        realtime::error(ErrorCode::Malformed, None),
        r#"{"type":"error","error":"malformed"}"#
    );
}

#[test]
fn every_server_frame_is_json() {
    let ids = [None, Some(id(r#""\u00e9\n\"""#)), Some(id("-1.5e3"))];
    for request_id in &ids {
        let request_id = request_id.as_ref();
        for frame in [
            realtime::auth_success(request_id),
            realtime::auth_failure(AuthErrorCode::Replayed, request_id),
            realtime::unread_count(9, request_id),
            realtime::pong(request_id),
            realtime::error(ErrorCode::UnknownType, request_id),
        ] {
            let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert!(parsed["type"].is_string(), "{frame}");
            assert_eq!(parsed.get("id").is_some(), request_id.is_some(), "{frame}");
        }
    }
}

#[test]
fn codes_are_the_documented_strings() {
    let auth_codes = [
        (AuthErrorCode::MissingToken, "missing_token"),
        (AuthErrorCode::UnknownPartner, "unknown_partner"),
        (AuthErrorCode::MalformedToken, "malformed_token"),
        (AuthErrorCode::UnsupportedAlgorithm, "unsupported_algorithm"),
        (AuthErrorCode::UnknownKey, "unknown_key"),
        (AuthErrorCode::InvalidSignature, "invalid_signature"),
        (AuthErrorCode::Expired, "expired"),
        (AuthErrorCode::NotYetValid, "not_yet_valid"),
        (AuthErrorCode::InvalidClaims, "invalid_claims"),
        (AuthErrorCode::Replayed, "replayed"),
        (AuthErrorCode::PartnerMismatch, "partner_mismatch"),
        (AuthErrorCode::IssuedInFuture, "issued_in_future"),
        (AuthErrorCode::LifetimeTooLong, "lifetime_too_long"),
        (AuthErrorCode::TokenTooLarge, "token_too_large"),
        (AuthErrorCode::OriginNotAllowed, "origin_not_allowed"),
        (AuthErrorCode::TryAgainLater, "try_again_later"),
        (AuthErrorCode::WrongScope, "wrong_scope"),
        (AuthErrorCode::WrongShard, "wrong_shard"),
    ];
    for (code, text) in auth_codes {
        assert_eq!(code.as_str(), text);
    }
    let error_codes = [
        (ErrorCode::NotAuthenticated, "not_authenticated"),
        (ErrorCode::AlreadyAuthenticated, "already_authenticated"),
        (ErrorCode::Malformed, "malformed"),
        (ErrorCode::UnknownType, "unknown_type"),
    ];
    for (code, text) in error_codes {
        assert_eq!(code.as_str(), text);
    }
}

// Client frames.

#[test]
fn authrequest_frame() {
    assert_eq!(
        realtime::decode(br#"{"type":"authrequest","token":"a.b.c","partner":"acme"}"#),
        Ok(ClientFrame::AuthRequest {
            token: "a.b.c".into(),
            partner: "acme".into(),
            id: None,
        })
    );
    // Key order, spacing, escapes and unknown keys do not matter.
    assert_eq!(
        realtime::decode(
            b" {\"partner\" : \"ac\\u006de\", \"extra\": [1, {}], \"token\":\"t\", \"type\":\"authrequest\", \"id\": 1 }\n"
        ),
        Ok(ClientFrame::AuthRequest {
            token: "t".into(),
            partner: "acme".into(),
            id: Some(id("1")),
        })
    );
}

#[test]
fn get_unread_count_frame() {
    assert_eq!(
        realtime::decode(br#"{"type":"get_unread_count"}"#),
        Ok(ClientFrame::GetUnreadCount { id: None })
    );
}

#[test]
fn ping_frame() {
    assert_eq!(
        realtime::decode(br#"{"type":"ping","id":"p-1"}"#),
        Ok(ClientFrame::Ping {
            id: Some(id(r#""p-1""#))
        })
    );
}

#[test]
fn string_ids_are_echoed_as_written() {
    let frame = realtime::decode(br#"{"type":"ping","id":"a\u0041\"<>"}"#).unwrap();
    let request_id = frame.id().unwrap();
    assert_eq!(request_id.as_json(), r#""a\u0041\"<>""#);
    assert_eq!(
        realtime::pong(Some(request_id)),
        r#"{"type":"pong","id":"a\u0041\"<>"}"#
    );
}

#[test]
fn number_ids_are_echoed_as_written() {
    for number in ["0", "17", "-3", "1.50", "1e3", "12345678901234567890123"] {
        let frame = format!(r#"{{"type":"get_unread_count","id":{number}}}"#);
        let decoded = realtime::decode(frame.as_bytes()).unwrap();
        assert_eq!(decoded.id().unwrap().as_json(), number);
        assert_eq!(
            realtime::unread_count(5, decoded.id()),
            format!(r#"{{"type":"unread_count","count":5,"id":{number}}}"#)
        );
    }
}

#[test]
fn request_id_parse_takes_strings_and_numbers_only() {
    assert_eq!(id(" 12 ").as_json(), "12");
    for not_an_id in ["null", "true", "{}", "[1]", "", "\"open", "1 2"] {
        assert_eq!(RequestId::parse(not_an_id), None, "{not_an_id}");
    }
}

// Refused client frames.

#[test]
fn not_json_is_refused_without_id() {
    for frame in [
        "",
        "{",
        "garbage",
        r#"{"type":"ping","id":1"#,
        "{} x",
        "\u{0}",
    ] {
        assert_eq!(
            refused(frame),
            FrameError {
                kind: FrameErrorKind::NotJson,
                id: None
            },
            "{frame:?}"
        );
    }
    for not_utf8 in [
        &b"{\"type\":\"ping\",\"id\":\"\xff\"}"[..],
        b"{\"type\":\"ping\",\"other\":\"\xc3\"}",
    ] {
        assert_eq!(
            realtime::decode(not_utf8).unwrap_err(),
            FrameError {
                kind: FrameErrorKind::NotJson,
                id: None
            }
        );
    }
}

#[test]
fn json_that_is_not_an_object_is_refused() {
    for frame in ["[]", r#"["ping"]"#, "null", "1", r#""ping""#, " true "] {
        assert_eq!(refused(frame).kind, FrameErrorKind::NotObject, "{frame}");
    }
}

#[test]
fn invalid_ids_are_refused_without_id() {
    for bad in ["null", "true", "{}", "[1]"] {
        let frame = format!(r#"{{"type":"ping","id":{bad}}}"#);
        assert_eq!(
            refused(&frame),
            FrameError {
                kind: FrameErrorKind::InvalidId,
                id: None
            },
            "{frame}"
        );
    }
}

#[test]
fn missing_or_non_string_type_is_refused_with_the_id() {
    for frame in [
        r#"{"id":5}"#,
        r#"{"type":null,"id":5}"#,
        r#"{"type":1,"id":5}"#,
        r#"{"type":["ping"],"id":5}"#,
    ] {
        assert_eq!(
            refused(frame),
            FrameError {
                kind: FrameErrorKind::MissingType,
                id: Some(id("5"))
            },
            "{frame}"
        );
    }
}

#[test]
fn unknown_type_is_refused_with_the_id() {
    let error = refused(r#"{"type":"subscribe","id":"s"}"#);
    assert_eq!(
        error,
        FrameError {
            kind: FrameErrorKind::UnknownType,
            id: Some(id(r#""s""#))
        }
    );
    assert_eq!(error.kind.reply_code(), ErrorCode::UnknownType);
    // Types are case-sensitive.
    assert_eq!(
        refused(r#"{"type":"PING"}"#).kind,
        FrameErrorKind::UnknownType
    );
}

#[test]
fn authrequest_without_its_fields_is_refused_with_the_id() {
    let cases = [
        (
            r#"{"type":"authrequest","partner":"acme","id":1}"#,
            FrameErrorKind::MissingField("token"),
        ),
        (
            r#"{"type":"authrequest","token":null,"partner":"acme","id":1}"#,
            FrameErrorKind::MissingField("token"),
        ),
        (
            r#"{"type":"authrequest","token":"t","id":1}"#,
            FrameErrorKind::MissingField("partner"),
        ),
        (
            r#"{"type":"authrequest","token":42,"partner":"acme","id":1}"#,
            FrameErrorKind::InvalidField("token"),
        ),
        (
            r#"{"type":"authrequest","token":"t","partner":{"code":"acme"},"id":1}"#,
            FrameErrorKind::InvalidField("partner"),
        ),
    ];
    for (frame, kind) in cases {
        assert_eq!(
            refused(frame),
            FrameError {
                kind,
                id: Some(id("1"))
            },
            "{frame}"
        );
        assert_eq!(kind.reply_code(), ErrorCode::Malformed);
    }
}

#[test]
fn duplicate_known_keys_are_refused() {
    assert_eq!(
        refused(r#"{"type":"ping","type":"get_unread_count","id":2}"#),
        FrameError {
            kind: FrameErrorKind::DuplicateKey,
            id: Some(id("2"))
        }
    );
    // Two ids: neither is echoed.
    assert_eq!(
        refused(r#"{"type":"ping","id":1,"id":2}"#),
        FrameError {
            kind: FrameErrorKind::DuplicateKey,
            id: None
        }
    );
    // Unknown keys may repeat.
    assert!(realtime::decode(br#"{"type":"ping","x":1,"x":2}"#).is_ok());
}

#[test]
fn metric_labels_are_bounded_and_distinct() {
    let kinds = [
        FrameErrorKind::NotJson,
        FrameErrorKind::NotObject,
        FrameErrorKind::DuplicateKey,
        FrameErrorKind::InvalidId,
        FrameErrorKind::MissingType,
        FrameErrorKind::UnknownType,
        FrameErrorKind::MissingField("token"),
        FrameErrorKind::InvalidField("token"),
    ];
    let labels: std::collections::BTreeSet<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
    assert_eq!(labels.len(), kinds.len());
    assert_eq!(
        FrameErrorKind::MissingField("partner").as_str(),
        FrameErrorKind::MissingField("token").as_str()
    );
}

proptest! {
    #[test]
    fn decode_never_panics_on_bytes(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = realtime::decode(&frame);
    }

    #[test]
    fn decode_never_panics_on_near_json(
        frame in r#"[{}\[\]":,\\ a-z0-9.eE+\-]{0,80}"#,
    ) {
        let _ = realtime::decode(frame.as_bytes());
    }

    #[test]
    fn any_string_id_round_trips(text in any::<String>()) {
        let json = serde_json::to_string(&text).unwrap();
        let frame = format!(r#"{{"type":"ping","id":{json}}}"#);
        let decoded = realtime::decode(frame.as_bytes()).unwrap();
        prop_assert_eq!(decoded.id().unwrap().as_json(), json.as_str());
        let reply: serde_json::Value = serde_json::from_str(&realtime::pong(decoded.id())).unwrap();
        prop_assert_eq!(reply["id"].as_str().unwrap(), text.as_str());
    }
}

// Stream subscriptions with a position.

#[test]
fn subscribe_events_with_and_without_since() {
    use fanout_protocol::stream::{Epoch, Position};
    assert_eq!(
        realtime::decode(br#"{"type":"subscribe_events","id":1}"#).unwrap(),
        ClientFrame::SubscribeEvents {
            id: Some(id("1")),
            since: None
        }
    );
    assert_eq!(
        realtime::decode(br#"{"type":"subscribe_events","since":null}"#).unwrap(),
        ClientFrame::SubscribeEvents {
            id: None,
            since: None
        }
    );
    assert_eq!(
        realtime::decode(
            br#"{"type":"subscribe_events","since":{"epoch":"1700000000000042-0000abcd","offset":9}}"#
        )
        .unwrap(),
        ClientFrame::SubscribeEvents {
            id: None,
            since: Some(Position {
                epoch: Epoch {
                    epoch: 1_700_000_000_000_042,
                    tag: 0xabcd
                },
                offset: 9
            })
        }
    );
    for bad in [
        r#"{"type":"subscribe_events","since":5,"id":"s"}"#,
        r#"{"type":"subscribe_events","since":{"epoch":"17","offset":9},"id":"s"}"#,
        r#"{"type":"subscribe_events","since":{"epoch":"17-0000abcd","offset":-1},"id":"s"}"#,
        r#"{"type":"subscribe_events","since":{"epoch":"17-0000abcd"},"id":"s"}"#,
    ] {
        assert_eq!(
            refused(bad),
            FrameError {
                kind: FrameErrorKind::InvalidField("since"),
                id: Some(id(r#""s""#))
            },
            "{bad}"
        );
    }
}

#[test]
fn subscribed_frames_say_how_the_stream_was_recovered() {
    use fanout_protocol::realtime::{Recovery, ResetReason};
    assert_eq!(
        realtime::subscribed(Some(&id("3")), None),
        r#"{"type":"subscribed","id":3}"#
    );
    assert_eq!(
        realtime::subscribed(None, Some(Recovery::Resumed { missed: 4 })),
        r#"{"type":"subscribed","recovery":"resumed","missed":4}"#
    );
    assert_eq!(
        realtime::subscribed(
            Some(&id(r#""x""#)),
            Some(Recovery::Reset(ResetReason::BeyondWindow))
        ),
        r#"{"type":"subscribed","recovery":"reset","reason":"beyond_window","id":"x"}"#
    );
    assert_eq!(
        realtime::error(ErrorCode::FutureOffset, None),
        r#"{"type":"error","error":"future_offset"}"#
    );
    assert_eq!(
        realtime::error(ErrorCode::ForeignPosition, None),
        r#"{"type":"error","error":"foreign_position"}"#
    );
}
