//! `fanout dev`: everything in one process on an embedded Kafka, for a first look.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fanout_edge::{PartnerConfig, SecretConfig};
use fanout_kafka::{EmbeddedKafka, KafkaSettings};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::logging::LogFormat;
use crate::stages::{self, Role};

#[derive(Debug, Clone, clap::Args)]
pub struct DevOptions {
    /// Address of the WebSocket listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the HTTP api (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: String,
    /// The demo partner's API key (random if not given).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Address of the admin port: /metrics, /healthz, /readyz (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The demo partner's code.
    #[arg(long, default_value = "demo")]
    pub partner: String,
    /// The demo partner's secret (random if not given).
    #[arg(long)]
    pub secret: Option<String>,
    /// The user the printed token is for.
    #[arg(long, default_value = "demo-user")]
    pub user: String,
    /// Also write the printed facts as JSON to this file.
    #[arg(long)]
    pub info_file: Option<PathBuf>,
}

impl DevOptions {
    /// `fanout dev`: runs until SIGTERM or SIGINT, printing the banner (one JSON object
    /// with [`LogFormat::Json`]) once the edge is ready.
    pub async fn execute(self, format: LogFormat) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        stages::cancel_on_signal(shutdown.clone());
        run(self, shutdown, |info| match format {
            LogFormat::Text => println!("{}", banner(info)),
            // One object, so that every line of the output parses.
            LogFormat::Json => match serde_json::to_string(info) {
                Ok(json) => println!("{json}"),
                Err(error) => tracing::error!(%error, "cannot print the dev info"),
            },
        })
        .await
    }
}

/// What `fanout dev` prints on start, and writes as JSON with `--info-file`.
#[derive(Debug, Clone, Serialize)]
pub struct DevInfo {
    pub websocket_url: String,
    pub cable_url: String,
    pub partner: String,
    pub secret: String,
    pub user: String,
    pub token: String,
    /// `/cable` naming the partner and no token: a RoomChannel client's URL.
    pub room_url: String,
    /// The demo user's RoomChannel `pubsub_token` (24h, good on any number of
    /// connections).
    pub pubsub_token: String,
    /// The frame that subscribes RoomChannel with [`DevInfo::pubsub_token`].
    pub room_subscribe: String,
    pub kafka_bootstrap: String,
    pub admin_url: String,
    /// The HTTP api's base URL.
    pub api_url: String,
    /// The demo partner's API key (`Authorization: Bearer <key>`).
    pub api_key: String,
    /// A ready `curl` that publishes a message to the demo user through the api.
    pub api_curl: String,
    pub topics: fanout_kafka::Topics,
}

/// Runs dev mode until `shutdown` is cancelled. `on_ready` is called once the edge is
/// ready, with the facts a client needs.
pub async fn run(
    options: DevOptions,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&DevInfo),
) -> anyhow::Result<()> {
    let mut config = Config::default();
    let kafka = EmbeddedKafka::start(
        1,
        &config
            .topics
            .with_partitions(options.partitions, options.partitions),
    )
    .context("starting the embedded Kafka")?;
    config.kafka = KafkaSettings::new(kafka.bootstrap_servers());
    // Without these a count takes over a second through the mock cluster's fetch wait.
    config.kafka.client = fanout_kafka::EMBEDDED_CLIENT_SETTINGS
        .iter()
        .map(|(property, value)| ((*property).to_owned(), (*value).to_owned()))
        .collect();
    let secret = options
        .secret
        .clone()
        .unwrap_or_else(|| crate::tools::random_hex(32));
    config.edge.partners.insert(
        options.partner.clone(),
        PartnerConfig {
            secrets: vec![SecretConfig {
                kid: None,
                secret: secret.clone(),
            }],
            ..PartnerConfig::default()
        },
    );
    let api_key = options
        .api_key
        .clone()
        .unwrap_or_else(|| crate::tools::random_hex(32));
    config.api.partners.insert(
        options.partner.clone(),
        fanout_api::ApiPartner {
            keys: vec![fanout_api::ApiKey(api_key.clone())],
        },
    );
    let listener = stages::bind_client_listener(&options.listen).await?;
    // One edge reads every partition: it is the shard the api names for every user.
    config.api.shards = vec![fanout_api::shards::ShardConfig {
        url: format!("ws://{}", displayed(listener.local_addr()?)),
        partitions: (0..options.partitions).collect(),
    }];
    config.validate()?;

    let api_listener = TcpListener::bind(&options.api_listen)
        .await
        .with_context(|| format!("binding {}", options.api_listen))?;
    let admin_listener = TcpListener::bind(&options.admin_listen)
        .await
        .with_context(|| format!("binding {}", options.admin_listen))?;
    let started = stages::start_roles(
        &config,
        &[Role::Ingest, Role::Router, Role::Edge, Role::Api],
        stages::ClientListeners {
            edge: Some(listener),
            api: Some(api_listener),
        },
        admin_listener,
        shutdown.clone(),
    )?;
    let Some((edge, edge_address)) = started.edge.clone() else {
        anyhow::bail!("the edge did not start");
    };
    let Some((api_address, api_health)) = started.api.clone() else {
        anyhow::bail!("the api did not start");
    };

    let token = crate::tools::mint_token(
        &secret,
        &options.user,
        Duration::from_secs(24 * 3600),
        None,
        None,
    )?;
    // A stream subscription's token: reusable on every reconnect, unlike the connection
    // token above, which its first use spends.
    let pubsub_token = crate::tools::mint_stream_token(
        &secret,
        &options.user,
        Duration::from_secs(24 * 3600),
        None,
        Some(&options.partner),
    )?;
    let websocket_url = format!("ws://{}", displayed(edge_address));
    let admin_url = format!("http://{}", displayed(started.admin_address));
    let api_url = format!("http://{}", displayed(api_address));
    let api_curl = api_curl(&api_url, &api_key, &options.partner, &options.user);
    let info = DevInfo {
        api_url,
        api_key,
        api_curl,
        cable_url: format!(
            "{websocket_url}/cable?jwt={token}&partner={}",
            options.partner
        ),
        room_url: format!("{websocket_url}/cable?partner={}", options.partner),
        room_subscribe: room_subscribe(&pubsub_token),
        pubsub_token,
        websocket_url,
        partner: options.partner.clone(),
        secret,
        user: options.user.clone(),
        token,
        kafka_bootstrap: kafka.bootstrap_servers().to_owned(),
        admin_url,
        topics: config.topics.clone(),
    };

    let mut ready = edge.ready.clone();
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = async {
            let _ = ready.wait_for(|ready| *ready).await;
            while !api_health.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => {
            if let Some(path) = &options.info_file {
                let json = serde_json::to_vec_pretty(&info)?;
                std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            }
            on_ready(&info);
        }
    }
    let grace = Duration::from_millis(config.shutdown.grace_ms);
    let result = stages::supervise_with_grace(started.stages, shutdown, grace).await;
    drop(kafka);
    result
}

/// The ActionCable frame that subscribes RoomChannel with `pubsub_token`, as Chatwoot's
/// clients send it: `{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\",
/// \"pubsub_token\":\"..\"}"}`.
pub fn room_subscribe(pubsub_token: &str) -> String {
    // Written out rather than serialised from a map, whose key order is serde_json's.
    let json_string = |text: &str| serde_json::Value::from(text).to_string();
    let identifier = format!(
        r#"{{"channel":"RoomChannel","pubsub_token":{}}}"#,
        json_string(pubsub_token)
    );
    format!(
        r#"{{"command":"subscribe","identifier":{}}}"#,
        json_string(&identifier)
    )
}

/// A listener's address as a client on this machine reaches it: an unspecified IP
/// (listening on every interface) as 127.0.0.1.
fn displayed(address: std::net::SocketAddr) -> std::net::SocketAddr {
    if address.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    }
}

/// A `curl` that publishes one message from `alice` to `user` through the api.
pub fn api_curl(api_url: &str, api_key: &str, partner: &str, user: &str) -> String {
    let event = serde_json::json!({
        "eventId": "curl-1",
        "partner": partner,
        "messageCreated": {
            "conversationId": "c1",
            "seq": "1",
            "messageId": "m1",
            "sender": "alice",
            "recipients": [user],
        },
        "data": {"text": "hello over HTTP"},
    });
    format!(
        "curl -sS -X POST {api_url}/v1/events -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' -d '{event}'"
    )
}

/// The banner `fanout dev` prints.
pub fn banner(info: &DevInfo) -> String {
    format!(
        "\nfanout dev is running (embedded Kafka, ingest, router, edge, api).\n\n\
         ActionCable URL (demo user {user}):\n  {cable_url}\n\n\
         RoomChannel, {user}'s events as Chatwoot's widget gets them (no jwt in the URL):\n  \
         open {room_url}\n  \
         and send {room_subscribe}\n  \
         (its pubsub_token is good for 24h, on any number of connections; with\n  \
         @anycable/web and protocol actioncable-v1-ext-json, a reconnect also gets every\n  \
         event it missed: docs/streams.md, Recovery)\n\n\
         partner:          {partner}\n\
         partner secret:   {secret}\n\
         demo token (24h): {token}\n\
         Kafka bootstrap:  {bootstrap}\n\
         admin:            {admin}/metrics, /healthz, /readyz\n\
         HTTP api:         {api_url} (docs/openapi.json; API key {api_key})\n\n\
         Make {user} an unread message:\n  \
         fanout produce --brokers {bootstrap} created --partner {partner} --conversation c1 --seq 1 --from alice --to {user} --data '{{\"text\":\"hello\"}}'\n\
         Tokens in a URL are single-use (one connection each); mint another, for any user:\n  \
         fanout token --secret {secret} --user alice\n\n\
         Or publish it over HTTP, then read the count back:\n  \
         {api_curl}\n  \
         curl -sS {api_url}/v1/users/{user}/unread_count -H 'Authorization: Bearer {api_key}'\n\n\
         Ctrl-C stops everything.\n",
        user = info.user,
        cable_url = info.cable_url,
        room_url = info.room_url,
        room_subscribe = info.room_subscribe,
        partner = info.partner,
        secret = info.secret,
        token = info.token,
        bootstrap = info.kafka_bootstrap,
        admin = info.admin_url,
        api_url = info.api_url,
        api_key = info.api_key,
        api_curl = info.api_curl,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_subscribe_frame_is_chatwoots() {
        assert_eq!(
            room_subscribe("eyJ.a-b_c.d"),
            r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"eyJ.a-b_c.d\"}"}"#
        );
    }
}
