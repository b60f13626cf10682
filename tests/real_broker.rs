//! The cross-stage scenarios against a real Kafka-protocol broker in its own process
//! (tansu with its SQLite engine, installed on first use), not only the in-process mock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::tansu::TansuBroker;
use fanout_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// What exactly-once over Kafka rests on: a consumer resuming from an offset inside a
/// record batch (a committed offset, usually) gets the records from that offset on.
/// tansu 0.6's in-memory engine fails this (it skips to the next batch), which is why
/// the harness runs the SQLite engine; this test keeps the harness honest.
#[test]
fn broker_serves_fetches_from_mid_batch_offsets() {
    let broker = TansuBroker::start();
    broker.create_topic("batches", 1);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("linger.ms", "200")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Two batches of ten records: offsets 0..=9 and 10..=19.
    for batch in 0..2 {
        for index in 0..10 {
            let key = format!("k{batch}-{index}");
            producer
                .send(
                    BaseRecord::to("batches")
                        .key(&key)
                        .payload("v")
                        .partition(0),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    for start in [0_i64, 3, 9, 10, 12, 19] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "mid-batch")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("batches", 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut offsets = Vec::new();
        while offsets.last() != Some(&19) {
            let message = consumer
                .poll(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("from {start}: only {offsets:?} arrived"))
                .unwrap();
            offsets.push(message.offset());
        }
        assert_eq!(
            offsets,
            (start..20).collect::<Vec<_>>(),
            "fetching from {start}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_frames_across_partners_on_a_real_broker() {
    scenarios::exact_frames_across_partners(|partners| TestCluster::start_tansu(4, partners)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_router_crash_and_restart_on_a_real_broker() {
    scenarios::crash_and_restart(|partners| TestCluster::start_tansu(4, partners)).await;
}

/// The broker process is killed while events flow and started again on the same data:
/// no stage exits, each reports the outage (not ready) and counts it, work resumes by
/// itself, and every count ends equal to an independent recount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ride_out_a_broker_restart() {
    let partners = scenarios::restart_partners();
    let stream = scenarios::random_stream(&scenarios::StreamShape::small(), 77, 1500);
    let expected = scenarios::recount(&stream);
    let mut cluster = TestCluster::start_tansu(4, &partners);
    let config = cluster.config.clone();
    let (ingest, ingest_metrics) = start_ingest(&config);
    let (router, router_metrics) = start_router(&config);
    let edge = start_edge(&config).await;
    let healths = [ingest.health(), router.health(), edge.running.health()];
    wait_until("every stage to be ready", || {
        healths.iter().all(|health| health.is_ready())
    })
    .await;

    let (first, rest) = stream.split_at(stream.len() / 2);
    let producer = cluster.producer();
    for event in first {
        produce_event(&producer, &config, event).await;
    }
    cluster.tansu().kill();
    wait_until("every stage to report the outage", || {
        healths
            .iter()
            .all(|health| health.brokers_down() && !health.is_ready())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!ingest.any_stopped() && !router.any_stopped() && !edge.running.any_stopped());
    cluster.tansu().restart();
    for event in rest {
        produce_event(&producer, &config, event).await;
    }
    scenarios::wait_for_counts(&edge, &config, &expected, "after a broker restart").await;
    wait_until("every stage to be ready again", || {
        healths.iter().all(|health| health.is_ready())
    })
    .await;
    assert!(ingest_metrics.kafka_error_count() > 0);
    assert!(router_metrics.kafka_error_count() > 0);
    assert!(edge.node.metrics.kafka_error_count() > 0);
    assert!(!ingest.any_stopped() && !router.any_stopped() && !edge.running.any_stopped());
    ingest.stop().await;
    router.stop().await;
}
