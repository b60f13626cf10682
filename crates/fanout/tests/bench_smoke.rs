//! `fanout bench` runs end to end at tiny sizes: the result JSON has its fields, the
//! numbers add up, the plot is written. Not a benchmark: nothing here is timed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn out_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("fanout-bench-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `fanout bench <scenario> <args>` and returns its result file.
fn bench(scenario: &str, args: &[&str]) -> Value {
    bench_in(scenario, scenario, args)
}

/// As [`bench`], with an output directory of its own (`name`): tests run at once, and
/// two runs of one scenario must not share one.
fn bench_in(name: &str, scenario: &str, args: &[&str]) -> Value {
    let dir = out_dir(name);
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["bench", scenario, "--out-dir"])
        .arg(&dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fanout bench {scenario} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{scenario}.json"))).unwrap())
            .unwrap();
    assert_eq!(printed, written);
    let plot = std::fs::read_to_string(dir.join(format!("{scenario}.svg"))).unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..plot.len().min(80)]);
    assert_eq!(written["scenario"], scenario);
    assert!(written["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(written["check"]["met"].is_boolean(), "{written}");
    let _ = std::fs::remove_dir_all(&dir);
    written
}

fn all_subscribed(result: &Value, connections: u64) {
    let connected = &result["connections"];
    assert_eq!(connected["subscribed"], connections, "{connected}");
    assert_eq!(connected["failed"], 0, "{connected}");
    assert_eq!(result["handshake_latency"]["samples"], connections);
}

#[test]
fn idle_over_two_workers_reports_rss_per_connection() {
    let result = bench(
        "idle",
        &[
            "--connections",
            "200",
            "--workers",
            "2",
            "--duration-seconds",
            "1",
        ],
    );
    all_subscribed(&result, 200);
    assert_eq!(result["workers"], 2);
    let edge = &result["edges"][0];
    assert_eq!(edge["connections"], 200);
    assert!(edge["rss_baseline_kib"].as_u64().unwrap() > 0);
    assert!(result["rss_per_connection_bytes"].as_f64().unwrap() > 0.0);
}

#[test]
fn push_rate_has_a_latency_sample_per_push() {
    let result = bench(
        "push-rate",
        &["--connections", "50", "--duration-seconds", "1"],
    );
    all_subscribed(&result, 50);
    let received = result["pushes"]["received"].as_u64().unwrap();
    assert!(received > 0, "{result}");
    assert!(received <= result["pushes"]["produced"].as_u64().unwrap());
    assert_eq!(result["latency"]["samples"], received);
    assert!(result["pushes"]["per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn connect_storm_counts_handshakes() {
    let result = bench(
        "connect-storm",
        &["--connections", "300", "--protocol", "realtime"],
    );
    all_subscribed(&result, 300);
    assert!(
        result["connections"]["handshakes_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn group_message_reaches_every_socket_through_the_router() {
    let result = bench(
        "group-message",
        &["--connections", "100", "--messages", "2"],
    );
    all_subscribed(&result, 100);
    assert_eq!(result["pushes"]["expected"], 200);
    assert_eq!(result["pushes"]["received"], 200);
    assert_eq!(result["latency"]["samples"], 200);
    assert_eq!(result["per_message"].as_array().unwrap().len(), 2);
}

#[test]
fn stream_measures_each_message_created_event_on_every_socket() {
    for protocol in ["cable", "realtime"] {
        let result = bench_in(
            &format!("stream-{protocol}"),
            "stream",
            &[
                "--connections",
                "60",
                "--messages",
                "2",
                "--data-bytes",
                "1024",
                "--protocol",
                protocol,
            ],
        );
        all_subscribed(&result, 60);
        assert_eq!(result["pushes"]["expected"], 120, "{protocol}");
        assert_eq!(result["pushes"]["received"], 120, "{protocol}");
        assert_eq!(result["latency"]["samples"], 120, "{protocol}");
    }
}

#[test]
fn group_message_with_events_still_measures_the_counts() {
    let result = bench_in(
        "group-message-events",
        "group-message",
        &["--connections", "50", "--messages", "2", "--events"],
    );
    all_subscribed(&result, 50);
    assert_eq!(result["pushes"]["received"], 100);
    assert_eq!(result["latency"]["samples"], 100);
}

#[test]
fn reconnect_storm_brings_every_client_back_without_a_gap_or_a_repeat() {
    let result = bench(
        "reconnect-storm",
        &[
            "--connections",
            "40",
            "--rate",
            "100",
            "--duration-seconds",
            "2",
            "--data-bytes",
            "256",
        ],
    );
    all_subscribed(&result, 40);
    assert_eq!(result["protocol"], "realtime");
    let storm = &result["reconnect_storm"];
    let clients = &storm["clients"];
    assert_eq!(clients["dropped"], 40, "{clients}");
    assert_eq!(clients["resubscribed"], 40, "{clients}");
    assert_eq!(clients["gaps"], 0, "{clients}");
    assert_eq!(clients["repeats"], 0, "{clients}");
    let recovered = clients["recovered"].as_u64().unwrap();
    assert_eq!(
        recovered + clients["not_recovered"].as_u64().unwrap(),
        40,
        "{clients}"
    );
    assert_eq!(storm["recovery"]["samples"], recovered);
    assert!(storm["restart"]["kill_to_ready_seconds"].as_f64().unwrap() > 0.0);
    assert!(storm["produced"].as_u64().unwrap() > 0);
    let memory = &storm["memory"];
    assert!(memory["accounted_bytes_per_event"].as_f64().unwrap() > 256.0);
    assert!(memory["samples"].as_array().unwrap().len() >= 2);
    assert!(!storm["edge_resumes"].as_array().unwrap().is_empty());
}

#[test]
fn publish_checks_every_acknowledged_event_against_the_topic() {
    let result = bench(
        "publish",
        &[
            "--connections",
            "2",
            "--duration-seconds",
            "1",
            "--query-seconds",
            "1",
            "--warm-up-seconds",
            "0",
            "--receipts",
            "5",
            "--users",
            "50",
            "--conversations",
            "4",
            "--partitions",
            "2",
            "--user-partitions",
            "4",
        ],
    );
    let check = &result["check"];
    assert_eq!(check["met"], true, "{check}");
    assert!(check["accepted_events"].as_u64().unwrap() > 0);
    assert_eq!(check["message_events_records"], check["accepted_events"]);
    assert_eq!(check["repeated_positions"], 0);
    for phase in result["publish"].as_array().unwrap() {
        assert!(phase["events"].as_u64().unwrap() > 0, "{phase}");
    }
    for route in result["queries"].as_array().unwrap() {
        assert_eq!(route["wrong"], 0, "{route}");
    }
    assert_eq!(result["receipt_on_socket"]["received"], 5);
}

#[test]
fn table_reads_every_users_count_back_into_a_new_edge() {
    let result = bench(
        "table",
        &[
            "--users",
            "20000",
            "--partitions",
            "8",
            "--settle-seconds",
            "0",
        ],
    );
    let check = &result["check"];
    assert_eq!(check["keys_passed"], true, "{check}");
    assert_eq!(check["table_keys"], 20000, "{check}");
    assert_eq!(check["records_applied"], 20000, "{check}");
    assert_eq!(result["produced"]["acknowledged"], 20000);
    assert_eq!(result["produced"]["records_in_topic"], 20000);
    assert_eq!(result["produced"]["deleted_from"], serde_json::json!([]));
    for edge in ["baseline", "loaded"] {
        let run = &result[edge];
        assert!(run["rss_ready_kib"].as_u64().unwrap() > 0, "{run}");
        assert!(run["ready_seconds"].as_f64().unwrap() > 0.0, "{run}");
    }
    assert!(result["rss_per_user_bytes"].is_number());
    assert!(check["catch_up"]["measured"].is_number());
    assert!(check["rss_per_user"]["met"].is_boolean());
}
