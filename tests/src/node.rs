//! The Node.js scripts under `tests/js`, each run as a child process that reports what
//! its client saw as one JSON object per line on stdout and reads commands, if any, as
//! JSON lines on stdin. npm installs their packages (from tests/js/package-lock.json)
//! if they are missing.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::DEADLINE;

/// The npm packages the scripts use; `ensure_node_modules` installs them all.
const PACKAGES: &[&str] = &[
    "@rails/actioncable",
    "@anycable/web",
    "ws",
    "playwright-core",
];

pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Installs the scripts' npm packages with `npm ci` unless they are all there already.
/// Test processes running at once (nextest) take turns through a lock file, so that
/// one `npm ci` does not delete what another is writing.
pub fn ensure_node_modules() {
    let dir = js_dir();
    let installed = || {
        PACKAGES.iter().all(|package| {
            dir.join("node_modules")
                .join(package)
                .join("package.json")
                .exists()
        })
    };
    if installed() {
        return;
    }
    let lock_path = std::env::temp_dir().join("fanout-npm-ci.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    if !installed() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|error| {
                panic!("npm (with Node.js) must be installed to run the JS clients: {error}")
            });
        assert!(status.success(), "npm ci failed in {}", dir.display());
        assert!(
            installed(),
            "npm ci did not install all of {PACKAGES:?} in {}",
            dir.display()
        );
    }
    lock.unlock().unwrap();
}

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed with apt-get (as root) if it is missing. Never a browser
/// build downloaded by npm: this machine reaches only package registries.
pub fn ensure_chromium() {
    let works = || {
        std::process::Command::new(CHROMIUM)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if works() {
        return;
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("running `id -u`");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "{CHROMIUM} is missing, and installing Debian's chromium needs root: \
         run `apt-get install chromium` as root"
    );
    let lock_path = std::env::temp_dir().join("fanout-chromium-install.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    if !works() {
        let install = || {
            std::process::Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium"])
                .status()
        };
        if !install().is_ok_and(|status| status.success()) {
            let updated = std::process::Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .expect("apt-get must be there to install chromium");
            assert!(updated.success(), "apt-get update failed");
            assert!(
                install().unwrap().success(),
                "apt-get install chromium failed"
            );
        }
        assert!(works(), "{CHROMIUM} --version fails after installing it");
    }
    lock.unlock().unwrap();
}

/// A running `node tests/js/<script>`.
pub struct NodeScript {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeScript {
    /// Starts `node tests/js/<script> <args>`; its stderr goes to the test's.
    pub fn spawn(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg(js_dir().join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("node must be installed to run {script}: {error}"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next event the script reported, within `deadline`.
    pub async fn next_event_within(&mut self, deadline: Duration) -> serde_json::Value {
        let line = tokio::time::timeout(deadline, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the script reported nothing within {deadline:?}"))
            .unwrap()
            .expect("the script exited early");
        serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("the script reported {line:?}, not JSON: {error}"))
    }

    /// The next event the script reported.
    pub async fn next_event(&mut self) -> serde_json::Value {
        self.next_event_within(DEADLINE).await
    }

    /// Fails if the script reports anything, or exits, during `window`.
    pub async fn expect_no_event_for(&mut self, window: Duration) {
        if let Ok(line) = tokio::time::timeout(window, self.lines.next_line()).await {
            panic!("expected nothing for {window:?}, the script reported {line:?}");
        }
    }

    /// Writes `command` as one line to the script's stdin.
    pub async fn send(&mut self, command: &serde_json::Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let mut line = command.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes the script's stdin, which tells it to disconnect and exit, and expects
    /// it to exit successfully.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the script did not exit after its stdin closed")
            .unwrap();
        assert!(status.success(), "the script exited with {status}");
    }
}

/// A script's reports, each naming its source (a connection, a subscription) in the
/// field `key`, taken source by source: reports of different sources interleave in any
/// order, and each source's are checked in their own order.
pub struct BySource {
    pub script: NodeScript,
    key: &'static str,
    /// The source whose every report is a failure (the page's errors).
    failure: Option<&'static str>,
    pending: HashMap<String, VecDeque<serde_json::Value>>,
}

impl BySource {
    pub fn new(script: NodeScript, key: &'static str) -> Self {
        Self {
            script,
            key,
            failure: None,
            pending: HashMap::new(),
        }
    }

    /// Fails the test as soon as `source` reports anything.
    pub fn failing_on(mut self, source: &'static str) -> Self {
        self.failure = Some(source);
        self
    }

    /// The next report of `source`, without its `key`.
    pub async fn next(&mut self, source: &str) -> serde_json::Value {
        if let Some(report) = self.pending.get_mut(source).and_then(VecDeque::pop_front) {
            return report;
        }
        loop {
            let mut report = self.script.next_event().await;
            let report_source = match report
                .as_object_mut()
                .and_then(|fields| fields.remove(self.key))
            {
                Some(serde_json::Value::String(name)) => name,
                _ => panic!("a report without a {:?}: {report}", self.key),
            };
            assert_ne!(
                Some(report_source.as_str()),
                self.failure,
                "the script reported a failure: {report}"
            );
            if report_source == source {
                return report;
            }
            self.pending
                .entry(report_source)
                .or_default()
                .push_back(report);
        }
    }

    /// Finishes the script (as [`NodeScript::finish`]) and expects no report left
    /// unread.
    pub async fn finish(self) {
        self.script.finish().await;
        for (source, reports) in &self.pending {
            assert!(reports.is_empty(), "unread {source} reports: {reports:?}");
        }
    }
}
