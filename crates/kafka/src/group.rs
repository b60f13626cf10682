//! Whether a stage's consumer group is doing its work: a rebalance that does not finish
//! (every member revoked, none assigned: what librdkafka's mock cluster does to members
//! with different `session.timeout.ms`) and partitions with records waiting that no
//! member consumes (what tansu 0.6 does after members are SIGKILLed) both look healthy
//! from inside one member unless it watches for them. A [`GroupWatch`] records this
//! member's rebalances (from the consumer's callbacks) and, from a
//! [`GroupMonitor`]'s samples of the group's committed offsets and the partitions' ends,
//! which partitions nobody advances; the stage asks it on a tick whether to rejoin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::{KafkaSettings, StageHealth};

/// How long a rebalance may take, and a partition may wait unconsumed, before a member
/// says so and rejoins its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBounds {
    /// From a revocation (or the subscription) to the next assignment.
    pub rebalance: Duration,
    /// A partition with records past its committed offset, the offset unchanged.
    pub unconsumed: Duration,
}

impl GroupBounds {
    pub fn from_settings(kafka: &KafkaSettings) -> Self {
        Self {
            rebalance: Duration::from_millis(kafka.rebalance_timeout_ms),
            unconsumed: Duration::from_millis(kafka.unconsumed_timeout_ms),
        }
    }
}

/// Why a member rejoins its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Revoked (or newly subscribed) and not assigned for longer than the bound.
    RebalanceTimeout,
    /// Some partition's records wait, its committed offset unchanged for longer than
    /// the bound, and it is not this member's.
    UnconsumedPartitions,
}

impl Rejoin {
    pub fn label(self) -> &'static str {
        match self {
            Self::RebalanceTimeout => "rebalance_timeout",
            Self::UnconsumedPartitions => "unconsumed_partitions",
        }
    }
}

/// One member's view of its group: pure, time passed in.
#[derive(Debug, Clone)]
pub struct GroupState {
    bounds: GroupBounds,
    /// `Some` from a revocation or the subscription until the next assignment.
    joining_since: Option<Instant>,
    assigned: BTreeSet<i32>,
    /// Per partition: the last committed offset and end seen, and since when the
    /// committed offset has not moved while behind the end.
    progress: BTreeMap<i32, Progress>,
    /// When this member last rejoined; another rejoin waits a bound after it.
    rejoined_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    committed: i64,
    stuck_since: Option<Instant>,
}

/// A partition's committed offset in the group (`None`: nothing committed) and its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSample {
    pub partition: i32,
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl GroupState {
    /// A member that has just subscribed: joining.
    pub fn new(bounds: GroupBounds, now: Instant) -> Self {
        Self {
            bounds,
            joining_since: Some(now),
            assigned: BTreeSet::new(),
            progress: BTreeMap::new(),
            rejoined_at: None,
        }
    }

    pub fn revoked(&mut self, partitions: &[i32], now: Instant) {
        for partition in partitions {
            self.assigned.remove(partition);
        }
        self.joining_since.get_or_insert(now);
    }

    pub fn assigned(&mut self, partitions: &[i32]) {
        self.assigned.extend(partitions.iter().copied());
        self.joining_since = None;
    }

    /// The member left the group to join it again: joining, with nothing assigned.
    pub fn rejoined(&mut self, now: Instant) {
        self.assigned.clear();
        self.joining_since = Some(now);
        self.rejoined_at = Some(now);
    }

    /// Takes a sample of the group's committed offsets and the partitions' ends.
    pub fn sampled(&mut self, samples: &[PartitionSample], now: Instant) {
        for sample in samples {
            // Nothing committed: the group starts from the earliest record.
            let committed = sample.committed.unwrap_or(sample.low).max(sample.low);
            let waiting = committed < sample.high;
            let progress = self.progress.entry(sample.partition).or_insert(Progress {
                committed,
                stuck_since: None,
            });
            if !waiting || committed != progress.committed {
                progress.stuck_since = None;
            } else {
                progress.stuck_since.get_or_insert(now);
            }
            progress.committed = committed;
        }
    }

    /// How long the current rebalance has lasted, if one is under way.
    pub fn rebalancing_for(&self, now: Instant) -> Option<Duration> {
        self.joining_since.map(|since| now.duration_since(since))
    }

    /// Partitions not this member's whose records have waited, their committed offset
    /// unchanged, for longer than the bound.
    pub fn unconsumed(&self, now: Instant) -> Vec<i32> {
        self.progress
            .iter()
            .filter(|(partition, progress)| {
                !self.assigned.contains(partition)
                    && progress
                        .stuck_since
                        .is_some_and(|since| now.duration_since(since) > self.bounds.unconsumed)
            })
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Stalled: the group is not doing its work and this member is not doing it either
    /// (its rebalance is overdue, or it holds nothing while partitions wait unconsumed).
    pub fn stalled(&self, now: Instant) -> bool {
        self.rebalance_overdue(now)
            || (self.assigned.is_empty() && !self.unconsumed(now).is_empty())
    }

    fn rebalance_overdue(&self, now: Instant) -> bool {
        self.rebalancing_for(now)
            .is_some_and(|elapsed| elapsed > self.bounds.rebalance)
    }

    /// Whether to rejoin now, and why. A rejoin starts a new rebalance, so the next
    /// for an overdue rebalance comes a bound later; for unconsumed partitions, a
    /// member waits a bound after its last rejoin, so that the partitions' new owners
    /// have time to move their offsets.
    pub fn should_rejoin(&self, now: Instant) -> Option<Rejoin> {
        if self.rebalance_overdue(now) {
            Some(Rejoin::RebalanceTimeout)
        } else if !self.unconsumed(now).is_empty()
            && self
                .rejoined_at
                .is_none_or(|at| now.duration_since(at) > self.bounds.unconsumed)
        {
            Some(Rejoin::UnconsumedPartitions)
        } else {
            None
        }
    }
}

/// A stage that consumes as a member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStage {
    Ingest,
    Router,
}

/// The metrics of a stage's group: `fanout_<stage>_stalled_groups`,
/// `fanout_<stage>_unconsumed_partitions` and `fanout_<stage>_group_rejoins_total`.
#[derive(Clone)]
pub struct GroupMetrics {
    stalled: IntGauge,
    unconsumed: IntGauge,
    rejoins: IntCounterVec,
}

impl GroupMetrics {
    pub fn new(stage: GroupStage, registry: &Registry) -> prometheus::Result<Self> {
        let (stalled, unconsumed, rejoins) = match stage {
            GroupStage::Ingest => (
                "fanout_ingest_stalled_groups",
                "fanout_ingest_unconsumed_partitions",
                "fanout_ingest_group_rejoins_total",
            ),
            GroupStage::Router => (
                "fanout_router_stalled_groups",
                "fanout_router_unconsumed_partitions",
                "fanout_router_group_rejoins_total",
            ),
        };
        let stalled = IntGauge::new(
            stalled,
            "1 while this member's group is stalled: its rebalance is overdue, or it holds \
             no partition while some partition's records wait unconsumed",
        )?;
        let unconsumed = IntGauge::new(
            unconsumed,
            "Partitions of the input topic, not this member's, whose records have waited \
             with the group's committed offset unchanged for longer than \
             kafka.unconsumed_timeout_ms",
        )?;
        let rejoins = IntCounterVec::new(
            Opts::new(
                rejoins,
                "Times this member left its group and joined again, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(stalled.clone()))?;
        registry.register(Box::new(unconsumed.clone()))?;
        registry.register(Box::new(rejoins.clone()))?;
        for reason in [Rejoin::RebalanceTimeout, Rejoin::UnconsumedPartitions] {
            rejoins.with_label_values(&[reason.label()]);
        }
        Ok(Self {
            stalled,
            unconsumed,
            rejoins,
        })
    }
}

impl GroupMetrics {
    /// Whether the member says its group is stalled now.
    pub fn is_stalled(&self) -> bool {
        self.stalled.get() != 0
    }

    /// Rejoins so far, for any reason.
    pub fn rejoins(&self) -> u64 {
        [Rejoin::RebalanceTimeout, Rejoin::UnconsumedPartitions]
            .iter()
            .map(|reason| self.rejoins.with_label_values(&[reason.label()]).get())
            .sum()
    }
}

/// A [`GroupState`] shared by a stage's loop, its consumer's rebalance callbacks and its
/// [`GroupMonitor`], with the stage's health and metrics. Cheap to clone.
#[derive(Clone)]
pub struct GroupWatch {
    state: Arc<Mutex<GroupState>>,
    health: StageHealth,
    metrics: GroupMetrics,
    group: String,
}

impl GroupWatch {
    pub fn new(
        group: &str,
        bounds: GroupBounds,
        health: StageHealth,
        metrics: GroupMetrics,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(GroupState::new(bounds, Instant::now()))),
            health,
            metrics,
            group: group.to_owned(),
        }
    }

    /// A member's watch and the sampler feeding it, for `group` consuming `topic`, with
    /// the bounds of `kafka`'s settings; the sampler stops with `shutdown`.
    pub fn start(
        kafka: &KafkaSettings,
        group: &str,
        topic: &str,
        health: StageHealth,
        metrics: GroupMetrics,
        shutdown: &CancellationToken,
    ) -> Result<(Self, GroupMonitor), rdkafka::error::KafkaError> {
        let watch = Self::new(group, GroupBounds::from_settings(kafka), health, metrics);
        let monitor =
            GroupMonitor::spawn(kafka, group, topic, watch.clone(), shutdown.child_token())?;
        Ok((watch, monitor))
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut GroupState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn revoked(&self, partitions: &[i32]) {
        self.with_state(|state| state.revoked(partitions, Instant::now()));
    }

    pub fn assigned(&self, partitions: &[i32]) {
        self.with_state(|state| state.assigned(partitions));
    }

    fn sampled(&self, samples: &[PartitionSample]) {
        self.with_state(|state| state.sampled(samples, Instant::now()));
    }

    /// Updates readiness and metrics, and says whether the stage should rejoin now; if
    /// it should, the log line and the count are written here, and the state is that
    /// of a member rejoining.
    pub fn check(&self) -> Option<Rejoin> {
        let now = Instant::now();
        let (stalled, unconsumed, rebalancing, rejoin) = self.with_state(|state| {
            let rejoin = state.should_rejoin(now);
            let verdict = (
                state.stalled(now),
                state.unconsumed(now),
                state.rebalancing_for(now),
                rejoin,
            );
            if rejoin.is_some() {
                state.rejoined(now);
            }
            verdict
        });
        self.health.set_group_stalled(stalled);
        self.metrics.stalled.set(i64::from(stalled));
        self.metrics
            .unconsumed
            .set(i64::try_from(unconsumed.len()).unwrap_or(i64::MAX));
        if let Some(reason) = rejoin {
            self.metrics
                .rejoins
                .with_label_values(&[reason.label()])
                .inc();
            tracing::warn!(
                group = %self.group,
                reason = reason.label(),
                rebalancing_ms = rebalancing.map(|elapsed| elapsed.as_millis() as u64),
                unconsumed = ?unconsumed,
                "consumer group stalled; leaving and joining it again",
            );
        }
        rejoin
    }
}

/// Samples the group's committed offsets and the input partitions' ends into a
/// [`GroupWatch`], from a consumer of its own that never joins the group (on a thread of
/// its own: librdkafka's calls block). Stops when dropped or when the token it was
/// given is cancelled.
pub struct GroupMonitor {
    stop: CancellationToken,
}

impl GroupMonitor {
    /// Starts sampling, a quarter of `kafka.unconsumed_timeout_ms` apart (at most 5 s).
    pub fn spawn(
        kafka: &KafkaSettings,
        group: &str,
        topic: &str,
        watch: GroupWatch,
        stop: CancellationToken,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = kafka
            .consumer_client_config(&[("enable.auto.commit", "false")])
            .set("group.id", group)
            .create()?;
        let interval = (GroupBounds::from_settings(kafka).unconsumed / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let topic = topic.to_owned();
        let token = stop.clone();
        std::thread::Builder::new()
            .name("group-monitor".to_owned())
            .spawn(move || {
                while !token.is_cancelled() {
                    if let Some(samples) = sample(&consumer, &topic, interval) {
                        watch.sampled(&samples);
                    }
                    std::thread::sleep(interval);
                }
            })
            .map_err(|error| {
                rdkafka::error::KafkaError::ClientCreation(format!("group monitor: {error}"))
            })?;
        Ok(Self { stop })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for GroupMonitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes a group consumer, leaving its group (which blocks until the revocation and
/// the leave are done), off the async threads.
pub async fn leave_group<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: rdkafka::consumer::StreamConsumer<C>,
) {
    if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::warn!(%error, "closing a group consumer failed");
    }
}

/// One sample of every partition of `topic`, or `None` if Kafka did not answer in time
/// (the brokers' outage is reported elsewhere).
fn sample(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Option<Vec<PartitionSample>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)?
        .partitions()
        .iter()
        .map(|partition| partition.id())
        .collect();
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, timeout).ok()?;
    let mut samples = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).ok()?;
        let committed = match committed.find_partition(topic, partition)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        samples.push(PartitionSample {
            partition,
            committed,
            low,
            high,
        });
    }
    Some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: GroupBounds = GroupBounds {
        rebalance: Duration::from_secs(60),
        unconsumed: Duration::from_secs(30),
    };

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    fn sample(partition: i32, committed: i64, high: i64) -> PartitionSample {
        PartitionSample {
            partition,
            committed: Some(committed),
            low: 0,
            high,
        }
    }

    #[test]
    fn a_rebalance_that_does_not_finish_is_stalled_and_rejoined_once_a_bound() {
        let start = Instant::now();
        let mut state = GroupState::new(BOUNDS, start);
        assert_eq!(state.should_rejoin(at(start, 59)), None);
        assert!(!state.stalled(at(start, 59)));
        assert_eq!(
            state.should_rejoin(at(start, 61)),
            Some(Rejoin::RebalanceTimeout)
        );
        assert!(state.stalled(at(start, 61)));
        state.rejoined(at(start, 61));
        assert!(!state.stalled(at(start, 100)));
        assert_eq!(state.should_rejoin(at(start, 100)), None);
        assert_eq!(
            state.should_rejoin(at(start, 122)),
            Some(Rejoin::RebalanceTimeout)
        );
    }

    #[test]
    fn a_finished_rebalance_clears_it_and_a_revocation_starts_the_clock_again() {
        let start = Instant::now();
        let mut state = GroupState::new(BOUNDS, start);
        state.assigned(&[]);
        assert_eq!(state.rebalancing_for(at(start, 500)), None);
        assert!(!state.stalled(at(start, 500)));
        state.revoked(&[], at(start, 500));
        // A second revocation in the same rebalance keeps the first's start.
        state.revoked(&[], at(start, 550));
        assert_eq!(
            state.should_rejoin(at(start, 561)),
            Some(Rejoin::RebalanceTimeout)
        );
        state.assigned(&[1]);
        assert_eq!(state.should_rejoin(at(start, 600)), None);
    }

    #[test]
    fn a_partition_waiting_with_its_offset_unchanged_is_unconsumed_unless_it_is_ours() {
        let start = Instant::now();
        let mut state = GroupState::new(BOUNDS, start);
        state.assigned(&[0]);
        state.sampled(
            &[sample(0, 5, 10), sample(1, 5, 10), sample(2, 10, 10)],
            start,
        );
        // Caught up (2) or advancing (nothing yet): not unconsumed.
        assert!(state.unconsumed(at(start, 20)).is_empty());
        state.sampled(
            &[sample(0, 5, 12), sample(1, 5, 12), sample(2, 10, 10)],
            at(start, 20),
        );
        assert_eq!(state.unconsumed(at(start, 31)), vec![1]);
        // This member holds partitions: it says so, it is not stalled itself.
        assert!(!state.stalled(at(start, 31)));
        assert_eq!(
            state.should_rejoin(at(start, 31)),
            Some(Rejoin::UnconsumedPartitions)
        );
        // Rejoined: not again until a bound has passed, for the new owners to move.
        let mut rejoined = state.clone();
        rejoined.rejoined(at(start, 31));
        rejoined.assigned(&[0]);
        assert_eq!(rejoined.should_rejoin(at(start, 60)), None);
        assert_eq!(
            rejoined.should_rejoin(at(start, 62)),
            Some(Rejoin::UnconsumedPartitions)
        );
        // Committed offset moves: consumed after all.
        state.sampled(&[sample(1, 6, 12)], at(start, 32));
        assert!(state.unconsumed(at(start, 40)).is_empty());
    }

    #[test]
    fn a_member_with_nothing_assigned_while_partitions_wait_is_stalled() {
        let start = Instant::now();
        let mut state = GroupState::new(BOUNDS, start);
        state.assigned(&[]);
        state.sampled(&[sample(3, 0, 4)], start);
        assert!(!state.stalled(at(start, 29)));
        assert!(state.stalled(at(start, 31)));
        state.sampled(&[sample(3, 4, 4)], at(start, 40));
        assert!(!state.stalled(at(start, 41)));
    }

    #[test]
    fn nothing_committed_counts_from_the_earliest_record() {
        let start = Instant::now();
        let mut state = GroupState::new(BOUNDS, start);
        state.assigned(&[]);
        let empty = PartitionSample {
            partition: 0,
            committed: None,
            low: 7,
            high: 7,
        };
        state.sampled(&[empty], start);
        assert!(state.unconsumed(at(start, 100)).is_empty());
        let waiting = PartitionSample { high: 9, ..empty };
        state.sampled(&[waiting], at(start, 100));
        assert_eq!(state.unconsumed(at(start, 131)), vec![0]);
    }
}
