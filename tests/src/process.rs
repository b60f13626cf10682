//! The `fanout` binary as an operator runs it: a config written by serialising
//! [`Config`], the binary run with none of this process's `FANOUT_*` variables, its
//! stdout and stderr collected line by line, signals sent to it, and its admin port
//! asked for readiness and metrics.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fanout_app::config::Config;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::DEADLINE;

/// A directory of the test's own, `fanout-<name>-<pid>-<random>` under the system's
/// temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fanout-{name}-{}-{}",
        std::process::id(),
        fanout_app::tools::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `config` to `path` as the TOML file a role reads with `--config`.
pub fn write_config(config: &Config, path: &Path) {
    let text = toml::to_string(config).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `fanout dev` on free ports: the arguments before any of the test's own.
pub const DEV_ON_FREE_PORTS: [&str; 7] = [
    "dev",
    "--listen",
    "127.0.0.1:0",
    "--api-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// The `fanout` binary: `Fanout(env!("CARGO_BIN_EXE_fanout"))` in the tests of the
/// crate that builds it.
#[derive(Debug, Clone, Copy)]
pub struct Fanout(pub &'static str);

impl Fanout {
    /// Runs `fanout bench <command> --out-dir <dir> <args>` (logging at warn); it must
    /// exit 0 (a scenario exits non-zero naming an invariant that failed) and print the
    /// JSON it wrote to `<dir>/<stem>.json`, which is returned.
    pub fn bench(
        self,
        command: &[&str],
        dir: &Path,
        args: &[&str],
        stem: &str,
    ) -> serde_json::Value {
        let mut bench = vec!["bench"];
        bench.extend_from_slice(command);
        let dir_arg = dir.to_str().expect("a UTF-8 path");
        bench.extend_from_slice(&["--out-dir", dir_arg]);
        bench.extend_from_slice(args);
        let output = self
            .command(&bench, &[("RUST_LOG", "warn")])
            .output()
            .expect("running fanout bench");
        assert!(
            output.status.success(),
            "fanout bench {} failed:\n{}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("fanout bench prints JSON");
        let file = dir.join(format!("{stem}.json"));
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&file).unwrap_or_else(|error| panic!("{}: {error}", file.display())),
        )
        .expect("the result file is JSON");
        assert_eq!(printed, written, "what it printed is what it wrote");
        written
    }

    /// The binary with `args` and `env`, and without this process's `FANOUT_*`
    /// variables and `RUST_LOG`.
    pub fn command(self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut command = std::process::Command::new(self.0);
        command.args(args).env_remove("RUST_LOG");
        for (key, _) in std::env::vars() {
            if key.starts_with("FANOUT_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        command
    }

    /// Runs it to the end.
    pub fn output(self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    /// Runs it to the end, which must be a success within the deadline: its stdout.
    pub async fn stdout_of(self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::from(self.command(args, &[]));
        let output = tokio::time::timeout(DEADLINE, command.output())
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

    /// Starts it, its stdout and stderr collected.
    pub fn start(self, args: &[&str], env: &[(&str, &str)]) -> FanoutProcess {
        FanoutProcess::spawn(self.command(args, env), args, None)
    }

    /// [`Self::start`], each stderr line also appended to `log` (to read after a
    /// failure, and across restarts).
    pub fn start_logging_to(
        self,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> FanoutProcess {
        let file = append_to(log);
        FanoutProcess::spawn(self.command(args, env), args, Some(file))
    }

    /// [`Self::start_logging_to`], inside the network namespace `netns` (`ip netns exec`
    /// execs the binary, so the process is fanout itself, to signal and kill).
    pub fn start_in_netns(
        self,
        netns: &crate::netns::Netns,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> FanoutProcess {
        let file = append_to(log);
        // The same arguments and environment as `self.command`, behind `ip netns exec`.
        let direct = self.command(args, env);
        let mut command = netns.command(self.0);
        command.args(direct.get_args());
        for (key, value) in direct.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let name = format!("{} (in {})", args.join(" "), netns.name());
        FanoutProcess::spawn(command, &[&name], Some(file))
    }
}

/// Lines of a child's output, as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn read_from(
        &self,
        reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        mut copy: Option<std::fs::File>,
    ) -> JoinHandle<()> {
        let lines = self.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(reader).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(file) = &mut copy {
                    let _ = writeln!(file, "{line}");
                }
                lines.0.lock().unwrap().push(line);
            }
        })
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// `log`, opened to append to (created if missing).
fn append_to(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|error| panic!("{}: {error}", log.display()))
}

/// A running `fanout` process.
pub struct FanoutProcess {
    /// `fanout <args>`, for failure messages.
    name: String,
    child: Child,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl FanoutProcess {
    fn spawn(
        command: std::process::Command,
        args: &[&str],
        stderr_copy: Option<std::fs::File>,
    ) -> Self {
        let mut command = tokio::process::Command::from(command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stdout = Lines::default();
        let stderr = Lines::default();
        let readers = vec![
            stdout.read_from(child.stdout.take().unwrap(), None),
            stderr.read_from(child.stderr.take().unwrap(), stderr_copy),
        ];
        Self {
            name: format!("fanout {}", args.join(" ")),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// `fanout <args>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("the process has not been waited for")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.all()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// Each stderr line as JSON (`--log-format json`); a line that is not JSON as
    /// `{"message": line, "not_json": true}`.
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.stderr_lines()
            .into_iter()
            .map(|line| {
                serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line, "not_json": true }))
            })
            .collect()
    }

    /// Everything on stderr so far, for failure messages.
    pub fn logs_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// The JSON log event whose message is `message`, if it was logged.
    pub fn logged(&self, message: &str) -> Option<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .find(|event| event["message"] == message)
    }

    /// The `address` field of the JSON log event `message`, once it is logged.
    pub async fn logged_address(&mut self, message: &str) -> SocketAddr {
        let event = self
            .wait_for(&format!("logged {message:?}"), |process| {
                process.logged(message)
            })
            .await;
        event["address"].as_str().unwrap().parse().unwrap()
    }

    /// Waits for a stdout line that `matches`, and returns it.
    pub async fn wait_for_stdout(&mut self, matches: impl Fn(&str) -> bool) -> String {
        self.wait_for("printed the line awaited", |process| {
            process
                .stdout_lines()
                .into_iter()
                .find(|line| matches(line))
        })
        .await
    }

    /// Polls `found` until it finds something; the process must keep running meanwhile.
    async fn wait_for<T>(&mut self, what: &str, found: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(value) = found(self) {
                return value;
            }
            self.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never {what}; stdout: {:?}; stderr: {}",
                self.name,
                self.stdout_lines(),
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until its admin port (from its JSON logs) answers `/readyz` with 200, and
    /// returns the admin address.
    pub async fn wait_ready(&mut self) -> SocketAddr {
        let admin = self.logged_address("admin port listening").await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while http_get(&admin.to_string(), "/readyz")
            .await
            .map(|(status, _)| status)
            != Some(200)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never ready: {}",
                self.name,
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin
    }

    /// Sends `signal` (`TERM`, `INT`...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the exit, and for the last of its output.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit: {}", self.name, self.logs_text()))
            .unwrap();
        for reader in self.readers.drain(..) {
            tokio::time::timeout(DEADLINE, reader)
                .await
                .expect("its output never closed")
                .unwrap();
        }
        status
    }

    /// SIGKILL, which it must still be running to receive, and its end.
    pub async fn kill(&mut self) {
        self.assert_running();
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{} exited: {}",
            self.name,
            self.logs_text()
        );
    }
}

/// An HTTP/1.1 GET of `path` at `address` (`host:port`), with the client the bench
/// uses for the same purpose: the status and the body, or `None` if nothing answered.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let uri: http::Uri = format!("http://{address}{path}").parse().ok()?;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let exchange = async {
        let response = client.get(uri).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(DEADLINE, exchange).await.ok()?
}

/// Waits until the `/metrics` of the admin port at `admin` has the sample line `line`.
pub async fn wait_for_metric(admin: SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let body = http_get(&admin.to_string(), "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        if body.lines().any(|sample| sample == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never showed {line}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a role reads back is the config the test wrote, every section of it.
    #[test]
    fn a_written_config_loads_as_it_was() {
        let mut config = Config::default();
        config.kafka.brokers = "127.0.0.1:1".to_owned();
        config
            .kafka
            .consumer
            .insert("session.timeout.ms".to_owned(), "6000".to_owned());
        config.topics = fanout_kafka::Topics::with_prefix("t-");
        config.ingest.group_id = "t-ingest".to_owned();
        config.edge.drain_window_ms = 0;
        config.edge.partners.insert(
            "acme".to_owned(),
            fanout_edge::PartnerConfig {
                secrets: vec![fanout_edge::SecretConfig {
                    kid: None,
                    secret: "acme-secret-0123456789".to_owned(),
                }],
                ..fanout_edge::PartnerConfig::default()
            },
        );
        config.listen.admin = "127.0.0.1:0".to_owned();
        let path = temp_dir("write-config").join("fanout.toml");
        write_config(&config, &path);
        assert_eq!(Config::load(Some(&path)).unwrap(), config);
    }
}
