//! One keep-alive HTTP/1.1 connection to the api: hyper-util's client with a pool of
//! one idle connection, used by one task at a time, so each task's requests go one
//! after the other over the same connection (which connection, from each answer's
//! local address, is counted: a run shows how many it used).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, HttpInfo};
use hyper_util::rt::TokioExecutor;

/// Times a client yields after an answer (see [`ApiClient::send`]).
const YIELDS: usize = 2;

/// Longest a request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct ApiClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    authorization: HeaderValue,
}

/// An answer: status, body, and the local address of the connection it came on.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Bytes,
    pub(super) local: Option<SocketAddr>,
}

impl ApiClient {
    /// A client of the api at `base` (`http://host:port`) with `key`.
    pub(super) fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        let authorization =
            HeaderValue::from_str(&format!("Bearer {key}")).context("the API key")?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// `POST /v1/events` with `body` (JSON).
    pub(super) async fn post_events(&self, body: String) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/v1/events", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))?;
        self.send(request).await
    }

    /// `GET path`.
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let local = response
                .extensions()
                .get::<HttpInfo>()
                .map(HttpInfo::local_addr);
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status,
                body,
                local,
            })
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .context("the request timed out")??;
        // The client puts the connection back in its pool from a task of its own once
        // the connection is ready for the next request; a request that finds the pool
        // empty opens another connection. Let that task run first.
        for _ in 0..YIELDS {
            tokio::task::yield_now().await;
        }
        Ok(answer)
    }
}
