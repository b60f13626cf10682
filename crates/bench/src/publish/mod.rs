//! `fanout bench publish`: one api process measured from outside, over HTTP.
//!
//! The bench starts an embedded Kafka (in its own process) and ingest, router, one edge
//! and the api as processes of their own (so each one's CPU, and the api's RSS, are its
//! own), the api with a key for the bench's partner and its per-key rate raised so that
//! it never caps the run. Then, one after the other:
//! 1. **publish**, for each batch size: `--connections` keep-alive HTTP/1.1 connections,
//!    each sending its next `POST /v1/events` once the last was answered; events/s,
//!    requests/s, and each request's round trip (the api answers once Kafka
//!    acknowledged every event) in an HDR histogram. The events are messages and their
//!    reads ([`workload`]).
//! 2. once the pipeline caught up, **queries** at full speed from as many keep-alive
//!    connections: `GET .../receipts` of random messages published in 1, then `GET
//!    .../unread_count` of random users; each answer checked against what the accepted
//!    events imply.
//! 3. **receipts on a socket**: the sender on `/realtime`, subscribed to its events; a
//!    `MessageRead` naming it in `notify` published over HTTP, one at a time: request
//!    sent → `message.read` on the sender's socket ([`socket`]).
//!
//! Last, without trusting the api: every accepted event's (partition, offset) must be
//! distinct and below its partition's high watermark, and message-events must hold as
//! many records as events were accepted (the sum of its high watermarks: the topic is
//! the run's own and only the api writes to it).

mod client;
pub mod result;
mod socket;
mod workload;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Deserialize;

use self::client::{Answer, ApiClient};
use self::result::{
    PartitionCheck, PhaseCpu, PublishBenchResult, PublishCheck, PublishPhase, QueryPhase, Settings,
};
use self::workload::{Expected, Generator, Planned, Workload};
use crate::report::{LatencySummary, Machine, plot_latency};
use crate::system::{cpu_seconds, http_get, rss_kib, thread_cpu_seconds, watermarks};
use crate::target::{ApiEndpoint, LocalApi, LocalDeployment, LocalOptions};
use crate::worker::new_histogram;

/// Options of `fanout bench publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishBenchOptions {
    /// Concurrent keep-alive connections publishing (and querying), each sending its
    /// next request once the last was answered.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Events per request, one phase each, side by side in the result (a batch of 1 is
    /// sent as one JSON object, others as an array).
    #[arg(long, value_delimiter = ',', default_values_t = [1_usize, 100])]
    pub batches: Vec<usize>,
    /// Seconds each batch size is measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration_seconds: f64,
    /// Seconds each query route is measured, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub query_seconds: f64,
    /// Seconds of each phase before its measurement: requests started then are sent
    /// and checked, not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warm_up_seconds: f64,
    /// Read receipts timed on the sender's socket, one at a time.
    #[arg(long, default_value_t = 300)]
    pub receipts: u64,
    /// Users the conversations are between (and the unread_count queries ask about).
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Conversations each publishing connection goes round.
    #[arg(long, default_value_t = 64)]
    pub conversations: usize,
    /// Partitions of message-events, which the api produces to.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Partitions of the topics keyed by user (user-events, counts, streams, receipts).
    /// The embedded broker keeps the last 5 MiB of each partition, and the router, slower
    /// than the api here, falls behind on user-events while the api is at full speed: at
    /// 8 and at 32 it fell further behind than that in some runs and lost records.
    #[arg(long, default_value_t = 64)]
    pub user_partitions: i32,
    /// `api.requests_per_second` of the api the bench starts: its default, 1000 per key,
    /// would cap the measurement.
    #[arg(long, default_value_t = 100_000_000)]
    pub api_requests_per_second: u32,
    /// The Kafka (`host:port`) to run on instead of an embedded one; the run's topics
    /// are created there.
    #[arg(long)]
    pub local_brokers: Option<String>,
    /// A librdkafka setting (`property=value`; repeat for several) for every Kafka
    /// client of the deployment the bench starts.
    #[arg(long = "kafka-client", value_name = "PROPERTY=VALUE", value_parser = crate::scenario::parse_setting)]
    pub kafka_client: Vec<(String, String)>,
    /// Where `publish.json`, `publish.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

const WORKLOAD: &str = "half MessageCreated (one recipient), half the recipient's read of it (MessageRead in half the conversations, ConversationRead in the others; notify naming the sender); each connection round its own conversations between users of the pool";

/// Runs the scenario and writes `<out_dir>/publish.json` and `.svg`. Fails, after
/// writing them, if a check failed.
pub async fn run(options: &PublishBenchOptions) -> anyhow::Result<PublishBenchResult> {
    anyhow::ensure!(options.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        options.batches.iter().all(|batch| *batch > 0),
        "--batches must be at least 1 each"
    );
    anyhow::ensure!(options.users >= 2, "--users must be at least 2");
    crate::system::raise_open_file_limit();
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let run_dir = crate::system::run_dir(&options.out_dir, "publish");
    let mut machine = Machine::read();

    let deployment = LocalDeployment::start(&LocalOptions {
        edges: 1,
        pipeline: true,
        partitions: options.partitions,
        user_partitions: Some(options.user_partitions),
        brokers: options.local_brokers.as_deref(),
        kafka_client: &options.kafka_client,
        api: Some(LocalApi {
            requests_per_second: options.api_requests_per_second,
        }),
        run_dir: &run_dir,
    })
    .await?;
    let api = deployment
        .api
        .clone()
        .context("the deployment has no api")?;
    let kafka = KafkaSettings::new(deployment.brokers.clone());
    let meter = Meter::of(&deployment, &api);
    let api_rss_ready_kib = api.pid.and_then(|pid| rss_kib(pid).ok());
    let workload = Workload {
        partner: deployment.partner.clone(),
        prefix: format!("b{}-", fanout_app::tools::random_hex(4)),
        users: options.users,
    };
    let warm_up = Duration::from_secs_f64(options.warm_up_seconds.max(0.0));
    let mut published = Published::default();
    let mut histograms: Vec<(String, Histogram<u64>)> = Vec::new();

    // 1. Publishing, batch size by batch size.
    let mut generators = Vec::new();
    let mut publish = Vec::new();
    for (phase, batch) in options.batches.iter().copied().enumerate() {
        let window = Window::new(
            warm_up,
            Duration::from_secs_f64(options.duration_seconds.max(0.1)),
        );
        let before = meter.read();
        let mut tasks = Vec::new();
        for connection in 0..options.connections {
            let client = ApiClient::new(&api.url, &api.key)?;
            let mut rng =
                StdRng::seed_from_u64(options.seed ^ ((phase as u64) << 32) ^ connection as u64);
            let generator = Generator::new(
                &workload,
                &format!("b{batch}-k{connection}"),
                options.conversations,
                &mut rng,
            );
            tasks.push(tokio::spawn(publish_client(
                client, generator, batch, window,
            )));
        }
        let mut tally = Tally::new()?;
        let mut phase_published = Published::default();
        for task in tasks {
            let (client_tally, generator, client_published) =
                task.await.context("a publishing client")??;
            tally.merge(client_tally)?;
            generators.push(generator);
            phase_published.merge(client_published);
        }
        let reasons = phase_published.reasons();
        let all_events = phase_published.accepted;
        published.merge(phase_published);
        let all_requests: u64 = tally.statuses.values().sum();
        let cpu = meter.read().since(&before);
        let measured_seconds = tally.measured_seconds(&window);
        eprintln!(
            "publish: {batch} event(s) per request: {} events in {} requests, {measured_seconds:.1} s",
            tally.events, tally.requests
        );
        publish.push(PublishPhase {
            batch_events: batch,
            connections: options.connections,
            tcp_connections: tally.locals.len(),
            measured_seconds,
            requests: tally.requests,
            events: tally.events,
            requests_per_second: per_second(tally.requests, measured_seconds),
            events_per_second: per_second(tally.events, measured_seconds),
            latency: LatencySummary::of(&tally.histogram),
            statuses: tally.statuses.iter().map(|(k, v)| (*k, *v)).collect(),
            errors: tally.errors_and(&reasons),
            events_not_accepted: tally.not_accepted,
            all_requests,
            all_events,
            cpu,
            api_cpu_us_per_event: micros_per(cpu.api, all_events),
            api_cpu_us_per_request: micros_per(cpu.api, all_requests),
            api_rss_kib: api.pid.and_then(|pid| rss_kib(pid).ok()),
        });
        histograms.push((
            format!("POST, {batch} event(s): sent → acknowledged"),
            tally.histogram,
        ));
    }

    // Until everything published is applied downstream, and in the api's tables.
    let settled = settle(&deployment, &kafka, published.accepted).await?;
    if settled.caught_up {
        eprintln!(
            "publish: the pipeline caught up {:.1} s after the last publish",
            settled.seconds
        );
    } else {
        eprintln!(
            "publish: the pipeline did not catch up: ingest consumed {} of {} accepted events (see {}/ingest.log); the queries' answers will not be what the events imply",
            settled.ingest_consumed,
            published.accepted,
            run_dir.display()
        );
    }
    let expected = Arc::new(Expected::of(&workload, generators));

    // 2. Queries.
    let mut queries = Vec::new();
    for route in [Route::Receipts, Route::UnreadCount] {
        let window = Window::new(
            warm_up,
            Duration::from_secs_f64(options.query_seconds.max(0.1)),
        );
        let before = meter.read();
        let messages = Arc::new(expected.messages());
        anyhow::ensure!(!messages.is_empty(), "no message was accepted to query");
        let mut tasks = Vec::new();
        for connection in 0..options.connections {
            let client = ApiClient::new(&api.url, &api.key)?;
            tasks.push(tokio::spawn(query_client(QueryClient {
                client,
                route,
                expected: expected.clone(),
                messages: messages.clone(),
                window,
                seed: options.seed ^ 0x5eed_0000 ^ connection as u64,
            })));
        }
        let mut tally = Tally::new()?;
        for task in tasks {
            tally.merge(task.await.context("a querying client")??)?;
        }
        let cpu = meter.read().since(&before);
        let measured_seconds = tally.measured_seconds(&window);
        let all_queries: u64 = tally.statuses.values().sum();
        eprintln!(
            "publish: GET {}: {} queries, {measured_seconds:.1} s",
            route.name(),
            tally.requests
        );
        queries.push(QueryPhase {
            route: route.name(),
            connections: options.connections,
            tcp_connections: tally.locals.len(),
            measured_seconds,
            queries: tally.requests,
            per_second: per_second(tally.requests, measured_seconds),
            latency: LatencySummary::of(&tally.histogram),
            statuses: tally.statuses.iter().map(|(k, v)| (*k, *v)).collect(),
            errors: tally.errors_and(&[]),
            checked: tally.checked,
            wrong: tally.wrong,
            wrong_examples: tally.wrong_examples.clone(),
            non_empty: tally.non_empty,
            all_queries,
            cpu,
            api_cpu_us_per_query: micros_per(cpu.api, all_queries),
        });
        histograms.push((format!("GET {}", route.name()), tally.histogram));
    }

    // 3. Read receipts on the sender's socket.
    let edge_url = deployment
        .edges
        .first()
        .map(|edge| edge.url.clone())
        .context("the deployment has no edge")?;
    let before = meter.read();
    let client = ApiClient::new(&api.url, &api.key)?;
    let (mut receipt_on_socket, receipt_histogram) = socket::receipts_on_socket(
        &client,
        &socket::SocketSetup {
            edge_url: &edge_url,
            partner: &deployment.partner,
            secret: &deployment.secret,
            prefix: &workload.prefix,
            receipts: options.receipts,
        },
        &mut published,
    )
    .await?;
    receipt_on_socket.cpu = meter.read().since(&before);
    eprintln!(
        "publish: {} of {} receipts on the sender's socket",
        receipt_on_socket.received, receipt_on_socket.requested
    );
    histograms.push((
        "POST MessageRead → message.read on the sender's socket".to_owned(),
        receipt_histogram,
    ));

    // The check, from Kafka's side.
    let mut check = published_check(&kafka, &deployment, &published).await?;
    check.queries_passed = queries.iter().all(|query| {
        query.wrong == 0
            && query.errors.is_empty()
            && query.statuses.iter().all(|(status, _)| *status == 200)
            && query.checked > 0
    });
    // A request that failed (transport, an answer that does not say what became of
    // each event) leaves its events unaccounted for.
    check.publish_passed &= publish.iter().all(|phase| phase.errors.is_empty());
    check.ingest_consumed_at_settle = Some(settled.ingest_consumed);
    check.offset_resets = offset_resets(&run_dir);
    check.receipts_passed =
        receipt_on_socket.missing == 0 && receipt_on_socket.received == receipt_on_socket.requested;
    check.met = check.publish_passed && check.queries_passed && check.receipts_passed;
    machine.load_at_end = crate::report::load_average();

    let result_path = options.out_dir.join("publish.json");
    let plot_path = options.out_dir.join("publish.svg");
    let mut kafka_description = match &options.local_brokers {
        Some(brokers) => format!("the Kafka at {brokers}"),
        None => "embedded Kafka (librdkafka mock) in the bench process".to_owned(),
    };
    kafka_description.push_str(&format!(
        ", message-events {} partitions, the topics keyed by user {}",
        options.partitions, options.user_partitions
    ));
    for (property, value) in &options.kafka_client {
        kafka_description.push_str(&format!(", {property}={value}"));
    }
    let result = PublishBenchResult {
        scenario: "publish",
        target: format!(
            "local: {kafka_description}; ingest, router, 1 edge and the api as processes of their own; api.requests_per_second {} (raised from 1000 so that the rate limit does not cap the measurement); the HTTP clients in the bench process",
            api.requests_per_second
        ),
        machine,
        settings: Settings {
            connections: options.connections,
            warm_up_seconds: warm_up.as_secs_f64(),
            publish_seconds: options.duration_seconds,
            query_seconds: options.query_seconds,
            users: options.users,
            conversations_per_connection: options.conversations,
            partitions: options.partitions,
            user_partitions: options.user_partitions,
            api_requests_per_second: api.requests_per_second,
            workload: WORKLOAD,
        },
        publish,
        settle_seconds: settled.seconds,
        pipeline_caught_up: settled.caught_up,
        queries,
        receipt_on_socket,
        check,
        api_rss_ready_kib,
        api_rss_end_kib: api.pid.and_then(|pid| rss_kib(pid).ok()),
        result_file: result_path.display().to_string(),
        plot_file: plot_path.display().to_string(),
    };
    let series: Vec<(&str, &Histogram<u64>)> = histograms
        .iter()
        .map(|(label, histogram)| (label.as_str(), histogram))
        .collect();
    plot_latency(
        &plot_path,
        &format!(
            "fanout bench publish: one api, {} keep-alive connections",
            options.connections
        ),
        &series,
    )?;
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    drop(deployment);
    let check = &result.check;
    anyhow::ensure!(
        result.pipeline_caught_up,
        "publish: the pipeline did not catch up with what the api accepted: ingest consumed {} of {} events. On the embedded broker this is its retention (the last 5 MiB of each partition): it deleted records ingest had not read yet (ingest.log: \"Offset out of range\"); fewer --connections, more --partitions or --local-brokers. The publish figures stand (see {}):\n{}",
        settled.ingest_consumed,
        published.accepted,
        result.result_file,
        result::summary(&result)
    );
    anyhow::ensure!(
        check.met,
        "publish: a check failed (see {}){}:\n{}",
        result.result_file,
        if check.offset_resets.is_empty() {
            String::new()
        } else {
            format!(
                "; consumers lost records the embedded broker deleted before they read them ({:?}: more --user-partitions, fewer --connections or --local-brokers)",
                check.offset_resets
            )
        },
        result::summary(&result)
    );
    Ok(result)
}

/// When a phase's requests are measured: those started from `measure_from` on; none
/// is started from `stop_at` on.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop_at: Instant,
}

impl Window {
    fn new(warm_up: Duration, measured: Duration) -> Self {
        let measure_from = Instant::now() + warm_up;
        Self {
            measure_from,
            stop_at: measure_from + measured,
        }
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `seconds` per `count`, in microseconds (0 for none).
fn micros_per(seconds: f64, count: u64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    (seconds * 1e6 / count as f64 * 10.0).round() / 10.0
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Most examples of wrong answers kept.
const WRONG_EXAMPLES: usize = 5;

/// What a phase's clients counted.
struct Tally {
    /// Round trips of the measured requests, microseconds.
    histogram: Histogram<u64>,
    requests: u64,
    /// Publish: events accepted in the measured requests.
    events: u64,
    last_end: Option<Instant>,
    /// Every request's status, warm-up included.
    statuses: BTreeMap<u16, u64>,
    /// Requests that failed, by reason.
    errors: BTreeMap<String, u64>,
    /// Local addresses of the connections the answers came on.
    locals: HashSet<SocketAddr>,
    /// Publish: events not accepted.
    not_accepted: u64,
    /// Queries: answers checked, wrong, a few of those, not empty.
    checked: u64,
    wrong: u64,
    wrong_examples: Vec<String>,
    non_empty: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: new_histogram()?,
            requests: 0,
            events: 0,
            last_end: None,
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            locals: HashSet::new(),
            not_accepted: 0,
            checked: 0,
            wrong: 0,
            wrong_examples: Vec::new(),
            non_empty: 0,
        })
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging histograms")?;
        self.requests += other.requests;
        self.events += other.events;
        self.last_end = self.last_end.max(other.last_end);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        for (error, count) in other.errors {
            *self.errors.entry(error).or_default() += count;
        }
        self.locals.extend(other.locals);
        self.not_accepted += other.not_accepted;
        self.checked += other.checked;
        self.wrong += other.wrong;
        for example in other.wrong_examples {
            if self.wrong_examples.len() < WRONG_EXAMPLES {
                self.wrong_examples.push(example);
            }
        }
        self.non_empty += other.non_empty;
        Ok(())
    }

    /// A request sent at `started`, answered (or failed) at `ended`.
    fn answered(&mut self, window: &Window, started: Instant, ended: Instant) -> bool {
        let measured = started >= window.measure_from;
        if measured {
            self.histogram
                .saturating_record(micros(ended.saturating_duration_since(started)).max(1));
            self.requests += 1;
            self.last_end = self.last_end.max(Some(ended));
        }
        measured
    }

    fn error(&mut self, error: String) {
        *self.errors.entry(error).or_default() += 1;
    }

    /// From the end of the warm-up to the last measured answer.
    fn measured_seconds(&self, window: &Window) -> f64 {
        self.last_end.map_or(0.0, |end| {
            end.saturating_duration_since(window.measure_from)
                .as_secs_f64()
        })
    }

    /// The failed requests' reasons and `more`, as (reason, count).
    fn errors_and(&self, more: &[(String, u64)]) -> Vec<(String, u64)> {
        self.errors
            .iter()
            .map(|(error, count)| (error.clone(), *count))
            .chain(more.iter().cloned())
            .collect()
    }
}

/// An answer of `POST /v1/events` with per-event results (200, 422, 503).
#[derive(Deserialize)]
struct PublishAnswer {
    results: Vec<EventAnswer>,
}

#[derive(Deserialize)]
struct EventAnswer {
    status: String,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    error: Option<ErrorAnswer>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    code: String,
}

/// Every event the api accepted over the run, where it said it put it, and why the
/// others were not.
#[derive(Default)]
struct Published {
    positions: Vec<(i32, i64)>,
    accepted: u64,
    not_accepted: u64,
    reasons: BTreeMap<String, u64>,
}

impl Published {
    /// Notes the answer to a request of the events `ids` (in request order): which were
    /// accepted. Fails if it does not answer each event, in order.
    fn note(&mut self, answer: &Answer, ids: &[String]) -> anyhow::Result<Vec<bool>> {
        let Ok(parsed) = serde_json::from_slice::<PublishAnswer>(&answer.body) else {
            anyhow::ensure!(
                answer.status != 200,
                "a 200 answer without results: {}",
                String::from_utf8_lossy(&answer.body)
            );
            // The whole request refused (401, 413, 429, ...): nothing published.
            self.not_accepted += ids.len() as u64;
            *self
                .reasons
                .entry(format!("HTTP {}", answer.status))
                .or_default() += ids.len() as u64;
            return Ok(vec![false; ids.len()]);
        };
        anyhow::ensure!(
            parsed.results.len() == ids.len(),
            "{} results for {} events",
            parsed.results.len(),
            ids.len()
        );
        let mut accepted = Vec::with_capacity(ids.len());
        for (result, id) in parsed.results.iter().zip(ids) {
            if result.status == "accepted" {
                anyhow::ensure!(
                    result.event_id.as_deref() == Some(id.as_str()),
                    "results out of order: {:?} where {id} was sent",
                    result.event_id
                );
                let (Some(partition), Some(offset)) = (result.partition, result.offset) else {
                    anyhow::bail!("an accepted event without its partition and offset");
                };
                self.positions.push((partition, offset));
                self.accepted += 1;
                accepted.push(true);
            } else {
                let code = result
                    .error
                    .as_ref()
                    .map_or("?", |error| error.code.as_str());
                *self
                    .reasons
                    .entry(format!("{} {code}", result.status))
                    .or_default() += 1;
                self.not_accepted += 1;
                accepted.push(false);
            }
        }
        Ok(accepted)
    }

    fn merge(&mut self, other: Self) {
        self.positions.extend(other.positions);
        self.accepted += other.accepted;
        self.not_accepted += other.not_accepted;
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
    }

    /// Why events were not accepted, as (reason, events).
    fn reasons(&self) -> Vec<(String, u64)> {
        self.reasons
            .iter()
            .map(|(reason, count)| (reason.clone(), *count))
            .collect()
    }
}

/// One publishing connection: requests of `batch` events from `generator`, each sent
/// once the last was answered, until the window closes.
async fn publish_client(
    client: ApiClient,
    mut generator: Generator,
    batch: usize,
    window: Window,
) -> anyhow::Result<(Tally, Generator, Published)> {
    let mut tally = Tally::new()?;
    let mut published = Published::default();
    let mut planned: Vec<Planned> = Vec::with_capacity(batch);
    let mut ids: Vec<String> = Vec::with_capacity(batch);
    while Instant::now() < window.stop_at {
        planned.clear();
        ids.clear();
        let occurred_at_ms = i64::try_from(fanout_schema::unix_micros() / 1000).unwrap_or(0);
        let mut body = String::with_capacity(batch * 300 + 2);
        if batch > 1 {
            body.push('[');
        }
        for index in 0..batch {
            if index > 0 {
                body.push(',');
            }
            let (event, id) = generator.next_event(&mut body, occurred_at_ms);
            planned.push(event);
            ids.push(id);
        }
        if batch > 1 {
            body.push(']');
        }
        let started = Instant::now();
        let answer = client.post_events(body).await;
        let ended = Instant::now();
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                // Published or not, nobody knows: the check counts them as not.
                tally.error(format!("{error:#}"));
                tally.not_accepted += batch as u64;
                published.not_accepted += batch as u64;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        *tally.statuses.entry(answer.status).or_default() += 1;
        if let Some(local) = answer.local {
            tally.locals.insert(local);
        }
        let accepted = match published.note(&answer, &ids) {
            Ok(accepted) => accepted,
            Err(error) => {
                tally.error(format!("{error:#}"));
                tally.not_accepted += batch as u64;
                continue;
            }
        };
        let mut accepted_here = 0;
        for (event, accepted) in planned.iter().zip(accepted) {
            if accepted {
                generator.accepted(*event);
                accepted_here += 1;
            } else {
                tally.not_accepted += 1;
            }
        }
        if tally.answered(&window, started, ended) {
            tally.events += accepted_here;
        }
    }
    Ok((tally, generator, published))
}

/// The query routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Receipts,
    UnreadCount,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::Receipts => "receipts",
            Self::UnreadCount => "unread_count",
        }
    }
}

struct QueryClient {
    client: ApiClient,
    route: Route,
    expected: Arc<Expected>,
    /// (conversation index, seq) of every accepted message.
    messages: Arc<Vec<(usize, u64)>>,
    window: Window,
    seed: u64,
}

#[derive(Deserialize)]
struct ReceiptsAnswer {
    conversation_id: String,
    seq: u64,
    readers: Vec<ReaderAnswer>,
}

#[derive(Deserialize)]
struct ReaderAnswer {
    user: String,
    via: String,
}

#[derive(Deserialize)]
struct UnreadAnswer {
    user: String,
    count: u64,
}

/// One querying connection: a random message's receipts or a random user's count,
/// each checked, until the window closes.
async fn query_client(query: QueryClient) -> anyhow::Result<Tally> {
    let QueryClient {
        client,
        route,
        expected,
        messages,
        window,
        seed,
    } = query;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new()?;
    while Instant::now() < window.stop_at {
        let (path, pick) = match route {
            Route::Receipts => {
                let pick = rng.random_range(0..messages.len());
                let (conversation, seq) = messages[pick];
                let id = &expected.conversations[conversation].id;
                (
                    format!("/v1/conversations/{id}/messages/{seq}/receipts"),
                    pick,
                )
            }
            Route::UnreadCount => {
                let pick = rng.random_range(0..expected.unread.len());
                let user = &expected.unread[pick].0;
                (format!("/v1/users/{user}/unread_count"), pick)
            }
        };
        let started = Instant::now();
        let answer = client.get(&path).await;
        let ended = Instant::now();
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tally.error(format!("{error:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tally.answered(&window, started, ended);
        *tally.statuses.entry(answer.status).or_default() += 1;
        if let Some(local) = answer.local {
            tally.locals.insert(local);
        }
        if answer.status != 200 {
            continue;
        }
        let verdict = match route {
            Route::Receipts => {
                let (conversation, seq) = messages[pick];
                check_receipts(&answer.body, &expected, conversation, seq)
            }
            Route::UnreadCount => {
                let (user, count) = &expected.unread[pick];
                check_unread(&answer.body, user, *count)
            }
        };
        tally.checked += 1;
        match verdict {
            Ok(true) => tally.non_empty += 1,
            Ok(false) => {}
            Err(wrong) => {
                tally.wrong += 1;
                if tally.wrong_examples.len() < WRONG_EXAMPLES {
                    tally.wrong_examples.push(format!("{path}: {wrong}"));
                }
            }
        }
    }
    Ok(tally)
}

/// Whether a receipts answer lists exactly the readers the accepted events imply;
/// `Ok(true)` if it lists one.
fn check_receipts(
    body: &[u8],
    expected: &Expected,
    conversation: usize,
    seq: u64,
) -> Result<bool, String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    let answer: ReceiptsAnswer = serde_json::from_slice(body)
        .map_err(|error| format!("does not parse ({error}): {}", text()))?;
    let conversation = &expected.conversations[conversation];
    if answer.conversation_id != conversation.id || answer.seq != seq {
        return Err(format!("another message's answer: {}", text()));
    }
    match conversation.read_of(seq) {
        Some(via) => {
            let right = answer.readers.len() == 1
                && answer.readers[0].user == conversation.reader
                && answer.readers[0].via == via;
            if right {
                Ok(true)
            } else {
                Err(format!(
                    "expected {} via {via}, got {}",
                    conversation.reader,
                    text()
                ))
            }
        }
        None if answer.readers.is_empty() => Ok(false),
        None => Err(format!("expected no reader, got {}", text())),
    }
}

/// Whether an unread_count answer is the count the accepted events imply; `Ok(true)`
/// if it is above 0.
fn check_unread(body: &[u8], user: &str, count: u64) -> Result<bool, String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    let answer: UnreadAnswer = serde_json::from_slice(body)
        .map_err(|error| format!("does not parse ({error}): {}", text()))?;
    if answer.user != user || answer.count != count {
        return Err(format!("expected {count}, got {}", text()));
    }
    Ok(count > 0)
}

/// How the pipeline caught up with what was published.
struct Settled {
    /// To the last growth of the topics downstream seen (or to giving up).
    seconds: f64,
    /// What ingest had consumed when it caught up or stalled.
    ingest_consumed: f64,
    caught_up: bool,
}

/// How long ingest may make no progress before the bench stops waiting for it: its
/// input was deleted before it read it (the embedded broker keeps only the last 5 MiB
/// of each partition).
const INGEST_STALL: Duration = Duration::from_secs(10);

/// Waits until ingest consumed every accepted event and the topics downstream (user
/// events, counts, streams, receipts) stopped growing for a second, then a second more
/// for the api to read the last of them. Gives up if ingest makes no progress for
/// [`INGEST_STALL`], or after 3 minutes.
async fn settle(
    deployment: &LocalDeployment,
    kafka: &KafkaSettings,
    accepted: u64,
) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let ingest_admin = deployment
        .admins_of("ingest")
        .into_iter()
        .next()
        .context("no ingest")?;
    let mut consumed = 0.0;
    let mut progress_at = Instant::now();
    loop {
        let now_consumed = ingest_consumed(&ingest_admin).await.unwrap_or(consumed);
        let now = Instant::now();
        if now_consumed > consumed {
            consumed = now_consumed;
            progress_at = now;
        }
        if consumed >= accepted as f64 {
            break;
        }
        if now.duration_since(progress_at) >= INGEST_STALL || now >= deadline {
            return Ok(Settled {
                seconds: progress_at.duration_since(started).as_secs_f64(),
                ingest_consumed: consumed,
                caught_up: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let topics = &deployment.topics;
    let downstream = [
        &topics.user_events,
        &topics.unread_counts,
        &topics.user_streams,
        &topics.read_receipts,
    ];
    let mut last_total = -1;
    let mut last_change = Instant::now();
    loop {
        let mut total = 0;
        for topic in downstream {
            total += watermarks(kafka, topic)
                .await?
                .values()
                .map(|(_, high)| high)
                .sum::<i64>();
        }
        let now = Instant::now();
        if total != last_total {
            last_total = total;
            last_change = now;
        } else if now.duration_since(last_change) >= Duration::from_secs(1) {
            break;
        }
        if now >= deadline {
            return Ok(Settled {
                seconds: last_change.duration_since(started).as_secs_f64(),
                ingest_consumed: consumed,
                caught_up: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Settled {
        seconds: last_change.duration_since(started).as_secs_f64(),
        ingest_consumed: consumed,
        caught_up: true,
    })
}

/// Per role, how many times a consumer found its next record deleted (librdkafka's
/// "Offset out of range" in the role's log): the embedded broker keeps only the last
/// 5 MiB of each partition, and a consumer further behind loses what it had not read.
fn offset_resets(run_dir: &std::path::Path) -> Vec<(String, u64)> {
    ["ingest", "router", "edge-0", "api"]
        .iter()
        .filter_map(|role| {
            let log = std::fs::read_to_string(run_dir.join(format!("{role}.log"))).ok()?;
            let resets = log
                .lines()
                .filter(|line| line.contains("Offset out of range"))
                .count() as u64;
            (resets > 0).then(|| ((*role).to_owned(), resets))
        })
        .collect()
}

/// `fanout_ingest_events_total`, over its results.
async fn ingest_consumed(admin: &str) -> anyhow::Result<f64> {
    let (_, metrics) = http_get(admin, "/metrics").await?;
    Ok(metrics
        .lines()
        .filter(|line| {
            line.strip_prefix("fanout_ingest_events_total")
                .is_some_and(|labels| labels.starts_with('{'))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum())
}

/// What message-events holds against what the api said it published.
async fn published_check(
    kafka: &KafkaSettings,
    deployment: &LocalDeployment,
    published: &Published,
) -> anyhow::Result<PublishCheck> {
    let marks = watermarks(kafka, &deployment.topics.message_events).await?;
    let mut positions = published.positions.clone();
    positions.sort_unstable();
    let total = positions.len() as u64;
    positions.dedup();
    let distinct = positions.len() as u64;
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut past_high = 0;
    for (partition, offset) in &positions {
        *per_partition.entry(*partition).or_default() += 1;
        let high = marks.get(partition).map_or(0, |(_, high)| *high);
        if *offset >= high || *offset < 0 {
            past_high += 1;
        }
    }
    let records: i64 = marks.values().map(|(_, high)| high).sum();
    let ingest_consumed = match deployment.admins_of("ingest").first() {
        Some(admin) => ingest_consumed(admin).await.ok(),
        None => None,
    };
    Ok(PublishCheck {
        accepted_events: published.accepted,
        events_not_accepted: published.not_accepted,
        distinct_positions: distinct,
        repeated_positions: total - distinct,
        positions_past_high_watermark: past_high,
        message_events_records: records,
        partitions: marks
            .iter()
            .map(|(partition, (low, high))| PartitionCheck {
                partition: *partition,
                low_watermark: *low,
                high_watermark: *high,
                accepted: per_partition.get(partition).copied().unwrap_or(0),
            })
            .collect(),
        ingest_consumed_at_settle: None,
        ingest_consumed,
        offset_resets: Vec::new(),
        publish_passed: published.not_accepted == 0
            && total == distinct
            && past_high == 0
            && i64::try_from(published.accepted).ok() == Some(records),
        queries_passed: false,
        receipts_passed: false,
        met: false,
    })
}

/// The bench process's threads that are the embedded Kafka's: librdkafka's (the mock
/// broker is `rdk:mock`) and the one that keeps it.
const KAFKA_THREADS: &[&str] = &["rdk:", "embedded-kafka"];

/// The processes whose CPU time the phases split out.
struct Meter {
    api: Option<u32>,
    ingest: Vec<u32>,
    router: Vec<u32>,
    edge: Vec<u32>,
}

/// CPU seconds each had used at an instant.
struct CpuReading {
    at: Instant,
    api: f64,
    ingest: f64,
    router: f64,
    edge: f64,
    kafka: f64,
    bench: f64,
}

impl Meter {
    fn of(deployment: &LocalDeployment, api: &ApiEndpoint) -> Self {
        Self {
            api: api.pid,
            ingest: deployment.pids_of("ingest"),
            router: deployment.pids_of("router"),
            edge: deployment.pids_of("edge"),
        }
    }

    fn read(&self) -> CpuReading {
        let sum = |pids: &[u32]| pids.iter().filter_map(|pid| cpu_seconds(*pid)).sum();
        let (kafka, bench) = thread_cpu_seconds(std::process::id(), KAFKA_THREADS);
        CpuReading {
            at: Instant::now(),
            api: self.api.and_then(cpu_seconds).unwrap_or(0.0),
            ingest: sum(&self.ingest),
            router: sum(&self.router),
            edge: sum(&self.edge),
            kafka,
            bench,
        }
    }
}

impl CpuReading {
    fn since(&self, before: &Self) -> PhaseCpu {
        let round = |seconds: f64| (seconds * 100.0).round() / 100.0;
        PhaseCpu {
            wall_seconds: round(self.at.duration_since(before.at).as_secs_f64()),
            api: round(self.api - before.api),
            ingest: round(self.ingest - before.ingest),
            router: round(self.router - before.router),
            edge: round(self.edge - before.edge),
            kafka: round(self.kafka - before.kafka),
            bench_clients: round(self.bench - before.bench),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::Bytes;

    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_owned()),
            local: None,
        }
    }

    #[test]
    fn answers_are_noted_per_event_in_order_and_refusals_count_as_not_published() {
        let mut published = Published::default();
        let ids = vec!["e1".to_owned(), "e2".to_owned()];
        let body = r#"{"results":[{"status":"accepted","event_id":"e1","partition":3,"offset":7},{"status":"rejected","event_id":"e2","error":{"code":"no_recipients","message":"."}}]}"#;
        assert_eq!(
            published.note(&answer(422, body), &ids).unwrap(),
            vec![true, false]
        );
        assert_eq!(published.positions, vec![(3, 7)]);
        let refused = r#"{"error":{"code":"rate_limited","message":"."}}"#;
        assert_eq!(
            published.note(&answer(429, refused), &ids).unwrap(),
            vec![false, false]
        );
        assert_eq!((published.accepted, published.not_accepted), (1, 3));
        assert_eq!(
            published.reasons(),
            vec![
                ("HTTP 429".to_owned(), 2),
                ("rejected no_recipients".to_owned(), 1)
            ]
        );
        let swapped = r#"{"results":[{"status":"accepted","event_id":"e2","partition":0,"offset":1},{"status":"accepted","event_id":"e1","partition":0,"offset":2}]}"#;
        assert!(published.note(&answer(200, swapped), &ids).is_err());
        assert!(published.note(&answer(200, "{}"), &ids).is_err());
    }
}
