//! `fanout bench router`: one router's throughput through a Kafka broker. A backlog of user events is
//! produced to a fresh user-events topic first; then one router is started on it and
//! timed from its first processed event to its last, so that the figure is the router's
//! (consume, apply, produce state and count, acknowledge, commit) and not the
//! producer's or the group join's.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::{EmbeddedKafka, KafkaSettings, Topics, enqueue};
use fanout_schema::{user_key, v1};
use futures::StreamExt as _;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What `fanout bench router` does.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterBenchOptions {
    /// A running broker (default: the embedded one).
    #[arg(long)]
    pub brokers: Option<String>,
    /// User events in the backlog (on the embedded broker at most 90000 per partition:
    /// librdkafka's mock cluster keeps 100000 records a partition and deletes older ones).
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Distinct users.
    // Spread over two partners.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Partitions of the fresh topics the run creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The measured result, printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RouterBenchResult {
    pub scenario: &'static str,
    pub broker: String,
    pub events: u64,
    pub users: u64,
    pub partitions: i32,
    /// Seconds to produce the backlog and have it acknowledged.
    pub produce_seconds: f64,
    /// Seconds from the router's start to its first processed event (group join and
    /// restore of the empty state).
    pub startup_seconds: f64,
    /// Seconds from the first processed event to the last.
    pub router_seconds: f64,
    /// User events processed per second over `router_seconds`.
    pub router_events_per_second: f64,
    /// State and count records the router wrote.
    pub applied: u64,
    pub unchanged: u64,
    /// User states the router wrote to router-state (a user changed several times
    /// within a batch is written once).
    pub state_writes: u64,
}

/// Records per partition the embedded broker keeps with room to spare (librdkafka's mock
/// cluster deletes the oldest past 100000).
const MOCK_RECORDS_PER_PARTITION: u64 = 90_000;

/// How long the router may process nothing before the run is called failed.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the `router` scenario.
pub async fn router(options: &RouterBenchOptions) -> anyhow::Result<RouterBenchResult> {
    anyhow::ensure!(options.events > 0, "--events must be at least 1");
    anyhow::ensure!(options.users > 0, "--users must be at least 1");
    anyhow::ensure!(options.partitions > 0, "--partitions must be at least 1");
    let topics = Topics::with_prefix(&format!("bench-{}-", fanout_app::tools::random_hex(4)));
    let layout = topics.with_partitions(options.partitions, options.partitions);
    let (kafka, _embedded, broker) = match &options.brokers {
        None if options.events > MOCK_RECORDS_PER_PARTITION * options.partitions as u64 => {
            anyhow::bail!(
                "--events {} is more than the embedded broker keeps in {} partitions ({} each); \
                 raise --partitions or use --brokers",
                options.events,
                options.partitions,
                MOCK_RECORDS_PER_PARTITION
            );
        }
        Some(brokers) => {
            let kafka = KafkaSettings::new(brokers.clone());
            crate::system::create_topics(&kafka, &layout).await?;
            (kafka, None, brokers.clone())
        }
        None => {
            let embedded = EmbeddedKafka::start(1, &layout)?;
            let kafka = KafkaSettings::new(embedded.bootstrap_servers());
            (
                kafka,
                Some(embedded),
                "embedded (librdkafka mock)".to_owned(),
            )
        }
    };

    let produce_started = Instant::now();
    produce_backlog(&kafka, &topics.user_events, options).await?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    tracing::info!(
        events = options.events,
        seconds = produce_seconds,
        "backlog produced"
    );

    let shutdown = CancellationToken::new();
    let mut config = fanout_app::config::Config {
        kafka: kafka.clone(),
        topics: topics.clone(),
        ..fanout_app::config::Config::default()
    };
    config.router.group_id = format!("{}router", topics.user_events);
    let (router, metrics) =
        fanout_app::stages::spawn_router(&config, &prometheus::Registry::new(), shutdown.clone())?;
    let router = router.task;
    let processed = || {
        ["applied", "unchanged", "replayed", "invalid"]
            .iter()
            .map(|result| metrics.event_count(result))
            .sum::<u64>()
    };
    let started = Instant::now();
    let mut first = None;
    let mut progress = (0, Instant::now());
    while processed() < options.events {
        if router.is_finished() {
            break;
        }
        if processed() != progress.0 {
            progress = (processed(), Instant::now());
        } else if progress.1.elapsed() > STALL_TIMEOUT {
            shutdown.cancel();
            anyhow::bail!(
                "the router processed nothing for {STALL_TIMEOUT:?}, at {} of {} events",
                progress.0,
                options.events
            );
        }
        if first.is_none() && processed() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = Instant::now();
    shutdown.cancel();
    router.await.context("the router task panicked")??;
    anyhow::ensure!(
        processed() >= options.events,
        "the router processed {} of {} events",
        processed(),
        options.events
    );
    let first = first.unwrap_or(finished);
    let router_seconds = finished.duration_since(first).as_secs_f64();
    Ok(RouterBenchResult {
        scenario: "router",
        broker,
        events: options.events,
        users: options.users,
        partitions: options.partitions,
        produce_seconds,
        startup_seconds: first.duration_since(started).as_secs_f64(),
        router_seconds,
        router_events_per_second: if router_seconds > 0.0 {
            options.events as f64 / router_seconds
        } else {
            f64::INFINITY
        },
        applied: metrics.event_count("applied"),
        unchanged: metrics.event_count("unchanged"),
        state_writes: metrics.state_write_count(),
    })
}

/// A realistic mix per user: messages arrive in a few conversations, and now and then
/// the user reads a conversation up to its latest message.
async fn produce_backlog(
    kafka: &KafkaSettings,
    topic: &str,
    options: &RouterBenchOptions,
) -> anyhow::Result<()> {
    let mut config = kafka.producer_config();
    config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000");
    let producer: FutureProducer = config.create().context("creating a producer")?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut seqs = std::collections::HashMap::<(u64, u64), u64>::new();
    let mut deliveries = futures::stream::FuturesUnordered::new();
    for index in 0..options.events {
        let user = rng.random_range(0..options.users);
        let partner = if user % 2 == 0 { "bench-a" } else { "bench-b" };
        let conversation = rng.random_range(0..4_u64);
        let seq = seqs.entry((user, conversation)).or_insert(0);
        let kind = if rng.random_ratio(1, 5) {
            v1::user_event::Kind::ConversationRead
        } else {
            *seq += 1;
            v1::user_event::Kind::Created
        };
        let event = v1::UserEvent {
            partner: partner.to_owned(),
            user: format!("u{user}"),
            event_id: format!("e{index}"),
            occurred_at_ms: 0,
            kind: kind.into(),
            conversation_id: format!("c{conversation}"),
            seq: (*seq).max(1),
            ..v1::UserEvent::default()
        };
        let key = user_key(&event.partner, &event.user);
        let payload = event.encode_to_vec();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(payload.as_slice());
        let delivery = enqueue(&producer, record).await?;
        deliveries.push(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(anyhow::anyhow!("producing the backlog: {error}")),
                Err(_) => Err(anyhow::anyhow!("the producer went away")),
            }
        });
        // Keep the acknowledgement futures bounded.
        while deliveries.len() >= 100_000 {
            if let Some(result) = deliveries.next().await {
                result?;
            }
        }
    }
    while let Some(result) = deliveries.next().await {
        result?;
    }
    Ok(())
}
