//! The quick start as a newcomer runs it: the real `fanout` binary's `dev` mode, its
//! `--info-file`, `fanout produce` (protobuf and JSON) and `fanout token`, seen through
//! a real WebSocket client; the RoomChannel example it prints, followed as printed;
//! SIGTERM stops dev mode with exit code 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use fanout_tests::process::{
    DEV_ON_FREE_PORTS, Fanout, FanoutProcess, http_get, temp_dir, wait_for_metric,
};
use fanout_tests::{CableClient, DEADLINE, StreamCheck, count_frame};
use serde_json::json;

const FANOUT: Fanout = Fanout(env!("CARGO_BIN_EXE_fanout"));

/// Connects to `url` as the quick start's client does, offering ActionCable's JSON.
async fn connect(url: &str) -> CableClient {
    CableClient::connect_url(url, Some("actioncable-v1-json")).await
}

/// Starts `fanout dev` on free ports and returns it with the facts it wrote.
async fn start_dev() -> (FanoutProcess, serde_json::Value) {
    let info_path = temp_dir("dev-cli").join("info.json");
    let mut args = DEV_ON_FREE_PORTS.to_vec();
    args.extend([
        "--partitions",
        "2",
        "--info-file",
        info_path.to_str().unwrap(),
    ]);
    let mut dev = FANOUT.start(&args, &[]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !info_path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dev mode never wrote its info file"
        );
        dev.assert_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The file is written in one go, but read it only once it parses.
    let info = loop {
        if let Ok(info) = serde_json::from_slice(&std::fs::read(&info_path).unwrap()) {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the info file never became valid JSON"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (dev, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_produce_and_token_work_end_to_end() {
    let (mut dev, info) = start_dev().await;
    let cable_url = info["cable_url"].as_str().unwrap();
    let bootstrap = info["kafka_bootstrap"].as_str().unwrap();
    let secret = info["secret"].as_str().unwrap();
    assert_eq!(info["partner"], "demo");
    assert_eq!(info["user"], "demo-user");
    assert!(cable_url.contains(info["token"].as_str().unwrap()));

    let mut demo_user = connect(cable_url).await;
    assert_eq!(demo_user.welcome_and_subscribe().await, count_frame(0));

    // Every event form, protobuf and JSON, each followed by the count it makes.
    let mut user_events = 0;
    for (json, kind, conversation, seq, count) in [
        (false, "created", "c1", "1", 1),
        (true, "created", "c1", "2", 2),
        (false, "conversation-read", "c1", "2", 0),
        (false, "created", "c1", "3", 1),
        (false, "read", "c1", "3", 0),
        (false, "created", "c2", "1", 1),
        (false, "deleted", "c2", "1", 0),
    ] {
        let mut args = vec!["produce", "--brokers", bootstrap];
        if json {
            args.push("--json");
        }
        args.extend([kind, "--partner", "demo"]);
        args.extend(["--conversation", conversation, "--seq", seq]);
        args.extend_from_slice(match kind {
            "created" => &["--from", "alice", "--to", "demo-user"][..],
            "deleted" => &["--to", "demo-user"],
            _ => &["--user", "demo-user"],
        });
        // A message is a user event for its recipient and one for its sender (her
        // other sessions see it); a read is the reader's, a delete its recipient's.
        user_events += if kind == "created" { 2 } else { 1 };
        assert!(FANOUT.stdout_of(&args).await.contains("produced event"));
        assert_eq!(
            demo_user.next_frame().await,
            Some(count_frame(count)),
            "after {args:?}"
        );
    }

    // The admin port: alive, ready, and metrics that saw the traffic above.
    let admin = info["admin_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    assert_eq!(
        http_get(admin, "/healthz").await,
        Some((200, "ok\n".to_owned()))
    );
    assert_eq!(
        http_get(admin, "/readyz").await,
        Some((200, "ready\n".to_owned()))
    );
    // alice's user events may be on a partition the router reaches after demo-user's.
    wait_for_metric(
        admin.parse().unwrap(),
        &format!("fanout_router_events_total{{result=\"applied\"}} {user_events}"),
    )
    .await;
    let (status, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for expected in [
        "fanout_ingest_events_total{result=\"accepted\"} 7",
        "fanout_edge_pushes_total",
        "fanout_edge_delivery_latency_seconds_bucket",
        "fanout_router_restore_duration_seconds",
        "fanout_ingest_dead_letters_total{reason=\"undecodable\"} 0",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    assert!(!metrics.contains(info["token"].as_str().unwrap()));
    // What a live process exposes, with series from the traffic above, is as
    // docs/metrics.md says: documented, same type and labels, bounded labels.
    let families = fanout_tests::metrics_doc::parse_exposition(&metrics);
    assert!(families.contains_key("fanout_edge_connections"));
    let problems = fanout_tests::metrics_doc::problems(&families);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(http_get(admin, "/nope").await.unwrap().0, 404);

    // A token minted by `fanout token` for another user opens that user's count.
    let token = FANOUT
        .stdout_of(&["token", "--secret", secret, "--user", "alice"])
        .await;
    let websocket_url = info["websocket_url"].as_str().unwrap();
    let mut alice = connect(&format!(
        "{websocket_url}/cable?jwt={}&partner=demo",
        token.trim()
    ))
    .await;
    assert_eq!(alice.welcome_and_subscribe().await, count_frame(0));

    // SIGTERM: clients are told to come back later, and dev mode exits cleanly.
    dev.signal("TERM");
    assert_eq!(
        alice.next_frame().await.as_deref(),
        Some(r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#)
    );
    let status = dev.wait_exit().await;
    assert!(status.success(), "dev mode exited with {status}");
    let banner = dev.stdout_lines().join("\n");
    assert!(
        banner.contains(cable_url),
        "the banner prints the URL: {banner}"
    );
    assert!(banner.contains(bootstrap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_a_room_channel_example_that_works_as_printed() {
    let (mut dev, info) = start_dev().await;
    let websocket_url = info["websocket_url"].as_str().unwrap();
    let bootstrap = info["kafka_bootstrap"].as_str().unwrap();
    let pubsub_token = info["pubsub_token"].as_str().unwrap();
    let token = info["token"].as_str().unwrap();
    assert_ne!(
        pubsub_token, token,
        "the connection token is spent by its first use"
    );

    // The banner's example: a URL naming the partner and no token, and a frame.
    let printed = |prefix: &'static str| move |line: &str| line.trim_start().starts_with(prefix);
    let open_line = dev.wait_for_stdout(printed("open ws://")).await;
    let room_url = open_line.trim_start().strip_prefix("open ").unwrap();
    assert_eq!(room_url, format!("{websocket_url}/cable?partner=demo"));
    assert_eq!(room_url, info["room_url"]);
    let send_line = dev.wait_for_stdout(printed("and send {")).await;
    let subscribe = send_line.trim_start().strip_prefix("and send ").unwrap();
    assert_eq!(subscribe, info["room_subscribe"]);
    // Chatwoot's frame, its identifier with the printed pubsub_token.
    let identifier = format!(r#"{{"channel":"RoomChannel","pubsub_token":"{pubsub_token}"}}"#);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(subscribe).unwrap(),
        json!({"command": "subscribe", "identifier": identifier})
    );

    // Followed as printed: open, send, confirmed.
    let mut client = connect(room_url).await;
    assert_eq!(
        client.next_frame().await.as_deref(),
        Some(r#"{"type":"welcome"}"#)
    );
    client.send_text(subscribe).await;
    let frame = |text: Option<String>| -> serde_json::Value {
        serde_json::from_str(&text.expect("a frame")).unwrap()
    };
    assert_eq!(
        frame(client.next_frame().await),
        json!({"identifier": identifier, "type": "confirm_subscription"})
    );

    // A message for the demo user, with data: the event, the data as it was put in.
    let data = r#"{"text":"hello"}"#;
    let produce = [
        "produce",
        "--brokers",
        bootstrap,
        "created",
        "--partner",
        "demo",
        "--conversation",
        "c1",
        "--seq",
        "1",
        "--from",
        "alice",
        "--to",
        "demo-user",
        "--message-id",
        "hello-1",
        "--data",
        data,
    ];
    assert!(FANOUT.stdout_of(&produce).await.contains("produced event"));
    let event = frame(client.next_frame().await);
    assert_eq!(event["identifier"].as_str(), Some(identifier.as_str()));
    StreamCheck::new().next(
        &event["message"],
        json!({"event": "message.created", "data": {"text": "hello"}, "conversation_id": "c1",
            "seq": 1, "message_id": "hello-1", "sender": "alice", "unread_count": 1}),
    );

    dev.signal("TERM");
    let status = dev.wait_exit().await;
    assert!(status.success(), "dev mode exited with {status}");
}

/// The api's lines of the banner, run as printed: the `curl` publishes a message to the
/// demo user, and the count read back over HTTP (and pushed on a socket) is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_an_api_curl_that_works_as_printed() {
    let (mut dev, info) = start_dev().await;
    let api_url = info["api_url"].as_str().unwrap();
    let api_key = info["api_key"].as_str().unwrap();
    assert!(api_key.len() >= 24);
    let curl_line = dev
        .wait_for_stdout(|line| line.trim_start().starts_with("curl -sS -X POST"))
        .await;
    assert_eq!(curl_line.trim(), info["api_curl"]);
    assert!(curl_line.contains(api_url) && curl_line.contains(api_key));
    let mut demo_user = connect(info["cable_url"].as_str().unwrap()).await;
    assert_eq!(demo_user.welcome_and_subscribe().await, count_frame(0));

    fanout_tests::ensure_debian_package("curl", "curl", "--version");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(curl_line.trim())
        .output()
        .expect("sh and curl run the printed line");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {output:?}"));
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(demo_user.next_frame().await.unwrap(), count_frame(1));

    let address: std::net::SocketAddr = api_url.strip_prefix("http://").unwrap().parse().unwrap();
    let count = fanout_tests::api::wait_for_answer(
        address,
        api_key,
        "/v1/users/demo-user/unread_count",
        |body| body["count"] == 1,
    )
    .await;
    assert_eq!(
        count,
        json!({"partner": "demo", "user": "demo-user", "count": 1})
    );

    dev.signal("TERM");
    let status = dev.wait_exit().await;
    assert!(status.success(), "dev mode exited with {status}");
}

/// Debian's kcat, installed with apt-get if it is missing.
fn ensure_kcat() {
    fanout_tests::ensure_debian_package("kcat", "kcat", "-V");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_record_produced_by_kcat_goes_end_to_end() {
    ensure_kcat();
    let (_dev, info) = start_dev().await;
    let bootstrap = info["kafka_bootstrap"].as_str().unwrap();
    let mut demo_user = connect(info["cable_url"].as_str().unwrap()).await;
    assert_eq!(demo_user.welcome_and_subscribe().await, count_frame(0));

    // Exactly the README's command.
    let record = r#"{"eventId":"k1","partner":"demo","occurredAtMs":"1700000000000","messageCreated":{"conversationId":"c1","seq":"1","messageId":"m1","sender":"alice","recipients":["demo-user"]}}"#;
    let mut kcat = std::process::Command::new("kcat")
        .args([
            "-P",
            "-b",
            bootstrap,
            "-t",
            "message-events",
            "-k",
            "c1",
            "-H",
            "content-type=application/json",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = kcat.stdin.take().unwrap();
        writeln!(stdin, "{record}").unwrap();
    }
    assert!(kcat.wait().unwrap().success());
    assert_eq!(demo_user.next_frame().await, Some(count_frame(1)));
}
