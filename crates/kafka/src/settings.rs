use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach Kafka: the bootstrap servers plus any librdkafka setting passed through
/// as is (for example `"security.protocol" = "SASL_SSL"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// librdkafka properties applied to every client after fanout's own defaults.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            client: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client: BTreeMap::new(),
        }
    }

    /// A client config with the brokers and pass-through settings; `defaults` are
    /// applied first so that an operator's pass-through settings win.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.client {
            config.set(key, value);
        }
        config
    }

    /// Settings for a producer whose acknowledgements mean "durably in Kafka": acks from
    /// all in-sync replicas, idempotence so retries never duplicate or reorder, and the
    /// Java client's key hashing so other tools agree on partitions.
    pub fn producer_config(&self) -> ClientConfig {
        self.client_config(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "0"),
        ])
    }

    /// Turns on librdkafka's statistics (consumer lag, among others) for a client whose
    /// context is a [`StageContext`](crate::StageContext).
    pub fn with_statistics(mut config: ClientConfig) -> ClientConfig {
        config.set("statistics.interval.ms", "5000");
        config
    }

    /// Settings for a group consumer that stores offsets only when told to.
    pub fn group_consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config(&[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
        ]);
        config.set("group.id", group_id);
        config
    }

    /// Settings for a consumer that reads by `assign`, outside any group.
    pub fn assign_consumer_config(&self) -> ClientConfig {
        // librdkafka wants a group.id even for assign-only consumers that never commit.
        self.client_config(&[
            ("group.id", "fanout-assign-only"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ])
    }
}

/// The topic names of DESIGN.md's stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub message_events: String,
    pub user_events: String,
    pub router_state: String,
    pub unread_counts: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            message_events: "message-events".to_owned(),
            user_events: "user-events".to_owned(),
            router_state: "router-state".to_owned(),
            unread_counts: "unread-counts".to_owned(),
            dead_letter: "dead-letter".to_owned(),
        }
    }
}

impl Topics {
    /// Every topic with a prefix, so tests sharing a cluster never share topics.
    pub fn with_prefix(prefix: &str) -> Self {
        let defaults = Self::default();
        Self {
            message_events: format!("{prefix}{}", defaults.message_events),
            user_events: format!("{prefix}{}", defaults.user_events),
            router_state: format!("{prefix}{}", defaults.router_state),
            unread_counts: format!("{prefix}{}", defaults.unread_counts),
            dead_letter: format!("{prefix}{}", defaults.dead_letter),
        }
    }

    /// Each topic with its partition count: user-events, router-state and unread-counts
    /// must share one so that partition p of each holds the same users.
    pub fn with_partitions(
        &self,
        input_partitions: i32,
        user_partitions: i32,
    ) -> Vec<(String, i32)> {
        vec![
            (self.message_events.clone(), input_partitions),
            (self.user_events.clone(), user_partitions),
            (self.router_state.clone(), user_partitions),
            (self.unread_counts.clone(), user_partitions),
            (self.dead_letter.clone(), 1),
        ]
    }
}
