//! `fanout bench` runs end to end at tiny sizes: the result JSON has its fields, the
//! numbers add up, the plot is written. Not a benchmark: nothing here is timed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use fanout_tests::process::Fanout;
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
    let written = run_bench(name, &[scenario], args, scenario);
    assert_eq!(written["scenario"], scenario);
    assert!(written["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(written["check"]["met"].is_boolean(), "{written}");
    written
}

/// Runs `fanout bench <command> --out-dir <a directory of its own> <args>`, checks that
/// it printed the JSON it wrote to `<stem>.json` and plotted `<stem>.svg`, and returns
/// the result.
fn run_bench(name: &str, command: &[&str], args: &[&str], stem: &str) -> Value {
    let dir = out_dir(name);
    let written = Fanout(env!("CARGO_BIN_EXE_fanout")).bench(command, &dir, args, stem);
    let plot = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..plot.len().min(80)]);
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
fn push_rate_has_a_latency_sample_per_push_and_its_ceiling() {
    ensure_perf();
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

    let per_event = &result["cpu"]["per_event"];
    assert_eq!(per_event["unit"], "push delivered", "{per_event}");
    assert_eq!(per_event["events"], received);
    assert_eq!(per_event["edges_us"].as_array().unwrap().len(), 1);
    assert!(per_event["total_us"].as_f64().unwrap() >= 0.0);
    assert_eq!(result["edge_writes"]["frames"], received);

    let ceiling = &result["ceiling"];
    assert_eq!(ceiling["pattern"], "push-rate");
    assert_eq!(ceiling["connections"]["subscribed"], 50, "{ceiling}");
    assert_eq!(ceiling["connections"]["failed"], 0, "{ceiling}");
    assert!(
        ceiling["pushes"]["received"].as_u64().unwrap() > 0,
        "{ceiling}"
    );
    let vs = &result["vs_ceiling"];
    for figure in ["pushes_per_second", "server_cpu_us_per_push"] {
        assert!(vs[figure]["edge"].is_number(), "{figure}: {vs}");
        assert!(vs[figure]["ceiling"].is_number(), "{figure}: {vs}");
    }
    assert!(
        vs["pushes_per_second"]["edge_over_ceiling"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // perf counts the socket writes (the test command installs it); /proc's syscw
    // misses sendto.
    assert!(
        result["edge_writes"]["syscw"].is_u64(),
        "{}",
        result["edge_writes"]
    );
    assert!(
        !result["edge_writes"]["counted_by"].is_null(),
        "{}",
        result["edge_writes"]
    );
    assert!(vs["frames_per_write_syscall"]["edge"].as_f64().unwrap() > 0.0);
    assert!(vs["frames_per_write_syscall"]["ceiling"].as_f64().unwrap() >= 1.0);
}

/// perf, which counts the socket writes of an edge and of the ceiling's server.
fn ensure_perf() {
    fanout_tests::ensure_debian_package("linux-perf", "perf", "--version");
}

/// Runs `fanout bench ceiling --pattern <pattern> <args>` and returns its result file.
fn ceiling(pattern: &str, args: &[&str]) -> Value {
    ensure_perf();
    let stem = format!("ceiling-{pattern}");
    let written = run_bench(&stem, &["ceiling", "--pattern", pattern], args, &stem);
    assert_eq!(written["scenario"], "ceiling");
    assert_eq!(written["pattern"], pattern);
    written
}

/// What every ceiling result must hold: its clients subscribed, what the server wrote
/// received and measured, its CPU per push and frames per write stated.
fn ceiling_is_sane(result: &Value, connections: u64) {
    let connected = &result["connections"];
    assert_eq!(connected["subscribed"], connections, "{connected}");
    assert_eq!(connected["failed"], 0, "{connected}");
    let pushes = &result["pushes"];
    let written = pushes["written"].as_u64().unwrap();
    let received = pushes["received"].as_u64().unwrap();
    assert!(received > 0, "{pushes}");
    assert_eq!(received, written, "{pushes}");
    assert_eq!(pushes["write_failures"], 0, "{pushes}");
    assert_eq!(result["latency"]["samples"], received);
    assert!(pushes["per_second"].as_f64().unwrap() > 0.0, "{pushes}");
    let cpu = &result["cpu"];
    for figure in ["server_us_per_push", "clients_us_per_push"] {
        assert!(cpu[figure].as_f64().unwrap() >= 0.0, "{figure}: {cpu}");
    }
    let writes = &result["writes"];
    assert_eq!(writes["frames"], written, "{writes}");
    assert!(writes["syscw"].is_u64(), "{writes}");
    // Each frame is one socket write of the server's own count, and of perf's.
    assert!(result["server_socket_writes"].as_u64().unwrap() >= written);
    assert!(!writes["counted_by"].is_null(), "{writes}");
    assert!(writes["sendto"].as_u64().unwrap() >= written, "{writes}");
    assert!(
        writes["frames_per_write_syscall"].as_f64().unwrap() >= 1.0,
        "{writes}"
    );
}

#[test]
fn ceiling_writes_push_rates_pattern_to_its_clients() {
    let result = ceiling(
        "push-rate",
        &[
            "--connections",
            "50",
            "--rate",
            "500",
            "--duration-seconds",
            "1",
        ],
    );
    ceiling_is_sane(&result, 50);
    let pushes = &result["pushes"];
    assert_eq!(pushes["due"], 500, "{pushes}");
    assert!(
        pushes["written"].as_u64().unwrap() + pushes["coalesced"].as_u64().unwrap() <= 500,
        "{pushes}"
    );
}

#[test]
fn ceiling_writes_group_messages_pattern_on_realtime_too() {
    for protocol in ["cable", "realtime"] {
        let result = ceiling(
            "group-message",
            &[
                "--connections",
                "40",
                "--messages",
                "2",
                "--protocol",
                protocol,
            ],
        );
        ceiling_is_sane(&result, 40);
        assert_eq!(result["protocol"], protocol);
        assert_eq!(result["pushes"]["written"], 80, "{protocol}");
        assert_eq!(result["messages"], 2);
    }
}

#[test]
fn scaling_runs_each_size_and_plots_latency_and_cpu_per_event() {
    let dir = out_dir("scaling");
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["bench", "scaling", "--out-dir"])
        .arg(&dir)
        .args([
            "--group-connections",
            "20",
            "--messages",
            "1",
            "--steady-rates",
            "100",
            "--steady-connections",
            "20",
            "--steady-seconds",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fanout bench scaling failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value =
        serde_json::from_slice(&std::fs::read(dir.join("scaling.json")).unwrap()).unwrap();
    let plot = std::fs::read_to_string(dir.join("scaling.svg")).unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..plot.len().min(80)]);
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{result}");
    for (point, scenario, work) in [
        (&points[0], "group-message", 20),
        (&points[1], "steady", 100),
    ] {
        assert_eq!(point["scenario"], scenario);
        assert_eq!(point["work"], work);
        assert!(point["error"].is_null(), "{point}");
        assert!(point["delivered"].as_u64().unwrap() > 0, "{point}");
        let per_event = &point["cpu"]["per_event"];
        assert_eq!(per_event["unit"], "user event", "{point}");
        assert!(per_event["ingest_us"].is_number(), "{point}");
        assert!(per_event["router_us"].is_number(), "{point}");
    }
    assert_eq!(points[0]["delivered"], 20);
    assert_eq!(points[0]["delivered_of_expected"], 1.0);
    let _ = std::fs::remove_dir_all(&dir);
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
fn scale_out_holds_every_connection_then_reaches_every_user_with_one_group_message() {
    let result = bench(
        "scale-out",
        &[
            "--connections",
            "300",
            "--edges",
            "2",
            "--workers",
            "2",
            "--duration-seconds",
            "1",
            // Several events make the one message, as 500k users take.
            "--recipients-per-event",
            "70",
        ],
    );
    all_subscribed(&result, 300);
    assert_eq!(result["workers"], 2);
    let edges = result["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    for edge in edges {
        assert_eq!(edge["connections"], 150, "{edge}");
        assert!(edge["rss_per_connection_bytes"].is_f64(), "{edge}");
        assert!(
            edge["rss_after_message_kib"].as_u64().unwrap() > 0,
            "{edge}"
        );
    }
    let pushes = &result["pushes"];
    assert_eq!(pushes["produced"], 5, "{pushes}");
    assert_eq!(pushes["expected"], 300, "{pushes}");
    assert_eq!(pushes["received"], 300, "{pushes}");
    assert_eq!(pushes["reached"], 300, "{pushes}");
    assert_eq!(result["latency"]["samples"], 300);
    assert_eq!(result["per_message"].as_array().unwrap().len(), 1);
    let cpu = &result["cpu"];
    assert!(
        cpu["ingest"].is_number() && cpu["router"].is_number(),
        "{cpu}"
    );
    assert_eq!(cpu["per_event"]["events"], 300, "{cpu}");
    let memory = &result["memory"];
    assert!(
        memory["used_peak_kib"].as_u64().unwrap() >= memory["used_at_start_kib"].as_u64().unwrap(),
        "{memory}"
    );
    assert!(memory["clients_rss_kib"].as_u64().unwrap() > 0, "{memory}");
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
    let cpu = &result["cpu"];
    assert!(
        cpu["ingest"].is_number() && cpu["router"].is_number(),
        "{cpu}"
    );
    assert_eq!(cpu["per_event"]["unit"], "user event", "{cpu}");
    assert_eq!(cpu["per_event"]["events"], 200, "{cpu}");
    assert!(result.get("ceiling").is_none(), "off unless --ceiling");
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
