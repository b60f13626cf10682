//! The api in process on a test cluster, and a real HTTP/1.1 client for it (hyper's,
//! the one the bench and `http_get` use): requests as curl would send them, answers
//! with their status, headers and JSON body.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fanout_app::config::Config;
use fanout_app::stages;
use fanout_schema::v1;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::{DEADLINE, RunningStages};

/// Gives `partner` these API keys in `config`.
pub fn with_api_keys(config: &mut Config, partner: &str, keys: &[&str]) {
    config.api.partners.insert(
        partner.to_owned(),
        fanout_api::ApiPartner {
            keys: keys
                .iter()
                .map(|key| fanout_api::ApiKey((*key).to_owned()))
                .collect(),
        },
    );
}

pub struct RunningApi {
    pub address: SocketAddr,
    pub running: RunningStages,
    /// The api's metrics, in a registry of their own.
    pub registry: prometheus::Registry,
}

/// Starts the api on a free loopback port and waits until its tables caught up.
pub async fn start_api(config: &Config) -> RunningApi {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = prometheus::Registry::new();
    let (stage, address) =
        stages::spawn_api(config, listener, &registry, shutdown.clone()).unwrap();
    let health = stage.health.clone().unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !health.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the api never became ready"
        );
        assert!(!stage.task.is_finished(), "the api stopped before ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    RunningApi {
        address,
        running: RunningStages {
            shutdown,
            stages: vec![stage],
        },
        registry,
    }
}

impl RunningApi {
    /// A metric's value summed over the series whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().to_vec())
            .filter(|metric| {
                labels.iter().all(|(name, value)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|label| label.name() == *name && label.value() == *value)
                })
            })
            // A counter's sample or a gauge's: the other is absent, read as 0.
            .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
            .sum()
    }
}

/// An answer: status, headers, and the body parsed as JSON (`Null` if it is not).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

impl Answer {
    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// Each event's outcome of a publish answer: `(status, event_id, code)`.
    pub fn outcomes(&self) -> Vec<(String, String, String)> {
        self.body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {}", self.text))
            .iter()
            .map(|result| {
                let text =
                    |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
                (
                    text(&result["status"]),
                    text(&result["event_id"]),
                    text(&result["error"]["code"]),
                )
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// One request, as `curl -X <method> [-H 'Authorization: Bearer <key>'] [-H
/// 'Content-Type: <type>'] [-d <body>] http://<address><path>` sends it.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let request = builder.body(Full::new(body.into())).unwrap();
    let exchange = async {
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} was not answered"))
}

/// `POST /v1/events` of `body` (JSON text) with `key`.
pub async fn publish(address: SocketAddr, key: &str, body: &str) -> Answer {
    request(
        address,
        "POST",
        "/v1/events",
        Some(key),
        Some("application/json"),
        body.to_owned(),
    )
    .await
}

/// `GET path` with `key`.
pub async fn get(address: SocketAddr, key: &str, path: &str) -> Answer {
    request(address, "GET", path, Some(key), None, Bytes::new()).await
}

/// An event in the proto3 JSON form clients send.
pub fn json_of(event: &v1::MessageEvent) -> String {
    serde_json::to_string(event).unwrap()
}

/// Events as a JSON array.
pub fn batch_of(events: &[v1::MessageEvent]) -> String {
    format!(
        "[{}]",
        events.iter().map(json_of).collect::<Vec<_>>().join(",")
    )
}

/// Polls `path` until `done` holds for its answer.
pub async fn wait_for_answer(
    address: SocketAddr,
    key: &str,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = get(address, key, path).await;
        if answer.status == 200 && done(&answer.body) {
            return answer.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never answered as expected; last: {} {}",
            answer.status,
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
