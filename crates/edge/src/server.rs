//! The edge's accept loop: WebSocket handshake, then the session of the path's protocol
//! (`/cable`: ActionCable, authenticated by the query; `/realtime`: JSON, authenticated
//! in band).

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::cable as cable_codec;
use fanout_protocol::realtime::CLOSE_TRY_AGAIN_LATER;
use http::{HeaderValue, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::close::CloseReason;
use crate::config::{EdgeConfig, SecretsFile};
use crate::drain::{Drain, DrainGuard};
use crate::limits::{ConnectionLimits, GOODBYE_GRACE, Limit, Slot, origin_allowed};
use crate::metrics::EdgeMetrics;
use crate::table::CountTable;

/// Everything a connection needs, shared by all of them.
pub struct Edge {
    pub table: Arc<CountTable>,
    pub auth: Authenticator,
    pub config: EdgeConfig,
    pub metrics: EdgeMetrics,
    pub limits: ConnectionLimits,
    /// True once the count table has caught up with unread-counts.
    pub ready: watch::Receiver<bool>,
}

impl Edge {
    /// Fails, naming the key, when `edge.secrets_file` cannot be read.
    pub fn new(
        config: EdgeConfig,
        table: Arc<CountTable>,
        metrics: EdgeMetrics,
        ready: watch::Receiver<bool>,
    ) -> Result<Self, String> {
        let file = match &config.secrets_file {
            Some(path) => crate::config::read_secrets_file(path)
                .map_err(|reason| format!("edge.secrets_file: {reason}"))?,
            None => SecretsFile::new(),
        };
        let auth = Authenticator::new(&config, &config.merged_secrets(&file));
        let limits = ConnectionLimits::new(&config);
        Ok(Self {
            table,
            auth,
            config,
            metrics,
            limits,
            ready,
        })
    }

    /// The partner's origin allow-list (empty: any origin).
    fn allowed_origins(&self, partner: &str) -> &[String] {
        self.config
            .partners
            .get(partner)
            .map(|partner| partner.allowed_origins.as_slice())
            .unwrap_or_default()
    }

    /// Checks what a partner allows once the token has named it: the page's origin,
    /// then a place under the partner's connection limit.
    pub(crate) fn admit(
        &self,
        partner: &str,
        origin: Option<&str>,
    ) -> Result<Option<Slot>, CloseReason> {
        if !origin_allowed(self.allowed_origins(partner), origin) {
            self.metrics.limited(Limit::Origin);
            return Err(CloseReason::OriginNotAllowed);
        }
        self.limits.partner_slot(partner).ok_or_else(|| {
            self.metrics.limited(Limit::PartnerConnections);
            CloseReason::ConnectionLimit
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Accepts connections on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions, which say goodbye so that clients reconnect (ActionCable's
/// `server_restart`, close code 1012 on `/realtime`).
pub async fn serve(listener: TcpListener, edge: Arc<Edge>, shutdown: CancellationToken) {
    let sessions = TaskTracker::new();
    let drain = Drain::new();
    if let Some(path) = edge.config.secrets_file.clone() {
        sessions.spawn(crate::secrets::watch(path, edge.clone(), shutdown.clone()));
    }
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "edge accepting WebSocket connections");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    sessions.spawn(connection(stream, edge.clone(), drain.register()));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Stop accepting, then say goodbye to the open sessions over the drain window.
    drop(listener);
    drain
        .run(Duration::from_millis(edge.config.drain_window_ms))
        .await;
    sessions.close();
    sessions.wait().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// ActionCable: token in the query, subprotocol echoed.
    Cable,
    /// The JSON protocol: authenticated in band, so the query is not read.
    Realtime,
}

/// What the handshake learned about the request.
#[derive(Default)]
pub(crate) struct Upgrade {
    route: Option<Route>,
    partner: Option<String>,
    token: Option<String>,
    pub(crate) origin: Option<String>,
}

fn refusal(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    response
}

/// The query with the `jwt` value replaced, for logs: a token in a log line is a
/// credential anyone reading logs can use. Everything else is kept as sent.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .map(|(name, _)| name.into_owned())
                .collect();
            if decoded == "jwt" {
                "jwt=[redacted]"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn connection(stream: TcpStream, edge: Arc<Edge>, drain: DrainGuard) {
    let shutdown = drain.token().clone();
    // Held from accept to close: the node's limit counts handshakes in progress too.
    let node_slot = edge.limits.node_slot();
    let _ = stream.set_nodelay(true);
    let mut upgrade = Upgrade::default();
    // The error type is tungstenite's, so its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        let query = request.uri().query().unwrap_or_default();
        upgrade.origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|origin| origin.to_str().ok())
            .map(str::to_owned);
        tracing::debug!(
            path,
            query = %redact_query(query),
            origin = upgrade.origin.as_deref().unwrap_or(""),
            "websocket upgrade"
        );
        if node_slot.is_none() {
            edge.metrics.limited(Limit::NodeConnections);
            return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "connection limit"));
        }
        match path {
            "/cable" => upgrade.route = Some(Route::Cable),
            "/realtime" => {
                upgrade.route = Some(Route::Realtime);
                return Ok(response);
            }
            _ => return Err(refusal(StatusCode::NOT_FOUND, "not found")),
        }
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "jwt" => upgrade.token = Some(value.into_owned()),
                "partner" => upgrade.partner = Some(value.into_owned()),
                _ => {}
            }
        }
        // What the query's partner refuses anyway is refused before the upgrade, so a
        // browser sees a failed handshake and the official client backs off.
        if let Some(partner) = upgrade.partner.as_deref() {
            if !origin_allowed(edge.allowed_origins(partner), upgrade.origin.as_deref()) {
                edge.metrics.limited(Limit::Origin);
                return Err(refusal(StatusCode::FORBIDDEN, "origin not allowed"));
            }
            if edge.limits.partner_is_full(partner) {
                edge.metrics.limited(Limit::PartnerConnections);
                return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "connection limit"));
            }
        }
        let offers = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok());
        if let Some(protocol) = cable_codec::negotiate_subprotocol(offers) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        Ok(response)
    };
    let websocket_config = WebSocketConfig::default()
        .max_message_size(Some(edge.config.max_frame_bytes))
        .max_frame_size(Some(edge.config.max_frame_bytes))
        // Client frames are small (a subscribe is ~80 bytes); tungstenite allocates and
        // zero-fills this much per connection for its whole life, and grows it for a
        // larger frame when one comes.
        .read_buffer_size(256)
        .write_buffer_size(0);
    // Boxed, as the refusal below, so that a state the connection passes through once
    // does not size its task, which is as large as its largest state for the
    // connection's whole life.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(websocket_config),
    ));
    let timeout = Duration::from_millis(edge.config.handshake_timeout_ms);
    let mut socket = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(_error)) => {
            edge.metrics.handshake("failed");
            return;
        }
        Err(_elapsed) => {
            edge.metrics.handshake("timeout");
            edge.metrics.limited(Limit::HandshakeTimeout);
            return;
        }
    };
    // Each session is boxed at its own size; unboxed, every connection's task would be
    // as large as the larger of the two for its whole life.
    let (protocol, session) = match upgrade.route {
        Some(Route::Cable) => (
            crate::cable::PROTOCOL,
            futures::future::Either::Left(Box::pin(cable_session(
                &mut socket,
                upgrade,
                &edge,
                &shutdown,
            ))),
        ),
        Some(Route::Realtime) => (
            crate::realtime::PROTOCOL,
            futures::future::Either::Right(Box::pin(crate::realtime::run(
                &mut socket,
                &edge,
                upgrade.origin.as_deref(),
                &shutdown,
            ))),
        ),
        None => return,
    };
    // A session told to leave that cannot (its client stopped reading, so the goodbye
    // cannot be written) is dropped after a grace: it cannot hold up the drain.
    let mut session = session;
    let reason = tokio::select! {
        ended = &mut session => ended.unwrap_or(CloseReason::Error),
        () = shutdown.cancelled() => {
            // Boxed: the timer exists only for sessions being told to leave.
            let rest = Box::pin(tokio::time::timeout(GOODBYE_GRACE, &mut session));
            rest.await.map_or(CloseReason::ServerRestart, |ended| {
                ended.unwrap_or(CloseReason::Error)
            })
        }
    };
    edge.metrics.closed(protocol, reason);
    drop(node_slot);
}

async fn cable_session(
    socket: &mut WebSocketStream<TcpStream>,
    upgrade: Upgrade,
    edge: &Edge,
    shutdown: &CancellationToken,
) -> Result<CloseReason, tokio_tungstenite::tungstenite::Error> {
    let Upgrade {
        partner,
        token,
        origin,
        ..
    } = upgrade;
    let identity = match edge.auth.authenticate(partner.as_deref(), token.as_deref()) {
        Ok(identity) => identity,
        Err(error) => {
            edge.metrics.handshake("unauthorized");
            edge.metrics.auth_failed(partner.is_some(), error.reason());
            Box::pin(crate::cable::refuse(socket)).await?;
            return Ok(CloseReason::Unauthorized);
        }
    };
    // The token is a credential, and a few hundred bytes: not kept for the session.
    drop((token, partner));
    // The origin was checked before the upgrade; this takes the partner's place (a
    // race with other handshakes can still find it taken).
    let admitted = edge.admit(&identity.partner, origin.as_deref());
    drop(origin);
    let _partner_slot = match admitted {
        Ok(slot) => slot,
        Err(reason) => {
            edge.metrics.handshake("limited");
            let closing = crate::cable::close(socket, CLOSE_TRY_AGAIN_LATER, "connection limit");
            Box::pin(closing).await?;
            return Ok(reason);
        }
    };
    edge.metrics.handshake("accepted");
    // No welcome, and so no count, before the table has caught up: a count read from a
    // table still loading could be older than one the client has already shown.
    let mut ready = edge.ready.clone();
    tokio::select! {
        () = shutdown.cancelled() => return Ok(CloseReason::ServerRestart),
        caught_up = ready.wait_for(|ready| *ready) => {
            if caught_up.is_err() {
                return Ok(CloseReason::ServerRestart);
            }
        }
    }
    let _open = edge.metrics.open_connection(crate::cable::PROTOCOL);
    crate::cable::run(
        socket,
        &identity,
        &edge.table,
        crate::cable::SessionSettings::from(&edge.config),
        &edge.metrics,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::redact_query;

    #[test]
    fn the_token_is_redacted_whatever_its_spelling() {
        assert_eq!(
            redact_query("jwt=eyJ.abc.def&partner=acme"),
            "jwt=[redacted]&partner=acme"
        );
        assert_eq!(
            redact_query("partner=acme&%6Awt=eyJ.abc&jwt=second"),
            "partner=acme&jwt=[redacted]&jwt=[redacted]"
        );
        assert_eq!(redact_query("jwt"), "jwt=[redacted]");
        assert_eq!(redact_query(""), "");
    }
}
