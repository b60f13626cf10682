//! A consumer group that stops doing its work must not look healthy, and must recover.
//!
//! librdkafka's mock cluster (the embedded Kafka) keeps one session timeout per group,
//! the last joiner's, and expires members whose join is still pending against it: with
//! routers of one group on different `session.timeout.ms` values (30 s, 10 s, 6 s,
//! joining 4 s apart), every router has its partitions revoked and none is assigned
//! any, for as long as we watched (three plain rdkafka consumers do the same). Each
//! router must say so (`/readyz`, `fanout_router_stalled_groups`), leave the group and join
//! it again once its rebalance is overdue (`kafka.rebalance_timeout_ms`), and the
//! counts must end exact against an independent recount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::scenarios::{
    StreamShape, produce_stream, random_stream, recount, wait_for_counts,
};
use fanout_tests::*;

const STALLED: &str = "consumer group stalled";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_with_mixed_session_timeouts_say_they_are_stalled_and_rejoin() {
    let shape = StreamShape::small();
    let cluster = TestCluster::start(4, &shape.test_partners());
    let mut config = cluster.config.clone();
    config.kafka.rebalance_timeout_ms = 15_000;
    let (ingest, _) = start_ingest(&config);
    let edge = start_edge(&config).await;

    let mut routers = Vec::new();
    for timeout in ["30000", "10000", "6000"] {
        let mut router_config = config.clone();
        router_config
            .kafka
            .consumer
            .insert("session.timeout.ms".to_owned(), timeout.to_owned());
        routers.push(start_router(&router_config));
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let stream = random_stream(&shape, 17, 2000);
    produce_stream(&cluster.producer(), &config, &stream).await;

    // Stuck: routers whose rebalance is overdue say so on readiness and in their metric
    // (all of them, as a rule; one may be assigned before its bound, so one is enough).
    let healths: Vec<_> = routers.iter().map(|(stages, _)| stages.health()).collect();
    let mut said_stalled = vec![false; routers.len()];
    let mut metric_stalled = vec![false; routers.len()];
    wait_until("a router to say its group is stalled", || {
        for (index, (health, (_, metrics))) in healths.iter().zip(&routers).enumerate() {
            said_stalled[index] |= health
                .not_ready_reason()
                .is_some_and(|why| why.contains(STALLED));
            metric_stalled[index] |= metrics.group().is_stalled();
        }
        said_stalled
            .iter()
            .zip(&metric_stalled)
            .any(|(said, metric)| *said && *metric)
    })
    .await;

    // Recovered by rejoining (rounds of it, each a bound apart: the mock's bug can strike
    // again in a rejoin's rebalance): every count exact, every router ready, none stopped.
    wait_for_counts(&edge, &config, &recount(&stream), "after the stalled group").await;
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    while !healths.iter().all(|health| health.is_ready()) {
        let why: Vec<_> = healths
            .iter()
            .map(|health| health.not_ready_reason())
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "routers not ready again: {why:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoins: u64 = routers
        .iter()
        .map(|(_, metrics)| metrics.group().rejoins())
        .sum();
    assert!(
        rejoins > 0,
        "the group recovered without a rejoin: the reproduction no longer stalls"
    );
    assert!(routers.iter().all(|(stages, _)| !stages.any_stopped()));
    assert!(!ingest.any_stopped());
    for (stages, _) in routers {
        stages.stop().await;
    }
    ingest.stop().await;
}
