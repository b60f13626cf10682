//! The whole path, thin but real: message events on Kafka → ingest → router → edge →
//! ActionCable frames on real WebSocket clients, for two partners whose users share ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fanout_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_reach_each_partners_client_exactly_and_never_cross_partners() {
    scenarios::exact_frames_across_partners(|partners| TestCluster::start(4, partners)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_record_goes_to_dead_letter_and_ingest_goes_on() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(2, std::slice::from_ref(&alpha));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let ingest_metrics = &pipeline.ingest_metrics;
    let producer = cluster.producer();

    produce_raw(
        &producer,
        &config.topics.message_events,
        "poison",
        b"\xff\x00 not protobuf",
        &[],
    )
    .await;
    produce_raw(
        &producer,
        &config.topics.message_events,
        "poison-json",
        b"{\"partner\":",
        &[("content-type", "application/json")],
    )
    .await;
    // A good event after the poison still goes through.
    produce_event(
        &producer,
        config,
        &event::created("alpha", "c1", 1, "sam", &["u1"]),
    )
    .await;
    wait_until("the good event to reach the edge", || {
        edge.node.table.get("alpha/u1").map(|v| v.count) == Some(1)
    })
    .await;
    assert_eq!(ingest_metrics.dead_letter_count("undecodable"), 2);
    assert_eq!(ingest_metrics.accepted_count(), 1);

    // Both poison records are on dead-letter, unchanged, with the reason in a header.
    let dead_letters = DeadLetterReader::new(config);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let record = dead_letters.next().await;
        let source = record.source.unwrap();
        assert!(
            source.starts_with(&config.topics.message_events),
            "{source}"
        );
        seen.push((record.key, record.payload, record.error));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "poison".to_owned(),
                b"\xff\x00 not protobuf".to_vec(),
                Some("undecodable".to_owned())
            ),
            (
                "poison-json".to_owned(),
                b"{\"partner\":".to_vec(),
                Some("undecodable".to_owned())
            ),
        ]
    );

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_token_gets_the_unauthorized_disconnect_and_no_welcome() {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let cluster = TestCluster::start(1, &[alpha.clone(), beta.clone()]);
    let edge = start_edge(&cluster.config).await;
    let unauthorized = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;
    let cases = [
        ("alpha", String::new()),
        ("alpha", "garbage".to_owned()),
        // beta's valid token does not open alpha.
        ("alpha", beta.token("u1")),
        ("nobody", alpha.token("u1")),
        ("", alpha.token("u1")),
    ];
    for (partner, token) in cases {
        let mut client = CableClient::connect(edge.address, partner, &token).await;
        assert_eq!(
            client.next_frame().await.as_deref(),
            Some(unauthorized),
            "{partner} {token}"
        );
        assert_eq!(
            client.next_frame().await,
            None,
            "closed after the disconnect"
        );
    }
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_frames_do_not_close_the_connection() {
    let alpha = TestPartner::new("alpha");
    let cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    let edge = start_edge(&cluster.config).await;
    let mut client = CableClient::connect(edge.address, "alpha", &alpha.token("u1")).await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    for frame in [
        "{",
        "[]",
        "null",
        r#"{"command":"subscribe","identifier":{"channel":"PartnerChannel"}}"#,
        "\u{0}",
    ] {
        client.send_text(frame).await;
    }
    client
        .send_text(r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#)
        .await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"identifier":"{\"channel\":\"PartnerChannel\"}","type":"confirm_subscription"}"#)
    );
    assert_eq!(client.next_frame().await.unwrap(), count_frame(0));
    assert_eq!(
        edge.node.metrics.ignored_frame_count("cable", "malformed"),
        4
    );
    assert_eq!(
        edge.node
            .metrics
            .ignored_frame_count("cable", "bad_identifier"),
        1
    );
    edge.running.stop().await;
}
