//! Configuration and logging as an operator meets them, through the real `fanout`
//! binary: `check-config` and every role exit 64 naming the key before binding a port
//! or connecting to Kafka; `default-config` prints a file that checks clean; JSON logs
//! are JSON on every line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use fanout_app::config::{Config, Listen};
use fanout_kafka::KafkaSettings;
use fanout_tests::process::{DEV_ON_FREE_PORTS, Fanout, temp_dir, write_config};

/// Run with no inherited `FANOUT_*`/`RUST_LOG` surprises.
const FANOUT: Fanout = Fanout(env!("CARGO_BIN_EXE_fanout"));

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn check_config_exits_64_with_a_reason_naming_the_key() {
    let dir = temp_dir("config-cli");
    let cases = [
        // An unknown key, nested.
        (
            "[ingest.limits]\nmax_recipientz = 5\n",
            "ingest.limits.max_recipientz",
        ),
        // The wrong type.
        (
            "[edge]\nping_interval_ms = \"often\"\n",
            "edge.ping_interval_ms",
        ),
        // A bad value, found by validation.
        (
            "[router]\nrestore_timeout_ms = 0\n",
            "router.restore_timeout_ms",
        ),
        (
            "[edge]\ndrain_window_ms = 60000\n[shutdown]\ngrace_ms = 30000\n",
            "shutdown.grace_ms",
        ),
        (
            "[edge.partners.acme]\nsecrets = [{ secret = \"short\" }]\n",
            "edge.partners.acme.secrets",
        ),
        (
            "[kafka.consumer]\n\"session.timeout.mz\" = \"6000\"\n",
            r#"kafka.consumer."session.timeout.mz""#,
        ),
        ("[listen]\nadmin = \"0.0.0.0:8080\"\n", "listen.admin"),
    ];
    for (index, (text, key)) in cases.iter().enumerate() {
        let file = write(&dir, &format!("bad-{index}.toml"), text);
        let output = FANOUT.output(&["check-config", &file], &[]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{text}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&format!("{key}: ")),
            "{text}: the reason names {key}: {}",
            stderr(&output)
        );
    }

    // An environment override is checked too, and named by its variable.
    let good = write(&dir, "good.toml", "[kafka]\nbrokers = \"k1:9092\"\n");
    let output = FANOUT.output(
        &["check-config", &good],
        &[("FANOUT_ROUTER__MAX_IN_FLIGHT", "many")],
    );
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("router.max_in_flight: ")
            && stderr(&output).contains("FANOUT_ROUTER__MAX_IN_FLIGHT"),
        "{}",
        stderr(&output)
    );
    let output = FANOUT.output(&["check-config", &good], &[("FANOUT_ROUTR__GROUP_ID", "x")]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("routr"), "{}", stderr(&output));

    let missing = dir.join("missing.toml");
    let output = FANOUT.output(&["check-config", missing.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("does not exist"));

    let output = FANOUT.output(&["check-config", &good], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

#[test]
fn default_config_prints_the_documented_defaults_and_checks_clean() {
    let output = FANOUT.output(&["default-config"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text, fanout_app::config::DEFAULT_CONFIG_TOML);
    let dir = temp_dir("config-cli");
    let file = write(&dir, "default.toml", &text);
    let output = FANOUT.output(&["check-config", &file], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// A listener the test holds: a role that bound it would fail with "address in use",
/// and a role that connected to it as a broker would leave a connection to accept.
fn held_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

fn nobody_connected(listener: &TcpListener) -> bool {
    // The process has exited: any connection it opened is in the backlog by now.
    matches!(listener.accept(), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn every_role_refuses_a_bad_config_with_64_before_binding_or_connecting() {
    let dir = temp_dir("config-cli");
    let (edge_port, edge_address) = held_port();
    let (api_port, api_address) = held_port();
    let (admin_port, admin_address) = held_port();
    let (broker_port, broker_address) = held_port();
    let good = Config {
        kafka: KafkaSettings::new(&broker_address),
        listen: Listen {
            edge: edge_address.clone(),
            api: api_address.clone(),
            admin: admin_address,
        },
        ..Config::default()
    };
    let mut bad = good.clone();
    bad.edge.handshake_timeout_ms = 0;
    let bad_path = dir.join("bad.toml");
    write_config(&bad, &bad_path);
    let bad = bad_path.to_str().unwrap();
    for role in ["edge", "ingest", "router", "api"] {
        let output = FANOUT.output(&[role, "--config", bad], &[]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{role}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("edge.handshake_timeout_ms: must be positive"),
            "{role}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("binding"), "{}", stderr(&output));
        assert!(nobody_connected(&broker_port), "{role} connected to Kafka");
    }

    // The control: with a good config the edge does try to bind, and the held port
    // makes that fail, so the run above would have shown a bind before validation.
    let good_path = dir.join("good.toml");
    write_config(&good, &good_path);
    let output = FANOUT.output(&["edge", "--config", good_path.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("binding {edge_address}")),
        "{}",
        stderr(&output)
    );
    // And the api's, the same way.
    let output = FANOUT.output(&["api", "--config", good_path.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("binding {api_address}")),
        "{}",
        stderr(&output)
    );
    drop((edge_port, api_port, admin_port));
}

/// Runs `fanout dev` until it is ready, then SIGTERM; returns stdout's and stderr's
/// lines.
async fn dev_output(args: &[&str], env: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let mut args = args.to_vec();
    args.extend(DEV_ON_FREE_PORTS);
    args.extend(["--partitions", "1"]);
    // Debug level for fanout and the Kafka client library's bridged log records.
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "debug"));
    let mut dev = FANOUT.start(&args, &env);
    // Ready once the banner (or its JSON form) names the cable URL.
    dev.wait_for_stdout(|line| line.contains("cable")).await;
    dev.signal("TERM");
    let status = dev.wait_exit().await;
    assert!(status.success(), "dev mode exited with {status}");
    (dev.stdout_lines(), dev.stderr_lines())
}

fn assert_json_logs(stderr_lines: &[String]) {
    assert!(!stderr_lines.is_empty(), "nothing logged");
    for line in stderr_lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(event["level"].is_string(), "no level: {line}");
        assert!(event["message"].is_string(), "no message: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_every_output_line_json() {
    for (args, env) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("FANOUT_LOG_FORMAT", "json")]),
    ] {
        let (stdout, stderr) = dev_output(&args, &env).await;
        assert_json_logs(&stderr);
        assert!(
            stderr
                .iter()
                .any(|line| line.contains("SIGTERM") && line.contains("INFO")),
            "the shutdown is logged: {stderr:?}"
        );
        // The banner becomes one JSON object.
        for line in &stdout {
            let info: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("stdout not JSON ({error}): {line}"));
            assert!(info["cable_url"].is_string(), "{line}");
        }
    }

    // A fatal error is a JSON log line too.
    let dir = temp_dir("config-cli");
    let bad = write(&dir, "bad.toml", "[edge]\nping_interval_mz = 1\n");
    let output = FANOUT.output(&["--log-format", "json", "edge", "--config", &bad], &[]);
    assert_eq!(output.status.code(), Some(64));
    let lines: Vec<String> = stderr(&output).lines().map(str::to_owned).collect();
    assert_json_logs(&lines);
    assert!(lines.iter().any(|line| line.contains("ERROR")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_human_readable_by_default() {
    let (stdout, stderr) = dev_output(&[], &[]).await;
    assert!(
        stdout
            .iter()
            .any(|line| line.contains("fanout dev is running"))
    );
    let log_lines: Vec<&String> = stderr.iter().filter(|line| !line.is_empty()).collect();
    assert!(!log_lines.is_empty());
    for line in log_lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "a JSON line in text mode: {line}"
        );
    }
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("INFO") && line.contains("SIGTERM: shutting down")),
        "{stderr:?}"
    );
}
