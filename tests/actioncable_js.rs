//! The official `@rails/actioncable` client from npm, run by Node (tests/js/
//! cable_client.mjs, one process per client), against a running edge: it connects with
//! the JWT in the query, subscribes `PartnerChannel` and sees the count change as events
//! are produced; when the edge drains it reconnects by itself to the edge that replaces
//! it; refused, it stops trying. As Chatwoot's widget, it opens `/cable` without a JWT
//! and subscribes `RoomChannel` with a `pubsub_token`, and gets the user's events with
//! the partner's data and the read receipts meant for the user; and it holds both
//! channels on one connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::node::{BySource, NodeScript, ensure_node_modules};
use fanout_tests::*;
use serde_json::{Value, json};

fn cable_url(address: std::net::SocketAddr, token: &str) -> String {
    format!("ws://{address}/cable?jwt={token}&partner=acme")
}

fn count(n: u64) -> Value {
    json!({"channel": "PartnerChannel", "event": "received", "data": {"type": "unread_count", "count": n}})
}

fn connected(reconnected: bool) -> Value {
    connected_to("PartnerChannel", reconnected)
}

fn connected_to(channel: &str, reconnected: bool) -> Value {
    json!({"channel": channel, "event": "connected", "protocol": "actioncable-v1-json", "reconnected": reconnected})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_actioncable_client_sees_the_count_change() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let producer = cluster.producer();

    let url = cable_url(edge.address, &partner.token("jane"));
    let mut client = NodeScript::spawn("cable_client.mjs", &[&url]);

    assert_eq!(client.next_event().await, connected(false));
    assert_eq!(client.next_event().await, count(0));
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_event().await, count(1));
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 2, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_event().await, count(2));
    produce_event(
        &producer,
        config,
        &event::conversation_read("acme", "c1", 2, "jane"),
    )
    .await;
    assert_eq!(client.next_event().await, count(0));

    // Closing stdin makes the client disconnect and exit cleanly.
    client.finish().await;

    pipeline.stop().await;
}

/// How long the client may take to come back by itself. Its connection monitor polls
/// every 6 to 12 s (`staleThreshold` 6 s, doubled at most by jitter) and reopens only
/// once the connection has been quiet and down for 6 s, so the first attempt comes 6 to
/// 18 s after the disconnect, later ones further apart.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_actioncable_client_comes_back_by_itself_after_a_drain_to_the_current_count() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let first_edge = start_edge(config).await;
    let edge_address = first_edge.address;
    let producer = cluster.producer();
    let unread_counts = TopicWatermarks::new(config, &config.topics.unread_counts);

    // Tokens are single-use: the application hands the client a fresh one for each
    // connection (a URL function), the reconnect included.
    let first_url = cable_url(edge_address, &partner.token("jane"));
    let reconnect_url = cable_url(edge_address, &partner.token("jane"));
    let mut client = NodeScript::spawn("cable_client.mjs", &[&first_url, &reconnect_url]);
    assert_eq!(client.next_event().await, connected(false));
    assert_eq!(client.next_event().await, count(0));
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_event().await, count(1));

    // The edge drains: the client is told `server_restart`, closes, and its monitor
    // keeps running.
    first_edge.running.stop().await;
    assert_eq!(
        client.next_event().await,
        json!({"channel": "PartnerChannel", "event": "disconnected", "willAttemptReconnect": true})
    );

    // A change while no edge runs, written by the router before the next edge starts,
    // so the count the client gets on its return can only be the new one.
    let written_before = unread_counts.total();
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 2, "sam", &["jane"]),
    )
    .await;
    wait_until("the router to write the new count", || {
        unread_counts.total() > written_before
    })
    .await;

    // A new edge on the same address; nothing tells the client to reconnect.
    let second_edge = start_edge_at(config, edge_address).await;
    assert_eq!(
        client.next_event_within(RECONNECT_DEADLINE).await,
        connected(true)
    );
    assert_eq!(client.next_event().await, count(2));
    assert_eq!(second_edge.node.metrics.handshake_count("accepted"), 1);

    // And the new subscription is live.
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 3, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_event().await, count(3));

    client.finish().await;
    ingest.stop().await;
    router.stop().await;
    second_edge.running.stop().await;
}

/// How long a refused client is watched for another attempt: longer than the 18 s
/// within which its connection monitor, had it kept running, would have reopened (see
/// `RECONNECT_DEADLINE`), so the silence is the client's decision, not luck.
const NO_RETRY_WINDOW: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_actioncable_client_refused_as_unauthorized_stops_trying() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let edge = start_edge(&cluster.config).await;
    let metrics = &edge.node.metrics;

    // A token for the right partner code, signed with a secret the edge does not know.
    let forged_token = TestPartner::new("acme").token("jane");
    let url = cable_url(edge.address, &forged_token);
    let mut client = NodeScript::spawn("cable_client.mjs", &[&url]);

    // The only event: no `connected` before or after it.
    assert_eq!(
        client.next_event().await,
        json!({"channel": "PartnerChannel", "event": "disconnected", "willAttemptReconnect": false})
    );
    assert_eq!(metrics.handshake_count("unauthorized"), 1);
    assert_eq!(metrics.auth_failure_count("invalid_signature"), 1);

    client.expect_no_event_for(NO_RETRY_WINDOW).await;
    // Every connection the edge accepts ends in one of these results, so a second
    // attempt, whatever became of it, would show here.
    let attempts: u64 = ["accepted", "unauthorized", "failed", "timeout"]
        .iter()
        .map(|result| metrics.handshake_count(result))
        .sum();
    assert_eq!(attempts, 1, "the client tried to connect again");

    client.finish().await;
    edge.running.stop().await;
}

/// What the client's application got on `channel`: the message of a `received` report.
fn received_on(channel: &str, report: Value) -> Value {
    assert_eq!(report["channel"], channel, "{report}");
    assert_eq!(report["event"], "received", "{report}");
    report["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_on_room_channel_without_jwt_gets_the_partners_data_and_a_read_receipt() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let producer = cluster.producer();

    // As Chatwoot's widget: no jwt in the URL; the subscription's pubsub_token says who.
    let url = format!("ws://{}/cable?partner=acme", pipeline.edge.address);
    let room = room_channel_identifier(&partner.stream_token("jane"));
    let mut client = NodeScript::spawn("cable_client.mjs", &[&url, "--subscribe", &room]);
    assert_eq!(
        client.next_event().await,
        connected_to("RoomChannel", false)
    );
    let mut jane = StreamCheck::new();

    // sam writes to jane: her client gets the message with the partner's data as it was
    // put in.
    let hello = json!({
        "content": "Hello <b>jane</b> \u{1F44B}",
        "author": {"name": "Sam \"the\" agent", "avatar": null},
        "attachments": [1, 2.5, "x", {"size": -3}],
        "private": false,
    });
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 1, "sam", &["jane"]), &hello),
    )
    .await;
    jane.next(
        &received_on("RoomChannel", client.next_event().await),
        json!({"event": "message.created", "data": hello, "conversation_id": "c1", "seq": 1,
            "message_id": "m1", "sender": "sam", "unread_count": 1}),
    );

    // jane answers (from another device): her stream has her own message too, and her
    // count still has sam's.
    let answer = json!({"content": "Hi sam"});
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 2, "jane", &["sam"]), &answer),
    )
    .await;
    jane.next(
        &received_on("RoomChannel", client.next_event().await),
        json!({"event": "message.created", "data": answer, "conversation_id": "c1", "seq": 2,
            "message_id": "m2", "sender": "jane", "unread_count": 1}),
    );

    // sam reads the conversation and names jane to be told: she gets the read receipt.
    let read = json!({"read_at": "2026-12-04T17:00:00Z"});
    produce_event(
        &producer,
        config,
        &event::notifying(
            event::with_data(event::conversation_read("acme", "c1", 2, "sam"), &read),
            &["jane"],
        ),
    )
    .await;
    jane.next(
        &received_on("RoomChannel", client.next_event().await),
        json!({"event": "conversation.read", "data": read, "conversation_id": "c1", "seq": 2,
            "reader": "sam", "unread_count": 1}),
    );

    client.finish().await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_holds_partner_channel_and_room_channel_on_one_connection() {
    ensure_node_modules();
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let producer = cluster.producer();

    // With the jwt in the URL, RoomChannel without a pubsub_token is the connection's
    // own user's stream.
    let url = cable_url(pipeline.edge.address, &partner.token("jane"));
    let script = NodeScript::spawn(
        "cable_client.mjs",
        &[
            &url,
            "--subscribe",
            r#"{"channel":"PartnerChannel"}"#,
            "--subscribe",
            r#"{"channel":"RoomChannel"}"#,
        ],
    );
    // The two subscriptions' reports interleave in any order.
    let mut client = BySource::new(script, "channel");
    let connected =
        json!({"event": "connected", "protocol": "actioncable-v1-json", "reconnected": false});
    let count = |n: u64| json!({"event": "received", "data": {"type": "unread_count", "count": n}});
    let event = |report: Value| {
        assert_eq!(report["event"], "received", "{report}");
        report["data"].clone()
    };
    assert_eq!(client.next("PartnerChannel").await, connected);
    assert_eq!(client.next("PartnerChannel").await, count(0));
    assert_eq!(client.next("RoomChannel").await, connected);
    let mut jane = StreamCheck::new();

    let hello = json!({"content": "Hello jane", "n": 7});
    produce_event(
        &producer,
        config,
        &event::with_data(event::created("acme", "c1", 1, "sam", &["jane"]), &hello),
    )
    .await;
    assert_eq!(client.next("PartnerChannel").await, count(1));
    jane.next(
        &event(client.next("RoomChannel").await),
        json!({"event": "message.created", "data": hello, "conversation_id": "c1", "seq": 1,
            "message_id": "m1", "sender": "sam", "unread_count": 1}),
    );

    // jane reads it (on another device): the count goes to 0 and the stream says so.
    let read = json!({"device": "phone"});
    produce_event(
        &producer,
        config,
        &event::with_data(event::conversation_read("acme", "c1", 1, "jane"), &read),
    )
    .await;
    assert_eq!(client.next("PartnerChannel").await, count(0));
    jane.next(
        &event(client.next("RoomChannel").await),
        json!({"event": "conversation.read", "data": read, "conversation_id": "c1", "seq": 1,
            "reader": "jane", "unread_count": 0}),
    );

    client.finish().await;
    pipeline.stop().await;
}
