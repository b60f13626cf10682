//! `[api] shards`: which edge shard serves which partitions, and so which user. With
//! edges run as shards (each with `edge.partitions`), a backend asks the api where to
//! send a user's client (`GET /v1/users/{user}/shard`, or `fanout shard`): the user's
//! partition follows from its key (`partner/user`) and the partitioner fanout's
//! producers use ([`fanout_kafka::partition_for_key`]), the shard from the partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use fanout_kafka::{InvalidSetting, PartitionCount, partition_for_key};
use serde::{Deserialize, Serialize};

/// One edge shard: the URL its clients connect to (the edges' load balancer) and the
/// partitions of unread-counts its edges read (their `edge.partitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub url: String,
    pub partitions: Vec<i32>,
}

/// The shards, validated: every partition `0..count` served by exactly one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// The URL of the shard serving each partition, by partition.
    urls: Vec<Arc<str>>,
    count: PartitionCount,
}

/// Where a user is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserShard {
    /// The partition of the user's records on user-events, unread-counts and
    /// user-streams.
    pub partition: i32,
    /// The topics' partition count the answer assumes.
    pub partitions: i32,
    /// The URL of the shard whose edges read that partition.
    pub url: String,
}

impl ShardMap {
    /// Checks `shards` (as `[api] shards`; keys named `shards[i].…` within it): URLs
    /// that are WebSocket or HTTP URLs, partitions that are each served by exactly one
    /// shard and together are `0..N` for some N, the topics' partition count. `None`
    /// for no shards (every edge reads every partition).
    pub fn new(shards: &[ShardConfig]) -> Result<Option<Self>, InvalidSetting> {
        if shards.is_empty() {
            return Ok(None);
        }
        let mut owner: BTreeMap<i32, usize> = BTreeMap::new();
        for (index, shard) in shards.iter().enumerate() {
            let url = shard.url.as_str();
            let scheme_ok = ["ws://", "wss://", "http://", "https://"]
                .iter()
                .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme));
            if !scheme_ok || url.bytes().any(|byte| !byte.is_ascii_graphic()) {
                return Err(InvalidSetting::new(
                    format!("shards[{index}].url"),
                    format!("{url:?} is not a ws://, wss://, http:// or https:// URL"),
                ));
            }
            if shard.partitions.is_empty() {
                return Err(InvalidSetting::new(
                    format!("shards[{index}].partitions"),
                    "lists no partition",
                ));
            }
            for partition in &shard.partitions {
                if *partition < 0 {
                    return Err(InvalidSetting::new(
                        format!("shards[{index}].partitions"),
                        format!("{partition} is negative"),
                    ));
                }
                if let Some(other) = owner.insert(*partition, index) {
                    return Err(InvalidSetting::new(
                        format!("shards[{index}].partitions"),
                        format!(
                            "partition {partition} is also served by shards[{other}]: each partition is one shard's"
                        ),
                    ));
                }
            }
        }
        // Keys are non-negative and distinct, so 0..N are all there iff the largest is
        // N - 1.
        let count = owner.len();
        if let Some(missing) = (0..)
            .zip(owner.keys())
            .find(|(expected, found)| expected != *found)
        {
            return Err(InvalidSetting::new(
                "shards",
                format!(
                    "partition {} is served by no shard: the shards must cover every partition from 0 to the topics' last",
                    missing.0
                ),
            ));
        }
        let count = i32::try_from(count)
            .ok()
            .and_then(PartitionCount::new)
            .ok_or_else(|| InvalidSetting::new("shards", "too many partitions"))?;
        let urls: Vec<Arc<str>> = shards
            .iter()
            .map(|shard| Arc::from(shard.url.as_str()))
            .collect();
        Ok(Some(Self {
            urls: owner.values().map(|index| urls[*index].clone()).collect(),
            count,
        }))
    }

    /// The topics' partition count the shards cover.
    pub fn partition_count(&self) -> PartitionCount {
        self.count
    }

    /// Where the user keyed `key` (`partner/user`) is served.
    pub fn user_shard(&self, key: &str) -> UserShard {
        let partition = partition_for_key(key.as_bytes(), self.count);
        let url = usize::try_from(partition)
            .ok()
            .and_then(|index| self.urls.get(index))
            .map(|url| url.to_string())
            .unwrap_or_default();
        UserShard {
            partition,
            partitions: self.count.get(),
            url,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shard(url: &str, partitions: &[i32]) -> ShardConfig {
        ShardConfig {
            url: url.to_owned(),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn no_shards_is_no_map() {
        assert_eq!(ShardMap::new(&[]).unwrap(), None);
    }

    #[test]
    fn each_user_is_answered_with_the_shard_of_its_partition() {
        let map = ShardMap::new(&[
            shard("wss://a.example", &[0, 2]),
            shard("wss://b.example", &[3, 1]),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(map.partition_count().get(), 4);
        let four = PartitionCount::new(4).unwrap();
        for user in 0..200 {
            let key = fanout_schema::user_key("acme", &format!("u{user}"));
            let answer = map.user_shard(&key);
            let partition = partition_for_key(key.as_bytes(), four);
            assert_eq!(answer.partition, partition);
            assert_eq!(answer.partitions, 4);
            let expected = if partition % 2 == 0 {
                "wss://a.example"
            } else {
                "wss://b.example"
            };
            assert_eq!(answer.url, expected, "{key}");
        }
    }

    #[test]
    fn a_partition_served_twice_or_by_none_or_a_bad_url_is_refused_naming_the_key() {
        let twice =
            ShardMap::new(&[shard("wss://a", &[0, 1]), shard("wss://b", &[1, 2])]).unwrap_err();
        assert_eq!(twice.key, "shards[1].partitions");
        assert!(twice.reason.contains("shards[0]"), "{twice}");
        let gap = ShardMap::new(&[shard("wss://a", &[0, 1]), shard("wss://b", &[3])]).unwrap_err();
        assert_eq!(gap.key, "shards");
        assert!(gap.reason.contains("partition 2"), "{gap}");
        let from_one = ShardMap::new(&[shard("wss://a", &[1])]).unwrap_err();
        assert!(from_one.reason.contains("partition 0"), "{from_one}");
        let url = ShardMap::new(&[shard("edge-a:8080", &[0])]).unwrap_err();
        assert_eq!(url.key, "shards[0].url");
        let empty = ShardMap::new(&[shard("wss://a", &[0]), shard("wss://b", &[])]).unwrap_err();
        assert_eq!(empty.key, "shards[1].partitions");
        let negative = ShardMap::new(&[shard("wss://a", &[0, -1])]).unwrap_err();
        assert!(negative.reason.contains("negative"), "{negative}");
    }
}
