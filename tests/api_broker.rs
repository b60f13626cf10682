//! The api against a real broker process (tansu) that is killed while events are being
//! published: requests made during the outage are answered 503 with `Retry-After`
//! (never a success for an event Kafka does not have), publishing succeeds again once
//! the broker is back, and every event the api acknowledged is on message-events at the
//! partition and offset it named (read back from the broker).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use fanout_schema::v1;
use fanout_tests::api::*;
use fanout_tests::scenarios::all_records;
use fanout_tests::*;

const KEY: &str = "acme-broker-key-0123456789abcdef";

/// How a publish went: the status, and for each accepted event its place.
struct Published {
    status: u16,
    retry_after: Option<String>,
    accepted: Vec<((i32, i64), String)>,
}

async fn publish_one(api: &RunningApi, seq: u64) -> Published {
    let event = event::created("acme", "c1", seq, "sam", &["jane"]);
    let answer = publish(api.address, KEY, &json_of(&event)).await;
    let accepted = answer.body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|result| result["status"] == "accepted")
        .map(|result| {
            let partition = i32::try_from(result["partition"].as_i64().unwrap()).unwrap();
            let offset = result["offset"].as_i64().unwrap();
            (
                (partition, offset),
                result["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    if answer.status == 503 {
        assert_eq!(answer.outcomes()[0].0, "unavailable", "{}", answer.text);
        assert_eq!(answer.outcomes()[0].2, "unavailable", "{}", answer.text);
    }
    Published {
        status: answer.status,
        retry_after: answer.header("retry-after").map(str::to_owned),
        accepted,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_answered_503_and_nothing_acknowledged_is_lost() {
    let partner = TestPartner::new("acme");
    let mut cluster = TestCluster::start_tansu(1, std::slice::from_ref(&partner));
    with_api_keys(&mut cluster.config, "acme", &[KEY]);
    cluster.config.api.publish_timeout_ms = 2000;
    cluster.config.api.retry_after_seconds = 3;
    let config = cluster.config.clone();
    let api = start_api(&config).await;

    let mut seq = 0;
    let mut acknowledged: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let record = |published: &Published, acknowledged: &mut BTreeMap<(i32, i64), String>| {
        for (place, event_id) in &published.accepted {
            let earlier = acknowledged.insert(*place, event_id.clone());
            assert!(earlier.is_none(), "two events acknowledged at {place:?}");
        }
    };

    // Before: every publish succeeds.
    for _ in 0..20 {
        seq += 1;
        let published = publish_one(&api, seq).await;
        assert_eq!(published.status, 200);
        record(&published, &mut acknowledged);
    }

    // The broker goes away: publishes are answered 503, with Retry-After.
    cluster.tansu().kill();
    let mut unavailable = 0;
    while unavailable < 3 {
        seq += 1;
        let published = publish_one(&api, seq).await;
        record(&published, &mut acknowledged);
        if published.status == 503 {
            assert_eq!(published.retry_after.as_deref(), Some("3"));
            unavailable += 1;
        } else {
            // Only an event handed over just before the kill may still be acknowledged.
            assert_eq!(published.status, 200);
            assert!(unavailable == 0, "a success during the outage, after a 503");
        }
    }

    // The api stayed ready through it (in the Service, answering its own 503s).
    assert!(api.running.health().is_ready());

    // Back: publishing succeeds again, by itself.
    cluster.tansu().restart();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut after = 0;
    while after < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing never recovered"
        );
        seq += 1;
        let published = publish_one(&api, seq).await;
        record(&published, &mut acknowledged);
        if published.status == 200 {
            after += 1;
        } else {
            assert_eq!(published.status, 503);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Every acknowledged event is where the api said it is.
    let stored: BTreeMap<(i32, i64), String> = all_records(&config, &config.topics.message_events)
        .into_iter()
        .map(|stored| {
            let event: v1::MessageEvent = serde_json::from_slice(&stored.value).unwrap();
            ((stored.partition, stored.offset), event.event_id)
        })
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(place, event_id)| stored.get(place) != Some(event_id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not stored as answered: {lost:?}"
    );
    assert!(acknowledged.len() >= 40);
    assert!(api.metric("fanout_api_events_total", &[("result", "unavailable")]) >= 3.0);

    api.running.stop().await;
}
