//! The api over HTTP, as curl would use it: every route, every error code, key
//! rotation, a key of one partner refused for another; what is published reaches
//! Kafka exactly (checked by reading message-events back) and clients (a count on
//! ActionCable's PartnerChannel, the event on a RoomChannel subscription).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use fanout_schema::v1;
use fanout_tests::api::*;
use fanout_tests::scenarios::all_records;
use fanout_tests::*;
use serde_json::{Value, json};

const ACME_KEY: &str = "acme-key-2026-11-0123456789abcdef";
const ACME_NEXT_KEY: &str = "acme-key-2027-01-0123456789abcdef";
const GLOBEX_KEY: &str = "globex-key-2026-0123456789abcdef";

/// A cluster whose partners acme (two keys) and globex (one) have API keys; and acme.
fn cluster_with_keys(partitions: i32) -> (TestCluster, TestPartner) {
    let partners = [TestPartner::new("acme"), TestPartner::new("globex")];
    let mut cluster = TestCluster::start(partitions, &partners);
    with_api_keys(&mut cluster.config, "acme", &[ACME_KEY, ACME_NEXT_KEY]);
    with_api_keys(&mut cluster.config, "globex", &[GLOBEX_KEY]);
    let [acme, _] = partners;
    (cluster, acme)
}

/// The event ids of every record on message-events, by (partition, offset).
fn published_records(config: &fanout_app::config::Config) -> BTreeSet<(i32, i64, String)> {
    all_records(config, &config.topics.message_events)
        .into_iter()
        .map(|record| {
            let event: v1::MessageEvent = serde_json::from_slice(&record.value).unwrap();
            (record.partition, record.offset, event.event_id)
        })
        .collect()
}

/// `(partition, offset, event_id)` of every accepted event of `answers`.
fn accepted(answers: &[&Answer]) -> BTreeSet<(i32, i64, String)> {
    answers
        .iter()
        .flat_map(|answer| {
            answer.body["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|result| result["status"] == "accepted")
        .map(|result| {
            (
                i32::try_from(result["partition"].as_i64().unwrap()).unwrap(),
                result["offset"].as_i64().unwrap(),
                result["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_its_documented_codes_and_only_valid_events_are_published() {
    let (mut cluster, _) = cluster_with_keys(2);
    cluster.config.api.max_batch_events = 5;
    cluster.config.api.max_body_bytes = 64 * 1024;
    let config = cluster.config.clone();
    let pipeline = start_pipeline(&config).await;
    let api = start_api(&config).await;
    let address = api.address;
    let created = event::created("acme", "c1", 1, "ann", &["bob", "cy"]);

    // Authentication: no header, another scheme, a key nobody has.
    let body = json_of(&created);
    let no_key = request(
        address,
        "POST",
        "/v1/events",
        None,
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (no_key.status, no_key.code()),
        (401, "unauthorized"),
        "{}",
        no_key.text
    );
    assert_eq!(
        no_key.header("www-authenticate"),
        Some("Bearer realm=\"fanout\"")
    );
    let basic = request(address, "GET", "/v1/users/bob/unread_count", None, None, "").await;
    assert_eq!(basic.status, 401);
    let unknown = publish(address, "not-a-key-of-anyone-0123456789", &body).await;
    assert_eq!((unknown.status, unknown.code()), (401, "unauthorized"));
    assert!(!unknown.text.contains("not-a-key"), "a key is never echoed");

    // The body: its type, its JSON, its size, its batch.
    let form = request(
        address,
        "POST",
        "/v1/events",
        Some(ACME_KEY),
        Some("application/x-www-form-urlencoded"),
        body.clone(),
    )
    .await;
    assert_eq!((form.status, form.code()), (415, "unsupported_media_type"));
    for (text, code) in [
        ("nope", "invalid_json"),
        ("{\"eventId\":", "invalid_json"),
        ("[]", "empty_batch"),
        ("42", "invalid_json"),
    ] {
        let answer = publish(address, ACME_KEY, text).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, code),
            "{text}: {}",
            answer.text
        );
    }
    let six = batch_of(
        &(1..=6)
            .map(|seq| event::created("acme", "c9", seq, "ann", &["bob"]))
            .collect::<Vec<_>>(),
    );
    let too_many = publish(address, ACME_KEY, &six).await;
    assert_eq!(
        (too_many.status, too_many.code()),
        (413, "batch_too_large"),
        "{}",
        too_many.text
    );
    let huge = format!("[{}]", vec![body.as_str(); 500].join(","));
    assert!(huge.len() > 64 * 1024);
    let too_big = publish(address, ACME_KEY, &huge).await;
    assert_eq!((too_big.status, too_big.code()), (413, "body_too_large"));

    // One event, then a batch with the partner's other key: accepted, each with its place.
    let one = publish(address, ACME_KEY, &body).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(
        one.outcomes(),
        [("accepted".into(), created.event_id.clone(), String::new())]
    );
    let read = event::notifying(event::conversation_read("acme", "c1", 1, "bob"), &["ann"]);
    let early = event::notifying(event::message_read("acme", "c1", 2, "cy"), &["ann"]);
    let second = event::created("acme", "c1", 2, "ann", &["bob", "cy"]);
    let batch = publish(
        address,
        ACME_NEXT_KEY,
        &batch_of(&[read.clone(), early.clone(), second.clone()]),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert!(
        batch
            .outcomes()
            .iter()
            .all(|(status, _, _)| status == "accepted")
    );

    // A batch with refusals: each refused event says why; the valid one is published.
    let mut zero_seq = event::created("acme", "c2", 1, "ann", &["bob"]);
    if let Some(v1::message_event::Event::MessageCreated(message)) = &mut zero_seq.event {
        message.seq = 0;
    }
    zero_seq.event_id = "zero-seq".into();
    let mut for_globex = event::created("globex", "c1", 1, "ann", &["bob"]);
    for_globex.event_id = "for-globex".into();
    let valid = event::created("acme", "c3", 1, "ann", &["bob"]);
    let mixed = format!(
        "[{},{},{},{},{}]",
        json_of(&for_globex),
        json_of(&zero_seq),
        r#"{"eventId":"data-array","partner":"acme","data":[1],"messageRead":{"conversationId":"c1","seq":"1","user":"bob"}}"#,
        r#"{"eventId":"no-kind","partner":"acme"}"#,
        json_of(&valid),
    );
    let refused = publish(address, ACME_KEY, &mixed).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(
        refused.outcomes(),
        [
            (
                "rejected".into(),
                "for-globex".into(),
                "partner_mismatch".into()
            ),
            ("rejected".into(), "zero-seq".into(), "invalid_seq".into()),
            ("rejected".into(), String::new(), "data_not_object".into()),
            ("rejected".into(), "no-kind".into(), "unknown_event".into()),
            ("accepted".into(), valid.event_id.clone(), String::new()),
        ]
    );
    let undecodable = publish(address, ACME_KEY, r#"{"eventId":"x","partner":5}"#).await;
    assert_eq!(
        (undecodable.status, undecodable.outcomes()[0].2.as_str()),
        (422, "undecodable")
    );

    // Exactly the accepted events are on message-events, where the answers said.
    let expected = accepted(&[&one, &batch, &refused, &undecodable]);
    assert_eq!(expected.len(), 5);
    wait_until("the published records to be readable", || {
        published_records(&config).len() >= expected.len()
    })
    .await;
    assert_eq!(published_records(&config), expected);

    // The count and the receipts, once the router has them.
    let count = wait_for_answer(address, ACME_KEY, "/v1/users/bob/unread_count", |body| {
        body["count"] == 2
    })
    .await;
    assert_eq!(count, json!({"partner": "acme", "user": "bob", "count": 2}));
    let globex_bob = get(address, GLOBEX_KEY, "/v1/users/bob/unread_count").await;
    assert_eq!(
        globex_bob.body,
        json!({"partner": "globex", "user": "bob", "count": 0}),
        "acme's bob is not globex's"
    );
    let receipts = wait_for_answer(
        address,
        ACME_KEY,
        "/v1/conversations/c1/messages/1/receipts",
        |body| {
            body["readers"]
                .as_array()
                .is_some_and(|readers| !readers.is_empty())
        },
    )
    .await;
    assert_eq!(
        receipts,
        json!({"partner": "acme", "conversation_id": "c1", "seq": 1, "readers": [
            {"user": "bob", "read_at_ms": read.occurred_at_ms, "via": "conversation_read"},
        ]})
    );
    let message_two = wait_for_answer(
        address,
        ACME_KEY,
        "/v1/conversations/c1/messages/2/receipts",
        |body| {
            body["readers"]
                .as_array()
                .is_some_and(|readers| !readers.is_empty())
        },
    )
    .await;
    assert_eq!(
        message_two["readers"],
        json!([{"user": "cy", "read_at_ms": early.occurred_at_ms, "via": "message_read"}])
    );
    let none_for_globex = get(
        address,
        GLOBEX_KEY,
        "/v1/conversations/c1/messages/1/receipts",
    )
    .await;
    assert_eq!(none_for_globex.body["readers"], json!([]));

    // Path values that are not what they should be.
    for seq in ["0", "abc", "9007199254740993", "-1", "+5"] {
        let answer = get(
            address,
            ACME_KEY,
            &format!("/v1/conversations/c1/messages/{seq}/receipts"),
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_seq"),
            "{seq}"
        );
    }
    let long = "u".repeat(300);
    let answer = get(address, ACME_KEY, &format!("/v1/users/{long}/unread_count")).await;
    assert_eq!((answer.status, answer.code()), (400, "id_too_long"));
    let answer = get(
        address,
        ACME_KEY,
        &format!("/v1/conversations/{long}/messages/1/receipts"),
    )
    .await;
    assert_eq!((answer.status, answer.code()), (400, "id_too_long"));
    let answer = get(address, ACME_KEY, "/v1/users//unread_count").await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "missing_field"),
        "{}",
        answer.text
    );
    let answer = get(address, ACME_KEY, "/v1/conversations//messages/1/receipts").await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "missing_field"),
        "{}",
        answer.text
    );
    let answer = get(address, ACME_KEY, "/v1/users/%FF/unread_count").await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "invalid_path"),
        "{}",
        answer.text
    );
    // Percent-encoded ids are decoded: a user id with a slash and a space.
    let answer = get(address, ACME_KEY, "/v1/users/a%2Fb%20c/unread_count").await;
    assert_eq!(answer.body["user"], "a/b c", "{}", answer.text);

    // Elsewhere: 404 and 405 as JSON; the document, without a key.
    let missing = get(address, ACME_KEY, "/v1/nothing-here").await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let wrong_method = request(address, "DELETE", "/v1/events", Some(ACME_KEY), None, "").await;
    assert_eq!(
        (wrong_method.status, wrong_method.code()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let document = request(address, "GET", "/v1/openapi.json", None, None, "").await;
    assert_eq!(document.status, 200);
    assert!(document.body["openapi"].as_str().unwrap().starts_with("3."));

    // Every answer was counted by route and status.
    assert_eq!(
        api.metric(
            "fanout_api_requests_total",
            &[("route", "publish"), ("status", "401")]
        ),
        2.0
    );
    assert_eq!(
        api.metric(
            "fanout_api_event_rejections_total",
            &[("reason", "partner_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        api.metric(
            "fanout_api_limited_requests_total",
            &[("limit", "body_size")]
        ),
        1.0
    );
    assert_eq!(
        api.metric(
            "fanout_api_limited_requests_total",
            &[("limit", "batch_size")]
        ),
        1.0
    );
    assert_eq!(
        api.metric("fanout_api_events_total", &[("result", "accepted")]),
        5.0
    );
    // Nothing the api produced went to dead-letter: ingest validated it all the same.
    for reason in fanout_ingest::Rejection::REASONS {
        assert_eq!(
            pipeline.ingest_metrics.dead_letter_count(reason),
            0,
            "{reason}"
        );
    }

    api.running.stop().await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_rate_and_over_it_gets_429_with_retry_after() {
    let (mut cluster, _) = cluster_with_keys(1);
    cluster.config.api.requests_per_second = 3;
    let api = start_api(&cluster.config).await;
    let path = "/v1/users/bob/unread_count";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(api.address, ACME_KEY, path).await.status);
    }
    // A burst of three, then refused (the refill in the time four requests take is far
    // below one token at 3 a second... unless the machine stalls: allow one more).
    assert_eq!(&statuses[..3], [200, 200, 200]);
    let limited = loop {
        let answer = get(api.address, ACME_KEY, path).await;
        if answer.status == 429 {
            break answer;
        }
    };
    assert_eq!(limited.code(), "rate_limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    // The partner's other key, and another partner, are not slowed by it.
    assert_eq!(get(api.address, ACME_NEXT_KEY, path).await.status, 200);
    assert_eq!(get(api.address, GLOBEX_KEY, path).await.status, 200);
    // And it refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(api.address, ACME_KEY, path).await.status, 200);
    assert!(api.metric("fanout_api_limited_requests_total", &[("limit", "rate")]) >= 1.0);
    api.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_the_keys_file_without_a_restart() {
    let (mut cluster, _) = cluster_with_keys(1);
    let dir = fanout_tests::process::temp_dir("api-keys");
    let file = dir.join("keys.toml");
    let old = "acme-file-key-old-0123456789abcdef";
    let new = "acme-file-key-new-0123456789abcdef";
    std::fs::write(&file, format!("[acme]\nkeys = [\"{old}\"]\n")).unwrap();
    cluster.config.api.keys_file = Some(file.clone());
    cluster.config.api.keys_reload_interval_ms = 100;
    let api = start_api(&cluster.config).await;
    let path = "/v1/users/bob/unread_count";
    assert_eq!(get(api.address, old, path).await.status, 200);
    assert_eq!(get(api.address, new, path).await.status, 401);

    // Both during the rotation, then only the new one.
    std::fs::write(&file, format!("[acme]\nkeys = [\"{old}\", \"{new}\"]\n")).unwrap();
    wait_for_status(api.address, new, path, 200).await;
    assert_eq!(get(api.address, old, path).await.status, 200);
    std::fs::write(&file, format!("[acme]\nkeys = [\"{new}\"]\n")).unwrap();
    wait_for_status(api.address, old, path, 401).await;
    assert_eq!(get(api.address, new, path).await.status, 200);
    // The configured keys stay throughout.
    assert_eq!(get(api.address, ACME_KEY, path).await.status, 200);

    // A file that does not parse keeps the keys in use, and is counted.
    std::fs::write(&file, "[acme]\nkeys = [\"short\"]\n").unwrap();
    wait_until("the bad keys file to be counted", || {
        api.metric("fanout_api_key_reloads_total", &[("result", "error")]) >= 1.0
    })
    .await;
    assert_eq!(get(api.address, new, path).await.status, 200);

    // A file key acts for its own partner only.
    let globex_event = event::created("globex", "c1", 1, "ann", &["bob"]);
    let answer = publish(api.address, new, &json_of(&globex_event)).await;
    assert_eq!(answer.outcomes()[0].2, "partner_mismatch");
    api.running.stop().await;
}

async fn wait_for_status(address: std::net::SocketAddr, key: &str, path: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while get(address, key, path).await.status != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_over_http_it_reaches_partner_channel_and_room_channel() {
    let (cluster, partner) = cluster_with_keys(2);
    let config = cluster.config.clone();
    let pipeline = start_pipeline(&config).await;
    let api = start_api(&config).await;

    let mut counts =
        CableClient::connect(pipeline.edge.address, "acme", &partner.token("jane")).await;
    assert_eq!(counts.welcome_and_subscribe().await, count_frame(0));
    let pubsub_token = TokenBuilder::new("jane")
        .partner("acme")
        .stream()
        .sign(&partner.secret);
    let identifier = format!(r#"{{"channel":"RoomChannel","pubsub_token":"{pubsub_token}"}}"#);
    let mut room = CableClient::connect_url(
        &format!("ws://{}/cable", pipeline.edge.address),
        Some("actioncable-v1-json"),
    )
    .await;
    room.send_text(&json!({"command": "subscribe", "identifier": identifier}).to_string())
        .await;
    assert_eq!(
        room.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    let confirmed: Value = serde_json::from_str(&room.next_frame().await.unwrap()).unwrap();
    assert_eq!(confirmed["type"], "confirm_subscription");

    let message = event::with_data(
        event::created("acme", "c1", 1, "sam", &["jane"]),
        &json!({"text": "over HTTP"}),
    );
    let answer = publish(api.address, ACME_KEY, &json_of(&message)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    assert_eq!(counts.next_frame().await.unwrap(), count_frame(1));
    let pushed: Value = loop {
        let frame: Value = serde_json::from_str(&room.next_frame().await.unwrap()).unwrap();
        if frame["type"] != "ping" {
            break frame;
        }
    };
    assert_eq!(pushed["identifier"], identifier);
    assert_eq!(pushed["message"]["event"], "message.created");
    assert_eq!(pushed["message"]["data"], json!({"text": "over HTTP"}));
    assert_eq!(pushed["message"]["unread_count"], 1);

    api.running.stop().await;
    pipeline.stop().await;
}

/// An api started before its tables' topics exist is not ready: queries are answered
/// 503 not_ready with Retry-After, while publishing works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_its_tables_caught_up_queries_are_503_not_ready_and_publishing_works() {
    let (mut cluster, _) = cluster_with_keys(1);
    cluster.config.topics.read_receipts =
        format!("{}-not-yet", cluster.config.topics.read_receipts);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stage, address) = fanout_app::stages::spawn_api(
        &cluster.config,
        listener,
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .unwrap();
    for path in [
        "/v1/users/bob/unread_count",
        "/v1/conversations/c1/messages/1/receipts",
    ] {
        let answer = get(address, ACME_KEY, path).await;
        assert_eq!(
            (answer.status, answer.code()),
            (503, "not_ready"),
            "{}",
            answer.text
        );
        assert_eq!(answer.header("retry-after"), Some("2"));
    }
    let event = event::created("acme", "c1", 1, "ann", &["bob"]);
    assert_eq!(
        publish(address, ACME_KEY, &json_of(&event)).await.status,
        200
    );
    assert!(!stage.health.as_ref().unwrap().is_ready());
    shutdown.cancel();
    stage.task.await.unwrap().unwrap();
}
