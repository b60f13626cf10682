//! Read receipts end to end, through the api: a message to three users, two of whom
//! read it (one by `ConversationRead`, one by a `MessageRead` that arrives before the
//! message), both naming the sender in `notify`, the third not at all. The sender's
//! stream gets exactly two receipts and the receipts endpoint lists exactly those two
//! readers with their times; the same with the router killed mid-way and restarted,
//! and from an api started afresh, which reads the table back from Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_tests::api::*;
use fanout_tests::streams::{Received, Watcher};
use fanout_tests::*;
use serde_json::json;

const KEY: &str = "acme-receipts-key-0123456789abcdef";

/// The receipts `watcher` received: `(event, reader, conversation, seq)`, in order.
fn receipts_of(watcher: &Watcher) -> Vec<(String, String, String, u64)> {
    watcher
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|received: &&Received| !received.item.reader.is_empty())
        .map(|received| {
            (
                received.item.event.clone(),
                received.item.reader.clone(),
                received.item.conversation.clone(),
                received.item.seq,
            )
        })
        .collect()
}

/// Kills the router as a crash would: its task aborted, nothing flushed or committed.
async fn kill(router: RunningStages) {
    for stage in router.stages {
        stage.task.abort();
        let _ = stage.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_gets_each_receipt_once_and_the_api_lists_exactly_the_readers() {
    let partner = TestPartner::new("acme");
    let mut cluster = TestCluster::start(2, std::slice::from_ref(&partner));
    with_api_keys(&mut cluster.config, "acme", &[KEY]);
    let config = cluster.config.clone();
    let (ingest, ingest_metrics) = start_ingest(&config);
    let (router, router_metrics) = start_router(&config);
    let edge = start_edge(&config).await;
    let api = start_api(&config).await;
    let sender = Watcher::start(edge.address, "acme", "ann", &partner.token("ann")).await;

    // cy reads message 1 before it exists; the router is killed once it has handled
    // the read (its receipt delivered), before its offset is committed: its successor
    // reads it again.
    let early = event::notifying(event::message_read("acme", "c1", 1, "cy"), &["ann"]);
    assert_eq!(
        publish(api.address, KEY, &json_of(&early)).await.status,
        200
    );
    wait_until("cy's receipt to reach ann", || {
        receipts_of(&sender).len() == 1
    })
    .await;
    wait_until("the router to have handled the read", || {
        router_metrics.event_count("applied") >= 1
    })
    .await;
    kill(router).await;

    // The message, and bob's read of the conversation, while no router runs.
    let message = event::created("acme", "c1", 1, "ann", &["bob", "cy", "dee"]);
    let read = event::notifying(event::conversation_read("acme", "c1", 1, "bob"), &["ann"]);
    let answer = publish(
        api.address,
        KEY,
        &batch_of(&[message.clone(), read.clone()]),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let (second_router, _) = start_router(&config);
    wait_until("bob's receipt to reach ann", || {
        receipts_of(&sender).len() >= 2
    })
    .await;

    let expected_readers = json!([
        {"user": "bob", "read_at_ms": read.occurred_at_ms, "via": "conversation_read"},
        {"user": "cy", "read_at_ms": early.occurred_at_ms, "via": "message_read"},
    ]);
    let path = "/v1/conversations/c1/messages/1/receipts";
    let readers = wait_for_answer(api.address, KEY, path, |body| {
        body["readers"]
            .as_array()
            .is_some_and(|readers| readers.len() >= 2)
    })
    .await;
    assert_eq!(readers["readers"], expected_readers, "{readers}");

    // Killed again, with everything handled: the successor replays what was not
    // committed, and nothing reaches ann twice.
    kill(second_router).await;
    let (third_router, third_metrics) = start_router(&config);
    let after = event::created("acme", "c1", 2, "bob", &["ann"]);
    assert_eq!(
        publish(api.address, KEY, &json_of(&after)).await.status,
        200
    );
    wait_until("the third router to handle the next message", || {
        third_metrics.event_count("applied") >= 1
    })
    .await;
    wait_until("ann to get the next message", || {
        sender
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|received| received.item.seq == 2 && received.item.event == "message.created")
    })
    .await;
    // Anything repeated would have arrived before the message that follows it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receipts_of(&sender),
        [
            (
                "message.read".to_owned(),
                "cy".to_owned(),
                "c1".to_owned(),
                1
            ),
            (
                "conversation.read".to_owned(),
                "bob".to_owned(),
                "c1".to_owned(),
                1
            ),
        ]
    );
    // ann's stream has no gap and no repeat: positions 1, 2, 3, ... in one epoch.
    let positions: Vec<u64> = sender
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|received| received.offset)
        .collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());

    // The running api, and one started afresh from Kafka, answer the same.
    assert_eq!(
        get(api.address, KEY, path).await.body["readers"],
        expected_readers
    );
    let fresh = start_api(&config).await;
    assert_eq!(
        get(fresh.address, KEY, path).await.body["readers"],
        expected_readers
    );
    // dee read nothing; message 2 has no reader yet.
    let second = get(
        fresh.address,
        KEY,
        "/v1/conversations/c1/messages/2/receipts",
    )
    .await;
    assert_eq!(second.body["readers"], json!([]));
    assert_eq!(
        wait_for_answer(fresh.address, KEY, "/v1/users/dee/unread_count", |_| true).await["count"],
        1
    );
    assert_eq!(ingest_metrics.dead_letter_count("undecodable"), 0);

    sender.task.abort();
    fresh.running.stop().await;
    api.running.stop().await;
    third_router.stop().await;
    ingest.stop().await;
    edge.running.stop().await;
}
