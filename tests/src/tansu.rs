//! A real Kafka-protocol broker in its own process: tansu (crates.io, Apache-2.0), with
//! its SQLite storage engine in a directory of its own, so that it keeps its data
//! across a restart. Installed into `$HOME/.cache/fanout/tools/tansu-0.6.0-libsql` by
//! `cargo install` the first time a test needs it (about 15 minutes on 2 cores), then
//! reused; `TEST_TANSU` names another binary.
//!
//! Not the in-memory engine: tansu 0.6's memory engine answers a fetch from an offset
//! inside a record batch with the *next* batch, silently skipping the rest of the batch
//! (see `broker_serves_fetches_from_mid_batch_offsets` in `real_broker.rs`). A consumer
//! resuming from a committed offset lands mid-batch all the time, so on that engine
//! every handover loses records, whatever the client does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VERSION: &str = "0.6.0";
/// `libsql` for the SQLite engine the tests use; `dynostore` for the memory engine.
const FEATURES: &str = "dynostore,libsql";

fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME must be set");
    PathBuf::from(home).join(format!(".cache/fanout/tools/tansu-{VERSION}-libsql"))
}

/// The tansu binary, installed if missing. Concurrent test processes wait for one
/// install through a lock file.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_TANSU") {
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
                FEATURES,
                "--root",
            ])
            .arg(&tools)
            .env("CARGO_TARGET_DIR", tansu_build_dir())
            .status()
            .expect("cargo must be on PATH to install tansu");
        assert!(status.success(), "cargo install tansu failed");
    }
    lock.unlock().unwrap();
    binary
}

fn tansu_build_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME must be set");
    PathBuf::from(home).join(".cache/fanout/tansu-build")
}

/// A tansu broker process on a free loopback port, its data in a directory of its own;
/// killed and its directory removed when dropped.
pub struct TansuBroker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl TansuBroker {
    pub fn start() -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!(
            "fanout-tansu-{}-{port}",
            fanout_app::tools::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            child: None,
            port,
            dir,
        };
        broker.restart();
        broker
    }

    /// Stops the broker abruptly (SIGKILL): in-flight requests fail, clients see it go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same data, after [`kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "tansu is already running");
        let binary = tansu_binary();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory: tansu 0.6 reads `sqlite:///abs/path`
            // as relative too.
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
