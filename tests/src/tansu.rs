//! A real Kafka-protocol broker in its own process: tansu (crates.io, Apache-2.0), with
//! its in-memory storage engine. Installed into `$HOME/.cache/fanout/tools` by
//! `cargo install` the first time a test needs it (about 15 minutes on 2 cores), then
//! reused; `FANOUT_TANSU` names another binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VERSION: &str = "0.6.0";

fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME must be set");
    PathBuf::from(home).join(".cache/fanout/tools")
}

/// The tansu binary, installed if missing. Concurrent test processes wait for one
/// install through a lock file.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FANOUT_TANSU") {
        return PathBuf::from(path);
    }
    let tools = tools_dir();
    let binary = tools.join("bin/tansu");
    if binary.exists() {
        return binary;
    }
    std::fs::create_dir_all(&tools).unwrap();
    let lock = std::fs::File::create(tools.join(".tansu-install.lock")).unwrap();
    lock.lock().unwrap();
    if !binary.exists() {
        eprintln!(
            "installing tansu {VERSION} into {} (once per machine)",
            tools.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "install",
                &format!("tansu@{VERSION}"),
                "--locked",
                "--features",
                "dynostore",
                "--root",
            ])
            .arg(&tools)
            .env("CARGO_TARGET_DIR", tools.with_file_name("tansu-build"))
            .status()
            .expect("cargo must be on PATH to install tansu");
        assert!(status.success(), "cargo install tansu failed");
    }
    lock.unlock().unwrap();
    binary
}

/// A tansu broker process on a free loopback port; killed when dropped.
pub struct TansuBroker {
    child: Child,
    pub port: u16,
}

impl TansuBroker {
    pub fn start() -> Self {
        let binary = tansu_binary();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        let broker = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let output = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
