//! Edges run as shards (DESIGN.md, "Scaling past one edge table"): two edges that
//! together read every partition, each a different half. Every user gets the right
//! count (an independent recount of the produced events) on the shard that reads its
//! partition, on both protocols, and a documented refusal on the other, never a count
//! of 0; the api names the right shard for every user. Which partition holds a user
//! is read from the topics themselves (where ingest's producer put the user's records),
//! not computed with the function under test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use fanout_api::shards::ShardConfig;
use fanout_tests::api::{get, start_api, with_api_keys};
use fanout_tests::scenarios::{StreamShape, all_records, produce_stream, random_stream, recount};
use fanout_tests::*;
use serde_json::{Value, json};

const PARTITIONS: i32 = 4;
/// Each shard's partitions: interleaved, so that neither is a prefix of the topic.
const SHARD_PARTITIONS: [[i32; 2]; 2] = [[0, 2], [1, 3]];
const API_KEY: &str = "shards-test-api-key-0123456789";

const WRONG_SHARD_DISCONNECT: &str =
    r#"{"type":"disconnect","reason":"wrong_shard","reconnect":false}"#;

/// The partition of each user's records on user-events, as ingest's producer put them.
fn partitions_on_the_topic(config: &fanout_app::config::Config) -> BTreeMap<String, i32> {
    let mut found = BTreeMap::new();
    for record in all_records(config, &config.topics.user_events) {
        let key = String::from_utf8(record.key).unwrap();
        let previous = found.insert(key.clone(), record.partition);
        assert!(
            previous.is_none_or(|partition| partition == record.partition),
            "{key}'s records are on two partitions"
        );
    }
    found
}

fn shard_of(partition: i32) -> usize {
    SHARD_PARTITIONS
        .iter()
        .position(|partitions| partitions.contains(&partition))
        .unwrap()
}

/// PartnerChannel on `address`: the count, or the `wrong_shard` disconnect (`None`).
async fn cable_count(address: SocketAddr, partner: &TestPartner, user: &str) -> Option<u64> {
    let mut client = CableClient::connect(address, &partner.code, &partner.token(user)).await;
    let first = client.next_frame().await.unwrap();
    if first == WRONG_SHARD_DISCONNECT {
        assert_eq!(
            client.next_frame().await,
            None,
            "closed after the disconnect"
        );
        return None;
    }
    assert_eq!(first, r#"{"type":"welcome"}"#);
    client
        .send_text(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#)
        .await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#)
    );
    let frame: Value = serde_json::from_str(&client.next_frame().await.unwrap()).unwrap();
    assert_eq!(frame["message"]["type"], "unread_count", "{frame}");
    Some(frame["message"]["count"].as_u64().unwrap())
}

/// `/realtime` on `address`: the first count, or the `wrong_shard` refusal (`None`).
async fn realtime_count(address: SocketAddr, partner: &TestPartner, user: &str) -> Option<u64> {
    let mut client = RealtimeClient::connect(address).await;
    let reply: Value = serde_json::from_str(
        &client
            .authenticate(&partner.code, &partner.token(user), "1")
            .await,
    )
    .unwrap();
    if reply["success"] == false {
        assert_eq!(
            reply,
            json!({"type":"authresponse","success":false,"error":"wrong_shard","id":1})
        );
        assert_eq!(client.next_close().await, (4421, "wrong shard".to_owned()));
        return None;
    }
    assert_eq!(reply, json!({"type":"authresponse","success":true,"id":1}));
    let frame: Value = serde_json::from_str(&client.next_text().await).unwrap();
    assert_eq!(frame["type"], "unread_count", "{frame}");
    Some(frame["count"].as_u64().unwrap())
}

/// RoomChannel with a `pubsub_token` on a connection without `jwt`, as Chatwoot's
/// widget subscribes: confirmed (true) or rejected (false).
async fn room_subscribed(address: SocketAddr, partner: &TestPartner, user: &str) -> bool {
    let identifier = room_channel_identifier(&partner.stream_token(user));
    let mut client = CableClient::connect_url(
        &format!("ws://{address}/cable?partner={}", partner.code),
        Some("actioncable-v1-json"),
    )
    .await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    client
        .send_text(&json!({"command": "subscribe", "identifier": identifier}).to_string())
        .await;
    let answer: Value = serde_json::from_str(&client.next_frame().await.unwrap()).unwrap();
    assert_eq!(answer["identifier"], identifier.as_str());
    match answer["type"].as_str() {
        Some("confirm_subscription") => true,
        Some("reject_subscription") => false,
        _ => panic!("{answer}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_is_answered_by_its_own_shard_and_refused_by_the_other() {
    let shape = StreamShape::wide(&["p1", "p2"], 24, 6);
    let partners = shape.test_partners();
    let cluster = TestCluster::start(PARTITIONS, &partners);
    let stream = random_stream(&shape, 17, 400);
    let expected = recount(&stream);
    let (ingest, _) = start_ingest(&cluster.config);
    let (router, _) = start_router(&cluster.config);
    produce_stream(&cluster.producer(), &cluster.config, &stream).await;

    // A full edge first: once it holds the recount, every record is on the topics.
    let full = start_edge(&cluster.config).await;
    scenarios::wait_for_counts(&full, &cluster.config, &expected, "the full edge").await;
    let on_topic = partitions_on_the_topic(&cluster.config);
    let mut shards = Vec::new();
    for partitions in SHARD_PARTITIONS {
        let mut config = cluster.config.clone();
        config.edge.partitions = partitions.to_vec();
        shards.push(start_edge(&config).await);
    }
    // Each shard's table holds exactly its users' recounted counts.
    for (index, shard) in shards.iter().enumerate() {
        let own: BTreeMap<String, u64> = expected
            .iter()
            .filter(|(key, _)| shard_of(on_topic[*key]) == index)
            .map(|(key, count)| (key.clone(), *count))
            .collect();
        assert!(!own.is_empty() && own.len() < expected.len(), "{index}");
        scenarios::wait_for_counts(shard, &cluster.config, &own, "a shard").await;
    }

    // The api, told which shard reads which partitions.
    let mut api_config = cluster.config.clone();
    with_api_keys(&mut api_config, "p1", &[API_KEY]);
    api_config.api.shards = SHARD_PARTITIONS
        .iter()
        .zip(&shards)
        .map(|(partitions, edge)| ShardConfig {
            url: format!("ws://{}", edge.address),
            partitions: partitions.to_vec(),
        })
        .collect();
    api_config.validate().unwrap();
    let api = start_api(&api_config).await;

    let mut refused = [0_u64; 2];
    for (key, count) in &expected {
        let (code, user) = key.split_once('/').unwrap();
        let partner = partners
            .iter()
            .find(|partner| partner.code == code)
            .unwrap();
        let partition = on_topic[key];
        let own = shard_of(partition);
        let other = 1 - own;
        let (own_address, other_address) = (shards[own].address, shards[other].address);
        assert_eq!(
            cable_count(own_address, partner, user).await,
            Some(*count),
            "{key}"
        );
        assert_eq!(
            realtime_count(own_address, partner, user).await,
            Some(*count),
            "{key}"
        );
        assert!(room_subscribed(own_address, partner, user).await, "{key}");
        assert_eq!(
            cable_count(other_address, partner, user).await,
            None,
            "{key}"
        );
        assert_eq!(
            realtime_count(other_address, partner, user).await,
            None,
            "{key}"
        );
        assert!(
            !room_subscribed(other_address, partner, user).await,
            "{key}"
        );
        refused[other] += 1;
        // The full edge refuses nobody.
        assert_eq!(
            cable_count(full.address, partner, user).await,
            Some(*count),
            "{key}"
        );

        if code == "p1" {
            let answer = get(api.address, API_KEY, &format!("/v1/users/{user}/shard")).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            assert_eq!(
                answer.body,
                json!({
                    "partner": "p1",
                    "user": user,
                    "partition": partition,
                    "partitions": PARTITIONS,
                    "url": format!("ws://{}", shards[own].address),
                })
            );
            let cli = fanout_app::tools::user_shard(code, user, Some(PARTITIONS), None).unwrap();
            assert_eq!(cli.partition, partition, "{key}");
        }
    }
    // Counted on the shard that refused: a PartnerChannel connection and a RoomChannel
    // subscription on /cable, an authrequest on /realtime, per user it does not hold.
    for (index, shard) in shards.iter().enumerate() {
        let metrics = &shard.node.metrics;
        assert_eq!(metrics.wrong_shard_count("cable"), 2 * refused[index]);
        assert_eq!(metrics.wrong_shard_count("realtime"), refused[index]);
        assert_eq!(metrics.close_count("cable", "wrong_shard"), refused[index]);
        assert_eq!(
            metrics.close_count("realtime", "wrong_shard"),
            refused[index]
        );
    }
    assert_eq!(full.node.metrics.wrong_shard_count("cable"), 0);
    assert!(refused.iter().all(|refused| *refused > 0), "{refused:?}");

    api.running.stop().await;
    for shard in shards {
        shard.running.stop().await;
    }
    full.running.stop().await;
    ingest.stop().await;
    router.stop().await;
}

/// A shard that names a partition the topic lacks, or an api whose shards cover
/// another partition count, stops with a reason naming the key, rather than serve
/// (and refuse) users by a wrong map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_map_that_does_not_fit_the_topics_stops_the_stage_naming_the_key() {
    let partner = TestPartner::new("p1");
    let cluster = TestCluster::start(PARTITIONS, std::slice::from_ref(&partner));
    let mut config = cluster.config.clone();
    config.edge.partitions = vec![1, PARTITIONS];
    config.validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = fanout_app::stages::spawn_edge(
        &config,
        listener,
        &prometheus::Registry::new(),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let error = tokio::time::timeout(DEADLINE, edge.stage.task)
        .await
        .expect("the edge stopped")
        .unwrap()
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("edge.partitions: 4 is not a partition"),
        "{error}"
    );

    let mut config = cluster.config.clone();
    with_api_keys(&mut config, "p1", &[API_KEY]);
    config.api.shards = vec![
        ShardConfig {
            url: "ws://a.example".to_owned(),
            partitions: vec![0, 1],
        },
        ShardConfig {
            url: "ws://b.example".to_owned(),
            partitions: vec![2],
        },
    ];
    config.validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api, _) = fanout_app::stages::spawn_api(
        &config,
        listener,
        &prometheus::Registry::new(),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let error = tokio::time::timeout(DEADLINE, api.task)
        .await
        .expect("the api stopped")
        .unwrap()
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("api.shards: the shards cover 3 partitions"),
        "{error}"
    );
}
