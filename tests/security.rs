//! The edge facing the internet: every kind of bad token refused with its reason on both
//! protocols, partners isolated, every limit enforced with its documented close code or
//! reply and its counter, slowloris clients dropped, slow readers coalesced, and
//! secrets rotated through the secrets file without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fanout_edge::SecretConfig;
use fanout_edge::table::CountValue;
use fanout_tests::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

const ALPHA_K1: &str = "alpha-secret-one-0123456789";
const ALPHA_K2: &str = "alpha-secret-two-0123456789";
const UNAUTHORIZED: &str = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;

/// A good token for u1 under key id `kid`, to be signed with that key's secret.
fn good(kid: &str) -> TokenBuilder {
    TokenBuilder::new("u1").kid(kid)
}

/// Swaps one character of the part `index` (0 header, 1 payload, 2 signature).
fn tamper(token: &str, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let part = &mut parts[index];
    let middle = part.len() / 2;
    let replacement = if &part[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    part.replace_range(middle..=middle, replacement);
    parts.join(".")
}

/// One bad token: the partner it is presented for, and the reason it must be refused.
struct Case {
    name: &'static str,
    partner: &'static str,
    token: String,
    reason: &'static str,
}

/// The bad tokens. Built afresh for each protocol, so that no case depends on another
/// having spent a token id.
fn bad_tokens(beta: &TestPartner) -> Vec<Case> {
    let now = unix_seconds();
    let signed = || good("k1").sign(ALPHA_K1);
    // alpha's good token with one claim set to a value, or removed (`None`).
    let claims = [
        ("expired", "exp", Some(json!(now - 600)), "expired"),
        (
            "exp as a string",
            "exp",
            Some(json!((now + 300).to_string())),
            "invalid_claims",
        ),
        ("missing exp", "exp", None, "invalid_claims"),
        (
            "nbf in the future",
            "nbf",
            Some(json!(now + 120)),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            "iat",
            Some(json!(now + 120)),
            "issued_in_future",
        ),
        ("missing iat", "iat", None, "invalid_claims"),
        (
            "exp a month away",
            "exp",
            Some(json!(now + 30 * 86_400)),
            "lifetime_too_long",
        ),
        (
            "huge (over max_token_bytes)",
            "padding",
            Some(json!("x".repeat(6000))),
            "token_too_large",
        ),
        ("missing uniqueId", "uniqueId", None, "invalid_claims"),
        (
            "uniqueId a number",
            "uniqueId",
            Some(json!(42)),
            "invalid_claims",
        ),
        (
            "uniqueId empty",
            "uniqueId",
            Some(json!("")),
            "invalid_claims",
        ),
        ("missing jti", "jti", None, "invalid_claims"),
        ("jti a number", "jti", Some(json!(12345)), "invalid_claims"),
        (
            "partner claim names the other partner",
            "partner",
            Some(json!("beta")),
            "partner_mismatch",
        ),
    ]
    .map(|(name, claim, value, reason)| {
        let token = match value {
            Some(value) => good("k1").claim(claim, value),
            None => good("k1").without_claim(claim),
        };
        (name, token.sign(ALPHA_K1), reason)
    });
    // Algorithms, keys, signatures and the token's form.
    let others = [
        (
            "alg none",
            TokenBuilder::new("u1").header("alg", "none").unsigned(),
            "unsupported_algorithm",
        ),
        (
            "RS256 header, HMAC-signed with the partner secret (key confusion)",
            good("k1")
                .header("alg", "RS256")
                .without_header("typ")
                .sign(ALPHA_K1),
            "unsupported_algorithm",
        ),
        (
            "RS256 with an RSA-sized signature",
            TokenBuilder::new("u1")
                .header("alg", "RS256")
                .signed_with(&[7u8; 256]),
            "unsupported_algorithm",
        ),
        (
            "HS512 with the right secret",
            good("k1").hmac(Hmac::Hs512).sign(ALPHA_K1),
            "unsupported_algorithm",
        ),
        (
            "HS384 with the right secret",
            good("k1").hmac(Hmac::Hs384).sign(ALPHA_K1),
            "unsupported_algorithm",
        ),
        (
            "alg in lower case",
            good("k1")
                .header("alg", "hs256")
                .without_header("typ")
                .sign(ALPHA_K1),
            "unsupported_algorithm",
        ),
        (
            "wrong secret",
            good("k1").sign("not-alphas-secret-0123456789"),
            "invalid_signature",
        ),
        (
            "the other partner's secret, no kid",
            beta.token("u1"),
            "invalid_signature",
        ),
        (
            "the other partner's secret under a known kid",
            good("k2").sign(&beta.secret),
            "invalid_signature",
        ),
        ("unknown kid", good("k9").sign(ALPHA_K1), "unknown_key"),
        (
            "tampered payload",
            {
                let token = signed();
                let mut parts: Vec<&str> = token.split('.').collect();
                let forged = TokenBuilder::new("someone-else").payload();
                parts[1] = &forged;
                parts.join(".")
            },
            "invalid_signature",
        ),
        (
            "tampered signature",
            tamper(&signed(), 2),
            "invalid_signature",
        ),
        ("tampered header", tamper(&signed(), 0), "malformed_token"),
        (
            "truncated: no signature part",
            {
                let token = signed();
                token[..token.rfind('.').unwrap()].to_owned()
            },
            "malformed_token",
        ),
        ("four parts", format!("{}.e30", signed()), "malformed_token"),
        ("not base64", "!!!.###.$$$".into(), "malformed_token"),
        ("empty", String::new(), "missing_token"),
    ];
    let elsewhere = [
        (
            "a good token for an unconfigured partner",
            "initech",
            signed(),
            "unknown_partner",
        ),
        (
            "a good token with no partner",
            "",
            signed(),
            "unknown_partner",
        ),
    ];
    claims
        .into_iter()
        .chain(others)
        .map(|(name, token, reason)| (name, "alpha", token, reason))
        .chain(elsewhere)
        .map(|(name, partner, token, reason)| Case {
            name,
            partner,
            token,
            reason,
        })
        .collect()
}

fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An ActionCable connection with `token` for `partner`.
async fn cable(address: SocketAddr, partner: &str, token: &str) -> CableClient {
    CableClient::connect(address, &query_value(partner), &query_value(token)).await
}

/// A `/realtime` authrequest with `token`: the reply.
async fn realtime_auth(address: SocketAddr, partner: &str, token: &str) -> Value {
    let mut client = RealtimeClient::connect(address).await;
    serde_json::from_str(&client.authenticate(partner, token, "1").await).unwrap()
}

fn configure_alpha_with_two_kids(cluster: &mut TestCluster) {
    let alpha = cluster.config.edge.partners.get_mut("alpha").unwrap();
    alpha.secrets = vec![
        SecretConfig {
            kid: Some("k1".into()),
            secret: ALPHA_K1.into(),
        },
        SecretConfig {
            kid: Some("k2".into()),
            secret: ALPHA_K2.into(),
        },
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_reason_on_both_protocols() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let mut cluster = TestCluster::start(1, &[alpha, beta.clone()]);
    configure_alpha_with_two_kids(&mut cluster);
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    let cases = bad_tokens(&beta);
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for case in &cases {
        let reply = realtime_auth(edge.address, case.partner, &case.token).await;
        assert_eq!(
            reply,
            json!({"type": "authresponse", "success": false, "error": case.reason, "id": 1}),
            "/realtime: {}",
            case.name
        );
    }
    for case in bad_tokens(&beta) {
        let before = metrics.auth_failure_count(case.reason);
        let mut client = cable(edge.address, case.partner, &case.token).await;
        assert_eq!(
            client.next_frame().await.as_deref(),
            Some(UNAUTHORIZED),
            "/cable: {}",
            case.name
        );
        assert_eq!(client.next_frame().await, None, "/cable: {}", case.name);
        assert_eq!(
            metrics.auth_failure_count(case.reason),
            before + 1,
            "/cable counter: {}",
            case.name
        );
    }

    // Replayed: a good token works once, on either protocol, and then on neither.
    let once = good("k2").sign(ALPHA_K2);
    let mut first = cable(edge.address, "alpha", &once).await;
    assert_eq!(first.welcome_and_subscribe().await, count_frame(0));
    let mut replay = cable(edge.address, "alpha", &once).await;
    assert_eq!(replay.next_frame().await.as_deref(), Some(UNAUTHORIZED));
    assert_eq!(
        realtime_auth(edge.address, "alpha", &once).await["error"],
        "replayed"
    );
    let other = good("k1").sign(ALPHA_K1);
    assert_eq!(
        realtime_auth(edge.address, "alpha", &other).await["success"],
        true
    );
    let mut replay = cable(edge.address, "alpha", &other).await;
    assert_eq!(replay.next_frame().await.as_deref(), Some(UNAUTHORIZED));
    assert_eq!(metrics.auth_failure_count("replayed"), 3);
    edge.running.stop().await;
}

/// Everything a partner-crossing mix-up could show: two partners with the same user ids,
/// every user with a count no other user has, watched on both protocols at once, each
/// session also subscribed to its user's event stream (RoomChannel on the `jwt`
/// connection and on a connection authenticated only by its `pubsub_token`,
/// `subscribe_events` on `/realtime`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_with_equal_user_ids_never_see_each_others_counts_or_events() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let cluster = TestCluster::start(2, &[alpha.clone(), beta.clone()]);
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let producer = cluster.producer();
    let users = ["u1", "u2", "u3"];
    // alpha's uN gets N messages, beta's uN gets 10 + N.
    let expected = |partner: &str, index: usize| -> u64 {
        let base = if partner == "alpha" { 0 } else { 10 };
        base + u64::try_from(index).unwrap() + 1
    };
    let mut seq = 0;
    for (partner, _) in [("alpha", &alpha), ("beta", &beta)] {
        for (index, user) in users.iter().enumerate() {
            for _ in 0..expected(partner, index) {
                seq += 1;
                produce_event(
                    &producer,
                    config,
                    &event::created(partner, "shared-conversation", seq, "sender", &[user]),
                )
                .await;
            }
        }
    }
    wait_until("every count to reach the edge", || {
        ["alpha", "beta"].iter().all(|partner| {
            users.iter().enumerate().all(|(index, user)| {
                edge.node
                    .table
                    .get(&format!("{partner}/{user}"))
                    .map(|value| value.count)
                    == Some(expected(partner, index))
            })
        })
    })
    .await;

    let mut cable_clients = Vec::new();
    let mut realtime_clients = Vec::new();
    let mut room_clients = Vec::new();
    for (partner, test_partner) in [("alpha", &alpha), ("beta", &beta)] {
        for (index, user) in users.iter().enumerate() {
            let mut client = cable(edge.address, partner, &test_partner.token(user)).await;
            assert_eq!(
                client.welcome_and_subscribe().await,
                count_frame(expected(partner, index)),
                "/cable {partner}/{user}"
            );
            client
                .send_text(
                    r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\"}"}"#,
                )
                .await;
            let confirm = client.next_frame().await.unwrap();
            assert!(confirm.contains("confirm_subscription"), "{confirm}");
            cable_clients.push((partner, index, client));
            let mut room =
                room_client(edge.address, partner, &test_partner.stream_token(user)).await;
            let confirm = room.next_frame().await.unwrap();
            assert!(confirm.contains("confirm_subscription"), "{confirm}");
            room_clients.push((partner, index, room));
            let mut client = RealtimeClient::connect(edge.address).await;
            assert_eq!(
                client
                    .authenticate(partner, &test_partner.token(user), "1")
                    .await,
                r#"{"type":"authresponse","success":true,"id":1}"#
            );
            assert_eq!(
                client.next_text().await,
                format!(
                    r#"{{"type":"unread_count","count":{}}}"#,
                    expected(partner, index)
                ),
                "/realtime {partner}/{user}"
            );
            client
                .send_text(r#"{"type":"subscribe_events","id":"e"}"#)
                .await;
            assert_eq!(
                client.next_text().await,
                r#"{"type":"subscribed","id":"e"}"#
            );
            realtime_clients.push((partner, index, client));
        }
    }
    // A pubsub_token of beta's on a connection for alpha is refused, and gets nothing.
    let mut crossing = room_client(edge.address, "alpha", &beta.stream_token("u2")).await;
    let refused = crossing.next_frame().await.unwrap();
    assert!(refused.contains("reject_subscription"), "{refused}");
    // One more message for beta's u2 only: exactly its sessions hear of it, each with
    // the count and the event (in either order: they travel on separate topics).
    seq += 1;
    produce_event(
        &producer,
        config,
        &event::with_data(
            event::created("beta", "shared-conversation", seq, "sender", &["u2"]),
            &json!({"for": "beta/u2"}),
        ),
    )
    .await;
    let is_the_event = |message: &Value| {
        message["event"] == "message.created" && message["data"] == json!({"for": "beta/u2"})
    };
    for (partner, index, client) in &mut cable_clients {
        if (*partner, *index) == ("beta", 1) {
            let mut frames = [
                client.next_frame().await.unwrap(),
                client.next_frame().await.unwrap(),
            ];
            frames.sort_by_key(|frame| !frame.contains(r#""type":"unread_count""#));
            assert_eq!(frames[0], count_frame(expected("beta", 1) + 1));
            let event: Value = serde_json::from_str(&frames[1]).unwrap();
            assert!(is_the_event(&event["message"]), "{event}");
        }
    }
    for (partner, index, client) in &mut realtime_clients {
        if (*partner, *index) == ("beta", 1) {
            let mut frames = [client.next_text().await, client.next_text().await];
            frames.sort_by_key(|frame| !frame.contains(r#""type":"unread_count""#));
            assert_eq!(
                frames[0],
                format!(
                    r#"{{"type":"unread_count","count":{}}}"#,
                    expected("beta", 1) + 1
                )
            );
            let event: Value = serde_json::from_str(&frames[1]).unwrap();
            assert!(is_the_event(&event), "{event}");
        }
    }
    for (partner, index, client) in &mut room_clients {
        if (*partner, *index) == ("beta", 1) {
            let event: Value = serde_json::from_str(&client.next_frame().await.unwrap()).unwrap();
            assert!(is_the_event(&event["message"]), "{event}");
        }
    }
    // Neither did the refused crossing connection, nor any other room client: a reply to
    // a subscribe is the next frame each sees.
    room_clients.push(("alpha", usize::MAX, crossing));
    for (partner, index, client) in &mut room_clients {
        client
            .send_text(r#"{"command":"subscribe","identifier":"{\"channel\":\"Nope\"}"}"#)
            .await;
        let reply = client.next_frame().await.unwrap();
        assert!(
            reply.contains("reject_subscription"),
            "room {partner}/{index}: {reply}"
        );
    }
    // Nobody else got a frame: each asks for its count and the reply is the next frame.
    for (partner, index, client) in &mut realtime_clients {
        client
            .send_text(r#"{"type":"get_unread_count","id":"q"}"#)
            .await;
        let bump = u64::from((*partner, *index) == ("beta", 1));
        assert_eq!(
            client.next_text().await,
            format!(
                r#"{{"type":"unread_count","count":{},"id":"q"}}"#,
                expected(partner, *index) + bump
            ),
            "/realtime {partner}/u{}",
            *index + 1
        );
    }
    for (partner, index, client) in &mut cable_clients {
        // A second subscription's first count is the next frame, and is its own.
        client
            .send_text(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\",\"again\":1}"}"#)
            .await;
        let confirm = client.next_frame().await.unwrap();
        assert!(confirm.contains("confirm_subscription"), "{confirm}");
        let bump = u64::from((*partner, *index) == ("beta", 1));
        let count = client.next_frame().await.unwrap();
        let count: Value = serde_json::from_str(&count).unwrap();
        assert_eq!(
            count["message"]["count"],
            json!(expected(partner, *index) + bump),
            "/cable {partner}/u{}",
            *index + 1
        );
    }
    pipeline.stop().await;
}

/// A `/cable` connection without `jwt`, for `partner`, that subscribes RoomChannel
/// with `pubsub_token` as Chatwoot's widget does (after its welcome).
async fn room_client(address: SocketAddr, partner: &str, pubsub_token: &str) -> CableClient {
    let mut client = CableClient::connect_url(
        &format!("ws://{address}/cable?partner={partner}"),
        Some("actioncable-v1-json"),
    )
    .await;
    let welcome = client.next_frame().await.unwrap();
    assert!(welcome.contains("welcome"), "{welcome}");
    let identifier = json!({"channel": "RoomChannel", "pubsub_token": pubsub_token}).to_string();
    client
        .send_text(&json!({"command": "subscribe", "identifier": identifier}).to_string())
        .await;
    client
}

/// Opens `/cable` with the raw query and an optional `Origin`: the socket, or the HTTP
/// status that refused the upgrade.
async fn cable_handshake(
    address: SocketAddr,
    partner: &str,
    token: &str,
    origin: Option<&str>,
) -> Result<CableSocket, u16> {
    let url = format!(
        "ws://{address}/cable?jwt={}&partner={partner}",
        query_value(token)
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert(
            http::header::ORIGIN,
            http::HeaderValue::from_str(origin).unwrap(),
        );
    }
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake timed out")
    {
        Ok((socket, _)) => Ok(CableSocket(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("handshake failed: {error}"),
    }
}

async fn realtime_with_origin(address: SocketAddr, origin: &str) -> CableSocket {
    let mut request = format!("ws://{address}/realtime")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        http::header::ORIGIN,
        http::HeaderValue::from_str(origin).unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    CableSocket(socket)
}

/// A plain WebSocket to read frames and close codes from.
struct CableSocket(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl CableSocket {
    async fn send(&mut self, text: &str) {
        self.0
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Text frames (pings left out) until the close: the texts and the close code.
    async fn until_close(&mut self) -> (Vec<String>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout(DEADLINE, self.0.next())
                .await
                .expect("no close before the deadline")
            {
                None | Some(Err(_)) => return (texts, None),
                Some(Ok(Message::Close(frame))) => {
                    return (texts, frame.map(|frame| u16::from(frame.code)));
                }
                Some(Ok(Message::Text(text))) if !text.starts_with(r#"{"type":"ping""#) => {
                    texts.push(text.as_str().to_owned());
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next text frame that is not a ping.
    async fn next_text(&mut self) -> String {
        loop {
            match tokio::time::timeout(DEADLINE, self.0.next())
                .await
                .expect("no frame before the deadline")
            {
                Some(Ok(Message::Text(text))) if !text.starts_with(r#"{"type":"ping""#) => {
                    return text.as_str().to_owned();
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}

const SUBSCRIBE: &str =
    r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_size_subscriptions_and_command_rate_are_limited() {
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    cluster.config.edge.max_frame_bytes = 1024;
    cluster.config.edge.max_subscriptions_per_connection = 2;
    cluster.config.edge.max_commands_per_second = 5;
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;
    let big = format!(r#"{{"command":"message","data":"{}"}}"#, "x".repeat(2000));

    // Frame size: 1009 on both protocols.
    let mut client = cable_handshake(edge.address, "alpha", &alpha.token("u1"), None)
        .await
        .unwrap();
    assert_eq!(client.next_text().await, r#"{"type":"welcome"}"#);
    client.send(&big).await;
    assert_eq!(client.until_close().await.1, Some(1009));
    let mut client = realtime_with_origin(edge.address, "https://any.example").await;
    client.send(&big).await;
    assert_eq!(client.until_close().await.1, Some(1009));
    assert_eq!(metrics.limited_count("frame_size"), 2);

    // Subscriptions: the third is rejected, the connection stays.
    let mut client = cable_handshake(edge.address, "alpha", &alpha.token("u1"), None)
        .await
        .unwrap();
    assert_eq!(client.next_text().await, r#"{"type":"welcome"}"#);
    for n in 1..=3 {
        client
            .send(&format!(
                r#"{{"command":"subscribe","identifier":"{{\"channel\":\"PartnerChannel\",\"n\":{n}}}"}}"#
            ))
            .await;
    }
    let mut replies = Vec::new();
    while replies.len() < 5 {
        replies.push(client.next_text().await);
    }
    assert_eq!(
        replies
            .iter()
            .filter(|reply| reply.contains("confirm_subscription"))
            .count(),
        2,
        "{replies:?}"
    );
    assert_eq!(
        replies.last().unwrap(),
        r#"{"identifier":"{\"channel\":\"PartnerChannel\",\"n\":3}","type":"reject_subscription"}"#
    );
    assert_eq!(metrics.limited_count("subscriptions"), 1);

    // Command rate: a burst of 5 is fine, the sixth at once closes, ActionCable with
    // `invalid_request` first.
    for _ in 0..6 {
        client
            .send(r#"{"command":"message","identifier":"{\"channel\":\"PartnerChannel\"}","data":"{}"}"#)
            .await;
    }
    let (texts, code) = client.until_close().await;
    assert_eq!(
        texts.last().map(String::as_str),
        Some(r#"{"type":"disconnect","reason":"invalid_request","reconnect":false}"#)
    );
    assert_eq!(code, Some(4429));
    let mut client = RealtimeClient::connect(edge.address).await;
    for _ in 0..6 {
        client.send_text(r#"{"type":"ping"}"#).await;
    }
    let mut code = None;
    while code.is_none() {
        if let RealtimeFrame::Close(close, _) = client.next().await {
            code = Some(close);
        }
    }
    assert_eq!(code, Some(4429));
    assert_eq!(metrics.limited_count("command_rate"), 2);
    wait_until("the closes to be counted", || {
        metrics.close_count("cable", "rate_limited") == 1
            && metrics.close_count("realtime", "rate_limited") == 1
            && metrics.close_count("cable", "frame_too_large") == 1
    })
    .await;
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_partner_and_per_node() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let mut cluster = TestCluster::start(1, &[alpha.clone(), beta.clone()]);
    cluster.config.edge.max_connections = 4;
    cluster
        .config
        .edge
        .partners
        .get_mut("alpha")
        .unwrap()
        .max_connections = Some(2);
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    let mut first = cable(edge.address, "alpha", &alpha.token("u1")).await;
    assert_eq!(first.welcome_and_subscribe().await, count_frame(0));
    let mut second = RealtimeClient::connect(edge.address).await;
    assert!(
        second
            .authenticate("alpha", &alpha.token("u2"), "1")
            .await
            .contains(r#""success":true"#)
    );
    // alpha is full: /cable is refused before the upgrade, /realtime after its token.
    assert_eq!(
        cable_handshake(edge.address, "alpha", &alpha.token("u3"), None)
            .await
            .err(),
        Some(503)
    );
    let mut third = RealtimeClient::connect(edge.address).await;
    assert_eq!(
        third.authenticate("alpha", &alpha.token("u3"), "1").await,
        r#"{"type":"authresponse","success":false,"error":"try_again_later","id":1}"#
    );
    assert_eq!(third.next_close().await.0, 1013);
    assert_eq!(metrics.limited_count("partner_connections"), 2);
    // beta has no limit of its own, but the node's 4 connections are reached.
    let mut beta_first = cable(edge.address, "beta", &beta.token("u1")).await;
    assert_eq!(beta_first.welcome_and_subscribe().await, count_frame(0));
    let _beta_second = RealtimeClient::connect(edge.address).await;
    wait_until("four connections on the node", || {
        edge.node.limits.node_connections() == 4
    })
    .await;
    assert_eq!(
        cable_handshake(edge.address, "beta", &beta.token("u2"), None)
            .await
            .err(),
        Some(503)
    );
    assert_eq!(metrics.limited_count("node_connections"), 1);
    // A place freed is a place taken again.
    drop(first);
    wait_until("the partner's place to be given back", || {
        !edge.node.limits.partner_is_full("alpha")
    })
    .await;
    drop(beta_first);
    wait_until("a node place to be given back", || {
        edge.node.limits.node_connections() < 4
    })
    .await;
    let mut again = cable(edge.address, "alpha", &alpha.token("u1")).await;
    assert_eq!(again.welcome_and_subscribe().await, count_frame(0));
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_off_the_partners_allow_list_are_refused() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let mut cluster = TestCluster::start(1, &[alpha.clone(), beta.clone()]);
    cluster
        .config
        .edge
        .partners
        .get_mut("alpha")
        .unwrap()
        .allowed_origins = vec!["https://app.alpha.example".into()];
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    // /cable: the upgrade is refused (403) or welcomed.
    for (partner, origin, refused) in [
        (&alpha, Some("https://evil.example"), Some(403)),
        (&alpha, Some("https://app.alpha.example"), None),
        // Not a browser: no Origin, allowed.
        (&alpha, None, None),
        // beta has no list: any origin.
        (&beta, Some("https://evil.example"), None),
    ] {
        let token = partner.token("u1");
        match cable_handshake(edge.address, &partner.code, &token, origin).await {
            Err(status) => assert_eq!(Some(status), refused, "{origin:?}"),
            Ok(mut welcomed) => {
                assert_eq!(refused, None, "{origin:?} was let in");
                assert_eq!(welcomed.next_text().await, r#"{"type":"welcome"}"#);
            }
        }
    }
    // /realtime learns the partner from the token.
    let mut realtime = realtime_with_origin(edge.address, "https://evil.example").await;
    realtime
        .send(&format!(
            r#"{{"type":"authrequest","token":"{}","partner":"alpha","id":1}}"#,
            alpha.token("u1")
        ))
        .await;
    let (texts, code) = realtime.until_close().await;
    assert_eq!(
        texts,
        vec![r#"{"type":"authresponse","success":false,"error":"origin_not_allowed","id":1}"#]
    );
    assert_eq!(code, Some(4403));
    assert_eq!(metrics.limited_count("origin"), 2);
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_clients_are_dropped_in_time() {
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    cluster.config.edge.handshake_timeout_ms = 500;
    cluster.config.edge.auth_timeout_ms = 500;
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    // A request line, then one header byte every 100 ms, never finishing.
    let mut slowloris = tokio::net::TcpStream::connect(edge.address).await.unwrap();
    slowloris
        .write_all(b"GET /cable?partner=alpha HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let dropped = async {
        let mut buffer = [0u8; 64];
        loop {
            if slowloris.write_all(b"X").await.is_err() {
                return;
            }
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), slowloris.read(&mut buffer)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, dropped)
        .await
        .expect("the slowloris client was never dropped");
    // Dropped by the handshake deadline, not by anything it sent.
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A client that connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(edge.address).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buffer))
        .await
        .expect("the silent client was never dropped");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert_eq!(metrics.limited_count("handshake_timeout"), 2);
    assert_eq!(metrics.handshake_count("timeout"), 2);

    // Upgraded to /realtime but never authenticating: 4408.
    let mut idle = RealtimeClient::connect(edge.address).await;
    assert_eq!(idle.next_close().await.0, 4408);
    assert_eq!(metrics.limited_count("auth_timeout"), 1);
    edge.running.stop().await;
}

/// A client that stops reading while its count changes 200 000 times: the edge keeps the
/// newest count only, every change is either written or counted as coalesced, and when
/// the client reads again the last frame is the newest count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_one_pending_count() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    // A small receive buffer, so the kernel holds little for the client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(edge.address).await.unwrap();
    let url = format!(
        "ws://{}/cable?jwt={}&partner=alpha",
        edge.address,
        alpha.token("slow")
    );
    let (mut client, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let mut next_text = async || loop {
        match tokio::time::timeout(DEADLINE, client.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) if !text.starts_with(r#"{"type":"ping""#) => {
                return text.as_str().to_owned();
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(next_text().await, r#"{"type":"welcome"}"#);
    client
        .send(Message::Text(SUBSCRIBE.to_owned().into()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match client.next().await {
            Some(Ok(Message::Text(text))) if !text.starts_with(r#"{"type":"ping""#) => {
                frames.push(text.as_str().to_owned());
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(frames[1], count_frame(0));

    // The client reads nothing now.
    const CHANGES: u64 = 200_000;
    let pushes_before = metrics.push_count();
    for version in 1..=CHANGES {
        edge.node.table.apply(
            "alpha/slow",
            CountValue {
                count: version,
                version,
                occurred_at_ms: 0,
                changes: 0,
            },
        );
    }
    // Reading again, the client sees counts up to the newest, then nothing more.
    let mut received = 0u64;
    let mut last = String::new();
    while last != count_frame(CHANGES) {
        match tokio::time::timeout(DEADLINE, client.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) if !text.starts_with(r#"{"type":"ping""#) => {
                received += 1;
                last = text.as_str().to_owned();
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let coalesced = metrics.coalesced_count();
    let written = metrics.push_count() - pushes_before;
    assert_eq!(written, received);
    assert_eq!(
        written + coalesced,
        CHANGES,
        "written {written} + coalesced {coalesced}"
    );
    assert!(
        received < CHANGES / 2,
        "{received} of {CHANGES} changes were queued for a client that did not read"
    );
    eprintln!("slow reader: {received} frames written, {coalesced} coalesced");
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secrets_file_is_used_without_a_restart() {
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let directory = std::env::temp_dir().join(format!(
        "fanout-secrets-{}",
        fanout_app::tools::random_hex(8)
    ));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("partners.toml");
    let write = |text: &str| {
        // As a Secret volume does: a new file moved into place.
        let staging = directory.join("partners.toml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, &file).unwrap();
    };
    // gamma exists only in the file.
    write(&format!(
        "[gamma]\nsecrets = [{{ kid = \"g1\", secret = \"{ALPHA_K1}\" }}]\n"
    ));
    cluster.config.edge.secrets_file = Some(file.clone());
    cluster.config.edge.secrets_reload_interval_ms = 50;
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;
    let gamma = |kid: &str, secret: &str| good(kid).sign(secret);

    assert_eq!(
        realtime_auth(edge.address, "gamma", &gamma("g1", ALPHA_K1)).await["success"],
        true
    );
    // The inline partner still works alongside the file.
    assert_eq!(
        realtime_auth(edge.address, "alpha", &alpha.token("u1")).await["success"],
        true
    );
    assert_eq!(
        realtime_auth(edge.address, "gamma", &gamma("g2", ALPHA_K2)).await["error"],
        "unknown_key"
    );
    // Rotation: g2 added.
    write(&format!(
        "[gamma]\nsecrets = [{{ kid = \"g1\", secret = \"{ALPHA_K1}\" }}, {{ kid = \"g2\", secret = \"{ALPHA_K2}\" }}]\n"
    ));
    wait_until("the first reload", || {
        metrics.secret_reload_count("ok") == 1
    })
    .await;
    assert_eq!(
        realtime_auth(edge.address, "gamma", &gamma("g2", ALPHA_K2)).await["success"],
        true
    );
    // A broken file keeps the secrets in use.
    write("[gamma\nsecrets = nonsense");
    wait_until("the failed reload", || {
        metrics.secret_reload_count("error") == 1
    })
    .await;
    assert_eq!(
        realtime_auth(edge.address, "gamma", &gamma("g2", ALPHA_K2)).await["success"],
        true
    );
    // g1 retired.
    write(&format!(
        "[gamma]\nsecrets = [{{ kid = \"g2\", secret = \"{ALPHA_K2}\" }}]\n"
    ));
    wait_until("the second reload", || {
        metrics.secret_reload_count("ok") == 2
    })
    .await;
    assert_eq!(
        realtime_auth(edge.address, "gamma", &gamma("g1", ALPHA_K1)).await["error"],
        "unknown_key"
    );
    edge.running.stop().await;
    std::fs::remove_dir_all(&directory).unwrap();
}
