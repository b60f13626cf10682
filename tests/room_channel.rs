//! RoomChannel on the wire as Chatwoot documents it for clients of its own: a plain
//! WebSocket on `/cable` (no query, no subprotocol) that sends exactly the documented
//! frame, `connection.send(JSON.stringify({command: "subscribe", identifier:
//! "{\"channel\":\"RoomChannel\",\"pubsub_token\":\"...\"}"}))`, is confirmed and then
//! gets the user's events, its identifier echoed byte for byte in every frame;
//! and a spent connection token is refused as a pubsub_token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fanout_tests::*;
use serde_json::{Value, json};

/// The documented frame for `pubsub_token`, its identifier written out as the
/// documentation writes it; and that identifier.
fn documented_subscribe(pubsub_token: &str) -> (String, String) {
    let identifier = format!(r#"{{"channel":"RoomChannel","pubsub_token":"{pubsub_token}"}}"#);
    let frame = format!(
        r#"{{"command":"subscribe","identifier":"{{\"channel\":\"RoomChannel\",\"pubsub_token\":\"{pubsub_token}\"}}"}}"#
    );
    // What `JSON.stringify` makes of the documentation's object.
    assert_eq!(
        frame,
        format!(
            r#"{{"command":"subscribe","identifier":{}}}"#,
            serde_json::to_string(&identifier).unwrap()
        )
    );
    (frame, identifier)
}

/// Opens the documented URL, `/cable` without a query, as `new WebSocket(url)` does (no
/// subprotocol), and sends `subscribe` at once, without waiting for the welcome.
async fn documented_client(address: std::net::SocketAddr, subscribe: &str) -> CableClient {
    let mut client = CableClient::connect_url(&format!("ws://{address}/cable"), None).await;
    assert_eq!(client.protocol, None);
    client.send_text(subscribe).await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    client
}

/// The next frame, parsed.
async fn next_json(client: &mut CableClient) -> Value {
    let frame = client.next_frame().await.expect("a frame, not the end");
    serde_json::from_str(&frame).unwrap_or_else(|error| panic!("{frame:?}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_subscribe_frame_is_confirmed_and_gets_events_with_its_identifier() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let address = pipeline.edge.address;
    let producer = cluster.producer();

    // The documented URL names no partner: the pubsub_token's claim does.
    let pubsub_token = TokenBuilder::new("jane")
        .partner("acme")
        .stream()
        .sign(&partner.secret);
    let (subscribe, identifier) = documented_subscribe(&pubsub_token);
    let confirmed = json!({"identifier": identifier, "type": "confirm_subscription"});
    let mut client = documented_client(address, &subscribe).await;
    assert_eq!(next_json(&mut client).await, confirmed);
    // The same bytes again on a second connection, as a client that reconnects sends
    // them: the pubsub_token is good until it expires.
    let mut again = documented_client(address, &subscribe).await;
    assert_eq!(next_json(&mut again).await, confirmed);
    // A pubsub_token signed with a secret the edge does not know is rejected, its
    // identifier echoed too.
    let forged = TokenBuilder::new("jane")
        .partner("acme")
        .stream()
        .sign("not-acme's-secret");
    let (forged_subscribe, forged_identifier) = documented_subscribe(&forged);
    let mut refused = documented_client(address, &forged_subscribe).await;
    assert_eq!(
        next_json(&mut refused).await,
        json!({"identifier": forged_identifier, "type": "reject_subscription"})
    );

    let data = json!({"content": "Hello jane", "message_type": 0, "conversation": {"id": 7}});
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 1, "sam", &["jane"]), &data),
    )
    .await;
    for client in [&mut client, &mut again] {
        let frame = next_json(client).await;
        assert_eq!(
            frame.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["identifier", "message"],
            "{frame}"
        );
        assert_eq!(frame["identifier"].as_str(), Some(identifier.as_str()));
        StreamCheck::new().next(
            &frame["message"],
            json!({"event": "message.created", "data": data, "conversation_id": "c1",
                "seq": 1, "message_id": "m1", "sender": "sam", "unread_count": 1}),
        );
    }

    pipeline.stop().await;
}

/// A connection's token is single-use ("a `jti` is refused a second time until it
/// expires"), so that one leaked from a URL cannot be replayed. A pubsub_token is
/// reusable by design; a connection token presented as one must not be, or the
/// single-use rule no longer protects the user's events (the partner's data included):
/// only a token with `"scope":"stream"` opens a stream subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_token_already_spent_is_not_taken_as_a_pubsub_token() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let edge = start_edge(&cluster.config).await;

    let token = partner.token("jane");
    let mut connection = CableClient::connect(edge.address, "acme", &token).await;
    assert_eq!(connection.welcome_and_subscribe().await, count_frame(0));
    // Spent: refused as a connection's token from now on.
    let mut replayed = CableClient::connect(edge.address, "acme", &token).await;
    assert_eq!(
        replayed.next_frame().await.as_deref(),
        Some(r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#)
    );

    let (subscribe, identifier) = documented_subscribe(&token);
    let mut client =
        CableClient::connect_url(&format!("ws://{}/cable?partner=acme", edge.address), None).await;
    client.send_text(&subscribe).await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    assert_eq!(
        next_json(&mut client).await,
        json!({"identifier": identifier, "type": "reject_subscription"})
    );

    edge.running.stop().await;
}
