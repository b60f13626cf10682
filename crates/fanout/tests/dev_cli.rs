//! The quick start as a newcomer runs it: the real `fanout` binary's `dev` mode, its
//! `--info-file`, `fanout produce` (protobuf and JSON) and `fanout token`, seen through
//! a real WebSocket client; SIGTERM stops dev mode with exit code 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");
const DEADLINE: Duration = Duration::from_secs(60);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Socket {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("actioncable-v1-json"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

/// The next text frame other than a ping.
async fn next_frame(socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("no frame before the deadline")
            .expect("socket closed")
            .unwrap();
        if let Message::Text(text) = message
            && !text.as_str().starts_with(r#"{"type":"ping""#)
        {
            return text.as_str().to_owned();
        }
    }
}

async fn subscribe(socket: &mut Socket) -> String {
    assert_eq!(next_frame(socket).await, r#"{"type":"welcome"}"#);
    socket
        .send(Message::Text(
            r#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#.into(),
        ))
        .await
        .unwrap();
    assert!(next_frame(socket).await.contains("confirm_subscription"));
    next_frame(socket).await
}

fn count_frame(count: u64) -> String {
    format!(
        r#"{{"identifier":"{{\"channel\":\"PartnerChannel\"}}","message":{{"type":"unread_count","count":{count}}}}}"#
    )
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn http_get(base_url: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn fanout(args: &[&str]) -> String {
    let output = tokio::time::timeout(DEADLINE, Command::new(FANOUT).args(args).output())
        .await
        .expect("fanout did not finish before the deadline")
        .unwrap();
    assert!(
        output.status.success(),
        "fanout {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Starts `fanout dev` on free ports and returns it with the facts it wrote.
async fn start_dev() -> (tokio::process::Child, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!(
        "fanout-dev-cli-{}-{}",
        std::process::id(),
        fanout_app::tools::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let info_path = dir.join("info.json");
    let mut dev = Command::new(FANOUT)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--partitions",
            "2",
            "--info-file",
        ])
        .arg(&info_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !info_path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dev mode never wrote its info file"
        );
        assert!(dev.try_wait().unwrap().is_none(), "dev mode exited early");
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
    assert_eq!(subscribe(&mut demo_user).await, count_frame(0));

    let created = [
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
    ];
    assert!(fanout(&created).await.contains("produced event"));
    assert_eq!(next_frame(&mut demo_user).await, count_frame(1));
    let created_json = [
        "produce",
        "--brokers",
        bootstrap,
        "--json",
        "created",
        "--partner",
        "demo",
        "--conversation",
        "c1",
        "--seq",
        "2",
        "--from",
        "alice",
        "--to",
        "demo-user",
    ];
    fanout(&created_json).await;
    assert_eq!(next_frame(&mut demo_user).await, count_frame(2));
    let read = [
        "produce",
        "--brokers",
        bootstrap,
        "conversation-read",
        "--partner",
        "demo",
        "--conversation",
        "c1",
        "--seq",
        "2",
        "--user",
        "demo-user",
    ];
    fanout(&read).await;
    assert_eq!(next_frame(&mut demo_user).await, count_frame(0));

    // The read and delete forms.
    let produce = |args: &[&str]| {
        let mut all = vec!["produce", "--brokers", bootstrap];
        all.extend_from_slice(args);
        all.iter()
            .map(|arg| (*arg).to_owned())
            .collect::<Vec<String>>()
    };
    for (args, count) in [
        (
            produce(&[
                "created",
                "--partner",
                "demo",
                "--conversation",
                "c1",
                "--seq",
                "3",
                "--from",
                "alice",
                "--to",
                "demo-user",
            ]),
            1,
        ),
        (
            produce(&[
                "read",
                "--partner",
                "demo",
                "--conversation",
                "c1",
                "--seq",
                "3",
                "--user",
                "demo-user",
            ]),
            0,
        ),
        (
            produce(&[
                "created",
                "--partner",
                "demo",
                "--conversation",
                "c2",
                "--seq",
                "1",
                "--from",
                "alice",
                "--to",
                "demo-user",
            ]),
            1,
        ),
        (
            produce(&[
                "deleted",
                "--partner",
                "demo",
                "--conversation",
                "c2",
                "--seq",
                "1",
                "--to",
                "demo-user",
            ]),
            0,
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fanout(&args).await;
        assert_eq!(
            next_frame(&mut demo_user).await,
            count_frame(count),
            "after {args:?}"
        );
    }

    // The admin port: alive, ready, and metrics that saw the traffic above.
    let admin_url = info["admin_url"].as_str().unwrap();
    assert_eq!(
        http_get(admin_url, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        http_get(admin_url, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    let (status, metrics) = http_get(admin_url, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "fanout_ingest_events_total{result=\"accepted\"} 7",
        "fanout_router_events_total{result=\"applied\"} 7",
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
    assert_eq!(http_get(admin_url, "/nope").await.0, 404);

    // A token minted by `fanout token` for another user opens that user's count.
    let token = fanout(&["token", "--secret", secret, "--user", "alice"]).await;
    let websocket_url = info["websocket_url"].as_str().unwrap();
    let mut alice = connect(&format!(
        "{websocket_url}/cable?jwt={}&partner=demo",
        token.trim()
    ))
    .await;
    assert_eq!(subscribe(&mut alice).await, count_frame(0));

    // SIGTERM: clients are told to come back later, and dev mode exits cleanly.
    let pid = dev.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(
        next_frame(&mut alice).await,
        r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
    );
    let status = tokio::time::timeout(DEADLINE, dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "dev mode exited with {status}");
    let banner = {
        let mut stdout = dev.stdout.take().unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .unwrap();
        text
    };
    assert!(
        banner.contains(cable_url),
        "the banner prints the URL: {banner}"
    );
    assert!(banner.contains(bootstrap));
}

/// Debian's kcat, installed with apt-get if it is missing.
fn ensure_kcat() {
    let present = std::process::Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return;
    }
    let lock_path = std::env::temp_dir().join("fanout-kcat-install.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "kcat"])
            .status()
    };
    if !install().is_ok_and(|status| status.success()) {
        let updated = std::process::Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .unwrap();
        assert!(updated.success(), "apt-get update failed");
        assert!(install().unwrap().success(), "apt-get install kcat failed");
    }
    lock.unlock().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_record_produced_by_kcat_goes_end_to_end() {
    ensure_kcat();
    let (_dev, info) = start_dev().await;
    let bootstrap = info["kafka_bootstrap"].as_str().unwrap();
    let mut demo_user = connect(info["cable_url"].as_str().unwrap()).await;
    assert_eq!(subscribe(&mut demo_user).await, count_frame(0));

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
    assert_eq!(next_frame(&mut demo_user).await, count_frame(1));
}
