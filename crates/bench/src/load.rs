//! The load of the scenarios that produce: group-message and steady (message events
//! through ingest and router) and push-rate (count records straight to the edge), and
//! what the bench needs to know to turn receipts into latencies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::{unix_micros, user_key, v1};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};

use super::pool::{WorkerPool, progress_bar};
use super::result::PushResult;
use super::target::Target;

/// When each (user, count) was caused: the send time of the event that raised `user`'s
/// count to `count`.
#[derive(Default)]
pub(super) struct Sends {
    /// Per user, the send time of the event that made count 1, 2, ...
    pub(super) per_user: HashMap<u64, Vec<u64>>,
    /// `group-message`: count k of every user comes from message k.
    pub(super) rounds: Vec<u64>,
}

impl Sends {
    pub(super) fn sent_at(&self, user: u64, count: u64) -> Option<u64> {
        let index = usize::try_from(count.checked_sub(1)?).ok()?;
        if !self.rounds.is_empty() {
            return self.rounds.get(index).copied();
        }
        self.per_user.get(&user)?.get(index).copied()
    }
}

/// Counts the producer's acknowledgements.
#[derive(Clone, Default)]
pub(crate) struct Deliveries {
    pub(crate) acknowledged: Arc<AtomicU64>,
    pub(crate) failed: Arc<AtomicU64>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => self.acknowledged.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A producer of `kafka`'s producer config (acks from all replicas, idempotent) with
/// Nagle off and `settings`, and its acknowledgement counts.
pub(crate) fn producer(
    kafka: &KafkaSettings,
    settings: &[(&str, &str)],
) -> anyhow::Result<(ThreadedProducer<Deliveries>, Deliveries)> {
    let mut config = kafka.producer_config();
    config.set("socket.nagle.disable", "true");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let deliveries = Deliveries::default();
    let producer = config
        .create_with_context(deliveries.clone())
        .context("creating a producer")?;
    Ok((producer, deliveries))
}

/// Sends one record, waiting while the producer's queue is full.
pub(crate) async fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                returned,
            )) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((error, _)) => return Err(error).context("producing"),
        }
    }
}

pub(crate) fn message_created(
    partner: &str,
    event_id: String,
    conversation: String,
    seq: u64,
    recipients: Vec<String>,
    sent_us: u64,
    data: Option<fanout_schema::data::Struct>,
) -> v1::MessageEvent {
    v1::MessageEvent {
        event_id,
        partner: partner.to_owned(),
        occurred_at_ms: i64::try_from(sent_us / 1000).unwrap_or(0),
        data,
        event: Some(v1::message_event::Event::MessageCreated(
            v1::MessageCreated {
                conversation_id: conversation,
                seq,
                message_id: format!("m{seq}"),
                sender: "bench-sender".to_owned(),
                recipients,
            },
        )),
    }
}

/// `{"text":"xxx..."}` of about `bytes` bytes as JSON; `None` for 0.
pub(crate) fn message_data(bytes: usize) -> anyhow::Result<Option<fanout_schema::data::Struct>> {
    if bytes == 0 {
        return Ok(None);
    }
    let text = "x".repeat(bytes.saturating_sub(r#"{"text":""}"#.len()));
    let data = fanout_schema::data::parse_data(&format!(r#"{{"text":"{text}"}}"#))
        .map_err(|error| anyhow::anyhow!("the bench's data: {error:?}"))?;
    Ok(Some(data))
}

/// Sends one event to a user nobody is connected as and waits for its acknowledgement
/// and a second more, so that the producer's start (metadata, producer id) and every
/// stage's first fetch are not in the measurement.
async fn warm_up(
    producer: &ThreadedProducer<Deliveries>,
    deliveries: &Deliveries,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    send(producer, topic, key, payload).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while deliveries.acknowledged.load(Ordering::Relaxed) == 0 {
        anyhow::ensure!(
            deliveries.failed.load(Ordering::Relaxed) == 0,
            "the warm-up record was not acknowledged"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up record was not acknowledged in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// A producer of message events, warmed up with an event to a user nobody is
/// connected as.
async fn warm_event_producer(
    kafka: &KafkaSettings,
    target: &Target,
    user_prefix: &str,
) -> anyhow::Result<(ThreadedProducer<Deliveries>, Deliveries)> {
    let (producer, deliveries) = producer(kafka, &[])?;
    let warm = message_created(
        &target.partner,
        format!("{user_prefix}warm-up"),
        format!("{user_prefix}warm-up"),
        1,
        vec![format!("{user_prefix}warm-up")],
        unix_micros(),
        None,
    );
    warm_up(
        &producer,
        &deliveries,
        &target.topics.message_events,
        &event_key(&warm),
        &warm.encode_to_vec(),
    )
    .await?;
    Ok((producer, deliveries))
}

/// Waits until pushes stop arriving (or `expected` arrived), at most `limit`.
pub(crate) async fn wait_quiet(
    pool: &mut WorkerPool,
    expected: Option<u64>,
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = pool.totals().pushes;
    let mut last_change = Instant::now();
    while Instant::now() < deadline {
        pool.pump(Duration::from_millis(100)).await?;
        let pushes = pool.totals().pushes;
        if expected.is_some_and(|expected| pushes >= expected) {
            return Ok(());
        }
        if pushes != last {
            last = pushes;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            return Ok(());
        }
    }
    Ok(())
}

pub(super) async fn hold(pool: &mut WorkerPool, duration: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        pool.pump(Duration::from_millis(100)).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn group_message(
    pool: &mut WorkerPool,
    kafka: &KafkaSettings,
    target: &Target,
    user_prefix: &str,
    users: u64,
    messages: u64,
    data_bytes: usize,
    sends: &mut Sends,
    pushes: &mut PushResult,
) -> anyhow::Result<()> {
    let (producer, deliveries) = warm_event_producer(kafka, target, user_prefix).await?;
    let data = message_data(data_bytes)?;
    let recipients: Vec<String> = (0..users)
        .map(|user| format!("{user_prefix}{user}"))
        .collect();
    let bar = progress_bar(messages * users, "pushes");
    let started = Instant::now();
    for message in 0..messages {
        let sent_us = unix_micros();
        let event = message_created(
            &target.partner,
            format!("{user_prefix}group-{message}"),
            format!("{user_prefix}group"),
            message + 1,
            recipients.clone(),
            sent_us,
            data.clone(),
        );
        send(
            &producer,
            &target.topics.message_events,
            &format!("{user_prefix}group"),
            &event.encode_to_vec(),
        )
        .await?;
        sends.rounds.push(sent_us);
        end_round(pool, (message + 1) * users, &bar).await?;
    }
    bar.finish_and_clear();
    pushes.expected = Some(messages * users);
    pushes.produced = messages;
    pushes.produce_seconds = started.elapsed().as_secs_f64();
    pushes.produce_failures = deliveries.failed.load(Ordering::Relaxed);
    Ok(())
}

/// Most recipients ingest takes in one event, and the largest record it takes
/// (`ingest.max_recipients`, `ingest.max_record_bytes` by default).
const INGEST_MAX_RECIPIENTS: u64 = 100_000;
const INGEST_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// How long scale-out's group message may take to reach everyone: a minute, and a
/// millisecond more per user (every user's count and stream event goes through ingest,
/// the router and every edge, all on this machine: 500k users over ActionCable, whose
/// pings take most of the 2 cores, were reached at about 1400 a second).
fn round_limit(users: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(users)
}

/// No push for this long and the round is over, whether it reached everyone or not.
const ROUND_QUIET: Duration = Duration::from_secs(30);

/// scale-out's group message: one message to every one of `users`, as one round of
/// `MessageCreated` events of at most `recipients_per_event` recipients each (ingest
/// takes at most 100000 and 1 MiB a record), each a conversation of its own, produced
/// one after the other and all stamped with the round's start. Every user is a
/// recipient once, so its count rises from 0 to 1 and count 1 of any user is the
/// round's: the latency is from the round's start. Waits until every user has it, or
/// until pushes stop for [`ROUND_QUIET`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn group_round(
    pool: &mut WorkerPool,
    kafka: &KafkaSettings,
    target: &Target,
    user_prefix: &str,
    users: u64,
    recipients_per_event: u64,
    sends: &mut Sends,
    pushes: &mut PushResult,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=INGEST_MAX_RECIPIENTS).contains(&recipients_per_event),
        "--recipients-per-event must be 1 to {INGEST_MAX_RECIPIENTS} (ingest's limit)"
    );
    let (producer, deliveries) = warm_event_producer(kafka, target, user_prefix).await?;
    // Built before the round, so that the round is only encoding and producing.
    let mut events: Vec<v1::MessageEvent> = (0..users.div_ceil(recipients_per_event))
        .map(|index| {
            let first = index * recipients_per_event;
            let end = (first + recipients_per_event).min(users);
            let conversation = format!("{user_prefix}round-{index}");
            message_created(
                &target.partner,
                conversation.clone(),
                conversation,
                1,
                (first..end)
                    .map(|user| format!("{user_prefix}{user}"))
                    .collect(),
                0,
                None,
            )
        })
        .collect();
    let largest = events
        .iter()
        .map(prost::Message::encoded_len)
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        largest <= INGEST_MAX_RECORD_BYTES,
        "an event of {recipients_per_event} recipients is {largest} bytes, more than ingest \
         takes ({INGEST_MAX_RECORD_BYTES}): lower --recipients-per-event"
    );
    let mut payload = Vec::with_capacity(largest);
    let started = Instant::now();
    let sent_us = unix_micros();
    for event in &mut events {
        event.occurred_at_ms = i64::try_from(sent_us / 1000).unwrap_or(0);
        payload.clear();
        event.encode(&mut payload)?;
        send(
            &producer,
            &target.topics.message_events,
            &event_key(event),
            &payload,
        )
        .await?;
    }
    pushes.produce_seconds = started.elapsed().as_secs_f64();
    pushes.produced = events.len() as u64;
    drop(events);
    sends.rounds.push(sent_us);

    let bar = progress_bar(users, "pushes");
    let deadline = Instant::now() + round_limit(users);
    let mut last = pool.totals().pushes;
    let mut last_change = Instant::now();
    while last < users && Instant::now() < deadline && last_change.elapsed() < ROUND_QUIET {
        pool.pump(Duration::from_millis(100)).await?;
        let received = pool.totals().pushes;
        if received != last {
            last = received;
            last_change = Instant::now();
        }
        bar.set_position(received);
    }
    bar.finish_and_clear();
    pushes.expected = Some(users);
    pushes.produce_failures = deliveries.failed.load(Ordering::Relaxed);
    Ok(())
}

/// The end of one round of a group message: every push up to `expected` arrived (or
/// none for 10 s), shown on `bar`, then a pause so that each round is measured on its
/// own.
pub(crate) async fn end_round(
    pool: &mut WorkerPool,
    expected: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    wait_quiet(
        pool,
        Some(expected),
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .await?;
    bar.set_position(pool.totals().pushes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn steady(
    pool: &mut WorkerPool,
    kafka: &KafkaSettings,
    target: &Target,
    user_prefix: &str,
    users: u64,
    rate: u64,
    duration: Duration,
    seed: u64,
    sends: &mut Sends,
    pushes: &mut PushResult,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0, "--rate must be at least 1");
    let (producer, deliveries) = warm_event_producer(kafka, target, user_prefix).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let bar = progress_bar(duration.as_secs().max(1), "seconds");
    let started = Instant::now();
    let mut produced = 0_u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while produced < due {
            let user = rng.random_range(0..users);
            let sent = sends.per_user.entry(user).or_default();
            let seq = sent.len() as u64 + 1;
            let sent_us = unix_micros();
            let event = message_created(
                &target.partner,
                format!("{user_prefix}{user}-{seq}"),
                format!("{user_prefix}c{user}"),
                seq,
                vec![format!("{user_prefix}{user}")],
                sent_us,
                None,
            );
            send(
                &producer,
                &target.topics.message_events,
                &event_key(&event),
                &event.encode_to_vec(),
            )
            .await?;
            sent.push(sent_us);
            produced += 1;
        }
        pool.pump(Duration::ZERO).await?;
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!("{} pushes", pool.totals().pushes));
    }
    pushes.produce_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    wait_quiet(
        pool,
        Some(produced),
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await?;
    pushes.expected = Some(produced);
    pushes.produced = produced;
    pushes.produced_per_second = produced as f64 / pushes.produce_seconds.max(1e-9);
    pushes.produce_failures = deliveries.failed.load(Ordering::Relaxed);
    Ok(())
}

/// A steady rate of partner notifications, each to one user (round robin over
/// `users`) with `data_bytes` of data, produced by a task of its own until stopped:
/// reconnect-storm's events, which keep flowing while the edge restarts. A notification
/// is one stream event for its recipient and nothing else: no count changes, and no copy
/// for a sender, as a message would have.
pub(super) struct Notifications {
    produced: Arc<AtomicU64>,
    deliveries: Deliveries,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<f64>>,
}

/// What [`Notifications`] produced, once stopped.
pub(super) struct NotificationsSent {
    pub(super) produced: u64,
    pub(super) seconds: f64,
    pub(super) failures: u64,
}

/// The name of the bench's notifications.
pub(super) const NOTIFICATION_EVENT: &str = "bench.storm";

impl Notifications {
    /// Warms a producer up, then starts producing.
    pub(super) async fn start(
        kafka: &KafkaSettings,
        target: &Target,
        user_prefix: &str,
        users: u64,
        rate: u64,
        data_bytes: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(rate > 0, "--rate must be at least 1");
        anyhow::ensure!(users > 0, "no users to notify");
        let (producer, deliveries) = warm_event_producer(kafka, target, user_prefix).await?;
        let data = message_data(data_bytes)?;
        let partner = target.partner.clone();
        let topic = target.topics.message_events.clone();
        let user_prefix = user_prefix.to_owned();
        let produced = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let produced = produced.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut sent = 0_u64;
                let mut payload = Vec::with_capacity(data_bytes + 256);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    while sent < due {
                        let event_id = format!("{user_prefix}n{sent}");
                        let event = v1::MessageEvent {
                            event_id: event_id.clone(),
                            partner: partner.clone(),
                            occurred_at_ms: i64::try_from(unix_micros() / 1000).unwrap_or(0),
                            data: data.clone(),
                            event: Some(v1::message_event::Event::Notification(v1::Notification {
                                event: NOTIFICATION_EVENT.to_owned(),
                                recipients: vec![format!("{user_prefix}{}", sent % users)],
                            })),
                        };
                        payload.clear();
                        event.encode(&mut payload)?;
                        send(&producer, &topic, &event_id, &payload).await?;
                        sent += 1;
                        produced.store(sent, Ordering::Relaxed);
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let _ = producer.flush(Duration::from_secs(30));
                Ok(seconds)
            })
        };
        Ok(Self {
            produced,
            deliveries,
            stop,
            task,
        })
    }

    /// Notifications produced so far.
    pub(super) fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Stops producing and waits for what was produced to be acknowledged.
    pub(super) async fn stop(self) -> anyhow::Result<NotificationsSent> {
        self.stop.cancel();
        let seconds = self.task.await.context("the notification producer")??;
        Ok(NotificationsSent {
            produced: self.produced.load(Ordering::Relaxed),
            seconds,
            failures: self.deliveries.failed.load(Ordering::Relaxed),
        })
    }
}

fn event_key(event: &v1::MessageEvent) -> String {
    match &event.event {
        Some(v1::message_event::Event::MessageCreated(created)) => created.conversation_id.clone(),
        _ => event.event_id.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn push_rate(
    pool: &mut WorkerPool,
    kafka: &KafkaSettings,
    target: &Target,
    user_prefix: &str,
    users: u64,
    duration: Duration,
    rate: Option<u64>,
    pushes: &mut PushResult,
) -> anyhow::Result<()> {
    let (producer, deliveries) = producer(
        kafka,
        &[
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "200000"),
        ],
    )?;
    let keys: Vec<(String, String)> = (0..users)
        .map(|user| {
            let name = format!("{user_prefix}{user}");
            (user_key(&target.partner, &name), name)
        })
        .collect();
    let warm_user = format!("{user_prefix}warm-up");
    let warm = v1::UnreadCount {
        partner: target.partner.clone(),
        user: warm_user.clone(),
        count: 1,
        version: 1,
        occurred_at_ms: 0,
    };
    warm_up(
        &producer,
        &deliveries,
        &target.topics.unread_counts,
        &user_key(&target.partner, &warm_user),
        &warm.encode_to_vec(),
    )
    .await?;
    let bar = progress_bar(duration.as_secs().max(1), "seconds");
    let started = Instant::now();
    let mut produced = 0_u64;
    let mut payload = Vec::with_capacity(128);
    while started.elapsed() < duration {
        if let Some(rate) = rate {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if produced >= due {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        for _ in 0..1000 {
            let (key, user) = &keys[usize::try_from(produced % users).unwrap_or(0)];
            let sent_us = unix_micros();
            let record = v1::UnreadCount {
                partner: target.partner.clone(),
                user: user.clone(),
                count: sent_us,
                version: produced + 1,
                occurred_at_ms: i64::try_from(sent_us / 1000).unwrap_or(0),
            };
            payload.clear();
            record.encode(&mut payload)?;
            send(&producer, &target.topics.unread_counts, key, &payload).await?;
            produced += 1;
        }
        pool.pump(Duration::ZERO).await?;
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "{produced} produced, {} pushes",
            pool.totals().pushes
        ));
        tokio::task::yield_now().await;
    }
    pushes.produce_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let _ = producer.flush(Duration::from_secs(30));
    wait_quiet(pool, None, Duration::from_secs(3), Duration::from_secs(120)).await?;
    pushes.produced = produced;
    pushes.produced_per_second = produced as f64 / pushes.produce_seconds.max(1e-9);
    pushes.produce_failures = deliveries.failed.load(Ordering::Relaxed);
    Ok(())
}
