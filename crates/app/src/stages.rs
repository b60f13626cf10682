//! Wiring of each stage: build it from the config, spawn it under a cancellation token.
//! Every stage is `run(.., shutdown) -> Result`; [`supervise`] runs a set of them so
//! that the first failure stops the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fanout_api::Api;
use fanout_edge::{Edge, Node};
use fanout_ingest::IngestMetrics;
use fanout_kafka::StageHealth;
use fanout_router::RouterMetrics;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub type Task = JoinHandle<anyhow::Result<()>>;

/// A spawned stage: its name (for errors and readiness), its task, and its health if
/// it has a readiness condition of its own.
pub struct Stage {
    pub name: &'static str,
    pub task: Task,
    pub health: Option<StageHealth>,
}

/// Spawns a stage's service: `run` gets the stage's health to report to, and its
/// result is named after the stage.
fn spawn_stage<Fut>(name: &'static str, run: impl FnOnce(StageHealth) -> Fut) -> Stage
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let health = StageHealth::new();
    Stage {
        name,
        task: tokio::spawn(run(health.clone())),
        health: Some(health),
    }
}

pub fn spawn_ingest(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Stage, IngestMetrics)> {
    let metrics = IngestMetrics::new(registry).context("registering ingest metrics")?;
    metrics.set_log_limits(config.log);
    let (config, stage_metrics) = (config.clone(), metrics.clone());
    let stage = spawn_stage("ingest", move |health| async move {
        let Config {
            kafka,
            topics,
            ingest,
            ..
        } = &config;
        fanout_ingest::run(kafka, topics, ingest, stage_metrics, health, shutdown)
            .await
            .context("ingest")
    });
    Ok((stage, metrics))
}

pub fn spawn_router(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Stage, RouterMetrics)> {
    let metrics = RouterMetrics::new(registry).context("registering router metrics")?;
    metrics.set_log_limits(config.log);
    let (config, stage_metrics) = (config.clone(), metrics.clone());
    let stage = spawn_stage("router", move |health| async move {
        let Config {
            kafka,
            topics,
            router,
            ..
        } = &config;
        fanout_router::run(kafka, topics, router, stage_metrics, health, shutdown)
            .await
            .context("router")
    });
    Ok((stage, metrics))
}

/// A spawned edge: its stage, its node's shared state, and the address it serves.
pub struct SpawnedEdge {
    pub stage: Stage,
    pub node: Arc<Node>,
    pub address: SocketAddr,
}

/// Spawns the edge on an already bound `listener`.
pub fn spawn_edge(
    config: &Config,
    listener: TcpListener,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<SpawnedEdge> {
    let health = StageHealth::new();
    let edge = Edge::new(
        config.edge.clone(),
        config.kafka.clone(),
        &config.topics,
        listener,
        registry,
        health.clone(),
    )?;
    let node = edge.node().clone();
    node.metrics.set_log_limits(config.log);
    let address = edge.address();
    let task = tokio::spawn(async move { edge.run(shutdown).await.context("edge") });
    Ok(SpawnedEdge {
        stage: Stage {
            name: "edge",
            task,
            health: Some(health),
        },
        node,
        address,
    })
}

/// Spawns the api on an already bound `listener`; returns its stage and address.
pub fn spawn_api(
    config: &Config,
    listener: TcpListener,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<(Stage, SocketAddr)> {
    let health = StageHealth::new();
    let api = Api::new(
        config.api.clone(),
        config.ingest.limits.clone(),
        config.kafka.clone(),
        &config.topics,
        listener,
        registry,
        health.clone(),
    )?;
    api.metrics().set_log_limits(config.log);
    let address = api.address()?;
    let task = tokio::spawn(async move { api.run(shutdown).await.context("api") });
    Ok((
        Stage {
            name: "api",
            task,
            health: Some(health),
        },
        address,
    ))
}

/// The listen backlog of the edge's client listener. tokio (through mio) binds with
/// std's 128, which a reconnect wave or a connect storm overflows: the kernel then drops
/// the handshake's last ACK and the client waits for a SYN-ACK retransmit, 1 s later.
/// The kernel caps it at `net.core.somaxconn`.
pub const CLIENT_LISTEN_BACKLOG: u32 = 4096;

/// Binds the edge's client listener at `address` with [`CLIENT_LISTEN_BACKLOG`].
pub async fn bind_client_listener(address: &str) -> anyhow::Result<TcpListener> {
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
    {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(CLIENT_LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.map_or_else(
        || anyhow::anyhow!("{address} resolves to no address"),
        anyhow::Error::from,
    ))
    .with_context(|| format!("binding {address}"))
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

/// The stages had not stopped when the shutdown grace period ran out.
#[derive(Debug, thiserror::Error)]
#[error("shutdown grace of {} ms passed with {} still running", .grace.as_millis(), .still_running.join(", "))]
pub struct GraceExceeded {
    pub grace: Duration,
    pub still_running: Vec<&'static str>,
}

/// [`supervise`], bounded once `shutdown` is cancelled: the stages then have `grace` to
/// drain and stop, or [`GraceExceeded`] is returned (and logged) with them still
/// running, for the caller to exit non-zero.
pub async fn supervise_with_grace(
    stages: Vec<Stage>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let handles: Vec<(&'static str, tokio::task::AbortHandle)> = stages
        .iter()
        .map(|stage| (stage.name, stage.task.abort_handle()))
        .collect();
    let supervised = supervise(stages, shutdown.clone());
    tokio::pin!(supervised);
    tokio::select! {
        result = &mut supervised => return result,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, supervised).await {
        Ok(result) => {
            tracing::info!("stopped");
            result
        }
        Err(_elapsed) => {
            let error = GraceExceeded {
                grace,
                still_running: handles
                    .iter()
                    .filter(|(_, handle)| !handle.is_finished())
                    .map(|(name, _)| *name)
                    .collect(),
            };
            tracing::error!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                still_running = ?error.still_running,
                "shutdown grace passed before every stage stopped; exiting anyway"
            );
            Err(error.into())
        }
    }
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

/// The stages a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Router,
    Edge,
    Api,
}

/// Handles on the roles [`start_roles`] started.
pub struct StartedRoles {
    pub stages: Vec<Stage>,
    /// With [`Role::Edge`]: its node and the address clients connect to.
    pub edge: Option<(Arc<Node>, SocketAddr)>,
    /// With [`Role::Api`]: the address it serves, and its health (ready once its
    /// tables caught up).
    pub api: Option<(SocketAddr, StageHealth)>,
    pub admin_address: SocketAddr,
}

/// The client listeners of the roles that serve clients: the edge's and the api's.
#[derive(Default)]
pub struct ClientListeners {
    pub edge: Option<TcpListener>,
    pub api: Option<TcpListener>,
}

/// Starts `roles` and the admin port, on listeners the caller bound (the edge's is
/// needed only with [`Role::Edge`], the api's only with [`Role::Api`]).
pub fn start_roles(
    config: &Config,
    roles: &[Role],
    listeners: ClientListeners,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<StartedRoles> {
    let registry = Registry::new();
    let mut stages = Vec::new();
    for role in roles {
        match role {
            Role::Ingest => stages.push(spawn_ingest(config, &registry, shutdown.clone())?.0),
            Role::Router => stages.push(spawn_router(config, &registry, shutdown.clone())?.0),
            // Started below, once, on their listeners.
            Role::Edge | Role::Api => {}
        }
    }
    let edge = if roles.contains(&Role::Edge) {
        let listener = listeners.edge.context("the edge role needs a listener")?;
        let started = spawn_edge(config, listener, &registry, shutdown.clone())?;
        stages.push(started.stage);
        Some((started.node, started.address))
    } else {
        None
    };
    let api = if roles.contains(&Role::Api) {
        let listener = listeners.api.context("the api role needs a listener")?;
        let (stage, address) = spawn_api(config, listener, &registry, shutdown.clone())?;
        let health = stage.health.clone().context("the api stage has a health")?;
        stages.push(stage);
        Some((address, health))
    } else {
        None
    };
    let admin_address = admin_listener
        .local_addr()
        .context("admin listener address")?;
    let admin = Arc::new(crate::admin::Admin {
        registry,
        checks: stages
            .iter()
            .filter_map(|stage| stage.health.clone().map(|health| (stage.name, health)))
            .collect(),
    });
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin, shutdown));
    stages.push(Stage {
        name: "admin",
        task: admin_task,
        health: None,
    });
    Ok(StartedRoles {
        stages,
        edge,
        api,
        admin_address,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stage(name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> Stage {
        Stage {
            name,
            task: tokio::spawn(async move {
                task.await;
                Ok(())
            }),
            health: None,
        }
    }

    #[tokio::test]
    async fn stages_that_drain_in_time_stop_cleanly() {
        let shutdown = CancellationToken::new();
        let draining = {
            let shutdown = shutdown.clone();
            stage("draining", async move {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            })
        };
        shutdown.cancel();
        supervise_with_grace(vec![draining], shutdown, Duration::from_secs(30))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_stage_still_running_after_the_grace_is_an_error_naming_it() {
        let shutdown = CancellationToken::new();
        let stuck = stage("stuck", std::future::pending());
        let prompt = {
            let shutdown = shutdown.clone();
            stage("prompt", async move { shutdown.cancelled().await })
        };
        shutdown.cancel();
        let error = supervise_with_grace(vec![stuck, prompt], shutdown, Duration::from_millis(50))
            .await
            .unwrap_err();
        let grace = error.downcast_ref::<GraceExceeded>().unwrap();
        assert_eq!(grace.still_running, vec!["stuck"]);
    }
}
