//! An edge restart: the new edge reloads its table from unread-counts, reports ready
//! only once it has caught up, and a client that reconnects gets the current count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fanout_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_is_ready_only_when_caught_up_and_serves_current_counts() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(4, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let (ingest, _) = start_ingest(config);
    let (router, _) = start_router(config);
    let first_edge = start_edge(config).await;
    let producer = cluster.producer();

    // Many users with counts, so the new edge has a real table to load.
    let users: Vec<String> = (0..200).map(|user| format!("user{user}")).collect();
    for (index, user) in users.iter().enumerate() {
        for seq in 1..=(index % 5 + 1) as u64 {
            let event = event::created("acme", &format!("c-{user}"), seq, "sam", &[user.as_str()]);
            produce_event(&producer, config, &event).await;
        }
    }
    let expected = |index: usize| (index % 5 + 1) as u64;
    wait_until("the first edge to hold every count", || {
        users.iter().enumerate().all(|(index, user)| {
            first_edge
                .node
                .table
                .get(&format!("acme/{user}"))
                .map(|v| v.count)
                == Some(expected(index))
        })
    })
    .await;

    let mut client =
        CableClient::connect(first_edge.address, "acme", &partner.token("user7")).await;
    assert_eq!(
        client.welcome_and_subscribe().await,
        count_frame(expected(7))
    );

    // The edge stops: its clients are told to come back.
    first_edge.running.stop().await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#)
    );
    assert_eq!(client.next_frame().await, None);

    // A change while no edge runs.
    produce_event(
        &producer,
        config,
        &event::created("acme", "c-user7", 9, "sam", &["user7"]),
    )
    .await;
    // Wait until the router has written it, so the new edge's starting point includes it.
    let consumer_for_watermark: rdkafka::consumer::BaseConsumer =
        config.kafka.assign_consumer_config().create().unwrap();
    let total_records = || {
        (0..4)
            .map(|partition| {
                rdkafka::consumer::Consumer::fetch_watermarks(
                    &consumer_for_watermark,
                    &config.topics.unread_counts,
                    partition,
                    DEADLINE,
                )
                .unwrap()
                .1
            })
            .sum::<i64>()
    };
    let before = total_records();
    wait_until("the router to write the new count", || {
        total_records() > before
    })
    .await;

    // The new edge is ready only once its table has caught up: at that instant every
    // count, the newest included, is already there.
    let second_edge = start_edge(config).await;
    for (index, user) in users.iter().enumerate() {
        let want = if user == "user7" {
            expected(index) + 1
        } else {
            expected(index)
        };
        assert_eq!(
            second_edge
                .node
                .table
                .get(&format!("acme/{user}"))
                .map(|v| v.count),
            Some(want),
            "{user} when the new edge reported ready"
        );
    }

    // The client reconnects (to the new edge) and gets the current count.
    let mut reconnected =
        CableClient::connect(second_edge.address, "acme", &partner.token("user7")).await;
    assert_eq!(
        reconnected.welcome_and_subscribe().await,
        count_frame(expected(7) + 1)
    );

    ingest.stop().await;
    router.stop().await;
    second_edge.running.stop().await;
}
