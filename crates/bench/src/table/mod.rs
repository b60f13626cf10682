//! `fanout bench table`: what the count table costs an edge per user without a
//! connection, and how long a new edge takes to read it back.
//!
//! The bench starts an embedded Kafka in its own process (or uses `--local-brokers`)
//! with the run's topics, unread-counts on `--partitions`, and no other process. Then:
//! 1. **baseline**: an edge on the empty topics; its RSS once ready, and
//!    `--settle-seconds` later. Killed.
//! 2. **produce**: one `UnreadCount` per user to unread-counts (key
//!    `bench/user-<10 digits>`, padded with `x` to `--key-bytes`), as fast as a batching
//!    producer goes, every acknowledgement awaited. The watermarks must show every
//!    record kept (low watermark 0 on every partition, the highs summing to the users),
//!    else the run fails: the embedded broker keeps only the last 5 MiB of each
//!    partition.
//! 3. **loaded**: a new edge process; every [`POLL`] from its start, its RSS, `/readyz`
//!    and the records it applied, until ready: the catch-up time. Then its RSS, and
//!    `fanout_edge_table_keys`, which must be the users.
//!
//! RSS growth per user is (loaded RSS at ready − baseline RSS at ready) / users; its
//! target is ≤ 64 B, the catch-up's ≤ 5 s. A missed target is reported (`check.met`
//! false), not an error; a table that does not hold every user is one.

pub mod result;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::{user_key, v1};
use prost::Message as _;
use rdkafka::producer::Producer as _;

use self::result::{
    EdgeCpu, EdgeRun, Produced, Sample, TableBenchResult, TableCheck, TableSettings,
};
use crate::load::{producer, send};
use crate::report::Machine;
use crate::result::TargetCheck;
use crate::system::{cpu_seconds, http_get, kib_field, metric_value, thread_cpu_seconds};
use crate::target::{LocalDeployment, LocalOptions};

/// Options of `fanout bench table`.
#[derive(Debug, Clone, clap::Args)]
pub struct TableBenchOptions {
    /// Users, one count record each.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Partitions of the run's topics, unread-counts among them. The embedded broker
    /// keeps the last 5 MiB of each partition: 1M records with 21-byte keys are about
    /// 60 MB, so 16 at least (the run refuses fewer than its estimate asks, and fails
    /// if the watermarks show records deleted).
    #[arg(long, default_value_t = 64)]
    pub partitions: i32,
    /// Bytes of each key: `bench/user-<10 digits>` (21), padded with `x` if more.
    #[arg(long, default_value_t = 21)]
    pub key_bytes: usize,
    /// Seconds after ready that each edge's RSS is read again.
    #[arg(long, default_value_t = 2.0)]
    pub settle_seconds: f64,
    /// Most seconds an edge may take from its start to ready.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_seconds: f64,
    /// The Kafka (`host:port`) to run on instead of an embedded one; the run's topics
    /// are created there.
    #[arg(long)]
    pub local_brokers: Option<String>,
    /// A librdkafka setting (`property=value`; repeat for several) for the edges' Kafka
    /// clients, after the bench's own (e.g. `fetch.queue.backoff.ms=10`: see
    /// docs/benchmarks.md).
    #[arg(long = "kafka-client", value_name = "PROPERTY=VALUE", value_parser = crate::scenario::parse_setting)]
    pub kafka_client: Vec<(String, String)>,
    /// Where `table.json`, `table.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: std::path::PathBuf,
}

/// How often an edge is read while it starts.
const POLL: Duration = Duration::from_millis(50);

/// The targets: RSS per user without a connection, and the catch-up of 1M users.
const RSS_PER_USER_TARGET_BYTES: f64 = 64.0;
const CATCH_UP_TARGET_SECONDS: f64 = 5.0;

/// What the embedded broker keeps of a partition (librdkafka's mock: the last 5 MiB).
const MOCK_PARTITION_BYTES: f64 = 5.0 * 1024.0 * 1024.0;

/// The bench process's threads that are the embedded Kafka's.
const KAFKA_THREADS: &[&str] = &["rdk:", "embedded-kafka"];

/// What every user's name starts with.
const KEY_PREFIX: &str = "user-";

/// Runs the scenario and writes `<out_dir>/table.json` and `.svg`. Fails if the topic
/// lost records, or (after writing them) if the table does not hold every user.
pub async fn run(options: &TableBenchOptions) -> anyhow::Result<TableBenchResult> {
    anyhow::ensure!(options.users > 0, "--users must be at least 1");
    anyhow::ensure!(options.partitions > 0, "--partitions must be at least 1");
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = crate::system::run_dir(&options.out_dir, "table");
    let mut machine = Machine::read();
    let deployment = LocalDeployment::start(&LocalOptions {
        edges: 0,
        pipeline: false,
        partitions: options.partitions,
        user_partitions: None,
        brokers: options.local_brokers.as_deref(),
        kafka_client: &options.kafka_client,
        api: None,
        run_dir: &run_dir,
    })
    .await?;
    let keys = Keys::new(&deployment.partner, options.key_bytes)?;
    if options.local_brokers.is_none() {
        let per_partition = options.users as f64 * record_bytes(&keys) / options.partitions as f64;
        anyhow::ensure!(
            per_partition < MOCK_PARTITION_BYTES * 0.9,
            "table: {} users in {} partitions are about {:.1} MiB a partition, and the embedded broker keeps only the last 5 MiB of each: more --partitions (at least {}), or --local-brokers",
            options.users,
            options.partitions,
            per_partition / 1024.0 / 1024.0,
            (options.users as f64 * record_bytes(&keys) / (MOCK_PARTITION_BYTES * 0.9)).ceil()
        );
    }
    let timeout = Duration::from_secs_f64(options.timeout_seconds.max(1.0));
    let settle = Duration::from_secs_f64(options.settle_seconds.max(0.0));

    // 1. The baseline: an edge on the empty topics.
    eprintln!("table: baseline edge on the empty topics");
    let baseline = edge_run(&deployment, "edge-baseline", timeout, settle).await?;

    // 2. One count per user.
    eprintln!("table: producing {} count records", options.users);
    let kafka = KafkaSettings::new(deployment.brokers.clone());
    let mut produced = produce(&kafka, &deployment, &keys, options.users).await?;
    let marks = crate::system::watermarks(&kafka, &deployment.topics.unread_counts).await?;
    produced.partitions = marks.len();
    produced.records_in_topic = marks.values().map(|(low, high)| high - low).sum();
    produced.deleted_from = marks
        .iter()
        .filter(|(_, (low, _))| *low > 0)
        .map(|(partition, _)| *partition)
        .collect();
    let (fewest, most) = marks
        .values()
        .map(|(_, high)| *high)
        .fold((i64::MAX, 0), |(low, high), records| {
            (low.min(records), high.max(records))
        });
    produced.records_per_partition = (fewest, most);
    anyhow::ensure!(
        produced.acknowledged == options.users && produced.failed == 0,
        "table: {} of {} records acknowledged, {} failed",
        produced.acknowledged,
        options.users,
        produced.failed
    );
    anyhow::ensure!(
        produced.deleted_from.is_empty(),
        "table: the broker deleted records from the front of {} partition(s) ({:?}: low watermark above 0): the embedded broker keeps only the last 5 MiB of each partition; more --partitions, or --local-brokers",
        produced.deleted_from.len(),
        produced.deleted_from
    );
    anyhow::ensure!(
        u64::try_from(produced.records_in_topic).ok() == Some(options.users),
        "table: unread-counts holds {} records for {} users",
        produced.records_in_topic,
        options.users
    );
    eprintln!(
        "table: {} records in {:.1} s, all acknowledged and kept",
        produced.acknowledged, produced.seconds
    );

    // 3. A new edge reads them back.
    eprintln!("table: an edge reading them back");
    let loaded = edge_run(&deployment, "edge-loaded", timeout, settle).await?;
    drop(deployment);

    let growth = |loaded: u64, baseline: u64| {
        (loaded as f64 - baseline as f64) * 1024.0 / options.users as f64
    };
    let rss_per_user_bytes = growth(loaded.rss_ready_kib, baseline.rss_ready_kib);
    let rss_per_user_settled_bytes = growth(loaded.rss_settled_kib, baseline.rss_settled_kib);
    let keys_passed = loaded.table_keys == Some(options.users);
    let rss_check = TargetCheck {
        metric: "edge RSS growth per user without a connection, at ready (bytes)",
        target: format!("<= {RSS_PER_USER_TARGET_BYTES}"),
        measured: round(rss_per_user_bytes, 1),
        met: rss_per_user_bytes <= RSS_PER_USER_TARGET_BYTES,
    };
    let catch_up_check = TargetCheck {
        metric: "edge start → /readyz 200 (seconds)",
        target: format!("<= {CATCH_UP_TARGET_SECONDS}"),
        measured: round(loaded.ready_seconds, 2),
        met: loaded.ready_seconds <= CATCH_UP_TARGET_SECONDS,
    };
    let check = TableCheck {
        users: options.users,
        table_keys: loaded.table_keys,
        records_applied: loaded.records_applied,
        keys_passed,
        met: keys_passed && rss_check.met && catch_up_check.met,
        rss_per_user: rss_check,
        catch_up: catch_up_check,
    };
    machine.load_at_end = crate::report::load_average();
    let result_path = options.out_dir.join("table.json");
    let plot_path = options.out_dir.join("table.svg");
    let mut kafka_description = match &options.local_brokers {
        Some(brokers) => format!("the Kafka at {brokers}"),
        None => "embedded Kafka (librdkafka mock) in the bench process".to_owned(),
    };
    for (property, value) in &options.kafka_client {
        kafka_description.push_str(&format!(", {property}={value}"));
    }
    let result = TableBenchResult {
        scenario: "table",
        target: format!(
            "local: {kafka_description}, {} partitions; one edge process at a time, nothing else",
            options.partitions
        ),
        machine,
        settings: TableSettings {
            users: options.users,
            partitions: options.partitions,
            key_bytes: keys.bytes,
            key_example: keys.key(0),
            settle_seconds: settle.as_secs_f64(),
        },
        produced,
        baseline,
        loaded,
        rss_per_user_bytes: round(rss_per_user_bytes, 1),
        rss_per_user_settled_bytes: round(rss_per_user_settled_bytes, 1),
        check,
        result_file: result_path.display().to_string(),
        plot_file: plot_path.display().to_string(),
    };
    result::plot(&plot_path, &result)?;
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    anyhow::ensure!(
        result.check.keys_passed,
        "table: the edge's table holds {:?} users, not {} (see {}):\n{}",
        result.check.table_keys,
        options.users,
        result.result_file,
        result::summary(&result)
    );
    Ok(result)
}

/// The run's keys: `<partner>/user-<10 digits>`, padded with `x` to `bytes`.
struct Keys {
    partner: String,
    bytes: usize,
}

impl Keys {
    fn new(partner: &str, bytes: usize) -> anyhow::Result<Self> {
        let shortest = partner.len() + 1 + KEY_PREFIX.len() + 10;
        anyhow::ensure!(
            bytes >= shortest,
            "--key-bytes must be at least {shortest} (`{partner}/{KEY_PREFIX}` and 10 digits)"
        );
        Ok(Self {
            partner: partner.to_owned(),
            bytes,
        })
    }

    fn user(&self, index: u64) -> String {
        let user = format!("{KEY_PREFIX}{index:010}");
        let padding = self
            .bytes
            .saturating_sub(self.partner.len() + 1 + user.len());
        format!("{user}{}", "x".repeat(padding))
    }

    fn key(&self, index: u64) -> String {
        user_key(&self.partner, &self.user(index))
    }
}

/// About what one record takes in a partition: the key, the value (which holds the
/// partner and the user again) and the record's own framing, batched.
fn record_bytes(keys: &Keys) -> f64 {
    (keys.bytes * 2 + 30) as f64
}

/// Produces one count per user and waits for every acknowledgement.
async fn produce(
    kafka: &KafkaSettings,
    deployment: &LocalDeployment,
    keys: &Keys,
    users: u64,
) -> anyhow::Result<Produced> {
    let (producer, deliveries) = producer(
        kafka,
        &[
            // Large batches: the embedded broker answers a fetch with one batch of each
            // partition, so small ones would make the read-back a fetch per few records.
            ("linger.ms", "50"),
            ("batch.num.messages", "100000"),
            ("batch.size", "1000000"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )?;
    let topic = &deployment.topics.unread_counts;
    let occurred_at_ms = fanout_schema::unix_millis();
    let started = Instant::now();
    let mut payload = Vec::with_capacity(128);
    for index in 0..users {
        let user = keys.user(index);
        let key = user_key(&keys.partner, &user);
        let record = v1::UnreadCount {
            partner: keys.partner.clone(),
            user,
            count: 1 + index % 50,
            version: 1,
            occurred_at_ms,
        };
        payload.clear();
        record.encode(&mut payload)?;
        send(&producer, topic, &key, &payload).await?;
        if index % 10_000 == 9_999 {
            tokio::task::yield_now().await;
        }
    }
    let queued_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let acknowledged = deliveries
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed);
        let failed = deliveries.failed.load(std::sync::atomic::Ordering::Relaxed);
        if acknowledged + failed >= users || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = producer.flush(Duration::from_secs(5));
    let acknowledged = deliveries
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok(Produced {
        acknowledged,
        failed: deliveries.failed.load(std::sync::atomic::Ordering::Relaxed),
        queued_seconds: round(queued_seconds, 2),
        seconds: round(seconds, 2),
        per_second: round(acknowledged as f64 / seconds.max(1e-9), 0),
        partitions: 0,
        records_in_topic: 0,
        records_per_partition: (0, 0),
        deleted_from: Vec::new(),
    })
}

/// Starts an edge named `name` and reads it every [`POLL`] until it is ready, then its
/// figures at ready and `settle` later; kills it.
async fn edge_run(
    deployment: &LocalDeployment,
    name: &str,
    timeout: Duration,
    settle: Duration,
) -> anyhow::Result<EdgeRun> {
    let kafka_cpu_before = thread_cpu_seconds(std::process::id(), KAFKA_THREADS).0;
    let started = Instant::now();
    let mut edge = deployment.spawn_edge(name)?;
    let pid = edge.target.pid.context("the edge has no pid")?;
    let admin = edge
        .target
        .admin
        .clone()
        .context("the edge has no admin address")?;
    let mut run = EdgeRun::default();
    loop {
        if let Some(status) = edge.child.try_wait()? {
            anyhow::bail!(
                "table: the edge exited ({status}) before it was ready; see {}",
                edge.log.display()
            );
        }
        let ready = http_get(&admin, "/readyz").await;
        let seconds = started.elapsed().as_secs_f64();
        let rss = crate::system::rss_kib(pid).ok();
        let answered = ready.is_ok();
        if answered && run.admin_seconds.is_none() {
            run.admin_seconds = Some(round(seconds, 3));
            run.rss_admin_kib = rss;
        }
        if matches!(ready, Ok((200, _))) {
            let (edge_kafka, edge_others) = thread_cpu_seconds(pid, &["rdk:"]);
            run.cpu = EdgeCpu {
                edge: round(cpu_seconds(pid).unwrap_or(0.0), 2),
                edge_librdkafka_threads: round(edge_kafka, 2),
                edge_other_threads: round(edge_others, 2),
                embedded_broker: round(
                    thread_cpu_seconds(std::process::id(), KAFKA_THREADS).0 - kafka_cpu_before,
                    2,
                ),
            };
            run.ready_seconds = round(seconds, 3);
            run.rss_ready_kib = rss.unwrap_or(0);
            let metrics = read_metrics(&admin).await;
            run.table_keys = metrics.table_keys;
            run.records_applied = metrics.applied;
            run.samples.push(Sample {
                seconds: run.ready_seconds,
                rss_kib: run.rss_ready_kib,
                applied: metrics.applied,
            });
            break;
        }
        let applied = if answered {
            read_metrics(&admin).await.applied
        } else {
            None
        };
        if run.first_applied_seconds.is_none() && applied.is_some_and(|applied| applied > 0) {
            run.first_applied_seconds = Some(round(seconds, 3));
        }
        if let Some(rss_kib) = rss {
            run.samples.push(Sample {
                seconds: round(seconds, 3),
                rss_kib,
                applied,
            });
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "table: the edge was not ready {timeout:?} after its start; see {}",
            edge.log.display()
        );
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(settle).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    run.rss_settled_kib = kib_field(&status, "VmRSS:").unwrap_or(0);
    run.rss_peak_kib = kib_field(&status, "VmHWM:").unwrap_or(0);
    run.samples.push(Sample {
        seconds: round(started.elapsed().as_secs_f64(), 3),
        rss_kib: run.rss_settled_kib,
        applied: run.records_applied,
    });
    edge.child.start_kill().context("stopping the edge")?;
    edge.child.wait().await.context("waiting for the edge")?;
    Ok(run)
}

/// What the edge's `/metrics` says of its table.
#[derive(Default)]
struct TableMetrics {
    table_keys: Option<u64>,
    /// `fanout_edge_count_records_total`, result `applied`.
    applied: Option<u64>,
}

async fn read_metrics(admin: &str) -> TableMetrics {
    let Ok((200, text)) = http_get(admin, "/metrics").await else {
        return TableMetrics::default();
    };
    let applied = text.lines().find_map(|line| {
        let labelled = line.strip_prefix("fanout_edge_count_records_total")?;
        let value = labelled.strip_prefix(r#"{result="applied"} "#)?;
        value.trim().parse::<f64>().ok()
    });
    TableMetrics {
        table_keys: metric_value(&text, "fanout_edge_table_keys").map(|keys| keys as u64),
        applied: applied.map(|applied| applied as u64),
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_padded_to_the_length_asked_and_distinct() {
        let keys = Keys::new("bench", 21).unwrap();
        assert_eq!(keys.key(42), "bench/user-0000000042");
        let long = Keys::new("bench", 30).unwrap();
        assert_eq!(long.key(7), "bench/user-0000000007xxxxxxxxx");
        assert_eq!(long.key(7).len(), 30);
        assert_ne!(long.key(7), long.key(8));
        assert!(Keys::new("bench", 20).is_err());
    }
}
