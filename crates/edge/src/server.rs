//! The edge's accept loop and WebSocket handshake: the path picks the protocol
//! (`/cable`: ActionCable, authenticated by the query; `/realtime`: JSON, authenticated
//! in band), whose session [`crate::session::run`] then drives.

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::cable as cable_codec;
use futures::future::Either;
use http::{HeaderValue, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::{Drain, DrainGuard};
use crate::limits::{Limit, origin_allowed};
use crate::node::Node;
use crate::session::{self, Cable, Credentials, Realtime};
use crate::telemetry::Handshake;

/// Accepts connections on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions, which say goodbye so that clients reconnect (ActionCable's
/// `server_restart`, close code 1012 on `/realtime`).
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let sessions = TaskTracker::new();
    let drain = Drain::new();
    if let Some(path) = node.config.secrets_file.clone() {
        sessions.spawn(crate::secrets::watch(path, node.clone(), shutdown.clone()));
    }
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "edge accepting WebSocket connections");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    sessions.spawn(connection(stream, node.clone(), drain.register()));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    node.metrics.accept_failed(&error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Stop accepting, then say goodbye to the open sessions over the drain window.
    drop(listener);
    drain
        .run(Duration::from_millis(node.config.drain_window_ms))
        .await;
    sessions.close();
    sessions.wait().await;
}

/// Frames a session writes together (a count with the event it came with, the events
/// queued behind them) go to the socket in one write once more than this is buffered,
/// or at the flush that ends the session's turn: one syscall, not one per frame. Small,
/// because tungstenite keeps its write buffer's capacity for the connection's life: a
/// batch past this is written at the frame that passes it, so the buffer stays about
/// this plus the largest frame.
const WRITE_BATCH_BYTES: usize = 1024;

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
    /// ActionCable's query.
    credentials: Credentials,
    origin: Option<String>,
    /// The client offered AnyCable's extended protocol, and it was chosen.
    extended: bool,
}

fn refusal(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    response
}

/// The query with the `jwt` and `sid` values replaced, for logs: a token (or a session
/// id, which restores a session) in a log line is a credential anyone reading logs can
/// use. Everything else is kept as sent.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .map(|(name, _)| name.into_owned())
                .collect();
            match decoded.as_str() {
                "jwt" => "jwt=[redacted]",
                "sid" => "sid=[redacted]",
                _ => pair,
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One connection, from accept to close. Not an `async fn`: its future is the
/// connection's task, as large as its largest state for the connection's whole life, and
/// an `async fn` keeps a copy of each argument it moved on (the stream, into the
/// handshake). The handshake, which a connection passes once, is boxed at its own size.
fn connection(
    stream: TcpStream,
    node: Arc<Node>,
    drain: DrainGuard,
) -> impl Future<Output = ()> + Send + 'static {
    // Held from accept to close: the node's limit counts handshakes in progress too.
    let node_place = node.limits.node_place();
    let handshake = Box::pin(handshake(
        stream,
        node.clone(),
        node_place.as_ref().err().copied(),
    ));
    async move {
        let shutdown = drain.token();
        let mut socket;
        // Each protocol's session is boxed at its own size; unboxed, every connection's
        // task would be as large as the largest of them for its whole life. In a block,
        // so that what the upgrade learned is not kept beside the session.
        let session = {
            let Some((handshaken, upgrade)) = handshake.await else {
                return;
            };
            socket = handshaken;
            let Upgrade {
                route,
                credentials,
                origin,
                extended,
            } = upgrade;
            match route {
                Some(Route::Cable) => {
                    let cable = Cable::new(&node.config, extended.then(crate::restore::new_sid));
                    Either::Left(Box::pin(session::run(
                        &mut socket,
                        &node,
                        cable,
                        origin,
                        Some(credentials),
                        shutdown,
                    )))
                }
                Some(Route::Realtime) => {
                    let realtime = Realtime::new(&node.config);
                    Either::Right(Box::pin(session::run(
                        &mut socket,
                        &node,
                        realtime,
                        origin,
                        None,
                        shutdown,
                    )))
                }
                None => return,
            }
        };
        session.await;
        drop(node_place);
    }
}

/// The WebSocket handshake, and what it learned about the request; `None` when it
/// failed, timed out, or was refused (`refused`: the node's connection limit).
async fn handshake(
    stream: TcpStream,
    node: Arc<Node>,
    refused: Option<Limit>,
) -> Option<(WebSocketStream<TcpStream>, Upgrade)> {
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
        if let Some(limit) = refused {
            node.metrics.limited(limit);
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
                "jwt" => upgrade.credentials.token = Some(value.into_owned()),
                "partner" => upgrade.credentials.partner = Some(value.into_owned()),
                "sid" => upgrade.credentials.restore = Some(value.into_owned()),
                _ => {}
            }
        }
        // What the query's partner refuses anyway is refused before the upgrade, so a
        // browser sees a failed handshake and the official client backs off.
        if let Some(partner) = upgrade.credentials.partner.as_deref() {
            if !origin_allowed(node.allowed_origins(partner), upgrade.origin.as_deref()) {
                node.metrics.limited(Limit::Origin);
                return Err(refusal(StatusCode::FORBIDDEN, "origin not allowed"));
            }
            if node.limits.partner_is_full(partner) {
                node.metrics.limited(Limit::PartnerConnections);
                return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "connection limit"));
            }
        }
        let offers = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok());
        // AnyCable's header alternative to the query's sid.
        if let Some(sid) = request
            .headers()
            .get("x-anycable-restore-sid")
            .and_then(|value| value.to_str().ok())
        {
            upgrade.credentials.restore = Some(sid.to_owned());
        }
        if let Some(protocol) = cable_codec::negotiate_subprotocol(offers) {
            upgrade.extended = protocol == cable_codec::EXT_SUBPROTOCOL;
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        Ok(response)
    };
    let websocket_config = WebSocketConfig::default()
        .max_message_size(Some(node.config.max_frame_bytes))
        .max_frame_size(Some(node.config.max_frame_bytes))
        // Client frames are small (a subscribe is ~80 bytes); tungstenite allocates and
        // zero-fills this much per connection for its whole life, and grows it for a
        // larger frame when one comes.
        .read_buffer_size(256)
        .write_buffer_size(WRITE_BATCH_BYTES);
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config));
    let timeout = Duration::from_millis(node.config.handshake_timeout_ms);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(socket)) => Some((socket, upgrade)),
        Ok(Err(_error)) => {
            node.metrics.handshake(Handshake::Failed);
            None
        }
        Err(_elapsed) => {
            node.metrics.handshake(Handshake::Timeout);
            node.metrics.limited(Limit::HandshakeTimeout);
            None
        }
    }
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
        assert_eq!(
            redact_query("partner=acme&sid=0123abcd"),
            "partner=acme&sid=[redacted]"
        );
        assert_eq!(redact_query(""), "");
    }
}
