//! `fanout bench ceiling`: what this machine does with the same clients and the same
//! pattern of writes as a scenario when the server does nothing else, the figure the
//! scenario's is stated against.
//!
//! The clients are the scenarios' own ([`crate::worker`] processes, the same
//! handshake); the server is [`server`], a minimal tokio-tungstenite server in a child
//! process (no Kafka, no auth, count frames encoded once and shared), writing as
//! push-rate does (one frame at a time, round robin over the connections, at a rate)
//! or as group-message does (one frame to every connection, per message). Measured as
//! the scenarios are: pushes per second from the clients' first push to their last,
//! latency in the same HDR histogram, CPU of each process from /proc, and the server's
//! write syscalls ([`crate::syscalls`]).

pub mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::load::{Sends, wait_quiet};
use crate::measure::{Latencies, busy_cores, connection_result, count_received_pushes};
use crate::pool::{ClientPlan, WorkerPool, connect_all, progress_bar, start_workers, worker_count};
use crate::report::{LatencySummary, Machine, load_average, plot_latency};
use crate::result::{CeilingCpu, CeilingPushes, CeilingResult, PushResult};
use crate::syscalls::WriteCounter;
use crate::system::{cpu_seconds, machine_busy_seconds, this_binary};
use crate::worker::{Events, LatencySource, Protocol};
use server::{ServerMessage, ServerSpec};

/// The scenario whose writes the ceiling makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// One frame at a time to one connection after another, at `--rate`.
    PushRate,
    /// One frame to every connection, `--messages` times.
    GroupMessage,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Self::PushRate => "push-rate",
            Self::GroupMessage => "group-message",
        }
    }
}

/// What the server is, in the result.
const SERVER: &str = "minimal tokio-tungstenite server in a process of its own: no Kafka, no auth, count frames encoded once";

/// `fanout bench ceiling`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct CeilingOptions {
    /// The scenario whose writes the server makes.
    #[arg(long, value_enum, default_value_t = Pattern::PushRate)]
    pub pattern: Pattern,
    /// Connections (default: push-rate 2000, group-message 10000).
    #[arg(long)]
    pub connections: Option<u64>,
    /// Client worker processes (default: one per 15000 connections).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long, value_enum, default_value_t = Protocol::Cable)]
    pub protocol: Protocol,
    /// push-rate: frames per second over all connections (default 200000; 0: as fast as
    /// the server writes).
    #[arg(long)]
    pub rate: Option<u64>,
    /// push-rate: how long the frames are written (default 10).
    #[arg(long)]
    pub duration_seconds: Option<f64>,
    /// group-message: messages, one after the other, each one frame to every connection.
    #[arg(long, default_value_t = 5)]
    pub messages: u64,
    /// Connections being set up at once per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Where `ceiling-<pattern>.json`, `.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
}

/// One measurement of the ceiling: on its own, or as a phase of a scenario.
pub(crate) struct Phase<'a> {
    pub(crate) pattern: Pattern,
    pub(crate) connections: u64,
    pub(crate) workers: Option<usize>,
    pub(crate) protocol: Protocol,
    /// push-rate: frames per second (`None`: as fast as the server writes).
    pub(crate) rate: Option<u64>,
    pub(crate) duration: Duration,
    pub(crate) messages: u64,
    pub(crate) connect_concurrency: usize,
    /// The server's and workers' logs go here.
    pub(crate) run_dir: &'a Path,
}

/// The ceiling's result, and its latency histogram to plot.
pub(crate) struct Measured {
    pub(crate) result: CeilingResult,
    pub(crate) latency: Histogram<u64>,
}

/// Runs `fanout bench ceiling` and writes `<out_dir>/ceiling-<pattern>.json` and `.svg`.
pub async fn run(options: &CeilingOptions) -> anyhow::Result<CeilingResult> {
    crate::system::raise_open_file_limit();
    let name = format!("ceiling-{}", options.pattern.name());
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = crate::system::run_dir(&options.out_dir, &name);
    std::fs::create_dir_all(&run_dir)?;
    let connections = options.connections.unwrap_or(match options.pattern {
        Pattern::PushRate => 2_000,
        Pattern::GroupMessage => 10_000,
    });
    let phase = Phase {
        pattern: options.pattern,
        connections,
        workers: options.workers,
        protocol: options.protocol,
        rate: match options.rate {
            None => Some(crate::scenario::DEFAULT_PUSH_RATE),
            Some(0) => None,
            Some(rate) => Some(rate),
        },
        duration: Duration::from_secs_f64(options.duration_seconds.unwrap_or(10.0).max(0.0)),
        messages: options.messages,
        connect_concurrency: options.connect_concurrency,
        run_dir: &run_dir,
    };
    let Measured {
        mut result,
        latency,
    } = measure(&phase).await?;
    let result_path = options.out_dir.join(format!("{name}.json"));
    let plot_path = options.out_dir.join(format!("{name}.svg"));
    result.result_file = Some(result_path.display().to_string());
    result.plot_file = Some(plot_path.display().to_string());
    plot_latency(
        &plot_path,
        &format!(
            "fanout bench ceiling --pattern {}: {} connections",
            options.pattern.name(),
            connections
        ),
        &[("frame stamp → client receive", &latency)],
    )?;
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    Ok(result)
}

/// Measures the ceiling: the server started, the clients connected through it, the
/// pattern's frames written, everything measured over the load.
pub(crate) async fn measure(phase: &Phase<'_>) -> anyhow::Result<Measured> {
    let workers = worker_count(phase.connections, phase.workers)?;
    let mut machine = Machine::read();
    let spec = ServerSpec {
        pattern: phase.pattern,
        protocol: phase.protocol,
        rate: phase.rate,
        duration_seconds: phase.duration.as_secs_f64(),
    };
    let mut server = ServerProcess::start(&spec, phase.run_dir).await?;
    // No token is checked; the workers mint them all the same.
    let secret = fanout_app::tools::random_hex(24);
    let plan = ClientPlan {
        connections: phase.connections,
        workers,
        edge_urls: vec![format!("ws://127.0.0.1:{}", server.port)],
        protocol: phase.protocol,
        partner: "ceiling",
        secret: &secret,
        user_prefix: "ceiling-u",
        connect_concurrency: phase.connect_concurrency,
        latency: LatencySource::CountIsSendTime,
        events: Events::Off,
        churn: crate::worker::Churn::Off,
    };
    let specs = plan.worker_specs();
    let mut pool = start_workers(&specs, phase.run_dir).await?;
    connect_all(
        &mut pool,
        &format!("ceiling {}", phase.pattern.name()),
        phase.connections,
    )
    .await?;
    let subscribed = pool.totals().subscribed;
    // The server takes this many connections at the first push.
    let push = format!("push {subscribed}");

    let write_counter =
        WriteCounter::start(&[server.pid], &phase.run_dir.join("ceiling-perf.csv")).await;
    let cpu_before = CpuSnapshot::read(server.pid, &pool);
    match phase.pattern {
        Pattern::PushRate => {
            let bar = progress_bar(phase.duration.as_secs().max(1), "seconds");
            server.command(&push).await?;
            let started = std::time::Instant::now();
            let written = server
                .pushed(
                    &mut pool,
                    phase.duration + Duration::from_secs(120),
                    |pool| {
                        bar.set_position(started.elapsed().as_secs());
                        bar.set_message(format!("{} pushes", pool.totals().pushes));
                    },
                )
                .await?;
            bar.finish_and_clear();
            wait_quiet(
                &mut pool,
                Some(written),
                Duration::from_secs(3),
                Duration::from_secs(120),
            )
            .await?;
        }
        Pattern::GroupMessage => {
            let bar = progress_bar(phase.messages * subscribed, "pushes");
            let mut written = 0;
            for _ in 0..phase.messages {
                server.command(&push).await?;
                written += server
                    .pushed(&mut pool, Duration::from_secs(120), |_| {})
                    .await?;
                // As group-message ends each message's round.
                crate::load::end_round(&mut pool, written, &bar).await?;
            }
            bar.finish_and_clear();
        }
    }
    let cpu_after = CpuSnapshot::read(server.pid, &pool);
    let write_calls = write_counter.stop().await;
    // The clients first: the server's end would reset their connections.
    let reports = pool.finish().await?;
    let report = server.finish().await?;
    machine.load_at_end = load_average();

    let connections = connection_result(&reports, phase.connections);
    let latencies = Latencies::merge(&reports, &Sends::default())?;
    let mut received = PushResult::default();
    count_received_pushes(&reports, &mut received);
    let per_push =
        |seconds: f64| (received.received > 0).then(|| seconds * 1e6 / received.received as f64);
    let wall_seconds = cpu_after.at.duration_since(cpu_before.at).as_secs_f64();
    let (server_cpu, clients_cpu, bench_cpu) = (
        cpu_after.server - cpu_before.server,
        cpu_after.clients - cpu_before.clients,
        cpu_after.bench - cpu_before.bench,
    );
    let result = CeilingResult {
        scenario: "ceiling",
        pattern: phase.pattern.name(),
        server: SERVER,
        protocol: phase.protocol,
        workers: specs.len(),
        rate: match phase.pattern {
            Pattern::PushRate => phase.rate,
            Pattern::GroupMessage => None,
        },
        duration_seconds: match phase.pattern {
            Pattern::PushRate => phase.duration.as_secs_f64(),
            Pattern::GroupMessage => 0.0,
        },
        messages: (phase.pattern == Pattern::GroupMessage).then_some(phase.messages),
        machine,
        connections,
        latency: LatencySummary::of(&latencies.push),
        pushes: CeilingPushes {
            due: match (phase.pattern, phase.rate) {
                (Pattern::PushRate, Some(rate)) => {
                    Some((rate as f64 * phase.duration.as_secs_f64()) as u64)
                }
                _ => None,
            },
            written: report.frames,
            write_failures: report.failures,
            coalesced: report.coalesced,
            received: received.received,
            seconds: received.seconds,
            per_second: received.per_second,
        },
        cpu: CeilingCpu {
            wall_seconds,
            machine_busy_cores: busy_cores(
                cpu_before.machine_busy,
                cpu_after.machine_busy,
                wall_seconds,
            ),
            server: server_cpu,
            clients: clients_cpu,
            bench: bench_cpu,
            server_us_per_push: per_push(server_cpu),
            clients_us_per_push: per_push(clients_cpu),
            bench_us_per_push: per_push(bench_cpu),
        },
        writes: write_calls.with_frames(report.frames),
        server_socket_writes: report.socket_writes,
        result_file: None,
        plot_file: None,
    };
    Ok(Measured {
        result,
        latency: latencies.push,
    })
}

/// CPU seconds of the ceiling's processes at an instant.
struct CpuSnapshot {
    at: std::time::Instant,
    server: f64,
    clients: f64,
    bench: f64,
    machine_busy: Option<f64>,
}

impl CpuSnapshot {
    fn read(server: u32, pool: &WorkerPool) -> Self {
        Self {
            at: std::time::Instant::now(),
            server: cpu_seconds(server).unwrap_or(0.0),
            clients: pool.pids.iter().filter_map(|pid| cpu_seconds(*pid)).sum(),
            bench: cpu_seconds(std::process::id()).unwrap_or(0.0),
            machine_busy: machine_busy_seconds(),
        }
    }
}

/// The server's child process, its stdin, and what it writes on its stdout.
struct ServerProcess {
    child: Child,
    pid: u32,
    port: u16,
    stdin: ChildStdin,
    messages: mpsc::UnboundedReceiver<ServerMessage>,
}

/// What the server reported at the end.
struct ServerReport {
    frames: u64,
    failures: u64,
    coalesced: u64,
    socket_writes: u64,
}

impl ServerProcess {
    /// Starts `fanout bench ceiling-server` and waits until it listens.
    async fn start(spec: &ServerSpec, run_dir: &Path) -> anyhow::Result<Self> {
        let mut child = this_binary(&run_dir.join("ceiling-server.log"))?
            .args(["bench", "ceiling-server", "--spec"])
            .arg(serde_json::to_string(spec)?)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the ceiling server")?;
        let pid = child.id().context("the ceiling server's pid")?;
        let stdout = child.stdout.take().context("the ceiling server's stdout")?;
        let stdin = child.stdin.take().context("the ceiling server's stdin")?;
        let (messages_tx, mut messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(message) = serde_json::from_str::<ServerMessage>(&line)
                    && messages_tx.send(message).is_err()
                {
                    break;
                }
            }
        });
        let listening = tokio::time::timeout(Duration::from_secs(30), messages.recv())
            .await
            .context("the ceiling server did not start in 30 s")?;
        let Some(ServerMessage::Listening { port }) = listening else {
            anyhow::bail!("the ceiling server exited before listening (see its log)");
        };
        Ok(Self {
            child,
            pid,
            port,
            stdin,
            messages,
        })
    }

    async fn command(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to the ceiling server")?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for the server to finish a `push`, hearing from the workers meanwhile
    /// (`tick` after each time); returns the frames it wrote.
    async fn pushed(
        &mut self,
        pool: &mut WorkerPool,
        timeout: Duration,
        mut tick: impl FnMut(&WorkerPool),
    ) -> anyhow::Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the ceiling server did not finish a push in {timeout:?}"
            );
            pool.pump(Duration::from_millis(100)).await?;
            tick(pool);
            match self.messages.try_recv() {
                Ok(ServerMessage::Pushed { frames, .. }) => return Ok(frames),
                Ok(_) | Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    anyhow::bail!("the ceiling server exited during a push (see its log)")
                }
            }
        }
    }

    /// Tells the server to finish and returns its report.
    async fn finish(mut self) -> anyhow::Result<ServerReport> {
        self.command("finish").await?;
        let report = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.messages.recv().await {
                if let ServerMessage::Report {
                    frames,
                    failures,
                    coalesced,
                    socket_writes,
                    ..
                } = message
                {
                    return Some(ServerReport {
                        frames,
                        failures,
                        coalesced,
                        socket_writes,
                    });
                }
            }
            None
        })
        .await
        .context("the ceiling server did not report in 30 s")?
        .context("the ceiling server exited without its report (see its log)")?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(report)
    }
}
