//! The edge's accept loop: WebSocket handshake, then the session of the path's protocol
//! (`/cable`: ActionCable, authenticated by the query; `/realtime`: JSON, authenticated
//! in band).

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::cable as cable_codec;
use http::{HeaderValue, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::EdgeConfig;
use crate::drain::{Drain, DrainGuard};
use crate::metrics::EdgeMetrics;
use crate::table::CountTable;

/// Everything a connection needs, shared by all of them.
pub struct Edge {
    pub table: Arc<CountTable>,
    pub auth: Authenticator,
    pub config: EdgeConfig,
    pub metrics: EdgeMetrics,
    /// True once the count table has caught up with unread-counts.
    pub ready: watch::Receiver<bool>,
}

impl Edge {
    pub fn new(
        config: EdgeConfig,
        table: Arc<CountTable>,
        metrics: EdgeMetrics,
        ready: watch::Receiver<bool>,
    ) -> Self {
        let auth = Authenticator::new(&config.partners, config.jwt_leeway_seconds);
        Self {
            table,
            auth,
            config,
            metrics,
            ready,
        }
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
struct Upgrade {
    route: Option<Route>,
    partner: Option<String>,
    token: Option<String>,
}

fn not_found() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("not found".to_owned()));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn connection(stream: TcpStream, edge: Arc<Edge>, drain: DrainGuard) {
    let shutdown = drain.token();
    let _ = stream.set_nodelay(true);
    let mut upgrade = Upgrade::default();
    // The error type is tungstenite's, so its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        match request.uri().path() {
            "/cable" => upgrade.route = Some(Route::Cable),
            "/realtime" => {
                upgrade.route = Some(Route::Realtime);
                return Ok(response);
            }
            _ => return Err(not_found()),
        }
        for (name, value) in
            url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        {
            match name.as_ref() {
                "jwt" => upgrade.token = Some(value.into_owned()),
                "partner" => upgrade.partner = Some(value.into_owned()),
                _ => {}
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
            return;
        }
    };
    let route = upgrade.route;
    match route {
        Some(Route::Cable) => cable_session(socket, upgrade, &edge, shutdown).await,
        Some(Route::Realtime) => {
            edge.metrics.connection_opened(crate::realtime::PROTOCOL);
            let _ = crate::realtime::run(&mut socket, &edge, shutdown).await;
            edge.metrics.connection_closed(crate::realtime::PROTOCOL);
        }
        None => {}
    }
}

async fn cable_session(
    mut socket: WebSocketStream<TcpStream>,
    upgrade: Upgrade,
    edge: &Edge,
    shutdown: &CancellationToken,
) {
    let identity = match edge
        .auth
        .authenticate(upgrade.partner.as_deref(), upgrade.token.as_deref())
    {
        Ok(identity) => identity,
        Err(error) => {
            edge.metrics.handshake("unauthorized");
            let partner_known = upgrade.partner.is_some();
            edge.metrics.auth_failed(partner_known, error.reason());
            let _ = Box::pin(crate::cable::refuse(&mut socket)).await;
            return;
        }
    };
    edge.metrics.handshake("accepted");
    // No welcome, and so no count, before the table has caught up: a count read from a
    // table still loading could be older than one the client has already shown.
    let mut ready = edge.ready.clone();
    tokio::select! {
        () = shutdown.cancelled() => return,
        caught_up = ready.wait_for(|ready| *ready) => {
            if caught_up.is_err() {
                return;
            }
        }
    }
    edge.metrics.connection_opened(crate::cable::PROTOCOL);
    let ping_interval = Duration::from_millis(edge.config.ping_interval_ms);
    let _ = crate::cable::run(
        &mut socket,
        &identity,
        &edge.table,
        ping_interval,
        &edge.metrics,
        shutdown,
    )
    .await;
    edge.metrics.connection_closed(crate::cable::PROTOCOL);
}
