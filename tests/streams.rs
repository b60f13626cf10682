//! Event streams through the whole pipeline on the embedded Kafka: a random stream of
//! messages (some with data), reads naming users to notify, deletes, notifications and
//! byte-for-byte duplicates, for two partners whose users share ids. Every user's
//! `/realtime` client receives exactly what an independent oracle computes from the
//! produced events, at positions 1..n; a RoomChannel client of the same user receives
//! the same events; no client sees another partner's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fanout_tests::scenarios::{
    StreamShape, all_records, produce_stream, random_stream, recount, wait_for_counts,
};
use fanout_tests::streams::{
    Received, assert_streams, produced_events, stream_oracle, watch_users,
};
use fanout_tests::*;
use prost::Message as _;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_users_stream_is_exactly_the_oracles_on_both_protocols() {
    let shape = StreamShape::small();
    let partners = shape.test_partners();
    let cluster = TestCluster::start(4, &partners);
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let address = pipeline.edge.address;
    let watchers = watch_users(address, &partners, &shape.users).await;

    // The same user on RoomChannel, authenticated only by its pubsub_token.
    let mut room = CableClient::connect_url(
        &format!("ws://{address}/cable?partner={}", partners[0].code),
        Some("actioncable-v1-json"),
    )
    .await;
    assert!(room.next_frame().await.unwrap().contains("welcome"));
    let identifier =
        serde_json::json!({"channel": "RoomChannel", "pubsub_token": partners[0].stream_token("u1")})
            .to_string();
    room.send_text(
        &serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string(),
    )
    .await;
    assert!(
        room.next_frame()
            .await
            .unwrap()
            .contains("confirm_subscription")
    );

    let stream = random_stream(&shape, 13_000, 3000);
    produce_stream(&cluster.producer(), config, &stream).await;
    wait_for_counts(&pipeline.edge, config, &recount(&stream), "streams").await;
    let expected = stream_oracle(&produced_events(config));
    assert_streams(&watchers, &expected, "no faults").await;

    // RoomChannel got the same events as /realtime, in the same order.
    let realtime: Vec<(u64, Value)> = watchers
        .iter()
        .find(|watcher| watcher.key == format!("{}/u1", partners[0].code))
        .unwrap()
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|event| (event.offset, event.item.data.clone()))
        .collect();
    let mut cable = Vec::new();
    while cable.len() < realtime.len() {
        let frame = room
            .next_frame()
            .await
            .expect("the RoomChannel stream ended");
        let value: Value = serde_json::from_str(&frame).unwrap();
        if value.get("type").is_some() {
            continue; // pings
        }
        assert_eq!(
            value["identifier"],
            identifier.as_str(),
            "identifier echoed"
        );
        let mut message = value["message"].clone();
        message["type"] = "event".into();
        let event = Received::parse(&message.to_string()).unwrap();
        cable.push((event.offset, event.item.data));
    }
    assert_eq!(cable, realtime);
}

/// What a router restored from a state older than its outputs does (a crash between an
/// event's stream record and its state, at scale): a second router, in a group of its
/// own with an empty state topic, replays every user event from the beginning while the
/// first goes on. It writes every stream record again, at the same position and byte for
/// byte the same (the positions, the epochs, the receipts: all from the user-events log
/// alone), and every client still holds each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_replaying_from_an_older_state_repeats_each_position_exactly() {
    let shape = StreamShape::small();
    let partners = shape.test_partners();
    let cluster = TestCluster::start(4, &partners);
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let watchers = watch_users(pipeline.edge.address, &partners, &shape.users).await;
    let stream = random_stream(&shape, 14_000, 1500);
    produce_stream(&cluster.producer(), config, &stream).await;
    wait_for_counts(
        &pipeline.edge,
        config,
        &recount(&stream),
        "before the replay",
    )
    .await;
    // The receipts too: the first router has handled every user event there is.
    let handled = |metrics: &fanout_router::RouterMetrics| -> usize {
        ["applied", "unchanged", "replayed", "invalid"]
            .iter()
            .map(|result| metrics.event_count(result) as usize)
            .sum()
    };
    wait_until("the first router to handle every user event", || {
        handled(&pipeline.router_metrics) == all_records(config, &config.topics.user_events).len()
    })
    .await;
    let written_once = all_records(config, &config.topics.user_streams).len();

    let mut replaying = config.clone();
    replaying.router.group_id = format!("{}-replaying", config.router.group_id);
    replaying.topics.router_state = format!("{}-replaying", config.topics.router_state);
    cluster
        .embedded()
        .create_topic(&replaying.topics.router_state, 4)
        .unwrap();
    let (replayer, replayer_metrics) = start_router(&replaying);
    wait_until("the second router to replay every user event", || {
        let replayed = handled(&replayer_metrics);
        replayed > 0 && replayed == all_records(config, &config.topics.user_events).len()
    })
    .await;

    // Every position is in user-streams twice now, each copy the same bytes.
    let mut copies: std::collections::BTreeMap<(Vec<u8>, u64, u64), Vec<Vec<u8>>> =
        std::collections::BTreeMap::new();
    for record in all_records(config, &config.topics.user_streams) {
        let event = fanout_schema::v1::StreamEvent::decode(record.value.as_slice()).unwrap();
        copies
            .entry((record.key, event.epoch, event.offset))
            .or_default()
            .push(record.value);
    }
    assert_eq!(copies.len(), written_once, "no position is new");
    for ((key, epoch, offset), values) in &copies {
        let user = String::from_utf8_lossy(key);
        assert_eq!(values.len(), 2, "{user} {epoch}:{offset}");
        assert_eq!(values[0], values[1], "{user} {epoch}:{offset} differs");
    }
    let metrics = &pipeline.edge.node.metrics;
    wait_until("the edge to see the repeats", || {
        metrics.stream_record_count("repeated") > 0
    })
    .await;
    let expected = stream_oracle(&produced_events(config));
    assert_streams(&watchers, &expected, "after a replay from an empty state").await;
    replayer.stop().await;
    pipeline.stop().await;
}
