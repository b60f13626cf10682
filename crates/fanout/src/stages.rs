//! Wiring of each stage: build it from the config, spawn it under a cancellation token.
//! Every stage is `run(.., shutdown) -> Result`; [`supervise`] runs a set of them so
//! that the first failure stops the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use fanout_edge::table::CountTable;
use fanout_edge::{Edge, EdgeMetrics};
use fanout_ingest::IngestMetrics;
use fanout_router::RouterMetrics;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub type Task = JoinHandle<anyhow::Result<()>>;

/// A spawned stage: its name (for errors) and its task.
pub struct Stage {
    pub name: &'static str,
    pub task: Task,
}

pub fn spawn_ingest(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Stage, IngestMetrics)> {
    let metrics = IngestMetrics::new(registry).context("registering ingest metrics")?;
    let config = config.clone();
    let task_metrics = metrics.clone();
    let task = tokio::spawn(async move {
        fanout_ingest::run(
            &config.kafka,
            &config.topics,
            &config.ingest,
            task_metrics,
            shutdown,
        )
        .await
        .context("ingest")
    });
    Ok((
        Stage {
            name: "ingest",
            task,
        },
        metrics,
    ))
}

pub fn spawn_router(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Stage, RouterMetrics)> {
    let metrics = RouterMetrics::new(registry).context("registering router metrics")?;
    let config = config.clone();
    let task_metrics = metrics.clone();
    let task = tokio::spawn(async move {
        fanout_router::run(
            &config.kafka,
            &config.topics,
            &config.router,
            task_metrics,
            shutdown,
        )
        .await
        .context("router")
    });
    Ok((
        Stage {
            name: "router",
            task,
        },
        metrics,
    ))
}

/// A running edge: its feed and its WebSocket server.
pub struct EdgeStages {
    pub edge: Arc<Edge>,
    pub address: SocketAddr,
    pub feed: Stage,
    pub server: Stage,
}

/// Spawns the edge's feed and server on an already bound `listener`.
pub fn spawn_edge(
    config: &Config,
    listener: TcpListener,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<EdgeStages> {
    let metrics = EdgeMetrics::new(registry).context("registering edge metrics")?;
    let table = Arc::new(CountTable::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    let edge = Arc::new(Edge::new(
        config.edge.clone(),
        table.clone(),
        metrics.clone(),
        ready_rx,
    ));
    let address = listener.local_addr().context("edge listener address")?;
    let feed = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            fanout_edge::feed::run(
                &config.kafka,
                &config.topics.unread_counts,
                &config.edge.partitions,
                table,
                metrics,
                ready_tx,
                shutdown,
            )
            .await
            .context("edge feed")
        })
    };
    let server = {
        let edge = edge.clone();
        tokio::spawn(async move {
            fanout_edge::serve(listener, edge, shutdown).await;
            Ok(())
        })
    };
    Ok(EdgeStages {
        edge,
        address,
        feed: Stage {
            name: "edge feed",
            task: feed,
        },
        server: Stage {
            name: "edge server",
            task: server,
        },
    })
}

/// Waits for every stage. The first to stop, by error or not, cancels `shutdown` so the
/// others drain and stop too; the first error is returned.
pub async fn supervise(stages: Vec<Stage>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tasks: futures::stream::FuturesUnordered<_> = stages
        .into_iter()
        .map(|stage| async move {
            let result = match stage.task.await {
                Ok(result) => result,
                Err(join_error) => Err(anyhow::anyhow!(
                    "{} panicked or was aborted: {join_error}",
                    stage.name
                )),
            };
            (stage.name, result)
        })
        .collect();
    let mut first_error = None;
    while let Some((name, result)) = futures::StreamExt::next(&mut tasks).await {
        if !shutdown.is_cancelled() {
            match &result {
                Ok(()) => tracing::warn!(stage = name, "stage stopped; stopping the others"),
                Err(error) => tracing::error!(
                    stage = name,
                    error = format!("{error:#}"),
                    "stage failed; stopping the others"
                ),
            }
            shutdown.cancel();
        }
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            () = terminate => tracing::info!("SIGTERM: shutting down"),
        }
        shutdown.cancel();
    });
}
