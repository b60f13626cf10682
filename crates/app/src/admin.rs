//! The admin port, separate from client traffic: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (every stage it runs is ready).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use fanout_kafka::StageHealth;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin port reports on.
pub struct Admin {
    pub registry: Registry,
    /// Each stage's name and health; `/readyz` wants all of them ready.
    pub checks: Vec<(&'static str, StageHealth)>,
}

impl Admin {
    /// `None` when ready, else one line per stage that is not.
    pub fn not_ready(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .checks
            .iter()
            .filter_map(|(name, health)| {
                health
                    .not_ready_reason()
                    .map(|reason| format!("{name}: {reason}"))
            })
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("\n") + "\n")
    }
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "admin port listening");
    }
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&admin.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            error.to_string().into_bytes(),
        ),
    }
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    match admin.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reasons) => (StatusCode::SERVICE_UNAVAILABLE, reasons),
    }
}
