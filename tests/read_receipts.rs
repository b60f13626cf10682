//! The router's read-receipts output, through ingest and the router on the embedded
//! cluster: every read that read something not yet read is one record, keyed by a
//! protobuf `ReadReceiptKey` (seq 0 for a conversation's read mark, the message's seq
//! for a message read one by one), in the reader's own partition; a duplicate, a read at
//! or below the mark, and a message's creation after its early read write nothing; two
//! partners whose users share ids never share a key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use fanout_schema::v1::{self, message_event::Event, user_event::Kind};
use fanout_tests::scenarios::all_records;
use fanout_tests::*;
use prost::Message as _;

/// A read-receipts key, decoded: (partner, conversation, user, seq).
type Key = (String, String, String, u64);

/// A read-receipts value, decoded: (partner, conversation, user, kind, seq, read_at_ms,
/// event_id, message_id).
type Value = (String, String, String, i32, u64, i64, String, String);

/// The record a read should write, from the message event alone (no router code): the
/// key's seq is 0 for a ConversationRead, the message's for a MessageRead.
fn expected_record(event: &v1::MessageEvent) -> (Key, Value) {
    let (conversation, user, kind, seq, message_id, key_seq) = match event.event.as_ref() {
        Some(Event::ConversationRead(read)) => (
            &read.conversation_id,
            &read.user,
            Kind::ConversationRead,
            read.seq,
            String::new(),
            0,
        ),
        Some(Event::MessageRead(read)) => (
            &read.conversation_id,
            &read.user,
            Kind::MessageRead,
            read.seq,
            read.message_id.clone(),
            read.seq,
        ),
        other => panic!("only reads write read receipts, not {other:?}"),
    };
    (
        (
            event.partner.clone(),
            conversation.clone(),
            user.clone(),
            key_seq,
        ),
        (
            event.partner.clone(),
            conversation.clone(),
            user.clone(),
            kind.into(),
            seq,
            event.occurred_at_ms,
            event.event_id.clone(),
            message_id,
        ),
    )
}

fn decode(key: &[u8], value: &[u8]) -> (Key, Value) {
    let key = v1::ReadReceiptKey::decode(key).expect("a ReadReceiptKey");
    let value = v1::ReadReceipt::decode(value).expect("a ReadReceipt");
    (
        (key.partner, key.conversation_id, key.user, key.seq),
        (
            value.partner,
            value.conversation_id,
            value.user,
            value.kind,
            value.seq,
            value.read_at_ms,
            value.event_id,
            value.message_id,
        ),
    )
}

/// User events ingest makes of `stream`: a message's to each recipient but the sender,
/// and the sender's own copy; a read's to the reader (no `notify` users here).
fn user_event_count(stream: &[v1::MessageEvent]) -> usize {
    stream
        .iter()
        .map(|event| match event.event.as_ref() {
            Some(Event::MessageCreated(created)) => {
                1 + created
                    .recipients
                    .iter()
                    .filter(|recipient| **recipient != created.sender)
                    .count()
            }
            Some(Event::MessageRead(_) | Event::ConversationRead(_)) => 1,
            other => panic!("not used here: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_read_something_write_one_read_receipt_each_in_the_readers_partition() {
    let cluster = TestCluster::start(4, &[TestPartner::new("alpha"), TestPartner::new("beta")]);
    let config = &cluster.config;
    let (ingest, _) = start_ingest(config);
    let (router, router_metrics) = start_router(config);
    let producer = cluster.producer();

    let alpha_early_read = event::message_read("alpha", "c1", 5, "u1");
    // Each event, and whether it must write a read-receipts record (the oracle).
    let steps: Vec<(v1::MessageEvent, bool)> = vec![
        (event::created("alpha", "c1", 1, "sam", &["u1"]), false),
        (event::created("alpha", "c1", 2, "sam", &["u1"]), false),
        (event::created("alpha", "c1", 3, "sam", &["u1"]), false),
        // The mark: key seq 0.
        (event::conversation_read("alpha", "c1", 2, "u1"), true),
        // A read before its message: key seq 5.
        (alpha_early_read.clone(), true),
        (event::created("alpha", "c1", 5, "sam", &["u1"]), false),
        // The same read again, byte for byte.
        (alpha_early_read, false),
        // Below the mark: a lower mark, a message read under it.
        (event::conversation_read("alpha", "c1", 1, "u1"), false),
        (event::message_read("alpha", "c1", 2, "u1"), false),
        // A higher mark: the same key as the first, its newer value.
        (event::conversation_read("alpha", "c1", 3, "u1"), true),
        // beta's u1 is another user, in the same conversation id.
        (event::created("beta", "c1", 1, "sam", &["u1"]), false),
        (event::message_read("beta", "c1", 1, "u1"), true),
        // The message read moved the mark to 1: a mark at it reads nothing.
        (event::conversation_read("beta", "c1", 1, "u1"), false),
        (event::conversation_read("beta", "c1", 4, "u1"), true),
    ];
    let stream: Vec<v1::MessageEvent> = steps.iter().map(|(event, _)| event.clone()).collect();
    let expected: Vec<(Key, Value)> = steps
        .iter()
        .filter(|(_, writes)| *writes)
        .map(|(event, _)| expected_record(event))
        .collect();
    let expected_last: BTreeMap<Key, Value> = expected.iter().cloned().collect();
    assert_eq!(expected_last.len(), 4, "two alpha keys and two beta keys");

    for event in &stream {
        produce_event(&producer, config, event).await;
    }
    let user_events = user_event_count(&stream);
    let handled = || {
        ["applied", "unchanged", "replayed", "invalid"]
            .iter()
            .map(|result| router_metrics.event_count(result) as usize)
            .sum::<usize>()
    };
    wait_until("the router to handle every user event", || {
        handled() == user_events
    })
    .await;
    let written = TopicWatermarks::new(config, &config.topics.read_receipts);
    wait_until("the router's read receipts to be acknowledged", || {
        written.total() >= i64::try_from(router_metrics.read_receipt_count()).unwrap()
    })
    .await;

    let records = all_records(config, &config.topics.read_receipts);
    assert_eq!(
        handled(),
        user_events,
        "no user event beyond those produced"
    );
    let decoded: Vec<(Key, Value)> = records
        .iter()
        .map(|record| decode(&record.key, &record.value))
        .collect();

    // One record per read that read something, none else.
    let mut sorted_records = decoded.clone();
    sorted_records.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_records, sorted_expected);
    assert_eq!(
        router_metrics.read_receipt_count(),
        expected.len() as u64,
        "fanout_router_read_receipts_total"
    );

    // Each record is in the partition of its reader's user events.
    let mut user_partitions: BTreeMap<Vec<u8>, Vec<i32>> = BTreeMap::new();
    for record in all_records(config, &config.topics.user_events) {
        user_partitions
            .entry(record.key)
            .or_default()
            .push(record.partition);
    }
    for (record, (key, _)) in records.iter().zip(&decoded) {
        let reader = format!("{}/{}", key.0, key.2);
        let partitions = user_partitions
            .get(reader.as_bytes())
            .unwrap_or_else(|| panic!("{reader} has no user events"));
        assert!(
            partitions
                .iter()
                .all(|partition| *partition == record.partition),
            "{reader}'s read receipt in partition {}, its user events in {partitions:?}",
            record.partition
        );
    }

    // What compaction keeps: the last value of each key, in partition order.
    let last: BTreeMap<Key, Value> = decoded.into_iter().collect();
    assert_eq!(last, expected_last);

    ingest.stop().await;
    router.stop().await;
}
