//! The bench's worker processes: started with their specs, told what to do on their
//! stdin, heard from on their stdout; and the progress bar shown while waiting on them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::system::this_binary;
use super::worker::{Progress, WorkerMessage, WorkerReport, WorkerSpec};

/// The worker processes and what they last reported.
pub(super) struct WorkerPool {
    pub(super) specs: usize,
    children: Vec<Child>,
    pub(super) pids: Vec<u32>,
    stdins: Vec<ChildStdin>,
    progress: Vec<Progress>,
    reports: Vec<Option<WorkerReport>>,
    pub(super) ready: usize,
    /// Told to finish: workers exit after their report, which may be read after.
    finishing: bool,
    messages: mpsc::UnboundedReceiver<(usize, WorkerMessage)>,
}

impl WorkerPool {
    pub(super) async fn spawn(
        specs: &[WorkerSpec],
        run_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let mut child = this_binary(&run_dir.join(format!("worker-{index}.log")))?
                .args(["bench", "worker", "--spec"])
                .arg(serde_json::to_string(spec)?)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting a bench worker")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            let messages_tx = messages_tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(message) = serde_json::from_str::<WorkerMessage>(&line)
                        && messages_tx.send((index, message)).is_err()
                    {
                        break;
                    }
                }
            });
            children.push(child);
        }
        Ok(Self {
            specs: specs.len(),
            pids: children.iter().filter_map(Child::id).collect(),
            children,
            stdins,
            progress: vec![Progress::default(); specs.len()],
            reports: vec![None; specs.len()],
            ready: 0,
            finishing: false,
            messages,
        })
    }

    pub(super) fn totals(&self) -> Progress {
        self.progress
            .iter()
            .fold(Progress::default(), |total, progress| total.plus(progress))
    }

    pub(super) async fn broadcast(&mut self, command: &str) -> anyhow::Result<()> {
        for stdin in &mut self.stdins {
            stdin
                .write_all(format!("{command}\n").as_bytes())
                .await
                .context("writing to a worker")?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Handles the messages that arrive within `timeout`.
    pub(super) async fn pump(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) if self.finishing => break,
                Ok(None) => anyhow::bail!("every worker's output ended"),
                Err(_elapsed) => break,
            };
            self.handle(message);
            while let Ok(message) = self.messages.try_recv() {
                self.handle(message);
            }
            if timeout.is_zero() {
                break;
            }
        }
        for (index, child) in self.children.iter_mut().enumerate() {
            if !self.finishing
                && self.reports[index].is_none()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("bench worker {index} exited early: {status} (see its log)");
            }
        }
        Ok(())
    }

    fn handle(&mut self, (index, message): (usize, WorkerMessage)) {
        match message {
            WorkerMessage::Ready => self.ready += 1,
            WorkerMessage::Progress(progress) => self.progress[index] = progress,
            WorkerMessage::Report(report) => {
                self.progress[index] = report.progress;
                self.reports[index] = Some(*report);
            }
        }
    }

    pub(super) async fn wait(
        &mut self,
        timeout: Duration,
        bar: Option<&ProgressBar>,
        mut done: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?}");
            self.pump(Duration::from_millis(100)).await?;
            if let Some(bar) = bar {
                bar.tick();
            }
        }
        Ok(())
    }

    pub(super) async fn finish(mut self) -> anyhow::Result<Vec<WorkerReport>> {
        self.broadcast("finish").await?;
        self.finishing = true;
        self.wait(Duration::from_secs(60), None, |pool| {
            pool.reports.iter().all(Option::is_some)
        })
        .await
        .context("waiting for the workers' reports")?;
        for child in &mut self.children {
            let _ = child.wait().await;
        }
        Ok(self.reports.into_iter().flatten().collect())
    }
}

/// A bar on stderr for what the workers report while a scenario waits on them
/// (`what`: the unit it counts).
pub(super) fn progress_bar(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar
}
