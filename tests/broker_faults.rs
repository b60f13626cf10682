//! Broker faults injected into the in-process mock cluster: a broker that goes down and
//! comes back, transient request errors, added latency. No stage exits, errors are
//! counted, readiness follows the outage, work resumes by itself and counts end exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ride_out_a_broker_outage_request_errors_and_latency() {
    let partner = TestPartner::new("acme");
    let cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let ingest_metrics = &pipeline.ingest_metrics;
    let router_metrics = &pipeline.router_metrics;
    let healths = pipeline.healths();
    wait_until("every stage to be ready", || {
        healths.iter().all(|health| health.is_ready())
    })
    .await;

    let mut client = CableClient::connect(edge.address, "acme", &partner.token("jane")).await;
    assert_eq!(client.welcome_and_subscribe().await, count_frame(0));
    let producer = cluster.producer();
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 1, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_frame().await.unwrap(), count_frame(1));

    // The only broker goes down: every stage notices and stops being ready.
    cluster
        .embedded()
        .with_cluster(|kafka| kafka.broker_down(1))
        .unwrap()
        .unwrap();
    wait_until("every stage to report the outage", || {
        healths
            .iter()
            .all(|health| health.brokers_down() && !health.is_ready())
    })
    .await;
    // An event produced during the outage waits in the producer, then flows.
    let during_outage = {
        let producer = cluster.producer();
        let config = config.clone();
        tokio::spawn(async move {
            produce_event(
                &producer,
                &config,
                &event::created("acme", "c1", 2, "sam", &["jane"]),
            )
            .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pipeline.any_stopped());
    cluster
        .embedded()
        .with_cluster(|kafka| kafka.broker_up(1))
        .unwrap()
        .unwrap();
    during_outage.await.unwrap();
    assert_eq!(client.next_frame().await.unwrap(), count_frame(2));
    wait_until("every stage to be ready again", || {
        healths.iter().all(|health| health.is_ready())
    })
    .await;

    // A quiet outage: nothing flows while it lasts or after it, and still every stage
    // becomes ready again once the broker is back.
    cluster
        .embedded()
        .with_cluster(|kafka| kafka.broker_down(1))
        .unwrap()
        .unwrap();
    wait_until("every stage to report the second outage", || {
        healths.iter().all(|health| health.brokers_down())
    })
    .await;
    cluster
        .embedded()
        .with_cluster(|kafka| kafka.broker_up(1))
        .unwrap()
        .unwrap();
    wait_until("every stage to be ready after a quiet outage", || {
        healths.iter().all(|health| health.is_ready())
    })
    .await;

    // Transient request errors on produce and fetch are retried.
    cluster
        .embedded()
        .with_cluster(|kafka| {
            kafka.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
            );
            kafka.request_errors(
                RDKafkaApiKey::Fetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
            );
        })
        .unwrap();
    produce_event(
        &producer,
        config,
        &event::created("acme", "c1", 3, "sam", &["jane"]),
    )
    .await;
    assert_eq!(client.next_frame().await.unwrap(), count_frame(3));

    // Latency slows things down but changes nothing.
    cluster
        .embedded()
        .with_cluster(|kafka| kafka.broker_round_trip_time(1, Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    produce_event(
        &producer,
        config,
        &event::conversation_read("acme", "c1", 2, "jane"),
    )
    .await;
    assert_eq!(client.next_frame().await.unwrap(), count_frame(1));
    assert_eq!(
        edge.node.table.get("acme/jane").map(|value| value.count),
        Some(1)
    );

    // The outage was counted, and nothing stopped.
    assert!(ingest_metrics.kafka_error_count() > 0);
    assert!(router_metrics.kafka_error_count() > 0);
    assert!(edge.node.metrics.kafka_error_count() > 0);
    assert!(!pipeline.any_stopped());

    pipeline.stop().await;
}
