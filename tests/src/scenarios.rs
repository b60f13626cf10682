//! Scenarios the cross-stage tests run against each broker (the embedded mock cluster
//! and a real broker process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fanout_schema::v1::{self, message_event::Event};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::*;

const PARTNERS: [&str; 2] = ["p1", "p2"];
const USERS: [&str; 6] = ["u1", "u2", "u3", "u4", "u5", "u6"];
const CONVERSATIONS: [&str; 4] = ["c1", "c2", "c3", "c4"];

/// Who and what a random stream is about.
pub struct StreamShape {
    pub partners: Vec<String>,
    pub users: Vec<String>,
    pub conversations: Vec<String>,
    /// Each user is a recipient of a new message with this probability.
    pub recipient_probability: f64,
}

impl StreamShape {
    /// Few users and conversations: every user's state is busy.
    pub fn small() -> Self {
        Self {
            partners: PARTNERS.map(str::to_owned).to_vec(),
            users: USERS.map(str::to_owned).to_vec(),
            conversations: CONVERSATIONS.map(str::to_owned).to_vec(),
            recipient_probability: 0.4,
        }
    }

    /// `users` users and `conversations` conversations per partner, a few recipients
    /// per message.
    pub fn wide(partners: &[&str], users: usize, conversations: usize) -> Self {
        Self {
            partners: partners
                .iter()
                .map(|partner| (*partner).to_owned())
                .collect(),
            users: (0..users).map(|user| format!("u{user}")).collect(),
            conversations: (0..conversations)
                .map(|conversation| format!("c{conversation}"))
                .collect(),
            recipient_probability: 3.0 / users as f64,
        }
    }
}

impl StreamShape {
    /// A test partner for each of the shape's partner codes.
    pub fn test_partners(&self) -> Vec<TestPartner> {
        self.partners
            .iter()
            .map(|code| TestPartner::new(code))
            .collect()
    }
}

/// Produces `stream` to message-events, one record at a time, each keyed by
/// [`event_key`].
pub async fn produce_stream(
    producer: &rdkafka::producer::FutureProducer,
    config: &fanout_app::config::Config,
    stream: &[v1::MessageEvent],
) {
    use prost::Message as _;
    for event in stream {
        produce_raw(
            producer,
            &config.topics.message_events,
            &event_key(event),
            &event.encode_to_vec(),
            &[],
        )
        .await;
    }
}

/// A random stream with duplicates, early reads and deletes, data on some messages,
/// reads naming users to notify, and notifications.
pub fn random_stream(shape: &StreamShape, seed: u64, length: usize) -> Vec<v1::MessageEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_seq: HashMap<(&str, &str), u64> = HashMap::new();
    let mut stream: Vec<v1::MessageEvent> = Vec::with_capacity(length);
    while stream.len() < length {
        let partner = shape.partners.choose(&mut rng).unwrap().as_str();
        let conversation = shape.conversations.choose(&mut rng).unwrap().as_str();
        let user = shape.users.choose(&mut rng).unwrap().as_str();
        let seq_counter = next_seq.entry((partner, conversation)).or_insert(1);
        let roll = rng.random_range(0..100);
        let event = if roll < 10 && !stream.is_empty() {
            // A duplicate of an earlier event, byte for byte.
            stream[rng.random_range(0..stream.len())].clone()
        } else if roll < 58 {
            let seq = *seq_counter;
            *seq_counter += 1;
            let recipients: Vec<&str> = shape
                .users
                .iter()
                .map(String::as_str)
                .filter(|_| rng.random_bool(shape.recipient_probability))
                .collect();
            if recipients.iter().all(|recipient| *recipient == user) {
                continue;
            }
            let created = event::created(partner, conversation, seq, user, &recipients);
            if rng.random_bool(0.3) {
                event::with_data(
                    created,
                    &serde_json::json!({"text": format!("{conversation} #{seq}"), "by": user}),
                )
            } else {
                created
            }
        } else if roll < 97 {
            // Reads and deletes may name a seq not created yet (early).
            let seq = rng.random_range(1..=*seq_counter + 2);
            let notify: Vec<&str> = (0..rng.random_range(0..3))
                .map(|_| shape.users.choose(&mut rng).unwrap().as_str())
                .collect();
            match roll {
                58..=73 => event::notifying(
                    event::message_read(partner, conversation, seq, user),
                    &notify,
                ),
                74..=90 => event::notifying(
                    event::conversation_read(partner, conversation, seq, user),
                    &notify,
                ),
                _ => event::deleted(partner, conversation, seq, &[user]),
            }
        } else {
            let recipients: Vec<&str> = (0..rng.random_range(1..4))
                .map(|_| shape.users.choose(&mut rng).unwrap().as_str())
                .collect();
            let id = format!("{partner}-n{}", stream.len());
            streams::notification(partner, &id, "typing.started", &recipients)
        };
        stream.push(event);
    }
    stream
}

/// The key a stream's event is produced with: its conversation, so that each
/// conversation's events are consumed in order (a notification, its own id).
pub fn event_key(event: &v1::MessageEvent) -> String {
    match event.event.as_ref() {
        Some(Event::MessageCreated(e)) => e.conversation_id.clone(),
        Some(Event::MessageRead(e)) => e.conversation_id.clone(),
        Some(Event::ConversationRead(e)) => e.conversation_id.clone(),
        Some(Event::MessageDeleted(e)) => e.conversation_id.clone(),
        Some(Event::Notification(_)) | None => event.event_id.clone(),
    }
}

/// An independent recount from the events themselves (DESIGN.md's unread semantics),
/// sharing no code with ingest or the router: for each partner/user, messages addressed
/// to the user and not sent by them, above their read mark, not read one by one, not
/// deleted for them. Every user named anywhere in the stream has an entry.
pub fn recount(stream: &[v1::MessageEvent]) -> BTreeMap<String, u64> {
    type Key = (String, String); // (partner, user)
    let mut created: BTreeSet<(Key, String, u64)> = BTreeSet::new();
    let mut removed: BTreeSet<(Key, String, u64)> = BTreeSet::new();
    let mut marks: HashMap<(Key, String), u64> = HashMap::new();
    let mut counts = BTreeMap::new();
    for event in stream {
        let partner = event.partner.clone();
        let mut users: Vec<&String> = Vec::new();
        match event.event.as_ref().unwrap() {
            Event::MessageCreated(e) => {
                users.push(&e.sender);
                for recipient in &e.recipients {
                    users.push(recipient);
                    if *recipient != e.sender {
                        created.insert((
                            (partner.clone(), recipient.clone()),
                            e.conversation_id.clone(),
                            e.seq,
                        ));
                    }
                }
            }
            Event::MessageRead(e) => {
                users.push(&e.user);
                removed.insert((
                    (partner.clone(), e.user.clone()),
                    e.conversation_id.clone(),
                    e.seq,
                ));
            }
            Event::MessageDeleted(e) => {
                for recipient in &e.recipients {
                    users.push(recipient);
                    removed.insert((
                        (partner.clone(), recipient.clone()),
                        e.conversation_id.clone(),
                        e.seq,
                    ));
                }
            }
            Event::ConversationRead(e) => {
                users.push(&e.user);
                let mark = marks
                    .entry(((partner.clone(), e.user.clone()), e.conversation_id.clone()))
                    .or_insert(0);
                *mark = (*mark).max(e.seq);
            }
            // Counts untouched; its recipients are not named for counting.
            Event::Notification(_) => {}
        }
        for user in users {
            counts.entry(format!("{partner}/{user}")).or_insert(0);
        }
    }
    for message in &created {
        let ((partner, user), conversation, seq) = message;
        let mark = marks
            .get(&((partner.clone(), user.clone()), conversation.clone()))
            .copied()
            .unwrap_or(0);
        if *seq > mark && !removed.contains(message) {
            *counts.entry(format!("{partner}/{user}")).or_insert(0) += 1;
        }
    }
    counts
}

/// The edge's counts for the keys of `expected` (a user without a record counts 0).
pub fn edge_counts(edge: &RunningEdge, expected: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    expected
        .keys()
        .map(|key| {
            (
                key.clone(),
                edge.node.table.get(key).map_or(0, |value| value.count),
            )
        })
        .collect()
}

/// Waits until the edge's counts equal `expected`; fails at the deadline with the
/// differing users and, for each, what unread-counts and router-state hold for it.
pub async fn wait_for_counts(
    edge: &RunningEdge,
    config: &fanout_app::config::Config,
    expected: &BTreeMap<String, u64>,
    context: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    loop {
        let actual = edge_counts(edge, expected);
        if actual == *expected {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let differing = expected
                .iter()
                .filter(|(key, count)| actual.get(*key) != Some(*count))
                .count();
            // Each description reads the topics whole: the first few say enough.
            let details: Vec<String> = expected
                .iter()
                .filter(|(key, count)| actual.get(*key) != Some(*count))
                .take(5)
                .map(|(key, count)| {
                    format!(
                        "expected {count}, edge {:?}; {}",
                        actual.get(key),
                        describe_key(config, key)
                    )
                })
                .collect();
            panic!(
                "final counts of {differing} users differ from the recount ({context}); {}; the first:\n{}",
                describe_deletions(config),
                details.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Which partitions of the stages' topics no longer start at offset 0: records the
/// broker deleted. librdkafka's mock cluster keeps the last 5 MiB of each partition, so
/// a consumer that falls further behind than that loses records, which no stage can
/// recount; a count that differs then says more about the test's volume than the
/// stage.
pub fn deleted_records(config: &fanout_app::config::Config) -> Vec<(String, i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = config.kafka.assign_consumer_config().create().unwrap();
    let topics = &config.topics;
    let mut deleted = Vec::new();
    for topic in [
        &topics.message_events,
        &topics.user_events,
        &topics.router_state,
        &topics.unread_counts,
        &topics.user_streams,
        &topics.read_receipts,
    ] {
        let metadata = consumer.fetch_metadata(Some(topic), DEADLINE).unwrap();
        for partition in metadata.topics()[0].partitions() {
            let (low, _high) = consumer
                .fetch_watermarks(topic, partition.id(), DEADLINE)
                .unwrap();
            if low > 0 {
                deleted.push((topic.clone(), partition.id(), low));
            }
        }
    }
    deleted
}

/// [`deleted_records`] in words.
pub fn describe_deletions(config: &fanout_app::config::Config) -> String {
    let deleted = deleted_records(config);
    if deleted.is_empty() {
        return "the broker deleted no records".to_owned();
    }
    let partitions: Vec<String> = deleted
        .iter()
        .map(|(topic, partition, low)| format!("{topic}[{partition}] before {low}"))
        .collect();
    format!(
        "the broker deleted records (a consumer further behind lost them): {}",
        partitions.join(", ")
    )
}

/// Every record of `key` on `topic` (all partitions), as `(partition, offset, value)`.
pub fn records_of(
    config: &fanout_app::config::Config,
    topic: &str,
    key: &str,
) -> Vec<(i32, i64, Vec<u8>)> {
    all_records(config, topic)
        .into_iter()
        .filter(|record| record.key == key.as_bytes())
        .map(|record| (record.partition, record.offset, record.value))
        .collect()
}

/// One record read back by [`all_records`].
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Every record on `topic`, partition by partition. Reads past the high-water mark the
/// broker reports until nothing arrives for two seconds: a broker may report a stale
/// one (tansu does), and a diagnostic must not hide records.
pub fn all_records(config: &fanout_app::config::Config, topic: &str) -> Vec<StoredRecord> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = config.kafka.assign_consumer_config().create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), DEADLINE).unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut found = Vec::new();
    for partition in partitions {
        let (_low, high) = consumer
            .fetch_watermarks(topic, partition, DEADLINE)
            .unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut next = 0;
        loop {
            let wait = if next >= high {
                std::time::Duration::from_secs(2)
            } else {
                DEADLINE
            };
            let Some(message) = consumer.poll(wait) else {
                break;
            };
            let message = message.unwrap();
            next = message.offset() + 1;
            found.push(StoredRecord {
                partition,
                offset: message.offset(),
                key: message.key().unwrap_or_default().to_vec(),
                value: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    found
}

/// What the topics hold for `key`: each count record's (offset, version, count) and
/// each state record's (offset, version, last_offset, count).
pub fn describe_key(config: &fanout_app::config::Config, key: &str) -> String {
    use prost::Message as _;
    let counts: Vec<(i64, u64, u64)> = records_of(config, &config.topics.unread_counts, key)
        .into_iter()
        .map(|(_, offset, value)| {
            let record = v1::UnreadCount::decode(value.as_slice()).unwrap();
            (offset, record.version, record.count)
        })
        .collect();
    let states: Vec<(i64, u64, i64, u64)> = records_of(config, &config.topics.router_state, key)
        .into_iter()
        .map(|(_, offset, value)| {
            let record = v1::UserState::decode(value.as_slice()).unwrap();
            (
                offset,
                record.version,
                record.last_offset,
                record.unread_count,
            )
        })
        .collect();
    let inputs: Vec<(i32, i64)> = records_of(config, &config.topics.user_events, key)
        .into_iter()
        .map(|(partition, offset, _)| (partition, offset))
        .collect();
    format!(
        "{key}:\n  user-events ({} records; partition, offset): {inputs:?}\n  unread-counts (offset, version, count): {counts:?}\n  router-state (offset, version, last_offset, count): {states:?}",
        inputs.len()
    )
}

/// The partners of [`crash_and_restart`]; start its cluster with them.
pub fn restart_partners() -> Vec<TestPartner> {
    PARTNERS.iter().map(|code| TestPartner::new(code)).collect()
}

/// A router crashed mid-stream (its task aborted: nothing flushed, nothing committed
/// beyond what was acknowledged), its successor stopped gracefully mid-stream, a third
/// finishing the stream: every final count equals an independent recount.
pub async fn crash_and_restart(start_cluster: impl FnOnce(&[TestPartner]) -> TestCluster) {
    let partners = restart_partners();
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20_261_121);
    let stream = random_stream(&StreamShape::small(), seed, 3000);
    let expected = recount(&stream);
    assert!(
        expected.values().any(|count| *count > 0),
        "the stream leaves something unread"
    );

    let cluster = start_cluster(&partners);
    let config = cluster.config.clone();
    let (ingest, _) = start_ingest(&config);
    let (first_router, first_metrics) = start_router(&config);
    let edge = start_edge(&config).await;

    // The stream goes out in three phases, one per router, each phase produced while
    // that router runs so every router is stopped with events in flight.
    let phases: Vec<Vec<v1::MessageEvent>> = stream
        .chunks(stream.len() / 3 + 1)
        .map(<[_]>::to_vec)
        .collect();
    let spawn_phase = |events: Vec<v1::MessageEvent>| {
        let producer = cluster.producer();
        let config = config.clone();
        tokio::spawn(async move {
            for event in &events {
                produce_event(&producer, &config, event).await;
            }
        })
    };
    let processed = |metrics: &fanout_router::RouterMetrics| {
        ["applied", "unchanged", "replayed"]
            .iter()
            .map(|result| metrics.event_count(result))
            .sum::<u64>()
    };

    // Crash the first router mid-stream.
    let first_phase = spawn_phase(phases[0].clone());
    wait_until("the first router to process events", || {
        processed(&first_metrics) >= 300
    })
    .await;
    for stage in first_router.stages {
        stage.task.abort();
        let _ = stage.task.await;
    }
    let crashed_after = processed(&first_metrics);
    first_phase.await.unwrap();

    // A second router takes over, restoring from router-state; stop it gracefully
    // while its phase still flows.
    let (second_router, second_metrics) = start_router(&config);
    let second_phase = spawn_phase(phases[1].clone());
    wait_until("the second router to process events", || {
        processed(&second_metrics) >= 300
    })
    .await;
    second_router.stop().await;
    second_phase.await.unwrap();

    // A third finishes the stream.
    let (third_router, third_metrics) = start_router(&config);
    spawn_phase(phases[2].clone()).await.unwrap();
    wait_for_counts(
        &edge,
        &config,
        &expected,
        &format!("seed {seed}, first router crashed after {crashed_after} processed"),
    )
    .await;
    // Each router did part of the work.
    assert!(processed(&second_metrics) >= 300);
    assert!(processed(&third_metrics) > 0);

    ingest.stop().await;
    third_router.stop().await;
    edge.running.stop().await;
}

/// Two partners whose users share a uniqueId: each client gets exactly its own
/// changes, frame by frame (0 on subscribe, then each change; duplicates, sends by the
/// user, early reads change nothing), and never the other partner's.
pub async fn exact_frames_across_partners(
    start_cluster: impl FnOnce(&[TestPartner]) -> TestCluster,
) {
    let alpha = TestPartner::new("alpha");
    let beta = TestPartner::new("beta");
    let cluster = start_cluster(&[alpha.clone(), beta.clone()]);
    let config = &cluster.config;
    let pipeline = start_pipeline(config).await;
    let edge = &pipeline.edge;
    let producer = cluster.producer();

    // The same uniqueId under two partners: two different users.
    let mut alpha_client = CableClient::connect(edge.address, "alpha", &alpha.token("u1")).await;
    let mut beta_client = CableClient::connect(edge.address, "beta", &beta.token("u1")).await;
    assert_eq!(
        alpha_client.protocol.as_deref(),
        Some("actioncable-v1-json")
    );
    assert_eq!(alpha_client.welcome_and_subscribe().await, count_frame(0));
    assert_eq!(beta_client.welcome_and_subscribe().await, count_frame(0));

    let mut alpha_frames = Vec::new();
    let mut beta_frames = Vec::new();

    // Each step: an event, then the frame it must cause (None: no frame; the next
    // step's frame then proves nothing was sent in between, since one user's events are
    // processed in order).
    let steps: Vec<(fanout_schema::v1::MessageEvent, Option<u64>)> = vec![
        (event::created("alpha", "c1", 1, "sam", &["u1"]), Some(1)),
        // A duplicate changes nothing.
        (event::created("alpha", "c1", 1, "sam", &["u1"]), None),
        (
            event::created("alpha", "c1", 2, "sam", &["u1", "sam"]),
            Some(2),
        ),
        (event::created("alpha", "c2", 1, "sam", &["u1"]), Some(3)),
        // Sent by u1: never unread for u1.
        (event::created("alpha", "c2", 2, "u1", &["sam", "u1"]), None),
        (event::conversation_read("alpha", "c1", 1, "u1"), Some(2)),
        (event::message_read("alpha", "c1", 2, "u1"), Some(1)),
        // A read that arrives before its message still covers it.
        (event::message_read("alpha", "c2", 5, "u1"), None),
        (event::created("alpha", "c2", 5, "sam", &["u1"]), None),
        (event::deleted("alpha", "c2", 1, &["u1"]), Some(0)),
        (event::created("alpha", "c3", 1, "sam", &["u1"]), Some(1)),
    ];
    for (event, expected) in steps {
        produce_event(&producer, config, &event).await;
        if let Some(count) = expected {
            let frame = alpha_client.next_frame().await.unwrap();
            assert_eq!(frame, count_frame(count), "after {event:?}");
            alpha_frames.push(frame);
        }
    }

    // beta's u1 gets beta's events only.
    produce_event(
        &producer,
        config,
        &event::created("beta", "c1", 1, "sam", &["u1"]),
    )
    .await;
    beta_frames.push(beta_client.next_frame().await.unwrap());
    produce_event(
        &producer,
        config,
        &event::created("beta", "c1", 2, "sam", &["u1"]),
    )
    .await;
    beta_frames.push(beta_client.next_frame().await.unwrap());
    produce_event(
        &producer,
        config,
        &event::conversation_read("beta", "c1", 2, "u1"),
    )
    .await;
    beta_frames.push(beta_client.next_frame().await.unwrap());
    assert_eq!(
        beta_frames,
        vec![count_frame(1), count_frame(2), count_frame(0)]
    );

    // A last alpha change: the very next alpha frame is it, so no beta count ever
    // reached alpha's client while beta's counts changed.
    produce_event(
        &producer,
        config,
        &event::conversation_read("alpha", "c3", 1, "u1"),
    )
    .await;
    let last = alpha_client.next_frame().await.unwrap();
    assert_eq!(last, count_frame(0));
    alpha_frames.push(last);
    assert_eq!(
        alpha_frames,
        [1, 2, 3, 2, 1, 0, 1, 0].map(count_frame).to_vec(),
        "alpha's u1 saw exactly its own changes"
    );
    // And beta's u1 saw nothing of alpha's: one more beta change arrives next.
    produce_event(
        &producer,
        config,
        &event::created("beta", "c9", 1, "sam", &["u1"]),
    )
    .await;
    assert_eq!(beta_client.next_frame().await.unwrap(), count_frame(1));

    // The table holds both users apart.
    assert_eq!(edge.node.table.get("alpha/u1").map(|v| v.count), Some(0));
    assert_eq!(edge.node.table.get("beta/u1").map(|v| v.count), Some(1));

    pipeline.stop().await;
}
