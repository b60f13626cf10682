//! The bench's worker processes: their specs (which users, which source addresses),
//! started, told what to do on their stdin, heard from on their stdout, their
//! connections made; and the progress bar shown while waiting on them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::system::this_binary;
use super::worker::{
    Churn, Events, LatencySource, Progress, Protocol, WorkerMessage, WorkerReport, WorkerSpec,
};

/// Most connections one worker holds: the open-file limit is 20000 per process.
pub const MAX_CONNECTIONS_PER_WORKER: u64 = 18_000;
/// Connections per source address (an address has about 28k ephemeral ports).
const CONNECTIONS_PER_SOURCE_ADDRESS: u64 = 8_000;
/// Connections a worker holds unless `--workers` says.
const DEFAULT_CONNECTIONS_PER_WORKER: u64 = 15_000;

/// How many worker processes hold `connections`: `workers`, or one per
/// [`DEFAULT_CONNECTIONS_PER_WORKER`]; none may hold more than
/// [`MAX_CONNECTIONS_PER_WORKER`].
pub(super) fn worker_count(connections: u64, workers: Option<usize>) -> anyhow::Result<usize> {
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    let workers = workers.unwrap_or_else(|| {
        usize::try_from(connections.div_ceil(DEFAULT_CONNECTIONS_PER_WORKER)).unwrap_or(1)
    });
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        connections.div_ceil(workers as u64) <= MAX_CONNECTIONS_PER_WORKER,
        "{connections} connections need at least {} workers (at most {MAX_CONNECTIONS_PER_WORKER} each: the open-file limit)",
        connections.div_ceil(MAX_CONNECTIONS_PER_WORKER)
    );
    Ok(workers)
}

/// What every client of a run does, before it is split over the workers.
pub(super) struct ClientPlan<'a> {
    pub(super) connections: u64,
    pub(super) workers: usize,
    /// `ws://host:port` of each edge; connection `i` goes to edge `i % len`.
    pub(super) edge_urls: Vec<String>,
    pub(super) protocol: Protocol,
    pub(super) partner: &'a str,
    pub(super) secret: &'a str,
    pub(super) user_prefix: &'a str,
    /// Connections set up at once per worker; 0: all at once.
    pub(super) connect_concurrency: usize,
    pub(super) latency: LatencySource,
    pub(super) events: Events,
    pub(super) churn: Churn,
}

impl ClientPlan<'_> {
    /// What each worker process does: worker `w` holds users `w * per_worker..`, each
    /// connection on its own source port of a few 127.x.y.z addresses.
    pub(super) fn worker_specs(&self) -> Vec<WorkerSpec> {
        let connections = self.connections;
        let per_worker = connections.div_ceil(self.workers.max(1) as u64);
        let run_octet: u8 = rand::rng().random_range(1..=254);
        (0..self.workers)
            .map(|worker| {
                let first_user = worker as u64 * per_worker;
                let count = per_worker.min(connections.saturating_sub(first_user));
                WorkerSpec {
                    worker,
                    edge_urls: self.edge_urls.clone(),
                    protocol: self.protocol,
                    partner: self.partner.to_owned(),
                    secret: self.secret.to_owned(),
                    user_prefix: self.user_prefix.to_owned(),
                    first_user,
                    connections: count,
                    source_addresses: super::system::source_addresses(
                        run_octet,
                        worker,
                        usize::try_from(count.div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS))
                            .unwrap_or(1),
                    ),
                    per_source_address: CONNECTIONS_PER_SOURCE_ADDRESS,
                    connect_concurrency: self.connect_concurrency,
                    latency: self.latency,
                    events: self.events,
                    churn: self.churn,
                }
            })
            .filter(|spec| spec.connections > 0)
            .collect()
    }
}

/// Starts the worker processes and waits until each has minted its tokens.
pub(super) async fn start_workers(
    specs: &[WorkerSpec],
    run_dir: &Path,
) -> anyhow::Result<WorkerPool> {
    let mut pool = WorkerPool::spawn(specs, run_dir).await?;
    pool.wait(Duration::from_secs(120), None, |pool| {
        pool.ready == pool.specs
    })
    .await
    .context("waiting for the workers to mint tokens")?;
    Ok(pool)
}

/// How long `connections` may take to be subscribed: 5 minutes, or 1000 a second when
/// that is longer (500k connections on this machine's 2 cores go at a few thousand a
/// second).
fn connect_limit(connections: u64) -> Duration {
    Duration::from_secs(300).max(Duration::from_millis(connections))
}

/// Tells every worker to connect its clients and waits until each connection is
/// subscribed or has failed; `what` names the run in the line it prints.
pub(super) async fn connect_all(
    pool: &mut WorkerPool,
    what: &str,
    connections: u64,
) -> anyhow::Result<()> {
    let bar = progress_bar(connections, "subscribed");
    pool.broadcast("connect").await?;
    pool.wait(connect_limit(connections), Some(&bar), |pool| {
        let totals = pool.totals();
        bar.set_position(totals.subscribed);
        bar.set_message(format!("failed {}", totals.failed));
        totals.subscribed + totals.failed >= connections
    })
    .await?;
    bar.finish_and_clear();
    let connected = pool.totals();
    eprintln!(
        "{what}: {} of {connections} connections subscribed ({} failed)",
        connected.subscribed, connected.failed
    );
    Ok(())
}

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
    pub(super) async fn spawn(specs: &[WorkerSpec], run_dir: &Path) -> anyhow::Result<Self> {
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
