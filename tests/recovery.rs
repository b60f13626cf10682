//! Recovery on `/realtime` through the whole pipeline on the embedded Kafka: a client
//! that reconnects names the last position it has (`subscribe_events` with `since`)
//! and gets exactly the events it missed, then live ones; on another edge, and on an
//! edge that restarted (which reads its window back from Kafka before it is ready).
//! Beyond the window it is told to reset and given none of what it missed; a position
//! of another user's stream, or past the stream's end, is refused with its reason. The
//! oracle is the list of events the test produced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use fanout_protocol::stream::stream_tag;
use fanout_tests::anycable::produce_numbered;
use fanout_tests::*;
use serde_json::{Value, json};

/// An authenticated `/realtime` client of `user`.
async fn client(address: SocketAddr, partner: &TestPartner, user: &str) -> RealtimeClient {
    let mut client = RealtimeClient::connect(address).await;
    let reply = client.authenticate("acme", &partner.token(user), "1").await;
    assert!(reply.contains(r#""success":true"#), "{reply}");
    assert!(client.next_text().await.contains("unread_count"));
    client
}

/// Sends `subscribe_events` (from `since`, if given) and returns the reply.
async fn subscribe(client: &mut RealtimeClient, since: Option<(&str, u64)>) -> Value {
    let mut request = json!({"type": "subscribe_events", "id": "s"});
    if let Some((epoch, offset)) = since {
        request["since"] = json!({"epoch": epoch, "offset": offset});
    }
    client.send_text(&request.to_string()).await;
    next_json(client).await
}

/// The next frame that is not a count push.
async fn next_json(client: &mut RealtimeClient) -> Value {
    loop {
        let frame: Value = serde_json::from_str(&client.next_text().await).unwrap();
        if frame["type"] != "unread_count" {
            return frame;
        }
    }
}

/// The next `count` events: their `data.n`, and the position of the last.
async fn events(client: &mut RealtimeClient, count: usize) -> (Vec<u64>, (String, u64)) {
    let mut seen = Vec::new();
    let mut last = (String::new(), 0);
    while seen.len() < count {
        let frame = next_json(client).await;
        assert_eq!(frame["type"], "event", "{frame}");
        seen.push(frame["data"]["n"].as_u64().unwrap());
        last = (
            frame["epoch"].as_str().unwrap().to_owned(),
            frame["offset"].as_u64().unwrap(),
        );
    }
    (seen, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_exactly_on_another_edge_and_on_a_restarted_one() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let first = start_edge(config).await;
    let second = start_edge(config).await;

    let mut jane = client(first.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut jane, None).await,
        json!({"type": "subscribed", "id": "s"})
    );
    produce_numbered(&cluster, "jane", 1..=10).await;
    let (seen, (epoch, offset)) = events(&mut jane, 10).await;
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(offset, 10);
    drop(jane);

    // Away: 11..=20. Back on the other edge, from offset 10.
    produce_numbered(&cluster, "jane", 11..=20).await;
    wait_for_stream_position(&second, "acme/jane", 20).await;
    let mut jane = client(second.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut jane, Some((&epoch, 10))).await,
        json!({"type": "subscribed", "recovery": "resumed", "missed": 10, "id": "s"})
    );
    let (seen, _) = events(&mut jane, 10).await;
    assert_eq!(seen, (11..=20).collect::<Vec<_>>());
    produce_numbered(&cluster, "jane", 21..=21).await;
    let (seen, (same_epoch, offset)) = events(&mut jane, 1).await;
    assert_eq!(
        (seen, same_epoch.as_str(), offset),
        (vec![21], epoch.as_str(), 21)
    );
    drop(jane);

    // The first edge restarts: it has the window again before it is ready.
    let address = first.address;
    first.running.stop().await;
    let restarted = start_edge_at(config, address).await;
    assert_eq!(
        restarted
            .node
            .streams
            .last_position("acme/jane")
            .map(|(_, offset)| offset),
        Some(21)
    );
    let mut jane = client(restarted.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut jane, Some((&epoch, 15))).await,
        json!({"type": "subscribed", "recovery": "resumed", "missed": 6, "id": "s"})
    );
    let (seen, _) = events(&mut jane, 6).await;
    assert_eq!(seen, (16..=21).collect::<Vec<_>>());
    produce_numbered(&cluster, "jane", 22..=22).await;
    assert_eq!(events(&mut jane, 1).await.0, [22]);

    // A position of another user's stream, and one past the end, are refused; the
    // client is not subscribed, so it can subscribe again.
    let mut bob = client(second.address, &partner, "bob").await;
    assert_eq!(
        subscribe(&mut bob, Some((&epoch, 3))).await,
        json!({"type": "error", "error": "foreign_position", "id": "s"})
    );
    let mut jane = client(second.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut jane, Some((&epoch, 99))).await,
        json!({"type": "error", "error": "future_offset", "id": "s"})
    );
    assert_eq!(
        subscribe(&mut jane, Some((&epoch, 22))).await,
        json!({"type": "subscribed", "recovery": "resumed", "missed": 0, "id": "s"})
    );
    assert_eq!(
        second.node.metrics.stream_resume_count("foreign_position"),
        1
    );
    assert_eq!(second.node.metrics.stream_resume_count("future_offset"), 1);
    for stages in [ingest, router, restarted.running, second.running] {
        stages.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_longer_than_the_window_a_client_is_told_to_reset_and_given_none_of_it() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    config.edge.history.max_events_per_user = 5;
    let (ingest, _) = start_ingest(&config);
    let (router, _) = start_router(&config);
    let edge = start_edge(&config).await;

    let mut jane = client(edge.address, &partner, "jane").await;
    subscribe(&mut jane, None).await;
    produce_numbered(&cluster, "jane", 1..=3).await;
    let (_, (epoch, offset)) = events(&mut jane, 3).await;
    drop(jane);
    produce_numbered(&cluster, "jane", 4..=12).await;
    wait_for_stream_position(&edge, "acme/jane", 12).await;

    // 4..=12 missed, 8..=12 kept: a reset, and none of them.
    let mut jane = client(edge.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut jane, Some((&epoch, offset))).await,
        json!({"type": "subscribed", "recovery": "reset", "reason": "beyond_window", "id": "s"})
    );
    produce_numbered(&cluster, "jane", 13..=13).await;
    let (seen, (_, offset)) = events(&mut jane, 1).await;
    assert_eq!((seen, offset), (vec![13], 13));
    // Still within the window: resumed.
    let mut again = client(edge.address, &partner, "jane").await;
    assert_eq!(
        subscribe(&mut again, Some((&epoch, 9))).await,
        json!({"type": "subscribed", "recovery": "resumed", "missed": 4, "id": "s"})
    );
    assert_eq!(events(&mut again, 4).await.0, [10, 11, 12, 13]);
    assert_eq!(
        edge.node.metrics.stream_resume_count("reset_beyond_window"),
        1
    );
    for stages in [ingest, router, edge.running] {
        stages.stop().await;
    }
}

/// user-streams records written long ago and a moment ago: a starting edge reads back
/// exactly those of the window's age, found by their write time (on this broker, which
/// cannot look offsets up by time, by reading them), on every partition at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_edge_reads_back_exactly_the_window_s_age_of_every_partition() {
    use prost::Message as _;
    use rdkafka::producer::FutureRecord;
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(4, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let producer = cluster.producer();
    let now = fanout_schema::unix_millis();
    let users: Vec<String> = (0..8).map(|user| format!("u{user}")).collect();
    // Offsets 1..=30 written 8 minutes ago, 31..=50 within the last minute, in time
    // order (as a router writes them); the window keeps 5 minutes.
    for offset in 1..=50_u64 {
        let written = if offset <= 30 {
            now - 8 * 60_000
        } else {
            now - 60_000 + i64::try_from(offset).unwrap()
        };
        for user in &users {
            let record = fanout_schema::v1::StreamEvent {
                partner: "acme".to_owned(),
                user: user.clone(),
                epoch: 7,
                offset,
                event: "typing.started".to_owned(),
                event_id: format!("{user}-{offset}"),
                ..Default::default()
            };
            let key = format!("acme/{user}");
            let payload = record.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(&config.topics.user_streams)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(written),
                    DEADLINE,
                )
                .await
                .map_err(|(error, _)| error)
                .unwrap();
        }
    }
    let edge = start_edge(config).await;
    let history = edge.node.streams.history();
    assert_eq!((history.events, history.users), (8 * 20, 8));
    let mut client = client(edge.address, &partner, "u3").await;
    let epoch = format!("7-{:08x}", stream_tag("acme/u3"));
    assert_eq!(
        subscribe(&mut client, Some((&epoch, 29))).await,
        json!({"type": "subscribed", "recovery": "reset", "reason": "beyond_window", "id": "s"})
    );
    let mut client = self::client(edge.address, &partner, "u3").await;
    assert_eq!(
        subscribe(&mut client, Some((&epoch, 30))).await,
        json!({"type": "subscribed", "recovery": "resumed", "missed": 20, "id": "s"})
    );
    edge.running.stop().await;
}
