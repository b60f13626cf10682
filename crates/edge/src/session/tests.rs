//! Sessions driven end to end through the driver, on a socket made of channels: what a
//! client of each protocol sees, frame by frame.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::cable;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Cable, CloseReason, Credentials, Realtime};
use crate::config::EdgeConfig;
use crate::table::CountValue;
use crate::testing::harness::{self, Harness, SECRET, stream_token, token};

/// A plain `actioncable-v1-json` session.
fn plain_cable(config: &EdgeConfig) -> Cable {
    Cable::new(config, None)
}

fn start_cable() -> Harness {
    start_cable_with(true)
}

fn start_cable_with(ready: bool) -> Harness {
    start_cable_with_token(ready, token(SECRET, "bob", 60))
}

/// An ActionCable session whose upgrade's query carried `token` for partner `acme`.
fn start_cable_with_token(ready: bool, token: String) -> Harness {
    let credentials = Credentials {
        partner: Some("acme".to_owned()),
        token: Some(token),
        restore: None,
    };
    harness::start(ready, |_| {}, plain_cable, Some(credentials))
}

fn start_realtime(ready: bool, configure: impl FnOnce(&mut EdgeConfig)) -> Harness {
    harness::start(ready, configure, Realtime::new, None)
}

fn auth_request(token: &str, partner: &str, id: &str) -> String {
    format!(r#"{{"type":"authrequest","token":"{token}","partner":"{partner}","id":{id}}}"#)
}

impl Harness {
    async fn authenticate(&mut self) {
        self.send(&auth_request(
            &token(SECRET, "bob", 60),
            "acme",
            r#""auth""#,
        ));
        assert_eq!(
            self.next().await,
            r#"{"type":"authresponse","success":true,"id":"auth"}"#
        );
    }
}

mod actioncable {
    use super::*;

    const SUBSCRIBE: &str =
        r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
    const CONFIRM: &str =
        r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#;

    fn count_frame(count: u64) -> String {
        cable::unread_count(r#"{"channel":"PartnerChannel"}"#, count)
    }

    #[tokio::test(start_paused = true)]
    async fn welcome_subscribe_count_and_changes() {
        let mut harness = start_cable();
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        harness.set_count(4, 1);
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(4));
        harness.set_count(5, 2);
        assert_eq!(harness.next().await, count_frame(5));
        // An older version never reaches the client.
        harness.set_count(99, 1);
        harness.set_count(6, 3);
        assert_eq!(harness.next().await, count_frame(6));
    }

    #[tokio::test(start_paused = true)]
    async fn commands_sent_before_the_welcome_are_processed_after_it() {
        let mut harness = start_cable();
        // Queued before the session has run at all.
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(0));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_three_seconds() {
        let mut harness = start_cable();
        assert_eq!(harness.next().await, r#"{"type":"welcome"}"#);
        let ping = harness.next().await;
        let parsed: serde_json::Value = serde_json::from_str(&ping).unwrap();
        assert_eq!(parsed["type"], "ping");
        assert!(parsed["message"].as_u64().unwrap() > 1_600_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_subscribe_is_ignored_and_unknown_channel_rejected() {
        let mut harness = start_cable();
        harness.next().await;
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(harness.next().await, count_frame(0));
        harness.send(SUBSCRIBE);
        harness.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"AdminChannel\"}"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"identifier":"{\"channel\":\"AdminChannel\"}","type":"reject_subscription"}"#
        );
        assert_eq!(
            harness
                .node
                .metrics
                .ignored_frame_count("cable", "duplicate_subscribe"),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_frames_are_ignored_without_closing() {
        let mut harness = start_cable();
        harness.next().await;
        for frame in [
            "garbage",
            "{}",
            r#"{"command":"subscribe","identifier":7}"#,
            r#"{"command":"dance"}"#,
        ] {
            harness.send(frame);
        }
        harness
            .peer
            .to_session
            .unbounded_send(Ok(Message::Binary(vec![1, 2, 3].into())))
            .unwrap();
        harness.send(SUBSCRIBE);
        assert_eq!(harness.next().await, CONFIRM);
        assert_eq!(
            harness
                .node
                .metrics
                .ignored_frame_count("cable", "malformed"),
            1
        );
        assert_eq!(
            harness
                .node
                .metrics
                .ignored_frame_count("cable", "unknown_command"),
            2
        );
        assert_eq!(
            harness
                .node
                .metrics
                .ignored_frame_count("cable", "bad_identifier"),
            1
        );
        assert_eq!(
            harness.node.metrics.ignored_frame_count("cable", "binary"),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unsubscribe_stops_pushes() {
        let mut harness = start_cable();
        harness.next().await;
        harness.send(SUBSCRIBE);
        harness.next().await;
        harness.next().await;
        harness
            .send(r#"{"command":"unsubscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#);
        tokio::task::yield_now().await;
        harness.set_count(3, 1);
        // The next frame is the ping 3 s after the start, not a count.
        let frame = harness.next().await;
        assert!(frame.starts_with(r#"{"type":"ping""#), "{frame}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_server_restart_with_reconnect() {
        let mut harness = start_cable();
        harness.next().await;
        harness.shutdown.cancel();
        assert_eq!(
            harness.next().await,
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        assert_eq!(harness.next_close().await, None);
        assert_eq!(harness.session.await.unwrap(), CloseReason::ServerRestart);
    }

    /// Drift fixed: `/realtime` got 1012 here, `/cable` got nothing.
    #[tokio::test(start_paused = true)]
    async fn shut_down_while_waiting_for_the_table_gets_server_restart() {
        let mut harness = start_cable_with(false);
        tokio::task::yield_now().await;
        harness.shutdown.cancel();
        assert_eq!(
            harness.next().await,
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        assert_eq!(harness.next_close().await, None);
        assert_eq!(harness.session.await.unwrap(), CloseReason::ServerRestart);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_gets_the_unauthorized_disconnect_and_no_welcome() {
        let mut harness = start_cable_with_token(true, token("wrong-secret-0123456789", "bob", 60));
        assert_eq!(
            harness.next().await,
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert_eq!(harness.next_close().await, None);
        assert_eq!(harness.session.await.unwrap(), CloseReason::Unauthorized);
        assert_eq!(
            harness.node.metrics.auth_failure_count("invalid_signature"),
            1
        );
        assert_eq!(harness.node.metrics.handshake_count("unauthorized"), 1);
        assert_eq!(harness.node.metrics.close_count("cable", "unauthorized"), 1);
    }
}

/// Drift fixed: `fanout_edge_connections` counted `/realtime` sockets from the upgrade
/// but `/cable` ones only once the table was ready; both count from the upgrade now.
#[tokio::test(start_paused = true)]
async fn both_protocols_count_a_connection_from_the_upgrade_to_the_close() {
    let mut cable = start_cable_with(false);
    let mut realtime = start_realtime(false, |_| {});
    tokio::task::yield_now().await;
    assert_eq!(cable.node.metrics.open_connections("cable"), 1);
    assert_eq!(realtime.node.metrics.open_connections("realtime"), 1);
    cable.shutdown.cancel();
    realtime.shutdown.cancel();
    cable.next().await;
    assert_eq!(cable.next_close().await, None);
    assert_eq!(
        realtime.next_close().await,
        Some((1012, "server restart".to_owned()))
    );
    cable.session.await.unwrap();
    realtime.session.await.unwrap();
    assert_eq!(cable.node.metrics.open_connections("cable"), 0);
    assert_eq!(realtime.node.metrics.open_connections("realtime"), 0);
}

mod realtime {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn auth_then_the_count_then_every_change() {
        let mut harness = start_realtime(true, |_| {});
        harness.set_count(4, 1);
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":4}"#);
        harness.set_count(5, 2);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":5}"#);
        // An older version never reaches the client.
        harness.set_count(99, 1);
        harness.set_count(6, 3);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":6}"#);
        harness.send(r#"{"type":"get_unread_count","id":"q1"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":6,"id":"q1"}"#
        );
        harness.send(r#"{"type":"get_unread_count","id":12}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":6,"id":12}"#
        );
        assert_eq!(harness.node.metrics.handshake_count("accepted"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_delivers_a_change_is_not_followed_by_the_same_push() {
        let mut harness = start_realtime(true, |_| {});
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
        // Both are pending when the session next runs; the request is served first
        // and its reply carries the new count.
        harness.set_count(8, 1);
        harness.send(r#"{"type":"get_unread_count","id":1}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"unread_count","count":8,"id":1}"#
        );
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn before_auth_pings_are_answered_and_everything_else_refused() {
        let mut harness = start_realtime(true, |_| {});
        harness.set_count(3, 1);
        harness.send(r#"{"type":"ping","id":"p"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong","id":"p"}"#);
        harness.send(r#"{"type":"get_unread_count","id":"x"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"not_authenticated","id":"x"}"#
        );
        harness.send(r#"{"type":"subscribe","id":2}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"unknown_type","id":2}"#
        );
        harness.send("garbage");
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        harness.send(r#"{"type":"authrequest","partner":"acme","id":3}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed","id":3}"#
        );
        harness
            .peer
            .to_session
            .unbounded_send(Ok(Message::Binary(vec![1, 2].into())))
            .unwrap();
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        // A count change reaches no one before auth.
        harness.set_count(4, 2);
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        let metrics = &harness.node.metrics;
        assert_eq!(
            metrics.ignored_frame_count("realtime", "not_authenticated"),
            1
        );
        assert_eq!(metrics.ignored_frame_count("realtime", "unknown_type"), 1);
        assert_eq!(metrics.ignored_frame_count("realtime", "not_json"), 1);
        assert_eq!(metrics.ignored_frame_count("realtime", "missing_field"), 1);
        assert_eq!(metrics.ignored_frame_count("realtime", "binary"), 1);
        // Malformed requests are not failed auth attempts.
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":4}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn after_auth_requests_are_served_and_a_second_auth_refused() {
        let mut harness = start_realtime(true, |_| {});
        harness.authenticate().await;
        harness.next().await;
        harness.send(r#"{"type":"ping","id":-1.5}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong","id":-1.5}"#);
        harness.send(&auth_request(&token(SECRET, "eve", 60), "acme", "9"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"already_authenticated","id":9}"#
        );
        harness.send(r#"{"type":"get_unread_count","id":"z","id":"y"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed"}"#
        );
        harness.send(r#"{"id":"t"}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"malformed","id":"t"}"#
        );
        // Still bob's count: the second token changed nothing.
        harness.node.table.apply(
            "acme/eve",
            CountValue {
                count: 50,
                version: 1,
                occurred_at_ms: 0,
                changes: 0,
            },
        );
        harness.send(r#"{"type":"get_unread_count"}"#);
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
        let metrics = &harness.node.metrics;
        assert_eq!(
            metrics.ignored_frame_count("realtime", "already_authenticated"),
            1
        );
        assert_eq!(metrics.ignored_frame_count("realtime", "duplicate_key"), 1);
        assert_eq!(metrics.ignored_frame_count("realtime", "missing_type"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn three_refused_tokens_close_with_4401() {
        let mut harness = start_realtime(true, |_| {});
        harness.send(&auth_request(
            &token("wrong-secret", "bob", 60),
            "acme",
            "1",
        ));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"invalid_signature","id":1}"#
        );
        harness.send(&auth_request(&token(SECRET, "bob", -600), "acme", "2"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"expired","id":2}"#
        );
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        harness.send(&auth_request(&token(SECRET, "bob", 60), "initech", "3"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"unknown_partner","id":3}"#
        );
        assert_eq!(
            harness.next_close().await,
            Some((4401, "authentication failed".to_owned()))
        );
        harness.session.await.unwrap();
        let metrics = &harness.node.metrics;
        assert_eq!(metrics.auth_failure_count("invalid_signature"), 1);
        assert_eq!(metrics.auth_failure_count("expired"), 1);
        assert_eq!(metrics.auth_failure_count("unknown_partner"), 1);
        assert_eq!(metrics.handshake_count("unauthorized"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_token_after_two_refused_ones_is_accepted() {
        let mut harness = start_realtime(true, |_| {});
        for id in ["1", "2"] {
            harness.send(&auth_request("not-a-jwt", "acme", id));
            assert_eq!(
                harness.next().await,
                format!(
                    r#"{{"type":"authresponse","success":false,"error":"malformed_token","id":{id}}}"#
                )
            );
        }
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn no_auth_in_time_closes_with_4408() {
        let mut harness = start_realtime(true, |_| {});
        let started = Instant::now();
        // Requests do not extend the deadline.
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        harness.send(r#"{"type":"ping"}"#);
        assert_eq!(harness.next().await, r#"{"type":"pong"}"#);
        assert_eq!(
            harness.next_close().await,
            Some((4408, "auth timeout".to_owned()))
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(10_000) && waited < Duration::from_millis(12_000),
            "{waited:?}"
        );
        assert_eq!(harness.node.metrics.handshake_count("auth_timeout"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_authresponse_waits_for_a_caught_up_table() {
        let mut harness = start_realtime(false, |_| {});
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        let early = tokio::time::timeout(Duration::from_secs(30), harness.next()).await;
        assert!(early.is_err(), "replied before ready: {early:?}");
        harness.set_count(2, 1);
        harness.ready.send(true).unwrap();
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":true,"id":1}"#
        );
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":2}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_with_1012_before_and_after_auth() {
        let mut before = start_realtime(true, |_| {});
        before.shutdown.cancel();
        assert_eq!(
            before.next_close().await,
            Some((1012, "server restart".to_owned()))
        );
        before.session.await.unwrap();

        let mut after = start_realtime(true, |_| {});
        after.authenticate().await;
        after.next().await;
        after.shutdown.cancel();
        assert_eq!(
            after.next_close().await,
            Some((1012, "server restart".to_owned()))
        );
        after.session.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_closes_with_1009() {
        let mut harness = start_realtime(true, |_| {});
        harness
            .peer
            .to_session
            .unbounded_send(Err(WsError::Capacity(
                tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                    size: 100_000,
                    max_size: 65_536,
                },
            )))
            .unwrap();
        match harness.peer.from_session.next().await.unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
            other => panic!("expected a close, got {other:?}"),
        }
        assert_eq!(harness.session.await.unwrap(), CloseReason::FrameTooLarge);
        assert_eq!(harness.node.metrics.limited_count("frame_size"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn more_requests_per_second_than_allowed_close_with_4429() {
        let mut harness = start_realtime(true, |config| config.max_commands_per_second = 5);
        harness.authenticate().await;
        // A burst of five is fine; the sixth in the same instant is not.
        for _ in 0..6 {
            harness.send(r#"{"type":"ping"}"#);
        }
        assert_eq!(harness.close_code().await, 4429);
        assert_eq!(harness.session.await.unwrap(), CloseReason::RateLimited);
        assert_eq!(harness.node.metrics.limited_count("command_rate"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_off_the_partners_list_is_refused_after_auth() {
        let mut harness = start_realtime(true, |config| {
            if let Some(acme) = config.partners.get_mut("acme") {
                acme.allowed_origins = vec!["https://other.acme.com".to_owned()];
            }
        });
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"origin_not_allowed","id":1}"#
        );
        assert_eq!(harness.close_code().await, 4403);
        assert_eq!(
            harness.session.await.unwrap(),
            CloseReason::OriginNotAllowed
        );
        assert_eq!(harness.node.metrics.limited_count("origin"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_partner_gets_try_again_later_and_1013() {
        let mut harness = start_realtime(true, |config| {
            if let Some(acme) = config.partners.get_mut("acme") {
                acme.max_connections = Some(1);
            }
        });
        // Another connection of the partner holds its one place.
        let _held = harness.node.limits.partner_place("acme").unwrap();
        harness.send(&auth_request(&token(SECRET, "bob", 60), "acme", "1"));
        assert_eq!(
            harness.next().await,
            r#"{"type":"authresponse","success":false,"error":"try_again_later","id":1}"#
        );
        assert_eq!(harness.close_code().await, 1013);
        assert_eq!(harness.node.metrics.limited_count("partner_connections"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_the_session_had_no_turn_for_are_coalesced() {
        let mut harness = start_realtime(true, |_| {});
        harness.authenticate().await;
        // 10 000 changes arrive before the session runs again: it holds one value, not
        // a queue, and writes only the newest.
        for version in 1..=10_000 {
            harness.set_count(version, version);
        }
        tokio::task::yield_now().await;
        let mut last = String::new();
        while let Ok(Some(Message::Text(frame))) =
            tokio::time::timeout(Duration::from_millis(50), harness.peer.from_session.next()).await
        {
            last = frame.to_string();
        }
        assert_eq!(last, r#"{"type":"unread_count","count":10000}"#);
        let coalesced = harness.node.metrics.coalesced_count();
        assert!(coalesced >= 9_990, "{coalesced}");
    }
}

mod streams {
    use super::*;
    use crate::config::{PartnerConfig, SecretConfig};
    use crate::streams::{Published, StreamFrame};

    const BETA_SECRET: &str = "beta-secret-0123456789";

    /// A second partner, `beta`, with its own secret.
    fn with_beta(config: &mut EdgeConfig) {
        config.partners.insert(
            "beta".to_owned(),
            PartnerConfig {
                secrets: vec![SecretConfig {
                    kid: None,
                    secret: BETA_SECRET.to_owned(),
                }],
                ..PartnerConfig::default()
            },
        );
    }

    /// A /cable connection without `jwt` (`?partner=acme` only): it authenticates only
    /// by subscribing.
    fn start_anonymous_cable(configure: impl FnOnce(&mut EdgeConfig)) -> Harness {
        let credentials = Credentials {
            partner: Some("acme".to_owned()),
            token: None,
            restore: None,
        };
        harness::start(
            true,
            |config| {
                with_beta(config);
                configure(config);
            },
            plain_cable,
            Some(credentials),
        )
    }

    /// Exactly the frame Chatwoot's documentation tells a client to send.
    fn room_subscribe(pubsub_token: &str) -> (String, String) {
        let identifier = format!(r#"{{"channel":"RoomChannel","pubsub_token":"{pubsub_token}"}}"#);
        let frame =
            serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string();
        (identifier, frame)
    }

    fn body(offset: u64) -> String {
        format!(
            r#"{{"event":"message.created","data":{{"n":{offset}}},"epoch":"1","offset":{offset}}}"#
        )
    }

    impl Harness {
        fn publish(&self, key: &str, offset: u64) -> Published {
            Self::publish_on(&self.node, key, offset)
        }

        fn publish_on(node: &crate::node::Node, key: &str, offset: u64) -> Published {
            node.streams.publish(
                key,
                StreamFrame {
                    epoch: fanout_protocol::stream::Epoch {
                        epoch: 1,
                        tag: fanout_protocol::stream::stream_tag(key),
                    },
                    offset,
                    body: body(offset).into(),
                    source_time: None,
                    written_ms: fanout_schema::unix_millis(),
                },
                fanout_schema::unix_millis(),
            )
        }

        /// No frame within a moment.
        async fn nothing_more(&mut self) {
            let next =
                tokio::time::timeout(Duration::from_millis(100), self.peer.from_session.next())
                    .await;
            assert!(next.is_err(), "unexpected frame: {next:?}");
        }
    }

    #[tokio::test]
    async fn room_channel_with_a_pubsub_token_gets_its_users_events_and_no_one_elses() {
        let mut harness = start_anonymous_cable(|_| {});
        assert_eq!(harness.next().await, cable::welcome());
        let (identifier, subscribe) = room_subscribe(&stream_token(SECRET, "bob", 60));
        harness.send(&subscribe);
        assert_eq!(
            harness.next().await,
            cable::confirm_subscription(&identifier)
        );
        // Same user id, another partner: not this subscription's.
        assert_eq!(harness.publish("beta/bob", 1).queued, 0);
        assert_eq!(harness.publish("acme/bob", 1).queued, 1);
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(1))
        );
        // A repeat of a position is delivered once.
        assert!(harness.publish("acme/bob", 1).repeated);
        harness.publish("acme/bob", 2);
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(2))
        );
        assert_eq!(
            harness.node.metrics.stream_subscription_count("accepted"),
            1
        );
        assert_eq!(harness.node.metrics.stream_push_count(), 2);
        // Unsubscribing ends the stream.
        harness.send(
            &serde_json::json!({"command": "unsubscribe", "identifier": identifier}).to_string(),
        );
        harness.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"Nope\"}"}"#);
        harness.next().await;
        assert_eq!(harness.publish("acme/bob", 3).queued, 0);
    }

    #[tokio::test]
    async fn a_bad_pubsub_token_is_rejected_counted_and_never_gets_data() {
        let mut harness = start_anonymous_cable(|_| {});
        assert_eq!(harness.next().await, cable::welcome());
        for (bad, reason) in [
            (
                stream_token("wrong-secret-0123456789", "bob", 60),
                "invalid_signature",
            ),
            ("not.a.jwt".to_owned(), "malformed_token"),
            (stream_token(SECRET, "bob", -120), "expired"),
            // A connection's token (no `"scope":"stream"`), perhaps spent already.
            (token(SECRET, "bob", 60), "wrong_scope"),
        ] {
            let (identifier, subscribe) = room_subscribe(&bad);
            harness.send(&subscribe);
            assert_eq!(
                harness.next().await,
                cable::reject_subscription(&identifier),
                "{reason}"
            );
        }
        assert_eq!(
            harness
                .node
                .metrics
                .stream_subscription_count("unauthorized"),
            4
        );
        for reason in [
            "invalid_signature",
            "malformed_token",
            "expired",
            "wrong_scope",
        ] {
            assert_eq!(
                harness.node.metrics.auth_failure_count(reason),
                1,
                "{reason}"
            );
        }
        assert_eq!(harness.publish("acme/bob", 1).queued, 0);
        // No user of its own: PartnerChannel is rejected too.
        harness.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#);
        assert_eq!(
            harness.next().await,
            cable::reject_subscription(r#"{"channel":"PartnerChannel"}"#)
        );
        harness.nothing_more().await;
    }

    #[tokio::test]
    async fn a_pubsub_token_of_another_partner_than_the_connections_is_rejected() {
        let credentials = Credentials {
            partner: Some("acme".to_owned()),
            token: Some(token(SECRET, "bob", 60)),
            restore: None,
        };
        let mut harness = harness::start(true, with_beta, plain_cable, Some(credentials));
        assert_eq!(harness.next().await, cable::welcome());
        let (identifier, subscribe) = room_subscribe(&stream_token(BETA_SECRET, "bob", 60));
        harness.send(&subscribe);
        assert_eq!(
            harness.next().await,
            cable::reject_subscription(&identifier)
        );
        assert_eq!(harness.publish("beta/bob", 1).queued, 0);
    }

    #[tokio::test]
    async fn one_connection_holds_partner_channel_and_room_channel_together() {
        let mut harness = start_cable();
        assert_eq!(harness.next().await, cable::welcome());
        harness.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#);
        harness.next().await;
        harness.next().await;
        // Without a pubsub_token, RoomChannel is the connection's own user's stream.
        let identifier = r#"{"channel":"RoomChannel"}"#;
        harness.send(
            &serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string(),
        );
        assert_eq!(
            harness.next().await,
            cable::confirm_subscription(identifier)
        );
        // One stream per connection.
        let (second, subscribe) = room_subscribe(&stream_token(SECRET, "bob", 60));
        harness.send(&subscribe);
        assert_eq!(harness.next().await, cable::reject_subscription(&second));
        assert_eq!(
            harness
                .node
                .metrics
                .stream_subscription_count("already_subscribed"),
            1
        );
        harness.publish("acme/bob", 1);
        assert_eq!(
            harness.next().await,
            cable::stream_message(identifier, &body(1))
        );
        harness.set_count(4, 1);
        assert_eq!(
            harness.next().await,
            cable::unread_count(r#"{"channel":"PartnerChannel"}"#, 4)
        );
    }

    #[tokio::test]
    async fn without_a_partner_in_the_query_the_tokens_partner_claim_names_it() {
        let mut harness =
            harness::start(true, with_beta, plain_cable, Some(Credentials::default()));
        assert_eq!(harness.next().await, cable::welcome());
        let now = fanout_schema::unix_millis() / 1000;
        let claims = |partner: &str, jti: &str| serde_json::json!({"uniqueId": "bob", "partner": partner, "scope": "stream", "iat": now, "exp": now + 60, "jti": jti});
        let sign = |claims: serde_json::Value, secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        // Claims beta but is signed with acme's secret: verified with beta's, refused.
        let (forged, subscribe) = room_subscribe(&sign(claims("beta", "j1"), SECRET));
        harness.send(&subscribe);
        assert_eq!(harness.next().await, cable::reject_subscription(&forged));
        let (identifier, subscribe) = room_subscribe(&sign(claims("beta", "j2"), BETA_SECRET));
        harness.send(&subscribe);
        assert_eq!(
            harness.next().await,
            cable::confirm_subscription(&identifier)
        );
        assert_eq!(harness.publish("acme/bob", 1).queued, 0);
        assert_eq!(harness.publish("beta/bob", 1).queued, 1);
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(1))
        );
    }

    #[tokio::test]
    async fn a_stream_token_cannot_open_a_connection() {
        let mut harness = start_cable_with_token(true, stream_token(SECRET, "bob", 60));
        assert_eq!(
            harness.next().await,
            cable::disconnect(cable::DisconnectReason::Unauthorized, false)
        );
        assert_eq!(harness.node.metrics.auth_failure_count("wrong_scope"), 1);
    }

    #[tokio::test]
    async fn a_pubsub_token_is_not_spent_so_a_reconnect_subscribes_again() {
        let pubsub_token = stream_token(SECRET, "bob", 60);
        for _ in 0..2 {
            let mut harness = start_anonymous_cable(|_| {});
            harness.next().await;
            let (identifier, subscribe) = room_subscribe(&pubsub_token);
            harness.send(&subscribe);
            assert_eq!(
                harness.next().await,
                cable::confirm_subscription(&identifier)
            );
        }
    }

    #[tokio::test]
    async fn a_client_too_far_behind_loses_its_room_subscription_after_what_was_queued() {
        let mut harness = start_anonymous_cable(|config| config.max_stream_queue = 2);
        harness.next().await;
        let (identifier, subscribe) = room_subscribe(&stream_token(SECRET, "bob", 60));
        harness.send(&subscribe);
        harness.next().await;
        // The session has no turn between these: the third finds the queue full.
        for offset in 1..=3 {
            harness.publish("acme/bob", offset);
        }
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(1))
        );
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(2))
        );
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, super::super::cable::STREAM_OVERFLOW)
        );
        assert_eq!(
            harness.next().await,
            cable::reject_subscription(&identifier)
        );
        assert_eq!(harness.node.metrics.stream_overflow_count(), 1);
        assert_eq!(harness.publish("acme/bob", 4).queued, 0);
    }

    #[tokio::test]
    async fn realtime_subscribe_events_gets_event_pushes() {
        let mut harness = start_realtime(true, |config| config.max_stream_queue = 2);
        harness.send(r#"{"type":"subscribe_events","id":1}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"not_authenticated","id":1}"#
        );
        harness.authenticate().await;
        assert_eq!(harness.next().await, r#"{"type":"unread_count","count":0}"#);
        harness.send(r#"{"type":"subscribe_events","id":2}"#);
        assert_eq!(harness.next().await, r#"{"type":"subscribed","id":2}"#);
        harness.send(r#"{"type":"subscribe_events","id":3}"#);
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"already_subscribed","id":3}"#
        );
        harness.publish("acme/bob", 1);
        assert_eq!(
            harness.next().await,
            r#"{"type":"event","event":"message.created","data":{"n":1},"epoch":"1","offset":1}"#
        );
        for offset in 2..=4 {
            harness.publish("acme/bob", offset);
        }
        harness.next().await;
        harness.next().await;
        assert_eq!(
            harness.next().await,
            r#"{"type":"events_ended","reason":"overflow"}"#
        );
        // Subscribing again resumes the live stream.
        harness.send(r#"{"type":"subscribe_events","id":4}"#);
        assert_eq!(harness.next().await, r#"{"type":"subscribed","id":4}"#);
        harness.publish("acme/bob", 9);
        assert!(harness.next().await.contains(r#""offset":9"#));
    }

    /// A /cable connection without `jwt` speaking the extended protocol
    /// (`actioncable-v1-ext-json`), optionally restoring the session `sid`, on `node`.
    fn start_extended_on(node: Arc<crate::node::Node>, restore: Option<String>) -> Harness {
        let cable = Cable::new(&node.config, Some(crate::restore::new_sid()));
        harness::start_on(
            node,
            cable,
            Some(Credentials {
                partner: Some("acme".to_owned()),
                token: None,
                restore,
            }),
        )
    }

    fn sid_of(welcome: &str) -> String {
        let welcome: serde_json::Value = serde_json::from_str(welcome).unwrap();
        assert_eq!(welcome["type"], "welcome");
        welcome["sid"].as_str().unwrap().to_owned()
    }

    fn bob_epoch() -> fanout_protocol::stream::Epoch {
        fanout_protocol::stream::Epoch {
            epoch: 1,
            tag: fanout_protocol::stream::stream_tag("acme/bob"),
        }
    }

    fn ext_message(identifier: &str, offset: u64) -> String {
        cable::stream_message_ext(identifier, &body(offset), bob_epoch(), offset)
    }

    /// `history` as `@anycable/web` sends it: the position of the last event it has.
    fn history(identifier: &str, offset: u64) -> String {
        let stream = fanout_protocol::stream::stream_id(bob_epoch().tag);
        serde_json::json!({"identifier": identifier, "command": "history", "history": {
            "since": 1, "streams": {stream: {"epoch": bob_epoch().to_string(), "offset": offset}}}})
        .to_string()
    }

    /// Ends the client's side of the connection, as a dropped TCP connection does, and
    /// waits for its session to end.
    async fn drop_connection(harness: Harness) {
        let Harness { peer, session, .. } = harness;
        drop(peer);
        session.await.unwrap();
    }

    #[tokio::test]
    async fn an_extended_client_restores_its_session_by_sid_and_gets_what_it_missed() {
        let harness = start_anonymous_cable(|_| {});
        let node = harness.node.clone();
        drop(harness);
        let mut first = start_extended_on(node.clone(), None);
        let sid = sid_of(&first.next().await);
        let (identifier, subscribe) = room_subscribe(&stream_token(SECRET, "bob", 60));
        first.send(&subscribe);
        assert_eq!(first.next().await, cable::confirm_subscription(&identifier));
        first.publish("acme/bob", 1);
        first.publish("acme/bob", 2);
        assert_eq!(first.next().await, ext_message(&identifier, 1));
        assert_eq!(first.next().await, ext_message(&identifier, 2));
        drop_connection(first).await;
        assert_eq!(node.sessions.len(), 1);
        // Missed while away.
        let away = Harness::publish_on(&node, "acme/bob", 3);
        assert_eq!(away.queued, 0);
        Harness::publish_on(&node, "acme/bob", 4);

        let mut second = start_extended_on(node.clone(), Some(sid.clone()));
        let welcome: serde_json::Value = serde_json::from_str(&second.next().await).unwrap();
        assert_eq!(welcome["restored"], true);
        assert_eq!(welcome["restored_ids"], serde_json::json!([identifier]));
        assert_ne!(welcome["sid"], sid.as_str());
        assert_eq!(node.metrics.session_restore_count("restored"), 1);
        // Nothing until the client asks for its history: then exactly what it missed,
        // the confirmation, and live events.
        second.nothing_more().await;
        second.send(&history(&identifier, 2));
        assert_eq!(second.next().await, ext_message(&identifier, 3));
        assert_eq!(second.next().await, ext_message(&identifier, 4));
        assert_eq!(second.next().await, cable::confirm_history(&identifier));
        second.publish("acme/bob", 5);
        assert_eq!(second.next().await, ext_message(&identifier, 5));
        second.nothing_more().await;
        assert_eq!(node.metrics.stream_resume_count("resumed"), 1);

        // A sid restores once.
        drop_connection(second).await;
        let mut third = start_extended_on(node.clone(), Some(sid));
        let welcome: serde_json::Value = serde_json::from_str(&third.next().await).unwrap();
        assert_eq!(welcome.get("restored"), None);
        assert_eq!(node.metrics.session_restore_count("unknown"), 1);
    }

    #[tokio::test]
    async fn an_extended_client_subscribing_with_history_gets_the_missed_events_or_a_rejection() {
        let harness = start_anonymous_cable(|config| config.history.max_events_per_user = 3);
        let node = harness.node.clone();
        drop(harness);
        for offset in 1..=5 {
            Harness::publish_on(&node, "acme/bob", offset);
        }
        let pubsub_token = stream_token(SECRET, "bob", 60);
        let (identifier, _) = room_subscribe(&pubsub_token);
        let subscribe = |offset: u64| -> String {
            let history: serde_json::Value =
                serde_json::from_str(&history(&identifier, offset)).unwrap();
            serde_json::json!({"command": "subscribe", "identifier": identifier,
                "history": history["history"]})
            .to_string()
        };
        // The window holds 3..=5: a client at 2 gets 3, 4, 5.
        let mut client = start_extended_on(node.clone(), None);
        client.next().await;
        client.send(&subscribe(2));
        assert_eq!(
            client.next().await,
            cable::confirm_subscription(&identifier)
        );
        for offset in 3..=5 {
            assert_eq!(client.next().await, ext_message(&identifier, offset));
        }
        assert_eq!(client.next().await, cable::confirm_history(&identifier));
        // Nothing missed: confirmed at once.
        let mut client = start_extended_on(node.clone(), None);
        client.next().await;
        client.send(&subscribe(5));
        assert_eq!(
            client.next().await,
            cable::confirm_subscription(&identifier)
        );
        assert_eq!(client.next().await, cable::confirm_history(&identifier));
        // A client at 1 misses 2, which the window no longer has: rejected, never a
        // part, and live events follow.
        let mut client = start_extended_on(node.clone(), None);
        client.next().await;
        client.send(&subscribe(1));
        assert_eq!(
            client.next().await,
            cable::confirm_subscription(&identifier)
        );
        assert_eq!(
            client.next().await,
            cable::reject_history(&identifier, "beyond_window")
        );
        client.publish("acme/bob", 6);
        assert_eq!(client.next().await, ext_message(&identifier, 6));
        assert_eq!(node.metrics.stream_resume_count("reset_beyond_window"), 1);
        // Another user's position: rejected as such.
        let mut client = start_extended_on(node.clone(), None);
        client.next().await;
        let foreign = serde_json::json!({"command": "subscribe", "identifier": identifier,
            "history": {"streams": {"s": {"epoch": format!("1-{:08x}", fanout_protocol::stream::stream_tag("acme/eve")), "offset": 1}}}});
        client.send(&foreign.to_string());
        assert_eq!(
            client.next().await,
            cable::confirm_subscription(&identifier)
        );
        assert_eq!(
            client.next().await,
            cable::reject_history(&identifier, "foreign_position")
        );
    }

    #[tokio::test]
    async fn a_plain_client_sees_no_positions_and_no_history() {
        let mut harness = start_anonymous_cable(|_| {});
        assert_eq!(harness.next().await, cable::welcome());
        let (identifier, _) = room_subscribe(&stream_token(SECRET, "bob", 60));
        harness.publish("acme/bob", 1);
        let subscribe = serde_json::json!({"command": "subscribe", "identifier": identifier,
            "history": {"since": 1}});
        harness.send(&subscribe.to_string());
        assert_eq!(
            harness.next().await,
            cable::confirm_subscription(&identifier)
        );
        harness.send(&history(&identifier, 0));
        harness.publish("acme/bob", 2);
        assert_eq!(
            harness.next().await,
            cable::stream_message(&identifier, &body(2))
        );
        harness.nothing_more().await;
    }

    #[tokio::test]
    async fn realtime_subscribe_events_since_a_position_resumes_resets_or_refuses() {
        let mut harness = start_realtime(true, |config| config.history.max_events_per_user = 3);
        harness.authenticate().await;
        harness.next().await;
        for offset in 1..=5 {
            harness.publish("acme/bob", offset);
        }
        let since = |offset: u64, id: u32| {
            format!(
                r#"{{"type":"subscribe_events","since":{{"epoch":"{}","offset":{offset}}},"id":{id}}}"#,
                bob_epoch()
            )
        };
        // Past the user's last event, even after waiting for this node to catch up.
        harness.send(&since(9, 1));
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"future_offset","id":1}"#
        );
        harness.send(&format!(
            r#"{{"type":"subscribe_events","since":{{"epoch":"1-{:08x}","offset":1}},"id":2}}"#,
            fanout_protocol::stream::stream_tag("acme/eve")
        ));
        assert_eq!(
            harness.next().await,
            r#"{"type":"error","error":"foreign_position","id":2}"#
        );
        // Neither subscribed: a resume from 3 gets 4 and 5, then live events.
        harness.send(&since(3, 3));
        assert_eq!(
            harness.next().await,
            r#"{"type":"subscribed","recovery":"resumed","missed":2,"id":3}"#
        );
        assert!(harness.next().await.ends_with(r#""offset":4}"#));
        assert!(harness.next().await.ends_with(r#""offset":5}"#));
        harness.publish("acme/bob", 6);
        assert!(harness.next().await.ends_with(r#""offset":6}"#));
        assert_eq!(harness.node.metrics.stream_resume_count("future_offset"), 1);
        assert_eq!(
            harness.node.metrics.stream_resume_count("foreign_position"),
            1
        );

        let mut other = start_realtime(true, |config| config.history.max_events_per_user = 3);
        other.authenticate().await;
        other.next().await;
        for offset in 1..=5 {
            other.publish("acme/bob", offset);
        }
        other.send(&since(1, 4));
        assert_eq!(
            other.next().await,
            r#"{"type":"subscribed","recovery":"reset","reason":"beyond_window","id":4}"#
        );
        other.publish("acme/bob", 6);
        assert!(other.next().await.ends_with(r#""offset":6}"#));
        other.nothing_more().await;
    }
}
