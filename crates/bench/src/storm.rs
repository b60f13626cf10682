//! reconnect-storm: stream subscribers on one edge, a steady rate of events to them,
//! and the edge killed and started again on the same port while the events keep
//! coming. Every client reconnects and resumes from the last position it has
//! ([`super::worker`]'s resuming clients); this module runs the load and the restart,
//! reads the edge's RSS and history window as it goes, and afterwards turns the
//! clients' reports into recovery times.
//!
//! **Recovered.** The new edge is ready when the bench first sees its `/readyz` answer
//! 200; the user-streams high-water marks read right then fix each user's position at
//! ready (the last record of the user below them). A client has recovered once it has
//! every event up to that position, with no gap and no repeat from where it was (the
//! clients check every offset), or, if its user had no event it lacked, once its
//! resubscription was confirmed.
//!
//! **Memory per event.** While events flow before the restart nothing is evicted, and
//! the connections are all subscribed already: the edge's RSS grows with the window.
//! Its slope over `fanout_edge_history_events` is the memory per buffered event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::{unix_micros, v1};
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::load::{Notifications, NotificationsSent};
use super::pool::{WorkerPool, progress_bar};
use super::report::LatencySummary;
use super::result::{
    HistoryMemory, HistorySample, RestartResult, StormClients, StormResult, TargetCheck,
};
use super::scenario::{Scenario, WsBenchOptions};
use super::system::{cpu_seconds, http_get, metric_value};
use super::target::Target;
use super::worker::{ClientRecovery, WorkerReport, new_histogram};

/// reconnect-storm's default events per second and bytes of data per event.
pub const DEFAULT_RATE: u64 = 5_000;
pub const DEFAULT_DATA_BYTES: usize = 1024;

/// The targets: every client recovered within this long of the edge reporting ready,
/// and the window's memory per buffered 1 KiB event at most this.
const RECOVERY_TARGET_SECONDS: f64 = 5.0;
const MEMORY_TARGET_BYTES_PER_EVENT: f64 = 1536.0;

/// Events keep flowing this long after every client subscribed again, so that each
/// has the time to reach its position at ready.
const TAIL: Duration = Duration::from_secs(5);
/// Samples earlier than this after the load started are left out of the slope: the
/// sessions' first event buffers are allocated then.
const SLOPE_FROM: Duration = Duration::from_secs(2);

/// The edge reconnect-storm restarts: its only one.
const EDGE: usize = 0;

/// Fails early on what reconnect-storm cannot do.
pub(super) fn check_options(options: &WsBenchOptions) -> anyhow::Result<()> {
    let scenario = Scenario::ReconnectStorm;
    anyhow::ensure!(
        !options.external.is_named(),
        "{} restarts the edge, so it needs one the bench starts itself (no --edge-url)",
        scenario.name()
    );
    anyhow::ensure!(
        options.edges.unwrap_or(1) == 1,
        "{} runs one edge",
        scenario.name()
    );
    anyhow::ensure!(
        options.protocol_of(scenario) == crate::worker::Protocol::Realtime,
        "{}'s clients resume on /realtime only (--protocol realtime)",
        scenario.name()
    );
    Ok(())
}

/// What the load and the restart measured, before the clients' reports are read.
pub(super) struct StormLoad {
    rate: u64,
    data_bytes: usize,
    warm_up_seconds: f64,
    samples: Vec<HistorySample>,
    /// The first edge's window at the end of the warm-up.
    before_kill: HistorySample,
    restarted: Option<HistorySample>,
    restart: RestartResult,
    /// user-streams' high-water mark of each partition when the new edge was ready.
    watermarks_at_ready: HashMap<i32, i64>,
    /// user-streams' records from the load's start on.
    followed: Vec<Followed>,
    sent: NotificationsSent,
    edge_resumes: Vec<(String, f64)>,
    /// Edge CPU seconds over the load: the first edge's until it was killed, then the
    /// new one's.
    pub(super) edge_cpu_seconds: f64,
}

/// Runs the load: the warm-up, the restart, and the events after it until every client
/// subscribed again and [`TAIL`] more.
pub(super) async fn run_load(
    pool: &mut WorkerPool,
    kafka: &KafkaSettings,
    target: &mut Target,
    user_prefix: &str,
    users: u64,
    options: &WsBenchOptions,
    warm_up: Duration,
) -> anyhow::Result<StormLoad> {
    let rate = options.rate.unwrap_or(DEFAULT_RATE);
    let data_bytes = options.data_bytes.unwrap_or(DEFAULT_DATA_BYTES);
    let subscribed = pool.totals().subscribed;
    let first_pid = target.edges[EDGE].pid.context("the edge has no pid")?;
    let first_cpu = cpu_seconds(first_pid).unwrap_or(0.0);
    let follower = Follower::start(kafka, &target.topics.user_streams, user_prefix).await?;
    let notifications =
        Notifications::start(kafka, target, user_prefix, users, rate, data_bytes).await?;
    let started = Instant::now();

    // Warm-up: events fill the window; the edge read once a second.
    let mut samples = vec![sample(target, started).await];
    let bar = progress_bar(warm_up.as_secs().max(1), "warm-up s");
    while started.elapsed() < warm_up {
        pool.pump(Duration::from_millis(100)).await?;
        let due = Duration::from_secs(samples.len() as u64);
        if started.elapsed() >= due {
            samples.push(sample(target, started).await);
        }
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!("{} events produced", notifications.produced()));
    }
    bar.finish_and_clear();
    // A client with no event has no position to resume from.
    pool.wait(Duration::from_secs(60), None, |pool| {
        let totals = pool.totals();
        totals.streams.positioned + totals.failed >= subscribed
    })
    .await
    .context("waiting for every client's first event")?;
    let before_kill = sample(target, started).await;
    samples.push(before_kill);
    let warm_up_seconds = started.elapsed().as_secs_f64();

    // The restart.
    let first_edge_warm_up_cpu_seconds = cpu_seconds(first_pid).unwrap_or(first_cpu) - first_cpu;
    let watermarks_at_kill = watermarks(kafka, &target.topics.user_streams).await?;
    let killed_us = unix_micros();
    target.restart_edge(EDGE).await?;
    let new_pid = target.edges[EDGE].pid.context("the new edge has no pid")?;
    let ready_deadline = Instant::now() + Duration::from_secs(300);
    while !target.edge_ready(EDGE).await? {
        anyhow::ensure!(
            Instant::now() < ready_deadline,
            "the restarted edge was not ready in 300 s"
        );
        pool.pump(Duration::ZERO).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_us = unix_micros();
    let new_edge_cpu_seconds_to_ready = cpu_seconds(new_pid).unwrap_or(0.0);
    let watermarks_at_ready = watermarks(kafka, &target.topics.user_streams).await?;
    eprintln!(
        "reconnect-storm: edge killed, ready again after {:.2} s",
        seconds_between(killed_us, ready_us)
    );

    // Every client back, then the tail.
    let bar = progress_bar(subscribed, "resubscribed");
    pool.wait(Duration::from_secs(300), Some(&bar), |pool| {
        let totals = pool.totals();
        bar.set_position(totals.streams.resubscribed);
        totals.streams.resubscribed + totals.failed >= subscribed
    })
    .await
    .context("waiting for every client to subscribe again")?;
    bar.finish_and_clear();
    let all_resubscribed_us = unix_micros();
    // The edge sets its history metrics once a second.
    let since_ready = Duration::from_micros(all_resubscribed_us.saturating_sub(ready_us));
    let settle = Duration::from_millis(1_200).saturating_sub(since_ready);
    pool.pump(settle).await?;
    let restarted = sample(target, started).await;
    let tail_end = Instant::now() + TAIL;
    while Instant::now() < tail_end {
        pool.pump(Duration::from_millis(100)).await?;
    }
    let edge_resumes = stream_resumes(target).await;
    let new_edge_cpu_seconds = cpu_seconds(new_pid).unwrap_or(0.0);
    let sent = notifications.stop().await?;
    let followed = follower.stop(watermarks_at_ready.clone()).await?;

    Ok(StormLoad {
        rate,
        data_bytes,
        warm_up_seconds,
        samples,
        before_kill,
        restarted: Some(restarted),
        restart: RestartResult {
            killed_us,
            ready_us,
            kill_to_ready_seconds: seconds_between(killed_us, ready_us),
            ready_to_all_resubscribed_seconds: seconds_between(ready_us, all_resubscribed_us),
            stream_records_while_down: records_between(&watermarks_at_kill, &watermarks_at_ready),
            first_edge_warm_up_cpu_seconds,
            new_edge_cpu_seconds_to_ready,
            new_edge_cpu_seconds,
        },
        watermarks_at_ready,
        followed,
        sent,
        edge_resumes,
        edge_cpu_seconds: first_edge_warm_up_cpu_seconds + new_edge_cpu_seconds,
    })
}

/// The edge's RSS and history window now.
async fn sample(target: &Target, started: Instant) -> HistorySample {
    let edge = &target.edges[EDGE];
    let rss_kib = edge
        .pid
        .and_then(|pid| super::system::rss_kib(pid).ok())
        .unwrap_or(0);
    let metrics = match &edge.admin {
        Some(admin) => http_get(admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default(),
        None => String::new(),
    };
    let gauge = |name: &str| metric_value(&metrics, name).map_or(0, |value| value as u64);
    HistorySample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kib,
        events: gauge("fanout_edge_history_events"),
        bytes: gauge("fanout_edge_history_bytes"),
    }
}

/// The edge's `fanout_edge_stream_resumes_total`, by result.
async fn stream_resumes(target: &Target) -> Vec<(String, f64)> {
    let Some(admin) = &target.edges[EDGE].admin else {
        return Vec::new();
    };
    let Ok((_, metrics)) = http_get(admin, "/metrics").await else {
        return Vec::new();
    };
    let prefix = "fanout_edge_stream_resumes_total{result=\"";
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            let (result, value) = rest.split_once("\"} ")?;
            Some((result.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Every partition's high-water mark of `topic` now.
async fn watermarks(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    Ok(crate::system::watermarks(kafka, topic)
        .await?
        .into_iter()
        .map(|(partition, (_, high))| (partition, high))
        .collect())
}

/// One user-streams record as [`Follower`] read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Followed {
    partition: i32,
    kafka_offset: i64,
    user: u64,
    /// Its position in the user's stream.
    offset: u64,
}

/// Follows user-streams from where it ends when started, in a thread of its own, and
/// notes where each record put its user's stream. It reads as the records come: the
/// embedded broker keeps only the last 5 MiB of each partition (librdkafka's mock
/// cluster), a few seconds of this load, so the run's records cannot be read back at
/// its end.
struct Follower {
    /// Set to stop once every partition is read up to these offsets.
    until: Arc<Mutex<Option<HashMap<i32, i64>>>>,
    thread: tokio::task::JoinHandle<anyhow::Result<Vec<Followed>>>,
}

impl Follower {
    async fn start(kafka: &KafkaSettings, topic: &str, user_prefix: &str) -> anyhow::Result<Self> {
        let starts = watermarks(kafka, topic).await?;
        let mut config = kafka.assign_consumer_config();
        // The embedded broker answers an empty fetch only after this wait.
        config.set("fetch.wait.max.ms", "5");
        let consumer: BaseConsumer = config.create().context("creating a consumer")?;
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in &starts {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*start))?;
        }
        consumer.assign(&assignment)?;
        let until: Arc<Mutex<Option<HashMap<i32, i64>>>> = Arc::default();
        let thread = {
            let until = until.clone();
            let user_prefix = user_prefix.to_owned();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                follow(&consumer, &topic, &user_prefix, starts, &until)
            })
        };
        Ok(Self { until, thread })
    }

    /// Reads on until every partition is read up to `until`, then stops.
    async fn stop(self, until: HashMap<i32, i64>) -> anyhow::Result<Vec<Followed>> {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
        self.thread.await.context("the user-streams follower")?
    }
}

fn follow(
    consumer: &BaseConsumer,
    topic: &str,
    user_prefix: &str,
    starts: HashMap<i32, i64>,
    until: &Mutex<Option<HashMap<i32, i64>>>,
) -> anyhow::Result<Vec<Followed>> {
    let mut next = starts;
    let mut followed = Vec::new();
    let mut stop_by: Option<Instant> = None;
    loop {
        if let Some(until) = until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let done = until
                .iter()
                .all(|(partition, end)| next.get(partition).is_some_and(|at| at >= end));
            if done {
                return Ok(followed);
            }
            let deadline = *stop_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
            anyhow::ensure!(
                Instant::now() < deadline,
                "following {topic}: not at its end 60 s after the load stopped"
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.with_context(|| format!("reading {topic}"))?;
        next.insert(message.partition(), message.offset() + 1);
        let record = v1::StreamEvent::decode(message.payload().unwrap_or_default())
            .context("decoding a user-streams record")?;
        if let Some(user) = record
            .user
            .strip_prefix(user_prefix)
            .and_then(|index| index.parse::<u64>().ok())
        {
            followed.push(Followed {
                partition: message.partition(),
                kafka_offset: message.offset(),
                user,
                offset: record.offset,
            });
        }
    }
}

/// Each user's position when user-streams ended at `watermarks`: its last record below
/// them; and how many positions the follower never saw (holes in a user's offsets:
/// records the broker dropped before they were read).
fn positions_at(followed: &[Followed], watermarks: &HashMap<i32, i64>) -> (HashMap<u64, u64>, u64) {
    let mut positions: HashMap<u64, u64> = HashMap::new();
    let mut last_seen: HashMap<u64, u64> = HashMap::new();
    let mut unseen = 0;
    for record in followed {
        if let Some(last) = last_seen.insert(record.user, record.offset) {
            unseen += record.offset.saturating_sub(last + 1);
        }
        let before_end = watermarks
            .get(&record.partition)
            .is_some_and(|end| record.kafka_offset < *end);
        if before_end {
            // A user's records are in position order within its partition.
            positions.insert(record.user, record.offset);
        }
    }
    (positions, unseen)
}

/// The result, from the load and the clients' reports: each client's recovery against
/// its user's position at ready, as the follower of user-streams saw it.
pub(super) fn result(
    load: StormLoad,
    reports: &[WorkerReport],
    subscribed: u64,
) -> anyhow::Result<(StormResult, Histogram<u64>)> {
    let (positions, unseen) = positions_at(&load.followed, &load.watermarks_at_ready);
    anyhow::ensure!(
        unseen == 0,
        "the bench's reader of user-streams missed {unseen} records (the embedded broker dropped them before it read them): the positions at ready are not known"
    );
    let recoveries: Vec<&ClientRecovery> = reports
        .iter()
        .flat_map(|report| report.recoveries.iter())
        .collect();
    let streams = reports
        .iter()
        .fold(crate::worker::StreamProgress::default(), |total, report| {
            total.plus(&report.progress.streams)
        });
    let mut clients = StormClients {
        subscribed,
        dropped: streams.dropped,
        resubscribed: streams.resubscribed,
        resets: streams.resets,
        gaps: streams.gaps,
        repeats: streams.repeats,
        epoch_changes: streams.epoch_changes,
        events_received: streams.events,
        ..StormClients::default()
    };
    let mut histogram = new_histogram()?;
    let mut attempts = 0_u64;
    for recovery in &recoveries {
        let needed = positions.get(&recovery.user).copied().unwrap_or(0);
        clients.missed_announced += recovery.missed;
        clients.missed_needed += needed.saturating_sub(recovery.from_offset);
        attempts += u64::from(recovery.attempts);
        clients.reconnect_attempts_max = clients.reconnect_attempts_max.max(recovery.attempts);
        match recovered_at(recovery, needed) {
            Some(recovered_us) => {
                clients.recovered += 1;
                histogram
                    .saturating_record(recovered_us.saturating_sub(load.restart.ready_us).max(1));
            }
            None => clients.not_recovered += 1,
        }
    }
    // A client that was subscribed and reported nothing did not recover either.
    clients.not_recovered += subscribed.saturating_sub(recoveries.len() as u64);
    clients.reconnect_attempts_mean = if recoveries.is_empty() {
        0.0
    } else {
        attempts as f64 / recoveries.len() as f64
    };
    let all_recovered_seconds =
        (clients.not_recovered == 0 && clients.recovered > 0).then(|| histogram.max() as f64 / 1e6);
    let memory = history_memory(&load);
    let memory_check = memory.rss_bytes_per_event.map(|bytes| TargetCheck {
        metric: "edge RSS per event in the history window (bytes), 1 KiB of data each",
        target: format!("<= {MEMORY_TARGET_BYTES_PER_EVENT}"),
        measured: bytes,
        met: load.data_bytes == DEFAULT_DATA_BYTES && bytes <= MEMORY_TARGET_BYTES_PER_EVENT,
    });
    let result = StormResult {
        rate: load.rate,
        data_bytes: load.data_bytes,
        warm_up_seconds: load.warm_up_seconds,
        produced: load.sent.produced,
        produce_seconds: load.sent.seconds,
        produce_failures: load.sent.failures,
        restart: load.restart,
        clients,
        recovery: LatencySummary::of(&histogram),
        all_recovered_seconds,
        edge_resumes: load.edge_resumes,
        memory,
        memory_check,
    };
    Ok((result, histogram))
}

/// When a client had every event up to offset `needed`: the first event at or past it
/// received after the drop, or its resubscription if it lacked none. `None`: it never
/// dropped, never resubscribed, was told to reset, or never got that far.
fn recovered_at(recovery: &ClientRecovery, needed: u64) -> Option<u64> {
    if recovery.dropped_us == 0 || recovery.resubscribed_us == 0 || recovery.reset {
        return None;
    }
    if needed <= recovery.from_offset {
        return Some(recovery.resubscribed_us);
    }
    recovery
        .received
        .iter()
        .find(|(offset, _)| *offset >= needed)
        .map(|(_, received_us)| *received_us)
}

/// The window's memory from the samples.
fn history_memory(load: &StormLoad) -> HistoryMemory {
    let from = SLOPE_FROM.as_secs_f64();
    let points: Vec<(f64, f64)> = load
        .samples
        .iter()
        .filter(|sample| sample.seconds >= from && sample.events > 0)
        .map(|sample| (sample.events as f64, sample.rss_kib as f64 * 1024.0))
        .collect();
    let endpoints = match (points.first(), points.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            Some((last.1 - first.1) / (last.0 - first.0))
        }
        _ => None,
    };
    let before_events = load.samples.first().map_or(0, |sample| sample.rss_kib);
    let restarted_rss_bytes_per_event = load.restarted.and_then(|restarted| {
        (restarted.events > 0).then(|| {
            (restarted.rss_kib as f64 - before_events as f64) * 1024.0 / restarted.events as f64
        })
    });
    HistoryMemory {
        samples: load.samples.clone(),
        accounted_bytes_per_event: (load.before_kill.events > 0)
            .then(|| load.before_kill.bytes as f64 / load.before_kill.events as f64),
        rss_bytes_per_event: slope(&points),
        rss_bytes_per_event_endpoints: endpoints,
        restarted: load.restarted,
        restarted_rss_bytes_per_event,
    }
}

/// The least-squares slope of y over x; `None` with fewer than 3 points or no spread.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let count = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / count;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / count;
    let (covariance, variance) = points.iter().fold((0.0, 0.0), |(cov, var), (x, y)| {
        (
            cov + (x - mean_x) * (y - mean_y),
            var + (x - mean_x) * (x - mean_x),
        )
    });
    (variance > 0.0).then(|| covariance / variance)
}

/// The recovery target: every client recovered within [`RECOVERY_TARGET_SECONDS`] of
/// the edge reporting ready, with no reset, gap or repeat.
pub(super) fn check(storm: &StormResult) -> TargetCheck {
    let clients = &storm.clients;
    let clean = clients.resets == 0 && clients.gaps == 0 && clients.repeats == 0;
    let measured = storm.all_recovered_seconds.unwrap_or(f64::INFINITY);
    TargetCheck {
        metric: "seconds from the edge ready until every client recovered every missed event",
        target: format!("<= {RECOVERY_TARGET_SECONDS}, no reset, gap or repeat"),
        measured,
        met: clean && measured <= RECOVERY_TARGET_SECONDS,
    }
}

/// Records written between two readings of a topic's high-water marks.
fn records_between(before: &HashMap<i32, i64>, after: &HashMap<i32, i64>) -> u64 {
    after
        .iter()
        .map(|(partition, high)| {
            let low = before.get(partition).copied().unwrap_or(0);
            u64::try_from(high.saturating_sub(low)).unwrap_or(0)
        })
        .sum()
}

fn seconds_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recovery(from_offset: u64, received: &[(u64, u64)]) -> ClientRecovery {
        ClientRecovery {
            user: 7,
            dropped_us: 1_000,
            from_offset,
            attempts: 2,
            resubscribed_us: 5_000,
            missed: 0,
            reset: false,
            received: received.to_vec(),
        }
    }

    #[test]
    fn a_client_recovers_with_the_event_at_its_users_position_at_ready() {
        let client = recovery(3, &[(4, 5_100), (5, 5_200), (6, 9_000)]);
        assert_eq!(recovered_at(&client, 5), Some(5_200));
        // Nothing missed: back once resubscribed.
        assert_eq!(recovered_at(&client, 3), Some(5_000));
        // Not there yet when the run ended.
        assert_eq!(recovered_at(&client, 7), None);
        let reset = ClientRecovery {
            reset: true,
            ..client.clone()
        };
        assert_eq!(recovered_at(&reset, 3), None);
        let never_back = ClientRecovery {
            resubscribed_us: 0,
            ..client
        };
        assert_eq!(recovered_at(&never_back, 3), None);
    }

    #[test]
    fn positions_at_ready_are_each_users_last_record_below_the_marks() {
        let record = |partition, kafka_offset, user, offset| Followed {
            partition,
            kafka_offset,
            user,
            offset,
        };
        let followed = [
            record(0, 10, 1, 4),
            record(1, 20, 2, 7),
            record(0, 11, 1, 5),
            record(1, 21, 2, 8),
            record(0, 12, 1, 6),
        ];
        let marks = HashMap::from([(0, 12), (1, 30)]);
        let (positions, unseen) = positions_at(&followed, &marks);
        assert_eq!(positions, HashMap::from([(1, 5), (2, 8)]));
        assert_eq!(unseen, 0);
        let holed = [record(0, 10, 1, 4), record(0, 11, 1, 7)];
        assert_eq!(positions_at(&holed, &marks).1, 2);
    }

    #[test]
    fn the_slope_is_the_least_squares_one() {
        let points = [(0.0, 10.0), (1.0, 12.0), (2.0, 14.5), (3.0, 15.5)];
        let fitted = slope(&points).unwrap();
        assert!((fitted - 1.9).abs() < 1e-9, "{fitted}");
        assert_eq!(slope(&points[..2]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }
}
