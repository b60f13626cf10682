//! `fanout produce` and `fanout token`: what a developer needs to try fanout by hand.

use std::time::Duration;

use anyhow::Context as _;
use fanout_kafka::KafkaSettings;
use fanout_schema::data::{DataError, Struct, parse_data};
use fanout_schema::v1::{self, message_event::Event};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message as _;
use rand::Rng as _;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// Random lowercase hex, `bytes` bytes long before encoding.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(rename = "uniqueId")]
    unique_id: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    partner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// Mints an HS256 token for `user`, valid for `ttl`: a connection's (single-use).
pub fn mint_token(
    secret: &str,
    user: &str,
    ttl: Duration,
    kid: Option<&str>,
    partner: Option<&str>,
) -> anyhow::Result<String> {
    mint(secret, user, ttl, kid, partner, None)
}

/// Mints a stream subscription's token (RoomChannel's `pubsub_token`, claim
/// `"scope":"stream"`): presented again on every reconnect until it expires, and
/// refused for connections.
pub fn mint_stream_token(
    secret: &str,
    user: &str,
    ttl: Duration,
    kid: Option<&str>,
    partner: Option<&str>,
) -> anyhow::Result<String> {
    mint(
        secret,
        user,
        ttl,
        kid,
        partner,
        Some(fanout_edge::auth::STREAM_SCOPE),
    )
}

fn mint(
    secret: &str,
    user: &str,
    ttl: Duration,
    kid: Option<&str>,
    partner: Option<&str>,
    scope: Option<&str>,
) -> anyhow::Result<String> {
    let now = fanout_schema::unix_millis() / 1000;
    let claims = Claims {
        unique_id: user,
        jti: random_hex(16),
        iat: now,
        exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        partner,
        scope,
    };
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(Algorithm::HS256)
    };
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing the token")
}

/// `fanout token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenOptions {
    /// The partner secret to sign with.
    #[arg(long, env = "FANOUT_TOKEN_SECRET")]
    pub secret: String,
    /// The user (`uniqueId` claim).
    #[arg(long)]
    pub user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
    /// Key id to put in the header (for partners with several secrets).
    #[arg(long)]
    pub kid: Option<String>,
    /// Add a `partner` claim.
    #[arg(long)]
    pub partner: Option<String>,
    /// A stream subscription's token (RoomChannel's `pubsub_token`, claim
    /// `"scope":"stream"`), reusable until it expires, instead of a connection's.
    #[arg(long)]
    pub stream: bool,
}

impl TokenOptions {
    /// Prints the token.
    pub fn execute(&self) -> anyhow::Result<()> {
        let mint = if self.stream {
            mint_stream_token
        } else {
            mint_token
        };
        let token = mint(
            &self.secret,
            &self.user,
            Duration::from_secs(self.ttl_seconds),
            self.kid.as_deref(),
            self.partner.as_deref(),
        )?;
        println!("{token}");
        Ok(())
    }
}

/// `fanout shard`: the partition of a user's records and, with `[api] shards` in the
/// config, the URL of the edge shard that serves the user; what the api's
/// `GET /v1/users/{user}/shard` answers, for a backend that would rather not call it.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardOptions {
    #[arg(long)]
    pub partner: String,
    #[arg(long)]
    pub user: String,
    /// The partition count of user-events, unread-counts and user-streams; by default
    /// the count `[api] shards` covers.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// The TOML config file whose `[api] shards` name the shards.
    #[arg(long, short, env = "FANOUT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// Where a user is served: `fanout shard`'s output, the api's answer's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardAnswer {
    pub partner: String,
    pub user: String,
    pub partition: i32,
    pub partitions: i32,
    /// `None` without `[api] shards`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The library function behind `fanout shard`: `user` of `partner`'s partition among
/// `partitions` (else the count `shards` covers), and its shard's URL if `shards`.
pub fn user_shard(
    partner: &str,
    user: &str,
    partitions: Option<i32>,
    shards: Option<&fanout_api::shards::ShardMap>,
) -> anyhow::Result<ShardAnswer> {
    let count = match (partitions, shards) {
        (Some(given), Some(shards)) if given != shards.partition_count().get() => {
            anyhow::bail!(
                "--partitions {given}, but api.shards cover {} partitions",
                shards.partition_count()
            )
        }
        (Some(given), _) => fanout_kafka::PartitionCount::new(given)
            .with_context(|| format!("--partitions {given}: must be positive"))?,
        (None, Some(shards)) => shards.partition_count(),
        (None, None) => anyhow::bail!("give --partitions, or a config with [api] shards"),
    };
    let key = fanout_schema::user_key(partner, user);
    let partition = fanout_kafka::partition_for_key(key.as_bytes(), count);
    Ok(ShardAnswer {
        partner: partner.to_owned(),
        user: user.to_owned(),
        partition,
        partitions: count.get(),
        url: shards.map(|shards| shards.user_shard(&key).url),
    })
}

impl ShardOptions {
    /// Prints the answer as one JSON object.
    pub fn execute(&self) -> anyhow::Result<()> {
        let config = crate::config::Config::load(self.config.as_deref())?;
        let shards = fanout_api::shards::ShardMap::new(&config.api.shards)
            .map_err(|error| anyhow::anyhow!("api.{error}"))?;
        let answer = user_shard(&self.partner, &self.user, self.partitions, shards.as_ref())?;
        println!("{}", serde_json::to_string(&answer)?);
        Ok(())
    }
}

/// `fanout produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The message-events topic.
    #[arg(long, default_value = "message-events")]
    pub topic: String,
    /// Send the proto3 JSON form (with `content-type: application/json`).
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub event: EventSpec,
}

impl ProduceOptions {
    /// Produces the event and prints its id.
    pub async fn execute(&self) -> anyhow::Result<()> {
        let kafka = KafkaSettings::new(self.brokers.clone());
        let event = produce(&kafka, &self.topic, &self.event, self.json).await?;
        println!("produced event {} to {}", event.event_id, self.topic);
        Ok(())
    }
}

/// Which message an event is about.
#[derive(Debug, Clone, clap::Args)]
pub struct MessageRef {
    #[arg(long)]
    pub partner: String,
    #[arg(long)]
    pub conversation: String,
    /// The message's per-conversation sequence number.
    #[arg(long)]
    pub seq: u64,
}

/// The partner's `data`, which every form may carry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArg {
    /// A JSON object delivered with the event to every user it reaches, e.g.
    /// '{"text":"hi"}'.
    #[arg(long, value_name = "JSON", value_parser = parse_data_arg)]
    pub data: Option<Struct>,
}

fn parse_data_arg(json: &str) -> Result<Struct, String> {
    parse_data(json).map_err(|error| match error {
        DataError::NotAnObject => r#"must be a JSON object, such as '{"text":"hi"}'"#.to_owned(),
        DataError::Invalid(detail) => format!("must be a JSON object: {detail}"),
    })
}

/// What to produce: one message event.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EventSpec {
    /// A message was posted.
    Created {
        #[command(flatten)]
        message: MessageRef,
        /// The sender.
        #[arg(long)]
        from: String,
        /// A recipient (repeat for several).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[arg(long)]
        message_id: Option<String>,
        #[command(flatten)]
        data: DataArg,
    },
    /// A user read one message.
    Read {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long)]
        user: String,
        /// A user who receives the read receipt (repeat for several).
        #[arg(long)]
        notify: Vec<String>,
        #[command(flatten)]
        data: DataArg,
    },
    /// A user read a conversation up to a seq.
    ConversationRead {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long)]
        user: String,
        /// A user who receives the read receipt (repeat for several).
        #[arg(long)]
        notify: Vec<String>,
        #[command(flatten)]
        data: DataArg,
    },
    /// A message was deleted for its recipients.
    Deleted {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[command(flatten)]
        data: DataArg,
    },
    /// A partner-defined event (e.g. typing.started) for the recipients' streams; counts
    /// are untouched.
    Notification {
        #[arg(long)]
        partner: String,
        /// Its name: lowercase and dotted, e.g. typing.started.
        #[arg(long)]
        event: String,
        /// A recipient (repeat for several).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[command(flatten)]
        data: DataArg,
    },
}

impl EventSpec {
    fn partner(&self) -> &str {
        match self {
            Self::Created { message, .. }
            | Self::Read { message, .. }
            | Self::ConversationRead { message, .. }
            | Self::Deleted { message, .. } => &message.partner,
            Self::Notification { partner, .. } => partner,
        }
    }

    /// The record key: the conversation, so a conversation's events keep their order;
    /// a notification, which has none, is keyed by its partner.
    fn record_key(&self) -> &str {
        match self {
            Self::Created { message, .. }
            | Self::Read { message, .. }
            | Self::ConversationRead { message, .. }
            | Self::Deleted { message, .. } => &message.conversation,
            Self::Notification { partner, .. } => partner,
        }
    }

    fn data(&self) -> &DataArg {
        match self {
            Self::Created { data, .. }
            | Self::Read { data, .. }
            | Self::ConversationRead { data, .. }
            | Self::Deleted { data, .. }
            | Self::Notification { data, .. } => data,
        }
    }

    /// The event, stamped now with a fresh id.
    pub fn to_event(&self) -> v1::MessageEvent {
        let event = match self.clone() {
            Self::Created {
                message,
                from,
                to,
                message_id,
                ..
            } => Event::MessageCreated(v1::MessageCreated {
                conversation_id: message.conversation,
                seq: message.seq,
                message_id: message_id.unwrap_or_else(|| format!("m{}", message.seq)),
                sender: from,
                recipients: to,
            }),
            Self::Read {
                message,
                user,
                notify,
                ..
            } => Event::MessageRead(v1::MessageRead {
                conversation_id: message.conversation,
                seq: message.seq,
                user,
                message_id: format!("m{}", message.seq),
                notify,
            }),
            Self::ConversationRead {
                message,
                user,
                notify,
                ..
            } => Event::ConversationRead(v1::ConversationRead {
                conversation_id: message.conversation,
                seq: message.seq,
                user,
                notify,
            }),
            Self::Deleted { message, to, .. } => Event::MessageDeleted(v1::MessageDeleted {
                conversation_id: message.conversation,
                seq: message.seq,
                message_id: format!("m{}", message.seq),
                recipients: to,
            }),
            Self::Notification { event, to, .. } => Event::Notification(v1::Notification {
                event,
                recipients: to,
            }),
        };
        v1::MessageEvent {
            event_id: random_hex(8),
            partner: self.partner().to_owned(),
            occurred_at_ms: fanout_schema::unix_millis(),
            data: self.data().data.clone(),
            event: Some(event),
        }
    }
}

/// Encodes `event` as protobuf, or as proto3 JSON with the `content-type` header.
pub fn encode_event(
    event: &v1::MessageEvent,
    json: bool,
) -> anyhow::Result<(Vec<u8>, Option<&'static str>)> {
    if json {
        Ok((
            serde_json::to_vec(event)?,
            Some(fanout_schema::CONTENT_TYPE_JSON),
        ))
    } else {
        Ok((event.encode_to_vec(), None))
    }
}

/// Produces one event to `topic`, keyed by conversation so a conversation's events keep
/// their order, and waits for Kafka's acknowledgement.
pub async fn produce(
    kafka: &KafkaSettings,
    topic: &str,
    spec: &EventSpec,
    json: bool,
) -> anyhow::Result<v1::MessageEvent> {
    let producer: FutureProducer = kafka
        .producer_client_config(&[("message.timeout.ms", "10000")])
        .create()
        .context("creating the producer")?;
    let event = spec.to_event();
    let (payload, content_type) = encode_event(&event, json)?;
    let mut record = FutureRecord::to(topic)
        .key(spec.record_key())
        .payload(&payload);
    if let Some(content_type) = content_type {
        record = record.headers(OwnedHeaders::new().insert(KafkaHeader {
            key: fanout_schema::CONTENT_TYPE_HEADER,
            value: Some(content_type),
        }));
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("producing to {topic} at {}", kafka.brokers))?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn minted_tokens_verify_at_the_edge() {
        let mut config = fanout_edge::EdgeConfig::default();
        config.partners.insert(
            "demo".to_owned(),
            fanout_edge::PartnerConfig {
                secrets: vec![fanout_edge::SecretConfig {
                    kid: None,
                    secret: "0123456789abcdef0123".into(),
                }],
                ..fanout_edge::PartnerConfig::default()
            },
        );
        let auth = fanout_edge::auth::Authenticator::new(
            &config,
            &config.merged_secrets(&fanout_edge::SecretsFile::new()),
        );
        let token = mint_token(
            "0123456789abcdef0123",
            "alice",
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            auth.authenticate(Some("demo"), Some(&token)).unwrap().user,
            "alice"
        );
        let other = mint_token(
            "another-secret-entirely",
            "alice",
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        assert!(auth.authenticate(Some("demo"), Some(&other)).is_err());
        // A stream token opens stream subscriptions, again and again, and never a
        // connection; a connection token never a subscription.
        let stream = mint_stream_token(
            "0123456789abcdef0123",
            "alice",
            Duration::from_secs(60),
            None,
            Some("demo"),
        )
        .unwrap();
        for _ in 0..2 {
            let identity = auth.authenticate_subscription(None, Some(&stream)).unwrap();
            assert_eq!(identity.user, "alice");
        }
        let wrong_scope = Err(fanout_edge::auth::AuthError::WrongScope);
        assert_eq!(
            auth.authenticate(Some("demo"), Some(&stream)).map(|_| ()),
            wrong_scope
        );
        assert_eq!(
            auth.authenticate_subscription(Some("demo"), Some(&token))
                .map(|_| ()),
            wrong_scope
        );
    }

    #[test]
    fn produced_events_pass_ingest_validation() {
        let limits = fanout_ingest::IngestLimits::default();
        let message = MessageRef {
            partner: "demo".into(),
            conversation: "c1".into(),
            seq: 1,
        };
        let data = DataArg {
            data: Some(parse_data(r#"{"text":"hi","n":1}"#).unwrap()),
        };
        let specs = [
            EventSpec::Created {
                message: message.clone(),
                from: "alice".into(),
                to: vec!["bob".into()],
                message_id: None,
                data: data.clone(),
            },
            EventSpec::Read {
                message: message.clone(),
                user: "bob".into(),
                notify: vec!["alice".into()],
                data: DataArg::default(),
            },
            EventSpec::ConversationRead {
                message: message.clone(),
                user: "bob".into(),
                notify: Vec::new(),
                data: data.clone(),
            },
            EventSpec::Deleted {
                message,
                to: vec!["bob".into()],
                data: DataArg::default(),
            },
            EventSpec::Notification {
                partner: "demo".into(),
                event: "typing.started".into(),
                to: vec!["bob".into()],
                data,
            },
        ];
        for spec in specs {
            for json in [false, true] {
                let event = spec.to_event();
                let (payload, content_type) = encode_event(&event, json).unwrap();
                let decoded =
                    fanout_ingest::decode_event(&payload, content_type.map(str::as_bytes), &limits)
                        .unwrap();
                let valid = fanout_ingest::validate(decoded, &limits).unwrap();
                assert_eq!(valid.event(), &event);
                if event.data.is_some() {
                    assert_eq!(valid.data_json(), r#"{"n":1,"text":"hi"}"#);
                }
            }
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Produce {
        #[command(subcommand)]
        event: EventSpec,
    }

    fn parse(args: &[&str]) -> Result<EventSpec, String> {
        use clap::Parser as _;
        Produce::try_parse_from(std::iter::once("produce").chain(args.iter().copied()))
            .map(|produce| produce.event)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn the_command_line_takes_data_notify_and_notifications() {
        let read = parse(&[
            "read",
            "--partner",
            "demo",
            "--conversation",
            "c1",
            "--seq",
            "3",
            "--user",
            "bob",
            "--notify",
            "alice",
            "--notify",
            "carol",
            "--data",
            r#"{"via":"cli"}"#,
        ])
        .unwrap();
        let event = read.to_event();
        let Some(Event::MessageRead(message_read)) = &event.event else {
            panic!("{event:?}");
        };
        assert_eq!(
            message_read.notify,
            vec!["alice".to_owned(), "carol".to_owned()]
        );
        assert!(event.data.is_some());
        let notification = parse(&[
            "notification",
            "--partner",
            "demo",
            "--event",
            "typing.started",
            "--to",
            "bob",
            "--to",
            "carol",
        ])
        .unwrap();
        assert_eq!(notification.record_key(), "demo");
        let event = notification.to_event();
        assert_eq!(
            event.event,
            Some(Event::Notification(v1::Notification {
                event: "typing.started".into(),
                recipients: vec!["bob".into(), "carol".into()],
            }))
        );
        assert_eq!(event.data, None);
    }

    #[test]
    fn data_that_is_not_a_json_object_is_refused_clearly() {
        for bad in ["[1]", r#""hi""#, "3", "{not json"] {
            let error = parse(&[
                "created",
                "--partner",
                "demo",
                "--conversation",
                "c1",
                "--seq",
                "1",
                "--from",
                "a",
                "--to",
                "b",
                "--data",
                bad,
            ])
            .unwrap_err();
            assert!(
                error.contains("--data") && error.contains("must be a JSON object"),
                "{error}"
            );
        }
    }
}
