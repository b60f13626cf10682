//! Which users this edge answers for. An edge configured with `edge.partitions` reads
//! only those partitions of unread-counts and user-streams, so it holds the counts and
//! streams of only the users whose key (`partner/user`) fanout's producers put there
//! ([`fanout_kafka::partition_for_key`]). Any other user it refuses (`wrong_shard`),
//! rather than answer a count of 0 and never push a change. An edge without
//! `edge.partitions` reads every partition and refuses nobody.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use fanout_kafka::{PartitionCount, partition_for_key};

/// The partitions an edge reads, and (once its feed has read the topic's metadata) how
/// many the topic has.
#[derive(Debug)]
pub struct Shard {
    /// `None`: every partition.
    partitions: Option<BTreeSet<i32>>,
    count: OnceLock<PartitionCount>,
}

/// Whether a user is this edge's to answer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Yes,
    /// The user's records are on `partition`, which this edge does not read.
    No {
        partition: i32,
    },
}

/// Whether the edge that reads `partitions` of a topic of `count` holds the user keyed
/// `key`: the pure rule.
pub fn holds(partitions: &BTreeSet<i32>, count: PartitionCount, key: &str) -> Holds {
    let partition = partition_for_key(key.as_bytes(), count);
    if partitions.contains(&partition) {
        Holds::Yes
    } else {
        Holds::No { partition }
    }
}

impl Shard {
    /// The shard of an edge configured to read `partitions` (empty: all of them).
    pub fn new(partitions: &[i32]) -> Self {
        Self {
            partitions: (!partitions.is_empty()).then(|| partitions.iter().copied().collect()),
            count: OnceLock::new(),
        }
    }

    /// Whether this edge reads only some partitions.
    pub fn is_partial(&self) -> bool {
        self.partitions.is_some()
    }

    /// The partitions configured; `None` for every one.
    pub fn partitions(&self) -> Option<&BTreeSet<i32>> {
        self.partitions.as_ref()
    }

    /// Records the topic's partition count, read by the feed before the node is ready.
    /// The first count stays: a topic's partitions are fixed for an edge's life.
    pub fn learned(&self, count: PartitionCount) {
        let _ = self.count.set(count);
    }

    /// The topic's partition count, once learned.
    pub fn partition_count(&self) -> Option<PartitionCount> {
        self.count.get().copied()
    }

    /// Whether this edge answers for the user keyed `key` (`partner/user`). A partial
    /// shard that does not know the partition count yet (before the node is ready,
    /// when no session is answered anyway) answers for nobody: never a guess.
    pub fn holds(&self, key: &str) -> Holds {
        let Some(partitions) = &self.partitions else {
            return Holds::Yes;
        };
        match self.count.get() {
            Some(count) => holds(partitions, *count, key),
            None => {
                debug_assert!(
                    false,
                    "a shard was asked before its partition count was known"
                );
                Holds::No { partition: -1 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_edge_holds_everyone_and_shards_that_cover_the_topic_hold_each_user_once() {
        let full = Shard::new(&[]);
        assert!(!full.is_partial());
        assert_eq!(full.holds("acme/anyone"), Holds::Yes);

        let four = PartitionCount::new(4).unwrap();
        let low = Shard::new(&[0, 1]);
        let high = Shard::new(&[3, 2]);
        low.learned(four);
        high.learned(four);
        assert!(low.is_partial());
        let mut refused_by_low = 0;
        for user in 0..1000 {
            let key = fanout_schema::user_key("acme", &format!("user-{user}"));
            let partition = partition_for_key(key.as_bytes(), four);
            let (mine, other) = if partition < 2 {
                (&low, &high)
            } else {
                refused_by_low += 1;
                (&high, &low)
            };
            assert_eq!(mine.holds(&key), Holds::Yes, "{key}");
            assert_eq!(other.holds(&key), Holds::No { partition }, "{key}");
        }
        // Both shards hold some users: the split is not degenerate.
        assert!((1..1000).contains(&refused_by_low), "{refused_by_low}");
    }

    #[test]
    fn the_first_partition_count_learned_stays() {
        let shard = Shard::new(&[0]);
        assert_eq!(shard.partition_count(), None);
        shard.learned(PartitionCount::new(4).unwrap());
        shard.learned(PartitionCount::new(8).unwrap());
        assert_eq!(shard.partition_count(), PartitionCount::new(4));
    }
}
