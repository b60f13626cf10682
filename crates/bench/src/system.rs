//! What the bench asks of this machine and process, needing no other part of the
//! bench: this binary to start as a child, the open-file limit, the source addresses
//! clients bind, /proc for a process's RSS, CPU time and write calls, a child's
//! `/readyz` and `/metrics` over HTTP, topics on a running broker and their
//! watermarks, and where a run's files go.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use fanout_kafka::KafkaSettings;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::process::Command;

/// Raises this process's soft open-file limit to the hard one (children inherit it).
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// Source addresses for worker `worker` of a run: `127.<run>.<worker>.1`, `.2`, ... `run`
/// (1 to 254, random per run) keeps a run off the ports a previous run's connections
/// still hold in TIME_WAIT; 127.0.0.1, which the edges and Kafka use, is never one.
pub fn source_addresses(run: u8, worker: usize, count: usize) -> Vec<Ipv4Addr> {
    let run = run.clamp(1, 254);
    let worker = u8::try_from(worker % 250).unwrap_or(0);
    (1..=count.clamp(1, 250))
        .map(|host| Ipv4Addr::new(127, run, worker, u8::try_from(host).unwrap_or(1)))
        .collect()
}

/// This binary, to start as a child process (a role, a bench worker): logging at
/// `warn` (the edge feed at `info`) to `log`, killed if dropped. The caller adds the
/// arguments and stdio.
pub(crate) fn this_binary(log: &Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        // The edge feed's few info lines (started, catching up again, caught up) time
        // a restart's read-back (reconnect-storm).
        .env("RUST_LOG", "warn,fanout_edge::feed=info")
        .stderr(log_file)
        .kill_on_drop(true);
    Ok(command)
}

/// VmRSS of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    kib_field(&status, "VmRSS:").with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// This machine's memory from /proc/meminfo, in KiB: (MemTotal, MemTotal − MemAvailable),
/// what every process and the kernel hold that cannot be given back at once.
pub fn memory_used_kib() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = kib_field(&meminfo, "MemTotal:")?;
    let available = kib_field(&meminfo, "MemAvailable:")?;
    Some((total, total.saturating_sub(available)))
}

/// The value of a `Name:   1234 kB` line of a /proc file, in KiB.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) `pid` has used so far, in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_name_and_cpu(&stat).map(|(_, seconds)| seconds)
}

/// CPU seconds this machine's cores have been busy so far (user, nice, system, irq,
/// softirq of `/proc/stat`; not idle, iowait or steal), every process's, ours or not.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100.
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|index| fields.get(*index).copied().unwrap_or(0.0))
        .sum::<f64>();
    Some(busy / 100.0)
}

/// `syscw` of `pid` from `/proc/<pid>/io`: its `write(2)`-family calls so far (not its
/// `send(2)`s: see [`crate::syscalls`]).
pub fn io_syscw(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|value| value.trim().parse().ok())
}

/// CPU time (user + system) of `pid`'s threads so far, in seconds, split by whether a
/// thread's name starts with one of `prefixes` (librdkafka names its threads `rdk:...`,
/// its mock broker's `rdk:mock`): (theirs, the others'). Threads that ended are in
/// neither.
pub fn thread_cpu_seconds(pid: u32, prefixes: &[&str]) -> (f64, f64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    let mut split = (0.0, 0.0);
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, seconds)) = stat_name_and_cpu(&stat) else {
            continue;
        };
        if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            split.0 += seconds;
        } else {
            split.1 += seconds;
        }
    }
    split
}

/// The command name and CPU seconds (user + system) of a /proc `stat` line.
fn stat_name_and_cpu(stat: &str) -> Option<(&str, f64)> {
    // The command name (field 2) may hold spaces and parentheses; the fields after its
    // last `)` are plain. utime and stime are fields 14 and 15 of the line, 12 and 13
    // after the name; USER_HZ is 100 on Linux.
    let (before, after_name) = stat.rsplit_once(')')?;
    let (_, name) = before.split_once('(')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (user + system) / 100.0))
}

/// GET `path` from `base` (`http://host:port`, a child's admin port): (status, body),
/// for /readyz and /metrics. One connection per request, at most 5 s for all of it.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let exchange = async {
        let response = client.get(uri).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET {url} timed out"))?
        .with_context(|| format!("GET {url}"))
}

/// The value of an unlabelled (or exactly labelled) sample in Prometheus text.
pub fn metric_value(metrics: &str, sample: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Creates `topics` (name, partitions) on a running broker; ones that exist are kept.
pub async fn create_topics(kafka: &KafkaSettings, topics: &[(String, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(&[])
        .create()
        .context("creating a Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Every partition's (low, high) watermarks of `topic` now.
pub async fn watermarks(
    kafka: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let config = kafka.assign_consumer_config();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().context("creating a consumer")?;
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("reading {topic}'s partitions"))?;
        let mut marks = BTreeMap::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic)
            .flat_map(|found| found.partitions())
        {
            let marks_of = consumer
                .fetch_watermarks(&topic, partition.id(), timeout)
                .with_context(|| format!("reading {topic}'s watermarks"))?;
            marks.insert(partition.id(), marks_of);
        }
        anyhow::ensure!(!marks.is_empty(), "{topic} has no partition");
        Ok(marks)
    })
    .await
    .context("the watermark task")?
}

/// Where a run's child configs and logs go.
pub fn run_dir(out_dir: &Path, scenario: &str) -> PathBuf {
    out_dir.join(format!("{scenario}-run"))
}
