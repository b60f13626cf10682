//! Which partition a key lands on: the partitioner of fanout's producers
//! ([`KafkaSettings::producer_config`](crate::KafkaSettings::producer_config) sets
//! librdkafka's `murmur2_random`, which is the Java client's default for keyed
//! records), as a pure function. An edge that reads only some partitions and the api
//! that tells a backend which edge serves a user both compute a user's partition with
//! it, and must agree with where ingest put that user's records.

use std::num::NonZeroU32;

/// A topic's number of partitions: at least one, at most `i32::MAX` (Kafka's partition
/// ids are `int32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionCount(NonZeroU32);

impl PartitionCount {
    /// `None` unless `count` is in `1..=i32::MAX`.
    pub fn new(count: i32) -> Option<Self> {
        u32::try_from(count)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self)
    }

    pub fn get(self) -> i32 {
        // In range by construction.
        i32::try_from(self.0.get()).unwrap_or(i32::MAX)
    }

    /// Whether `partition` is one of this topic's (`0..count`).
    pub fn contains(self, partition: i32) -> bool {
        (0..self.get()).contains(&partition)
    }
}

impl std::fmt::Display for PartitionCount {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// Java Kafka's `Utils.murmur2` (librdkafka's `rd_murmur2`): MurmurHash2 with seed
/// `0x9747b28c`, the key's bytes read as little-endian 32-bit words.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java takes `data.length` as an int; a key is far below 4 GiB.
    let mut h = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * index);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a record keyed `key` is produced to by fanout's producers, of a topic
/// with `count` partitions: `(murmur2(key) & 0x7fffffff) % count`, as librdkafka's
/// `murmur2_random` and Java's default partitioner compute it for a non-empty key.
pub fn partition_for_key(key: &[u8], count: PartitionCount) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    // Below `count`, which fits an i32.
    i32::try_from(positive % count.0.get()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Apache Kafka's `UtilsTest.testMurmur2`: the Java client's hashes, as `int`s.
    #[test]
    fn murmur2_matches_the_java_clients_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2(key) as i32,
                java,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// librdkafka's `unittest_murmur2` (rdmurmur2.c), which checks its hash against the
    /// Java client's, at every alignment of the tail.
    #[test]
    fn murmur2_matches_librdkafkas_vectors() {
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "{key:?}");
        }
    }

    #[test]
    fn the_partition_is_the_positive_hash_modulo_the_count() {
        let four = PartitionCount::new(4).unwrap();
        // "21": -973932308 & 0x7fffffff = 1173551340, % 4 = 0.
        assert_eq!(partition_for_key(b"21", four), 0);
        // "foobar": -790332482 & 0x7fffffff = 1357151166, % 4 = 2.
        assert_eq!(partition_for_key(b"foobar", four), 2);
        let one = PartitionCount::new(1).unwrap();
        assert_eq!(partition_for_key(b"anything", one), 0);
        for count in [1, 3, 7, 64] {
            let count = PartitionCount::new(count).unwrap();
            for user in 0..200 {
                let key = format!("acme/user-{user}");
                assert!(count.contains(partition_for_key(key.as_bytes(), count)));
            }
        }
    }

    /// What librdkafka does with fanout's producer settings: keyed records produced to
    /// the embedded cluster land, every one, on the partition this module computes,
    /// for topics of several partition counts.
    #[test]
    fn records_produced_with_fanouts_settings_land_where_the_function_says() {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use rdkafka::ClientContext;
        use rdkafka::message::Message;
        use rdkafka::producer::{
            BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext,
        };

        /// A delivered record's key and the partition it landed on.
        type Delivered = (Vec<u8>, i32);
        #[derive(Clone, Default)]
        struct Landed(Arc<Mutex<Vec<Delivered>>>);
        impl ClientContext for Landed {}
        impl ProducerContext for Landed {
            type DeliveryOpaque = ();
            fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
                let message = result.as_ref().unwrap();
                let key = message.key().unwrap().to_vec();
                self.0.lock().unwrap().push((key, message.partition()));
            }
        }

        let counts = [1, 2, 3, 4, 7, 16];
        let topics: Vec<(String, i32)> = counts
            .iter()
            .map(|count| (format!("partitioner-{count}"), *count))
            .collect();
        let kafka = crate::EmbeddedKafka::start(1, &topics).unwrap();
        let settings = crate::KafkaSettings::new(kafka.bootstrap_servers());
        let landed = Landed::default();
        let producer: BaseProducer<Landed> = settings
            .producer_config()
            .create_with_context(landed.clone())
            .unwrap();
        // Keys as fanout makes them (`partner/user`), of every length's tail, with
        // multi-byte characters and separators in the user id.
        let mut keys: Vec<String> = (0..500)
            .map(|user| format!("partner-{}/user-{user}", user % 7))
            .collect();
        keys.extend(
            [
                "acme/ü",
                "acme/team/alice",
                "a/b",
                "acme/😀😀",
                "x/0123456789abcdef",
            ]
            .map(str::to_owned),
        );
        for (topic, _) in &topics {
            for key in &keys {
                producer
                    .send(
                        BaseRecord::<_, _, ()>::to(topic)
                            .key(key.as_bytes())
                            .payload("v"),
                    )
                    .map_err(|(error, _)| error)
                    .unwrap();
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(30)).unwrap();
            let delivered = std::mem::take(&mut *landed.0.lock().unwrap());
            assert_eq!(delivered.len(), keys.len(), "{topic}");
            let count = PartitionCount::new(
                counts[topics.iter().position(|(name, _)| name == topic).unwrap()],
            )
            .unwrap();
            let mut used = std::collections::BTreeSet::new();
            for (key, partition) in delivered {
                assert_eq!(
                    partition_for_key(&key, count),
                    partition,
                    "{topic}: {}",
                    String::from_utf8_lossy(&key)
                );
                used.insert(partition);
            }
            // Not a degenerate answer: the keys spread over every partition.
            assert_eq!(used.len(), count.0.get() as usize, "{topic}");
        }
    }

    #[test]
    fn a_partition_count_is_positive() {
        assert_eq!(PartitionCount::new(0), None);
        assert_eq!(PartitionCount::new(-1), None);
        assert_eq!(PartitionCount::new(i32::MAX).unwrap().get(), i32::MAX);
        let four = PartitionCount::new(4).unwrap();
        assert!(four.contains(3) && !four.contains(4) && !four.contains(-1));
    }
}
