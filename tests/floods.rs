//! Floods of refusals and poison do not become floods of log lines: 10 000 bad-token
//! connections to the edge (both protocols), 10 000 poison records to ingest and
//! 10 000 bad api requests each write at most `lines_per_window` lines per kind and
//! window plus summary lines, and the written lines and the summaries' counts add up to
//! exactly the counters, which count every event. This binary installs its own log
//! subscriber (JSON lines, every line kept) and reads what was written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use fanout_edge::auth::AuthError;
use fanout_kafka::LogLimits;
use fanout_tests::api::{RunningApi, request, start_api, with_api_keys};
use fanout_tests::*;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const FLOOD: u64 = 10_000;
/// Clients sending at once.
const SENDERS: u64 = 8;
/// A short window, so the test sees many windows end and waits at most 1 s for the last
/// summaries.
const LIMITS: LogLimits = LogLimits {
    lines_per_window: 10,
    window_seconds: 1,
};

/// The process's log capture, installed by the first test that asks (before
/// `TestCluster::start` would install the usual subscriber).
fn captured() -> &'static CapturedLog {
    static CAPTURED: OnceLock<CapturedLog> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = CapturedLog::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

/// The lines of one message, by reason: how many were written as themselves, and the
/// summaries ("<message>: N more like this in the last 1 s") with their N.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tally {
    written: u64,
    summaries: u64,
    summarized: u64,
}

fn tally(message: &str) -> BTreeMap<String, Tally> {
    let text = captured().text();
    let summary_prefix = format!("{message}: ");
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for line in text.lines() {
        let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let text = line["message"].as_str().unwrap_or_default();
        let reason = line["reason"].as_str().unwrap_or_default().to_owned();
        if text == message {
            tallies.entry(reason).or_default().written += 1;
        } else if let Some(rest) = text.strip_prefix(&summary_prefix) {
            let suppressed = line["suppressed"].as_u64().unwrap();
            assert_eq!(
                rest,
                format!("{suppressed} more like this in the last 1 s"),
                "{line}"
            );
            assert!(suppressed > 0, "{line}");
            assert_eq!(line["window_seconds"], 1, "{line}");
            let tally = tallies.entry(reason).or_default();
            tally.summaries += 1;
            tally.summarized += suppressed;
        }
    }
    tallies
}

/// Waits until every event of each reason in `expected` (its exact count) is either a
/// written line or in a summary, then checks the bounds: at most `lines_per_window`
/// written lines per reason and window (windows: at most one per second of the flood
/// and the wait, plus one), at least one summary, and the suppressed-lines counter
/// equal to the summaries' sum.
async fn assert_flood_logged(
    message: &str,
    expected: &BTreeMap<&str, u64>,
    started: Instant,
    suppressed_counter: impl Fn() -> u64,
) {
    let accounted = || {
        let tallies = tally(message);
        expected.iter().all(|(reason, count)| {
            tallies
                .get(*reason)
                .is_some_and(|tally| tally.written + tally.summarized >= *count)
        })
    };
    wait_until(
        &format!("every {message:?} written or summarized"),
        accounted,
    )
    .await;
    let windows = started.elapsed().as_secs() / LIMITS.window_seconds + 1;
    let tallies = tally(message);
    let mut summarized = 0;
    for (reason, count) in expected {
        let tally = &tallies[*reason];
        assert_eq!(
            tally.written + tally.summarized,
            *count,
            "{reason}: {tally:?}"
        );
        assert!(
            tally.written <= u64::from(LIMITS.lines_per_window) * windows,
            "{reason}: {tally:?} in at most {windows} windows"
        );
        assert!(tally.summaries > 0, "{reason}: {tally:?}");
        summarized += tally.summarized;
    }
    assert_eq!(
        tallies.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "only the flood's reasons"
    );
    assert_eq!(suppressed_counter(), summarized);
    eprintln!("{message}: {tallies:?} in {:?}", started.elapsed());
}

/// A refused connection attempt: ActionCable with the token in the query, or
/// `/realtime` with an `authrequest`.
async fn refused_attempt(address: SocketAddr, attempt: u64, forged: &str) {
    let token = if attempt % 4 < 2 { forged } else { "not-a-jwt" };
    if attempt.is_multiple_of(2) {
        let mut client = CableClient::connect(address, "alpha", token).await;
        let first = client.next_frame().await.unwrap();
        assert!(first.contains("unauthorized"), "{first}");
        while client.next_frame().await.is_some() {}
    } else {
        let mut client = RealtimeClient::connect(address).await;
        let reply = client.authenticate("alpha", token, "1").await;
        assert!(reply.contains(r#""success":false"#), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_writes_a_bounded_number_of_lines_and_exact_counters() {
    captured();
    let alpha = TestPartner::new("alpha");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&alpha));
    cluster.config.log = LIMITS;
    let edge = start_edge(&cluster.config).await;
    let address = edge.address;
    // Signed with another secret: a well-formed token that does not verify.
    let forged = TestPartner::new("alpha").token("mallory");

    let started = Instant::now();
    join_all((0..SENDERS).map(|sender| {
        let forged = forged.clone();
        tokio::spawn(async move {
            for attempt in (sender..FLOOD).step_by(SENDERS as usize) {
                refused_attempt(address, attempt, &forged).await;
            }
        })
    }))
    .await
    .into_iter()
    .for_each(|joined| joined.unwrap());

    let metrics = &edge.node.metrics;
    let reasons = [AuthError::InvalidSignature, AuthError::Malformed].map(AuthError::reason);
    let expected: BTreeMap<&str, u64> = reasons
        .into_iter()
        .map(|reason| (reason, metrics.auth_failure_count(reason)))
        .collect();
    assert_eq!(
        expected.values().collect::<Vec<_>>(),
        [&(FLOOD / 2), &(FLOOD / 2)],
        "{expected:?}"
    );
    assert_eq!(metrics.handshake_count("accepted"), 0);
    assert_flood_logged(
        "connection refused: unauthorized",
        &expected,
        started,
        || metrics.suppressed_log_line_count(),
    )
    .await;
    edge.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_poison_records_writes_a_bounded_number_of_lines_and_exact_counters() {
    captured();
    let acme = TestPartner::new("acme");
    let mut cluster = TestCluster::start(2, std::slice::from_ref(&acme));
    cluster.config.log = LIMITS;
    let config = cluster.config.clone();
    let (ingest, metrics) = start_ingest(&config);
    let producer = cluster.producer();

    let started = Instant::now();
    // Half not protobuf at all, half with a content-type ingest does not read.
    for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(500) {
        join_all(chunk.iter().map(|index| {
            let key = format!("k{index}");
            let headers = if index.is_multiple_of(2) {
                OwnedHeaders::new()
            } else {
                OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("text/plain"),
                })
            };
            let producer = &producer;
            let topic = &config.topics.message_events;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&key)
                            .payload(&[0x0a_u8, 0xff][..])
                            .headers(headers),
                        DEADLINE,
                    )
                    .await
                    .map_err(|(error, _)| error)
                    .unwrap();
            }
        }))
        .await;
    }

    let expected = BTreeMap::from([
        ("undecodable", FLOOD / 2),
        ("unsupported_content_type", FLOOD / 2),
    ]);
    wait_until("every poison record dead-lettered", || {
        expected
            .iter()
            .all(|(reason, count)| metrics.dead_letter_count(reason) >= *count)
    })
    .await;
    for (reason, count) in &expected {
        assert_eq!(metrics.dead_letter_count(reason), *count, "{reason}");
    }
    assert_eq!(metrics.accepted_count(), 0);
    assert_flood_logged("record sent to dead-letter", &expected, started, || {
        metrics.suppressed_log_line_count()
    })
    .await;
    ingest.stop().await;
}

/// One bad request: an unknown API key, or a body that is not JSON with a good one.
async fn bad_request(address: SocketAddr, attempt: u64) {
    if attempt.is_multiple_of(2) {
        let answer = request(
            address,
            "GET",
            "/v1/users/u1/unread_count",
            Some("not-a-live-key-at-all"),
            None,
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    } else {
        let answer = request(
            address,
            "POST",
            "/v1/events",
            Some("acme-key-0123456789abcdef"),
            Some("application/json"),
            "{\"event_id\":",
        )
        .await;
        assert_eq!((answer.status, answer.code()), (400, "invalid_json"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_api_requests_writes_a_bounded_number_of_lines_and_exact_counters() {
    captured();
    let acme = TestPartner::new("acme");
    let mut cluster = TestCluster::start(1, std::slice::from_ref(&acme));
    cluster.config.log = LIMITS;
    // The good key's bad bodies are refused for their content, not for the rate.
    cluster.config.api.requests_per_second = 1_000_000;
    with_api_keys(&mut cluster.config, "acme", &["acme-key-0123456789abcdef"]);
    let api = start_api(&cluster.config).await;
    let address = api.address;

    let started = Instant::now();
    join_all((0..SENDERS).map(|sender| {
        tokio::spawn(async move {
            for attempt in (sender..FLOOD).step_by(SENDERS as usize) {
                bad_request(address, attempt).await;
            }
        })
    }))
    .await
    .into_iter()
    .for_each(|joined| joined.unwrap());

    let requests = |route: &str, status: &str| {
        api.metric(
            "fanout_api_requests_total",
            &[("route", route), ("status", status)],
        ) as u64
    };
    let expected = BTreeMap::from([
        ("unauthorized", requests("unread_count", "401")),
        ("invalid_json", requests("publish", "400")),
    ]);
    assert_eq!(expected["unauthorized"], FLOOD / 2);
    assert_eq!(expected["invalid_json"], FLOOD / 2);
    assert_eq!(api.metric("fanout_api_events_total", &[]), 0.0);
    let suppressed =
        |api: &RunningApi| api.metric("fanout_api_suppressed_log_lines_total", &[]) as u64;
    assert_flood_logged("request refused", &expected, started, || suppressed(&api)).await;
    api.running.stop().await;
}
