use std::collections::{BTreeMap, BTreeSet};

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};

/// How to reach Kafka: the bootstrap servers plus librdkafka settings passed through
/// as is (for example `"security.protocol" = "SASL_SSL"`): `client` to every client,
/// `consumer` to consumers only, `producer` to producers only (so that librdkafka does
/// not warn about a property the client type ignores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// librdkafka properties applied to every client after fanout's own defaults.
    pub client: BTreeMap<String, String>,
    /// librdkafka properties applied to consumers only, after `client`.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties applied to producers only, after `client`.
    pub producer: BTreeMap<String, String>,
    /// How long a group member's rebalance may last (from a revocation, or from joining,
    /// to its next assignment) before the member says it is stalled and rejoins.
    pub rebalance_timeout_ms: u64,
    /// How long a partition's records may wait with the group's committed offset
    /// unchanged before members say so and one not holding it rejoins.
    pub unconsumed_timeout_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self::new("127.0.0.1:9092")
    }
}

/// A pass-through setting fanout refuses, with the key as written in the config
/// (`client."security.protocol"`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    pub key: String,
    pub reason: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same problem, its key now relative to the enclosing `section`
    /// (`max_in_flight` in `ingest` is `ingest.max_in_flight`).
    pub fn in_section(self, section: &str) -> Self {
        Self {
            key: format!("{section}.{}", self.key),
            reason: self.reason,
        }
    }
}

/// Refuses the first of `settings` (key and value) that is zero.
pub fn require_positive(settings: &[(&str, u64)]) -> Result<(), InvalidSetting> {
    match settings.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(InvalidSetting::new(*key, "must be positive")),
        None => Ok(()),
    }
}

/// Properties fanout sets itself because its delivery guarantees depend on them.
const MANAGED_PROPERTIES: [(&str, &str); 3] = [
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("group.id", "set ingest.group_id or router.group_id instead"),
    (
        "enable.auto.offset.store",
        "fanout stores an offset only once its outputs are acknowledged",
    ),
];

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            rebalance_timeout_ms: 60_000,
            unconsumed_timeout_ms: 120_000,
        }
    }

    /// Checks, without connecting anywhere, that the brokers are named and that
    /// librdkafka accepts every pass-through property (a name it does not know, a bad
    /// value, or a feature this build lacks is refused here, naming the key).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        require_positive(&[
            ("rebalance_timeout_ms", self.rebalance_timeout_ms),
            ("unconsumed_timeout_ms", self.unconsumed_timeout_ms),
        ])?;
        if self
            .brokers
            .split(',')
            .all(|broker| broker.trim().is_empty())
        {
            return Err(InvalidSetting {
                key: "brokers".to_owned(),
                reason: "must name at least one broker".to_owned(),
            });
        }
        for (table, properties) in [
            ("client", &self.client),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ] {
            for (property, value) in properties {
                let key = format!("{table}.\"{property}\"");
                if let Some((_, why)) = MANAGED_PROPERTIES
                    .iter()
                    .find(|(managed, _)| managed == property)
                {
                    return Err(InvalidSetting {
                        key,
                        reason: format!("fanout sets this property itself ({why})"),
                    });
                }
                let mut one = ClientConfig::new();
                one.set(property, value);
                if let Err(error) = one.create_native_config() {
                    let why = match error {
                        KafkaError::ClientConfig(_, description, _, _) => description,
                        other => other.to_string(),
                    };
                    return Err(InvalidSetting {
                        key,
                        reason: format!("refused by librdkafka: {why}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// A client config with the brokers and the `client` pass-through settings;
    /// `defaults` are applied first so that an operator's settings win. For admin
    /// clients and tools; stages use the consumer and producer configs below.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        self.config_with(defaults, None)
    }

    /// [`Self::client_config`] plus the `producer` pass-through settings.
    pub fn producer_client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        self.config_with(defaults, Some(&self.producer))
    }

    /// [`Self::client_config`] plus the `consumer` pass-through settings.
    pub fn consumer_client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = self.config_with(defaults, Some(&self.consumer));
        // librdkafka logs a position reset (records deleted before they were consumed)
        // as a warning, which a context counts (`StageContext::on_log`); it must be
        // told, whatever level the stage's own log shows.
        if (config.log_level as i32) < (RDKafkaLogLevel::Warning as i32) {
            config.set_log_level(RDKafkaLogLevel::Warning);
        }
        config
    }

    fn config_with(
        &self,
        defaults: &[(&str, &str)],
        specific: Option<&BTreeMap<String, String>>,
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in self.client.iter().chain(specific.into_iter().flatten()) {
            config.set(key, value);
        }
        config
    }

    /// Settings for a producer whose acknowledgements mean "durably in Kafka": acks from
    /// all in-sync replicas, idempotence so retries never duplicate or reorder, and the
    /// Java client's key hashing so other tools agree on partitions.
    pub fn producer_config(&self) -> ClientConfig {
        self.producer_client_config(&[
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
        let mut config = self.consumer_client_config(&[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            // Once its local queue holds `queued.min.messages`, librdkafka waits this
            // long before the next fetch: 1000 ms by default, which left a router with
            // a backlog idle most of each second (`fanout bench router`: ~118k events/s
            // with the CPU 95 % idle); 20 ms keeps it fed.
            ("fetch.queue.backoff.ms", "20"),
        ]);
        config.set("group.id", group_id);
        config
    }

    /// Settings for a consumer that reads by `assign`, outside any group.
    pub fn assign_consumer_config(&self) -> ClientConfig {
        // librdkafka wants a group.id even for assign-only consumers that never commit.
        self.consumer_client_config(&[
            ("group.id", "fanout-assign-only"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // After a fetch error (an offset deleted by retention meanwhile: the reset
            // to the earliest one), fetch again soon rather than in librdkafka's 500
            // ms, by when a broker deleting steadily from the front (librdkafka's mock
            // cluster keeps 5 MiB a partition) has deleted that one too.
            ("fetch.error.backoff.ms", "50"),
            // Reading a topic from the beginning (an edge's or the api's table), the
            // local queue of fetched records fills past `queued.min.messages` (counted
            // over all partitions, though meant per partition) and librdkafka then
            // waits this long before every partition's next fetch: 1000 ms by default,
            // which made a 1M-user catch-up 7.4 s of mostly waiting (`fanout bench
            // table`); 20 ms keeps the consumer busy.
            ("fetch.queue.backoff.ms", "20"),
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
    pub user_streams: String,
    /// Read marks and message reads, compacted; what the api's receipt queries serve.
    pub read_receipts: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            message_events: "message-events".to_owned(),
            user_events: "user-events".to_owned(),
            router_state: "router-state".to_owned(),
            unread_counts: "unread-counts".to_owned(),
            user_streams: "user-streams".to_owned(),
            read_receipts: "read-receipts".to_owned(),
            dead_letter: "dead-letter".to_owned(),
        }
    }
}

impl Topics {
    /// Checks that every name is a legal Kafka topic name and that no two stages share
    /// a topic, naming the key within `[topics]`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let topics = [
            ("message_events", &self.message_events),
            ("user_events", &self.user_events),
            ("router_state", &self.router_state),
            ("unread_counts", &self.unread_counts),
            ("user_streams", &self.user_streams),
            ("read_receipts", &self.read_receipts),
            ("dead_letter", &self.dead_letter),
        ];
        let mut seen = BTreeSet::new();
        for (key, topic) in topics {
            let legal = !topic.is_empty()
                && topic.len() <= 249
                && topic != "."
                && topic != ".."
                && topic
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
            if !legal {
                return Err(InvalidSetting::new(
                    key,
                    format!("{topic:?} is not a Kafka topic name (1-249 of [A-Za-z0-9._-])"),
                ));
            }
            if !seen.insert(topic.as_str()) {
                return Err(InvalidSetting::new(
                    key,
                    format!("{topic:?} is also used for another topic"),
                ));
            }
        }
        Ok(())
    }

    /// Every topic with a prefix, so tests sharing a cluster never share topics.
    pub fn with_prefix(prefix: &str) -> Self {
        let defaults = Self::default();
        Self {
            message_events: format!("{prefix}{}", defaults.message_events),
            user_events: format!("{prefix}{}", defaults.user_events),
            router_state: format!("{prefix}{}", defaults.router_state),
            unread_counts: format!("{prefix}{}", defaults.unread_counts),
            user_streams: format!("{prefix}{}", defaults.user_streams),
            read_receipts: format!("{prefix}{}", defaults.read_receipts),
            dead_letter: format!("{prefix}{}", defaults.dead_letter),
        }
    }

    /// Each topic with its partition count: user-events, router-state, unread-counts,
    /// user-streams and read-receipts must share one so that partition p of each holds the same users.
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
            (self.user_streams.clone(), user_partitions),
            (self.read_receipts.clone(), user_partitions),
            (self.dead_letter.clone(), 1),
        ]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    use super::*;

    fn with_client(properties: &[(&str, &str)]) -> KafkaSettings {
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        settings.client = properties
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        settings
    }

    /// The build links OpenSSL (rdkafka's `ssl-vendored`), so SASL over TLS with the
    /// mechanisms librdkafka implements itself works: no "not supported/built" error.
    /// Creating a client does not wait for the (absent) broker.
    #[test]
    fn sasl_ssl_clients_are_created_for_plain_scram_and_oauthbearer() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let settings = with_client(&[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "fanout"),
                ("sasl.password", "secret"),
                ("ssl.ca.location", "probe"),
            ]);
            settings.validate().unwrap();
            let producer = settings.producer_config().create::<BaseProducer>();
            assert!(producer.is_ok(), "{mechanism}: {:?}", producer.err());
            let consumer = settings.group_consumer_config("g").create::<BaseConsumer>();
            assert!(consumer.is_ok(), "{mechanism}: {:?}", consumer.err());
        }
        let settings = with_client(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "OAUTHBEARER"),
            ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
            ("sasl.oauthbearer.config", "principal=fanout"),
        ]);
        settings.validate().unwrap();
        let producer = settings.producer_config().create::<BaseProducer>();
        assert!(producer.is_ok(), "OAUTHBEARER: {:?}", producer.err());
        let tls_only = with_client(&[("security.protocol", "ssl")]);
        tls_only.validate().unwrap();
        assert!(tls_only.producer_config().create::<BaseProducer>().is_ok());
    }

    /// GSSAPI (Kerberos) needs the system's Cyrus SASL, which this build leaves out.
    #[test]
    fn gssapi_is_not_in_this_build() {
        let settings = with_client(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "GSSAPI"),
        ]);
        let error = settings
            .producer_config()
            .create::<BaseProducer>()
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("GSSAPI"), "{error}");
    }

    #[test]
    fn a_refused_property_is_named_with_librdkafkas_reason() {
        let error = with_client(&[("securty.protocol", "ssl")])
            .validate()
            .unwrap_err();
        assert_eq!(error.key, r#"client."securty.protocol""#);
        assert!(
            error.reason.contains("No such configuration property"),
            "{error}"
        );

        let mut settings = KafkaSettings::new("k:9092");
        settings
            .consumer
            .insert("session.timeout.ms".to_owned(), "often".to_owned());
        let error = settings.validate().unwrap_err();
        assert_eq!(error.key, r#"consumer."session.timeout.ms""#);

        let error = with_client(&[("bootstrap.servers", "k:9092")])
            .validate()
            .unwrap_err();
        assert!(error.reason.contains("kafka.brokers"), "{error}");
        assert!(KafkaSettings::new(" , ").validate().is_err());
    }

    #[test]
    fn an_illegal_topic_name_is_refused_naming_its_key() {
        Topics::default().validate().unwrap();
        for name in ["", ".", "..", "has space", &"t".repeat(250)] {
            let topics = Topics {
                router_state: name.to_owned(),
                ..Topics::default()
            };
            let error = topics.validate().unwrap_err();
            assert_eq!(error.key, "router_state", "{name:?}");
            assert!(error.reason.contains("not a Kafka topic name"), "{error}");
        }
    }

    #[test]
    fn a_topic_used_twice_is_refused_at_its_second_key() {
        let topics = Topics {
            dead_letter: "user-events".to_owned(),
            ..Topics::default()
        };
        let error = topics.validate().unwrap_err();
        assert_eq!(error.key, "dead_letter");
        assert!(error.reason.contains("also used"), "{error}");
    }

    #[test]
    fn the_first_zero_setting_is_refused_by_key() {
        require_positive(&[("a", 1), ("b", 2)]).unwrap();
        let error = require_positive(&[("a", 1), ("b", 0), ("c", 0)]).unwrap_err();
        assert_eq!(error.to_string(), "b: must be positive");
        assert_eq!(error.in_section("s").key, "s.b");
    }

    #[test]
    fn consumer_and_producer_settings_reach_only_their_clients() {
        let mut settings = with_client(&[("client.id", "fanout-test")]);
        settings
            .consumer
            .insert("session.timeout.ms".to_owned(), "6000".to_owned());
        settings
            .producer
            .insert("linger.ms".to_owned(), "7".to_owned());
        let producer = settings.producer_config();
        assert_eq!(producer.get("client.id"), Some("fanout-test"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("7"));
        let consumer = settings.group_consumer_config("g");
        assert_eq!(consumer.get("client.id"), Some("fanout-test"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(
            settings.assign_consumer_config().get("session.timeout.ms"),
            Some("6000")
        );
        assert_eq!(settings.client_config(&[]).get("session.timeout.ms"), None);
    }
}
