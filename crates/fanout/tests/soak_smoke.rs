//! The soak and overload benches at small sizes, in the test command: the same
//! invariants as their full runs (docs/benchmarks.md), none of their timings.
//!
//! - soak: 1500 connections for 2 minutes, baseline at 45 s (the history window held to
//!   40 s, so that it is full by then), 5 % of the clients reconnecting each minute: the
//!   edge's RSS at the end within 5 % of the baseline's, no more open files, every
//!   client's count and stream equal to the bench's recount. (Under glibc's malloc the
//!   bound was 10 % for a while: a CI run measured +5.4 %, glibc keeping pages the
//!   history window's turnover freed; with mimalloc three runs passed 5 %, the one
//!   printed at +1.4 %. docs/benchmarks.md, Soak.)
//! - overload: an edge at `max_connections` 300 under a storm of 200 clients: every
//!   attempt refused with HTTP 503 and counted, every connected client kept and right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use fanout_tests::process::Fanout;
use serde_json::Value;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fanout-soak-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `fanout bench <scenario> --out-dir <dir> <args>`; it must exit 0 (it exits
/// non-zero naming any invariant that failed) and print what it wrote to
/// `<scenario>.json`, which is returned.
fn bench(scenario: &str, args: &[&str]) -> Value {
    let dir = out_dir(scenario);
    let written = Fanout(env!("CARGO_BIN_EXE_fanout")).bench(&[scenario], &dir, args, scenario);
    let _ = std::fs::remove_dir_all(&dir);
    written
}

/// Every check of the result held, and each one named in `invariants` is there.
fn all_met(result: &Value, invariants: usize) {
    let checks = result["checks"].as_array().unwrap();
    assert_eq!(checks.len(), invariants, "{result:#}");
    for check in checks {
        assert_eq!(check["met"], true, "{check}");
    }
}

#[test]
fn a_two_minute_soak_holds_memory_files_counts_and_streams() {
    let result = bench(
        "soak",
        &[
            "--connections",
            "1500",
            "--duration-seconds",
            "120",
            "--baseline-seconds",
            "45",
            "--history-max-age-ms",
            "40000",
            "--reconnect-per-minute",
            "0.05",
            "--sample-seconds",
            "2",
            "--rss-tolerance-percent",
            "5",
        ],
    );
    all_met(&result, 5);
    eprintln!(
        "soak smoke: edge RSS {} KiB at the baseline, {} KiB at the end ({:+.1} %)",
        result["baseline"]["rss_kib"],
        result["end"]["rss_kib"],
        result["rss_change_percent"].as_f64().unwrap()
    );
    let verdict = &result["verdict"];
    assert_eq!(verdict["count_clients"], 1350, "{verdict}");
    assert_eq!(verdict["stream_clients"], 150, "{verdict}");
    assert_eq!(verdict["counts_right"], 1500, "{verdict}");
    assert_eq!(verdict["streams_exact"], 150, "{verdict}");
    // 5 % of 1500 a minute for 2 minutes: 150 scheduled, each worker's share rounded.
    let reconnects = verdict["reconnects"].as_u64().unwrap();
    assert!((100..=250).contains(&reconnects), "{verdict}");
    assert_eq!(
        verdict["stream_events_received"], verdict["stream_events_expected"],
        "{verdict}"
    );
    let produced = &result["produced"];
    assert!(produced["messages"].as_u64().unwrap() > 0, "{produced}");
    assert!(produced["reads"].as_u64().unwrap() > 0, "{produced}");
    assert!(
        produced["notifications"].as_u64().unwrap() > 0,
        "{produced}"
    );
    assert_eq!(result["end"]["connected"], 1500);
    assert_eq!(result["baseline"]["connected"], 1500);
    assert!(result["baseline"]["seconds"].as_f64().unwrap() >= 45.0);
    assert!(result["samples"].as_array().unwrap().len() > 10);
}

#[test]
fn overload_refuses_the_storm_with_503_and_keeps_the_connected_right() {
    let result = bench(
        "overload",
        &[
            "--max-connections",
            "300",
            "--storm-clients",
            "200",
            "--retry-max-ms",
            "500",
            "--before-seconds",
            "5",
            "--storm-seconds",
            "10",
            "--rate",
            "200",
        ],
    );
    all_met(&result, 4);
    for refusals in result["refusals"].as_array().unwrap() {
        assert_eq!(refusals["clients"], 100, "{refusals}");
        assert!(refusals["refused"].as_u64().unwrap() > 0, "{refusals}");
        assert_eq!(refusals["accepted"], 0, "{refusals}");
        assert_eq!(refusals["other"], Value::Array(Vec::new()), "{refusals}");
        assert_eq!(
            refusals["time_to_refusal"]["samples"], refusals["refused"],
            "{refusals}"
        );
    }
    assert_eq!(result["counts_right"], 300);
    assert!(
        result["during_storm"]["latency"]["samples"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        result["before_storm"]["latency"]["samples"]
            .as_u64()
            .unwrap()
            > 0
    );
}
