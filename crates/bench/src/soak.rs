//! `fanout bench soak`: many connections on one edge for a long time, with counts and
//! stream events changing at a steady rate and a fraction of the clients reconnecting
//! each minute; at the end, whether the edge held steady and every client is right.
//!
//! The deployment is the bench's own (embedded Kafka, ingest, router and one edge as
//! child processes). Clients are split in two: count clients on `/cable`
//! (PartnerChannel) and stream clients on `/realtime` (counts, and `subscribe_events`
//! resumed with `since` after each reconnection); each reconnects when its worker's
//! schedule picks it ([`crate::worker::Churn::Reconnect`]). The load is message events
//! to random users (a `MessageCreated`, or, when the user has unread messages, now and
//! then a `ConversationRead` of all of them) and partner notifications to stream users,
//! and [`Oracle`] recounts from what was produced what every user's count and stream
//! must be. The edge's RSS and open file descriptors are sampled all along.
//!
//! Invariants, each checked at the end ([`SoakResult::checks`]):
//! - the edge's RSS at the end at most `--rss-tolerance-percent` (5) above its RSS at the baseline
//!   (the first sample after `--baseline-seconds` with every client connected);
//! - its open file descriptors at the end (every client connected, reconnections
//!   stopped) no more than at the baseline;
//! - every client's last count equals the recount, and every stream client received
//!   exactly its user's events (offsets 1 to the recount's, no gap, no repeat, no
//!   reset, one epoch);
//! - no client gave up, and reconnections happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::{unix_micros, v1};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{Producer as _, ThreadedProducer};
use serde::Serialize;

use crate::load::{Deliveries, message_created, message_data, producer, send};
use crate::pool::{ClientPlan, WorkerPool, connect_all, start_workers, worker_count};
use crate::report::{Machine, load_average};
use crate::target::{LocalDeployment, LocalOptions};
use crate::worker::{Churn, Events, LatencySource, Protocol, WorkerReport, WorkerSpec};

/// Bytes of `data` each notification carries.
const NOTIFICATION_DATA_BYTES: usize = 64;

/// The name of the soak's notifications.
const NOTIFICATION_EVENT: &str = "bench.soak";

/// Out of 100: how often a change to a user with unread messages is a read of all of
/// them rather than one more message.
const READ_PERCENT: u32 = 30;

/// Options of `fanout bench soak`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SoakOptions {
    /// Connections held on the edge, count and stream clients together.
    #[arg(long, default_value_t = 19_000)]
    pub connections: u64,
    /// How long the load runs.
    #[arg(long, default_value_t = 1800.0)]
    pub duration_seconds: f64,
    /// When the baseline RSS and file descriptors are taken: the first sample after
    /// this with every client connected.
    #[arg(long, default_value_t = 300.0)]
    pub baseline_seconds: f64,
    /// Count changes per second (`MessageCreated`, or a `ConversationRead` of a user's
    /// unread messages), to random users of all clients.
    #[arg(long, default_value_t = 200)]
    pub change_rate: u64,
    /// Partner notifications per second to random stream clients' users (stream
    /// events that leave counts alone).
    #[arg(long, default_value_t = 50)]
    pub stream_event_rate: u64,
    /// Share of the clients that are stream clients (`/realtime`, `subscribe_events`);
    /// the others are count clients on `/cable`.
    #[arg(long, default_value_t = 0.1)]
    pub stream_share: f64,
    /// Fraction of the clients that reconnect each minute (picked at random, spread
    /// evenly over the minute).
    #[arg(long, default_value_t = 0.01)]
    pub reconnect_per_minute: f64,
    /// Seconds between samples of the edge's RSS and open file descriptors.
    #[arg(long, default_value_t = 5.0)]
    pub sample_seconds: f64,
    /// The edge's `history.max_age_ms` (default: the config's, 300000). A short run
    /// whose baseline comes before the window is full sets it below the baseline, or
    /// the window's growth is taken for a leak.
    #[arg(long)]
    pub history_max_age_ms: Option<u64>,
    /// How far the edge's RSS at the end may be above its RSS at the baseline, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub rss_tolerance_percent: f64,
    /// Partitions of the topics the bench creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Where `soak.json` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One sample of the edge and the clients.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Since the load started.
    pub seconds: f64,
    pub rss_kib: u64,
    pub open_fds: u64,
    /// Clients connected (as their workers last reported).
    pub connected: u64,
    /// Reconnections so far.
    pub reconnects: u64,
    /// /proc/loadavg's 1-minute figure.
    pub load_1m: f64,
}

/// An invariant and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub invariant: &'static str,
    pub met: bool,
    pub detail: String,
}

/// What was produced.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Produced {
    pub messages: u64,
    pub reads: u64,
    pub notifications: u64,
    pub failures: u64,
    pub seconds: f64,
}

/// The clients' final state against the recount.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub count_clients: u64,
    pub stream_clients: u64,
    pub counts_right: u64,
    pub counts_wrong: u64,
    pub streams_exact: u64,
    pub streams_wrong: u64,
    /// A few wrong ones: (user, what the client had, what the recount says).
    pub examples: Vec<String>,
    pub stream_events_received: u64,
    pub stream_events_expected: u64,
    pub gaps: u64,
    pub repeats: u64,
    pub resets: u64,
    pub epoch_changes: u64,
    /// Clients that gave up (their errors are in the workers' logs and `errors`).
    pub failed: u64,
    pub errors: Vec<(String, u64)>,
    pub reconnects: u64,
    pub unexpected_drops: u64,
}

/// The result of `fanout bench soak`, written as `soak.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub scenario: &'static str,
    pub options: SoakOptions,
    pub target: String,
    pub machine: Machine,
    pub produced: Produced,
    pub baseline: Sample,
    pub end: Sample,
    /// (end − baseline) / baseline, in percent.
    pub rss_change_percent: f64,
    pub verdict: Verdict,
    pub checks: Vec<Check>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    pub result_file: String,
}

impl SoakResult {
    /// A few lines for a human.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "soak: {} connections for {:.0} s ({} count, {} stream clients), {} reconnections, load {:.2} → {:.2}",
            self.options.connections,
            self.produced.seconds,
            self.verdict.count_clients,
            self.verdict.stream_clients,
            self.verdict.reconnects,
            self.machine.load_at_start,
            self.machine.load_at_end,
        )];
        lines.push(format!(
            "edge RSS {} KiB at {:.0} s, {} KiB at the end ({:+.2} %); open fds {} → {}",
            self.baseline.rss_kib,
            self.baseline.seconds,
            self.end.rss_kib,
            self.rss_change_percent,
            self.baseline.open_fds,
            self.end.open_fds
        ));
        for check in &self.checks {
            lines.push(format!(
                "  [{}] {}: {}",
                if check.met { "ok" } else { "FAILED" },
                check.invariant,
                check.detail
            ));
        }
        lines.join("\n")
    }
}

/// One user's state as the recount has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UserState {
    /// The seq of its conversation's last message.
    last_seq: u64,
    /// Messages after its read mark.
    unread: u64,
    /// Stream events it is to receive (each message, each read that changed its read
    /// mark, each notification).
    events: u64,
}

/// One change the load makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A message to the user, with this seq in its conversation.
    Message { seq: u64 },
    /// The user read its conversation up to this seq.
    Read { seq: u64 },
    /// A partner notification to the user.
    Notification,
}

/// The recount: what every user's count and stream must be, from what was produced.
/// Independent of fanout's code: the unread semantics of this load (one conversation
/// per user, reads of everything so far) in a few lines.
#[derive(Debug, Clone, Default)]
struct Oracle {
    count_users: Vec<UserState>,
    stream_users: Vec<UserState>,
}

/// Which clients a user is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Count,
    Stream,
}

impl Oracle {
    fn new(count_users: u64, stream_users: u64) -> Self {
        let users = |n: u64| vec![UserState::default(); usize::try_from(n).unwrap_or(0)];
        Self {
            count_users: users(count_users),
            stream_users: users(stream_users),
        }
    }

    fn user_mut(&mut self, group: Group, user: u64) -> Option<&mut UserState> {
        let users = match group {
            Group::Count => &mut self.count_users,
            Group::Stream => &mut self.stream_users,
        };
        users.get_mut(usize::try_from(user).ok()?)
    }

    fn user(&self, group: Group, user: u64) -> Option<&UserState> {
        let users = match group {
            Group::Count => &self.count_users,
            Group::Stream => &self.stream_users,
        };
        users.get(usize::try_from(user).ok()?)
    }

    /// The next count change for `user`: a read of everything when it has unread
    /// messages and `roll` (0..100) says so, a message otherwise; applied.
    fn change(&mut self, group: Group, user: u64, roll: u32) -> Option<Change> {
        let state = self.user_mut(group, user)?;
        state.events += 1;
        if state.unread > 0 && roll < READ_PERCENT {
            state.unread = 0;
            return Some(Change::Read {
                seq: state.last_seq,
            });
        }
        state.last_seq += 1;
        state.unread += 1;
        Some(Change::Message {
            seq: state.last_seq,
        })
    }

    fn notify(&mut self, user: u64) -> Option<Change> {
        self.user_mut(Group::Stream, user)?.events += 1;
        Some(Change::Notification)
    }
}

/// The soak's users and the events it produces for them.
struct Load {
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    topic: String,
    partner: String,
    /// User `i` of a group is `{prefix}{i}`.
    count_prefix: String,
    stream_prefix: String,
    oracle: Oracle,
    rng: StdRng,
    produced: Produced,
    notification_data: Option<fanout_schema::data::Struct>,
}

impl Load {
    fn prefix(&self, group: Group) -> &str {
        match group {
            Group::Count => &self.count_prefix,
            Group::Stream => &self.stream_prefix,
        }
    }

    /// Produces what is due `elapsed` into the load.
    async fn produce_until(&mut self, elapsed: f64, options: &SoakOptions) -> anyhow::Result<()> {
        let changes_due = (elapsed * options.change_rate as f64) as u64;
        while self.produced.messages + self.produced.reads < changes_due {
            self.produce_change().await?;
        }
        if self.oracle.stream_users.is_empty() {
            return Ok(());
        }
        let notifications_due = (elapsed * options.stream_event_rate as f64) as u64;
        while self.produced.notifications < notifications_due {
            self.produce_notification().await?;
        }
        Ok(())
    }

    async fn produce_change(&mut self) -> anyhow::Result<()> {
        let count_users = self.oracle.count_users.len() as u64;
        let all = count_users + self.oracle.stream_users.len() as u64;
        let pick = self.rng.random_range(0..all);
        let (group, user) = if pick < count_users {
            (Group::Count, pick)
        } else {
            (Group::Stream, pick - count_users)
        };
        let roll = self.rng.random_range(0..100);
        let change = self
            .oracle
            .change(group, user, roll)
            .context("a user outside the recount")?;
        let name = format!("{}{user}", self.prefix(group));
        let conversation = format!("{name}-c");
        // Keyed by the conversation, messages and reads alike: ingest sees them in the
        // order they were produced, as the recount does.
        let key = conversation.clone();
        let sent_us = unix_micros();
        let event = match change {
            Change::Message { seq } => {
                self.produced.messages += 1;
                message_created(
                    &self.partner,
                    format!("{name}-m{seq}"),
                    conversation,
                    seq,
                    vec![name],
                    sent_us,
                    None,
                )
            }
            Change::Read { seq } => {
                self.produced.reads += 1;
                v1::MessageEvent {
                    event_id: format!("{name}-r{seq}"),
                    partner: self.partner.clone(),
                    occurred_at_ms: i64::try_from(sent_us / 1000).unwrap_or(0),
                    data: None,
                    event: Some(v1::message_event::Event::ConversationRead(
                        v1::ConversationRead {
                            conversation_id: conversation,
                            seq,
                            user: name,
                            notify: Vec::new(),
                        },
                    )),
                }
            }
            Change::Notification => anyhow::bail!("a notification is not a count change"),
        };
        send(&self.producer, &self.topic, &key, &event.encode_to_vec()).await
    }

    async fn produce_notification(&mut self) -> anyhow::Result<()> {
        let users = self.oracle.stream_users.len() as u64;
        let user = self.rng.random_range(0..users);
        self.oracle
            .notify(user)
            .context("a user outside the recount")?;
        let index = self.produced.notifications;
        self.produced.notifications += 1;
        let event_id = format!("{}n{index}", self.stream_prefix);
        let event = v1::MessageEvent {
            event_id: event_id.clone(),
            partner: self.partner.clone(),
            occurred_at_ms: i64::try_from(unix_micros() / 1000).unwrap_or(0),
            data: self.notification_data.clone(),
            event: Some(v1::message_event::Event::Notification(v1::Notification {
                event: NOTIFICATION_EVENT.to_owned(),
                recipients: vec![format!("{}{user}", self.stream_prefix)],
            })),
        };
        send(
            &self.producer,
            &self.topic,
            &event_id,
            &event.encode_to_vec(),
        )
        .await
    }
}

/// The edge's open file descriptors, from /proc.
fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(entries.count() as u64)
}

/// The edge and the clients now.
fn sample(pid: u32, pool: &WorkerPool, started: Instant) -> anyhow::Result<Sample> {
    let totals = pool.totals();
    Ok(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: crate::system::rss_kib(pid)?,
        open_fds: open_fds(pid)?,
        connected: totals.churn.connected,
        reconnects: totals.churn.reconnects,
        load_1m: load_average(),
    })
}

fn check_options(options: &SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.stream_share),
        "--stream-share is a fraction, 0 to 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.reconnect_per_minute),
        "--reconnect-per-minute is a fraction, 0 to 1"
    );
    anyhow::ensure!(
        options.baseline_seconds < options.duration_seconds,
        "--baseline-seconds must come before the end (--duration-seconds)"
    );
    anyhow::ensure!(
        options.sample_seconds > 0.0,
        "--sample-seconds must be above 0"
    );
    anyhow::ensure!(options.change_rate > 0, "--change-rate must be at least 1");
    Ok(())
}

/// Runs the soak and writes `<out_dir>/soak.json`; the result says which invariants
/// held ([`SoakResult::failed`]).
pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakResult> {
    check_options(options)?;
    crate::system::raise_open_file_limit();
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = crate::system::run_dir(&options.out_dir, "soak");
    std::fs::create_dir_all(&run_dir)?;
    let mut machine = Machine::read();
    let stream_clients = (options.connections as f64 * options.stream_share).round() as u64;
    let count_clients = options.connections - stream_clients;

    let mut deployment = LocalDeployment::start_with(
        &LocalOptions {
            edges: 1,
            pipeline: true,
            partitions: options.partitions,
            user_partitions: None,
            brokers: None,
            kafka_client: &[],
            api: None,
            run_dir: &run_dir,
        },
        |config| {
            if let Some(max_age_ms) = options.history_max_age_ms {
                config.edge.history.max_age_ms = max_age_ms;
            }
        },
    )
    .await?;
    let edge = deployment.edges.first().cloned().context("no edge")?;
    let edge_pid = edge.pid.context("the edge has no pid")?;
    let run_id = fanout_app::tools::random_hex(4);
    let count_prefix = format!("s{run_id}-c");
    let stream_prefix = format!("s{run_id}-s");
    let churn = Churn::Reconnect {
        fraction_per_minute: options.reconnect_per_minute,
    };
    let plan = |connections: u64, protocol: Protocol, events: Events, prefix: &str| {
        Ok::<_, anyhow::Error>(
            ClientPlan {
                connections,
                workers: worker_count(connections, None)?,
                edge_urls: vec![edge.url.clone()],
                protocol,
                partner: &deployment.partner,
                secret: &deployment.secret,
                user_prefix: prefix,
                connect_concurrency: 256,
                latency: LatencySource::Receipts,
                events,
                churn,
            }
            .worker_specs(),
        )
    };
    let mut specs: Vec<WorkerSpec> = Vec::new();
    if count_clients > 0 {
        specs.extend(plan(
            count_clients,
            Protocol::Cable,
            Events::Off,
            &count_prefix,
        )?);
    }
    if stream_clients > 0 {
        let first_worker = specs.len();
        let mut stream_specs = plan(
            stream_clients,
            Protocol::Realtime,
            Events::Resumed,
            &stream_prefix,
        )?;
        // Worker numbers pick the source addresses: the stream workers' own.
        for spec in &mut stream_specs {
            spec.worker += first_worker;
            spec.source_addresses = crate::system::source_addresses(
                spec.source_addresses
                    .first()
                    .map_or(1, |address| address.octets()[1]),
                spec.worker,
                spec.source_addresses.len(),
            );
        }
        specs.extend(stream_specs);
    }
    let mut pool = start_workers(&specs, &run_dir).await?;
    connect_all(&mut pool, "soak", options.connections).await?;
    let connected = pool.totals();
    anyhow::ensure!(
        connected.subscribed == options.connections,
        "soak: only {} of {} clients subscribed ({} failed; see the workers' logs in {})",
        connected.subscribed,
        options.connections,
        connected.failed,
        run_dir.display()
    );

    let kafka = KafkaSettings::new(deployment.brokers.clone());
    let (producer, deliveries) = producer(&kafka, &[])?;
    let mut load = Load {
        producer,
        deliveries,
        topic: deployment.topics.message_events.clone(),
        partner: deployment.partner.clone(),
        count_prefix: count_prefix.clone(),
        stream_prefix: stream_prefix.clone(),
        oracle: Oracle::new(count_clients, stream_clients),
        rng: StdRng::seed_from_u64(options.seed),
        produced: Produced::default(),
        notification_data: message_data(NOTIFICATION_DATA_BYTES)?,
    };

    let duration = Duration::from_secs_f64(options.duration_seconds);
    let sample_every = Duration::from_secs_f64(options.sample_seconds);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut baseline: Option<Sample> = None;
    let mut next_sample = started;
    let mut next_line = started;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < duration {
        tick.tick().await;
        load.produce_until(started.elapsed().as_secs_f64(), options)
            .await?;
        pool.pump(Duration::ZERO).await?;
        if Instant::now() >= next_sample {
            next_sample += sample_every;
            deployment.check_alive()?;
            let now = sample(edge_pid, &pool, started)?;
            if baseline.is_none()
                && now.seconds >= options.baseline_seconds
                && now.connected == options.connections
            {
                baseline = Some(now);
            }
            samples.push(now);
            if Instant::now() >= next_line {
                next_line += Duration::from_secs(60);
                eprintln!(
                    "soak: {:>5.0} s, edge RSS {} KiB, {} fds, {} connected, {} reconnections, load {:.2}",
                    now.seconds,
                    now.rss_kib,
                    now.open_fds,
                    now.connected,
                    now.reconnects,
                    now.load_1m
                );
            }
        }
    }
    let baseline = baseline.with_context(|| {
        format!(
            "soak: no sample after {} s had every client connected (see {})",
            options.baseline_seconds,
            run_dir.display()
        )
    })?;

    // The end: reconnections stopped and every client back, the load still flowing,
    // so that the end is measured as the baseline was.
    pool.broadcast("quiesce").await?;
    let settle_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tick.tick().await;
        load.produce_until(started.elapsed().as_secs_f64(), options)
            .await?;
        pool.pump(Duration::ZERO).await?;
        if pool.totals().churn.connected == options.connections {
            break;
        }
        anyhow::ensure!(
            Instant::now() < settle_deadline,
            "soak: {} of {} clients connected 120 s after reconnections stopped",
            pool.totals().churn.connected,
            options.connections
        );
    }
    let end = sample(edge_pid, &pool, started)?;
    samples.push(end);
    load.produced.seconds = started.elapsed().as_secs_f64();
    deployment.check_alive()?;

    // Everything produced acknowledged, then delivered: wait until nothing arrives.
    let Load {
        producer,
        deliveries,
        oracle,
        mut produced,
        ..
    } = load;
    tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(60)))
        .await
        .context("flushing the producer")?
        .context("flushing the producer")?;
    produced.failures = deliveries.failed.load(std::sync::atomic::Ordering::Relaxed);
    wait_until_quiet(&mut pool, Duration::from_secs(5), Duration::from_secs(180)).await?;
    let reports = pool.finish().await?;
    machine.load_at_end = load_average();
    drop(deployment);

    let verdict = verdict(&specs, &reports, &oracle, &count_prefix);
    let rss_change_percent =
        (end.rss_kib as f64 - baseline.rss_kib as f64) * 100.0 / (baseline.rss_kib as f64).max(1.0);
    let checks = checks(options, &baseline, &end, &verdict, &produced);
    let result_path = options.out_dir.join("soak.json");
    let result = SoakResult {
        scenario: "soak",
        options: options.clone(),
        target: format!(
            "local: embedded Kafka (librdkafka mock) in the bench process, {} partitions, one edge, ingest and router processes",
            options.partitions
        ),
        machine,
        produced,
        baseline,
        end,
        rss_change_percent,
        verdict,
        checks,
        samples,
        result_file: result_path.display().to_string(),
    };
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    Ok(result)
}

/// Pumps the workers until their counts and events stop changing for `quiet`, at most
/// `limit`.
async fn wait_until_quiet(
    pool: &mut WorkerPool,
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let seen = |pool: &WorkerPool| {
        let totals = pool.totals();
        (totals.pushes, totals.churn.events)
    };
    let mut last = seen(pool);
    let mut last_change = Instant::now();
    while Instant::now() < deadline && last_change.elapsed() < quiet {
        pool.pump(Duration::from_millis(100)).await?;
        let now = seen(pool);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    Ok(())
}

/// Every client's final state against the recount.
fn verdict(
    specs: &[WorkerSpec],
    reports: &[WorkerReport],
    oracle: &Oracle,
    count_prefix: &str,
) -> Verdict {
    let mut verdict = Verdict::default();
    let note = |verdict: &mut Verdict, text: String| {
        if verdict.examples.len() < 10 {
            verdict.examples.push(text);
        }
    };
    for (spec, report) in specs.iter().zip(reports) {
        let group = if spec.user_prefix == count_prefix {
            Group::Count
        } else {
            Group::Stream
        };
        let progress = &report.progress;
        verdict.failed += progress.failed;
        verdict.reconnects += progress.churn.reconnects;
        verdict.unexpected_drops += progress.churn.unexpected_drops;
        verdict.stream_events_received += progress.churn.events;
        verdict.gaps += progress.streams.gaps;
        verdict.repeats += progress.streams.repeats;
        verdict.resets += progress.streams.resets;
        verdict.epoch_changes += progress.streams.epoch_changes;
        for (error, count) in &report.errors {
            crate::worker::tally_error(&mut verdict.errors, error, *count, 8);
        }
        for (user, count) in &report.churn.final_counts {
            match group {
                Group::Count => verdict.count_clients += 1,
                Group::Stream => verdict.stream_clients += 1,
            }
            let expected = oracle.user(group, *user).map(|state| state.unread);
            if expected == Some(*count) {
                verdict.counts_right += 1;
            } else {
                verdict.counts_wrong += 1;
                note(
                    &mut verdict,
                    format!(
                        "{}{user}: count {count}, recount {expected:?}",
                        spec.user_prefix
                    ),
                );
            }
        }
        for (user, first, last) in &report.churn.stream_offsets {
            let expected = oracle.user(group, *user).map_or(0, |state| state.events);
            verdict.stream_events_expected += expected;
            let exact = if expected == 0 {
                (*first, *last) == (0, 0)
            } else {
                (*first, *last) == (1, expected)
            };
            if exact {
                verdict.streams_exact += 1;
            } else {
                verdict.streams_wrong += 1;
                note(
                    &mut verdict,
                    format!(
                        "{}{user}: events {first}..={last}, recount 1..={expected}",
                        spec.user_prefix
                    ),
                );
            }
        }
    }
    verdict
}

/// The invariants, each with what was measured.
fn checks(
    options: &SoakOptions,
    baseline: &Sample,
    end: &Sample,
    verdict: &Verdict,
    produced: &Produced,
) -> Vec<Check> {
    let rss_limit = baseline.rss_kib as f64 * (1.0 + options.rss_tolerance_percent / 100.0);
    let minutes = options.duration_seconds / 60.0;
    let reconnections_due = options.reconnect_per_minute * options.connections as f64 * minutes;
    vec![
        Check {
            invariant: "edge RSS at the end within --rss-tolerance-percent of the baseline's",
            met: end.rss_kib as f64 <= rss_limit,
            detail: format!(
                "{} KiB at {:.0} s, {} KiB at {:.0} s (limit {:.0} KiB: +{} %)",
                baseline.rss_kib,
                baseline.seconds,
                end.rss_kib,
                end.seconds,
                rss_limit,
                options.rss_tolerance_percent
            ),
        },
        Check {
            invariant: "edge open file descriptors at the end no more than at the baseline",
            met: end.open_fds <= baseline.open_fds,
            detail: format!(
                "{} at {:.0} s, {} at {:.0} s, every client connected at both",
                baseline.open_fds, baseline.seconds, end.open_fds, end.seconds
            ),
        },
        Check {
            invariant: "every client's final count equals the recount",
            met: verdict.counts_wrong == 0
                && verdict.counts_right == options.connections
                && produced.failures == 0,
            detail: format!(
                "{} right, {} wrong of {} clients; {} produce failures",
                verdict.counts_right, verdict.counts_wrong, options.connections, produced.failures
            ),
        },
        Check {
            invariant: "every stream client received exactly its user's events",
            met: verdict.streams_wrong == 0
                && verdict.streams_exact == verdict.stream_clients
                && verdict.gaps == 0
                && verdict.repeats == 0
                && verdict.resets == 0
                && verdict.epoch_changes == 0,
            detail: format!(
                "{} exact, {} wrong of {} stream clients; {} gaps, {} repeats, {} resets, {} epoch changes; {} events received, {} expected",
                verdict.streams_exact,
                verdict.streams_wrong,
                verdict.stream_clients,
                verdict.gaps,
                verdict.repeats,
                verdict.resets,
                verdict.epoch_changes,
                verdict.stream_events_received,
                verdict.stream_events_expected
            ),
        },
        Check {
            invariant: "no client gave up, and the scheduled reconnections happened",
            met: verdict.failed == 0 && (reconnections_due < 1.0 || verdict.reconnects > 0),
            detail: format!(
                "{} failed {:?}; {} reconnections ({reconnections_due:.0} scheduled), {} drops the schedule did not ask for",
                verdict.failed, verdict.errors, verdict.reconnects, verdict.unexpected_drops
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_recount_reads_everything_or_adds_a_message_and_counts_every_event() {
        let mut oracle = Oracle::new(2, 1);
        // No unread message: a message whatever the roll.
        assert_eq!(
            oracle.change(Group::Count, 0, 0),
            Some(Change::Message { seq: 1 })
        );
        assert_eq!(
            oracle.change(Group::Count, 0, 99),
            Some(Change::Message { seq: 2 })
        );
        assert_eq!(
            oracle.change(Group::Count, 0, 0),
            Some(Change::Read { seq: 2 })
        );
        // Read: the next low roll is a message again.
        assert_eq!(
            oracle.change(Group::Count, 0, 0),
            Some(Change::Message { seq: 3 })
        );
        assert_eq!(
            oracle.user(Group::Count, 0),
            Some(&UserState {
                last_seq: 3,
                unread: 1,
                events: 4
            })
        );
        assert_eq!(oracle.notify(0), Some(Change::Notification));
        assert_eq!(oracle.user(Group::Stream, 0).unwrap().events, 1);
        assert_eq!(oracle.user(Group::Stream, 0).unwrap().unread, 0);
        assert_eq!(oracle.change(Group::Count, 2, 0), None);
        assert_eq!(oracle.notify(1), None);
    }

    fn spec(prefix: &str) -> WorkerSpec {
        WorkerSpec {
            worker: 0,
            edge_urls: vec!["ws://127.0.0.1:1".to_owned()],
            protocol: Protocol::Cable,
            partner: "bench".to_owned(),
            secret: "x".repeat(32),
            user_prefix: prefix.to_owned(),
            first_user: 0,
            connections: 2,
            source_addresses: vec![std::net::Ipv4Addr::new(127, 1, 0, 1)],
            per_source_address: 8000,
            connect_concurrency: 1,
            latency: LatencySource::Receipts,
            events: Events::Off,
            churn: Churn::Off,
        }
    }

    #[test]
    fn the_verdict_compares_each_client_with_its_own_groups_recount() {
        let mut oracle = Oracle::new(2, 2);
        oracle.change(Group::Count, 1, 99);
        oracle.change(Group::Stream, 0, 99);
        oracle.notify(0);
        oracle.notify(1);
        let mut counts = WorkerReport::default();
        counts.churn.final_counts = vec![(0, 0), (1, 1)];
        let mut streams = WorkerReport::default();
        streams.churn.final_counts = vec![(0, 1), (1, 1)];
        streams.churn.stream_offsets = vec![(0, 1, 2), (1, 1, 2)];
        let verdict = verdict(
            &[spec("p-c"), spec("p-s")],
            &[counts, streams],
            &oracle,
            "p-c",
        );
        assert_eq!((verdict.count_clients, verdict.stream_clients), (2, 2));
        assert_eq!((verdict.counts_right, verdict.counts_wrong), (3, 1));
        assert_eq!((verdict.streams_exact, verdict.streams_wrong), (1, 1));
        assert_eq!(verdict.stream_events_expected, 3);
        assert_eq!(verdict.examples.len(), 2, "{:?}", verdict.examples);
    }
}
