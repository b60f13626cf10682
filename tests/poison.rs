//! Poison records: each kind goes to dead-letter unchanged, with a `fanout-error`
//! header naming the reason, is counted by reason, and ingest's committed offset moves
//! past it (no record is retried forever, none blocks the partition).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use fanout_schema::v1;
use fanout_tests::*;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn encoded(event: &v1::MessageEvent) -> Vec<u8> {
    event.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advances_offset_past_poison_messages() {
    let partner = TestPartner::new("acme");
    // One message-events partition, so offsets are easy to reason about.
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&partner));
    cluster.config.ingest.limits.max_record_bytes = 64 * 1024;
    let config = cluster.config.clone();
    let (ingest, metrics) = start_ingest(&config);
    let producer = cluster.producer();

    let good = event::created("acme", "c1", 1, "sam", &["jane"]);
    let mut unknown_kind = encoded(&v1::MessageEvent {
        event_id: "e-unknown".into(),
        partner: "acme".into(),
        ..Default::default()
    });
    // Field 15, length-delimited and empty: an event kind from a newer schema.
    unknown_kind.extend_from_slice(&[0x7a, 0x00]);
    let mut missing_partner = good.clone();
    missing_partner.partner.clear();
    let mut bad_partner = good.clone();
    bad_partner.partner = "ac/me".into();
    let missing_user = event::conversation_read("acme", "c1", 1, "");
    let no_recipients = event::created("acme", "c1", 1, "sam", &[]);
    let only_sender = event::created("acme", "c1", 1, "sam", &["sam"]);
    let absurd_seq = event::created("acme", "c1", u64::MAX, "sam", &["jane"]);
    let zero_seq = event::message_read("acme", "c1", 0, "jane");
    let with_data = |mut event: v1::MessageEvent, json: &str| {
        event.data = Some(fanout_schema::data::parse_data(json).unwrap());
        event
    };
    let notification = |name: &str| v1::MessageEvent {
        event_id: format!("n-{name}"),
        partner: "acme".into(),
        occurred_at_ms: fanout_schema::unix_millis(),
        data: None,
        event: Some(v1::message_event::Event::Notification(v1::Notification {
            event: name.into(),
            recipients: vec!["jane".into()],
        })),
    };
    let max_data_bytes = config.ingest.limits.max_data_bytes;
    let oversized_data = with_data(
        event::created("acme", "c1", 2, "sam", &["jane"]),
        &format!(r#"{{"text":"{}"}}"#, "x".repeat(max_data_bytes)),
    );
    // Good records between the new kinds of poison: they still go through.
    let good_with_data = with_data(
        event::created("acme", "c1", 3, "sam", &["jane"]),
        r#"{"text":"hi","n":1}"#,
    );
    let good_notification = with_data(notification("typing.started"), r#"{"who":"sam"}"#);
    let good_json = serde_json::to_vec(&good_with_data).unwrap();

    // (key, value, headers, the reason expected on dead-letter)
    type PoisonCase<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str);
    const JSON: (&str, &str) = ("content-type", "application/json");
    let cases: Vec<PoisonCase<'_>> = vec![
        (
            "undecodable",
            b"\xff\xfe\x00 garbage".to_vec(),
            vec![],
            "undecodable",
        ),
        (
            "bad-json",
            b"{\"partner\":".to_vec(),
            vec![("content-type", "application/json")],
            "undecodable",
        ),
        ("unknown-kind", unknown_kind, vec![], "unknown_event"),
        (
            "missing-partner",
            encoded(&missing_partner),
            vec![],
            "missing_partner",
        ),
        (
            "bad-partner",
            encoded(&bad_partner),
            vec![],
            "invalid_partner",
        ),
        (
            "missing-user",
            encoded(&missing_user),
            vec![],
            "missing_field",
        ),
        (
            "no-recipients",
            encoded(&no_recipients),
            vec![],
            "no_recipients",
        ),
        (
            "only-sender",
            encoded(&only_sender),
            vec![],
            "no_recipients",
        ),
        ("absurd-seq", encoded(&absurd_seq), vec![], "invalid_seq"),
        ("zero-seq", encoded(&zero_seq), vec![], "invalid_seq"),
        ("oversized", vec![0u8; 100 * 1024], vec![], "oversized"),
        (
            "csv",
            b"a,b,c".to_vec(),
            vec![("content-type", "text/csv")],
            "unsupported_content_type",
        ),
        (
            "oversized-data",
            encoded(&oversized_data),
            vec![],
            "data_too_large",
        ),
        (
            "data-not-object",
            br#"{"partner":"acme","data":"hi","notification":{"event":"typing","recipients":["jane"]}}"#
                .to_vec(),
            vec![JSON],
            "data_not_object",
        ),
        (
            "data-array",
            br#"{"partner":"acme","data":[1],"messageCreated":{"conversationId":"c1","seq":"1","sender":"sam","recipients":["jane"]}}"#
                .to_vec(),
            vec![JSON],
            "data_not_object",
        ),
        (
            "bad-event-name",
            encoded(&notification("Typing-Started")),
            vec![],
            "invalid_event_name",
        ),
        (
            "reserved-event-name",
            encoded(&notification("message.created")),
            vec![],
            "reserved_event_name",
        ),
        (
            "fanout-event-name",
            encoded(&notification("fanout.reset")),
            vec![],
            "reserved_event_name",
        ),
    ];
    // (key, value, headers) of good records, produced between the poison ones.
    type GoodCase<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>);
    let goods: Vec<GoodCase<'_>> = vec![
        ("good-data", encoded(&good_with_data), vec![]),
        ("good-notification", encoded(&good_notification), vec![]),
        ("good-json-data", good_json, vec![JSON]),
    ];
    let mut goods_between = goods.iter();
    for (index, (key, payload, headers, _)) in cases.iter().enumerate() {
        produce_raw(
            &producer,
            &config.topics.message_events,
            key,
            payload,
            headers,
        )
        .await;
        // The good ones among the last poison, the new kinds.
        if index + goods.len() >= cases.len()
            && let Some((key, payload, headers)) = goods_between.next()
        {
            produce_raw(
                &producer,
                &config.topics.message_events,
                key,
                payload,
                headers,
            )
            .await;
        }
    }
    // A good record after all the poison still goes through.
    produce_event(&producer, &config, &good).await;
    let accepted = u64::try_from(goods.len()).unwrap() + 1;
    let produced = i64::try_from(cases.len() + goods.len()).unwrap() + 1;

    wait_until("ingest to accept the good records", || {
        metrics.accepted_count() == accepted
    })
    .await;

    // Every poison record is on dead-letter, unchanged, with its reason.
    let dead_letters = DeadLetterReader::new(&config);
    let mut seen: BTreeMap<String, DeadLetter> = BTreeMap::new();
    while seen.len() < cases.len() {
        let record = dead_letters.next().await;
        seen.insert(record.key.clone(), record);
    }
    let mut expected_by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, payload, _, reason) in &cases {
        let record = &seen[*key];
        assert_eq!(record.error.as_deref(), Some(*reason), "{key}");
        assert_eq!(
            &record.payload, payload,
            "{key}: the payload is kept as it was"
        );
        *expected_by_reason.entry(reason).or_default() += 1;
    }
    for (reason, count) in expected_by_reason {
        assert_eq!(metrics.dead_letter_count(reason), count, "{reason}");
    }

    // Once ingest stops (committing), the group's offset is past every record.
    ingest.stop().await;
    let reader: BaseConsumer = config
        .kafka
        .client_config(&[("group.id", config.ingest.group_id.as_str())])
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(&config.topics.message_events, 0);
    let committed = reader.committed_offsets(partitions, DEADLINE).unwrap();
    let offset = committed.elements()[0].offset();
    assert_eq!(
        offset,
        rdkafka::Offset::Offset(produced),
        "committed past all {produced} records"
    );
}
