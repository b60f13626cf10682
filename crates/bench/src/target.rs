//! What the scenarios run against: by default a deployment the bench starts itself (an
//! embedded Kafka in the bench process; each edge, and ingest, router and the api when
//! a scenario needs them, as child processes of this binary, so a process's RSS and CPU
//! are its own), or a running one named on the command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_app::config::{Config, Listen};
use fanout_edge::{PartnerConfig, SecretConfig};
use fanout_kafka::{EmbeddedKafka, KafkaSettings, Topics};
use tokio::process::Child;

use crate::scenario::{ExternalTarget, Scenario, WsBenchOptions};
use crate::system::{http_get, rss_kib, this_binary};

/// librdkafka settings for every client of a local deployment on the embedded
/// cluster: see [`fanout_kafka::EMBEDDED_CLIENT_SETTINGS`].
pub const LOW_LATENCY_CLIENT: [(&str, &str); 2] = fanout_kafka::EMBEDDED_CLIENT_SETTINGS;

/// Where the load goes: edges, Kafka, and the credentials to mint tokens.
pub(crate) struct Target {
    pub(crate) description: String,
    pub(crate) edges: Vec<EdgeTarget>,
    pub(crate) kafka: Option<KafkaSettings>,
    pub(crate) topics: Topics,
    pub(crate) partner: String,
    pub(crate) secret: String,
    /// The deployment the bench started (dropping it stops it), if it did.
    pub(crate) local: Option<LocalDeployment>,
}

impl Target {
    /// The running deployment `--edge-url` names, or a local one started for the
    /// scenario (with ingest and router if its events go through them).
    pub(crate) async fn set_up(
        scenario: Scenario,
        options: &WsBenchOptions,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        if options.external.is_named() {
            Self::running(scenario, &options.external)
        } else {
            Self::start_local(scenario, options, run_dir).await
        }
    }

    fn running(scenario: Scenario, external: &ExternalTarget) -> anyhow::Result<Self> {
        let partner = external
            .partner
            .clone()
            .context("--partner is required with --edge-url")?;
        let secret = external
            .secret
            .clone()
            .context("--secret is required with --edge-url")?;
        let needs_kafka = scenario.needs_pipeline() || scenario == Scenario::PushRate;
        anyhow::ensure!(
            !needs_kafka || external.brokers.is_some(),
            "--brokers is required for {} with --edge-url",
            scenario.name()
        );
        let edges = external
            .edge_urls
            .iter()
            .enumerate()
            .map(|(index, url)| EdgeTarget {
                url: url.clone(),
                admin: None,
                pid: external.edge_pids.get(index).copied(),
            })
            .collect();
        Ok(Self {
            description: format!("running deployment ({})", external.edge_urls.join(", ")),
            edges,
            kafka: external.brokers.clone().map(KafkaSettings::new),
            topics: external
                .topic_prefix
                .as_deref()
                .map_or_else(Topics::default, Topics::with_prefix),
            partner,
            secret,
            local: None,
        })
    }

    async fn start_local(
        scenario: Scenario,
        options: &WsBenchOptions,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        let edges = options.edges_of(scenario);
        anyhow::ensure!(edges >= 1, "--edges must be at least 1");
        let user_partitions = options.user_partitions_of(scenario);
        let local = LocalDeployment::start(&LocalOptions {
            edges,
            pipeline: scenario.needs_pipeline(),
            partitions: options.partitions,
            user_partitions,
            brokers: options.local_brokers.as_deref(),
            kafka_client: &options.kafka_client,
            api: None,
            run_dir,
        })
        .await?;
        let mut kafka = match &options.local_brokers {
            Some(brokers) => format!("the Kafka at {brokers}"),
            None => "embedded Kafka (librdkafka mock) in the bench process".to_owned(),
        };
        kafka.push_str(&format!(", {} partitions", options.partitions));
        if let Some(user_partitions) = user_partitions {
            kafka.push_str(&format!(" ({user_partitions} keyed by user)"));
        }
        for (property, value) in &options.kafka_client {
            kafka.push_str(&format!(", {property}={value}"));
        }
        Ok(Self {
            description: format!(
                "local: {kafka}, {edges} edge process(es){}",
                if scenario.needs_pipeline() {
                    ", ingest and router processes"
                } else {
                    ""
                }
            ),
            edges: local.edges.clone(),
            kafka: Some(KafkaSettings::new(local.brokers.clone())),
            topics: local.topics.clone(),
            partner: local.partner.clone(),
            secret: local.secret.clone(),
            local: Some(local),
        })
    }

    /// Each edge's RSS in KiB (`None`: no pid, or unreadable).
    pub(crate) fn edge_rss_kib(&self) -> Vec<Option<u64>> {
        self.edges
            .iter()
            .map(|edge| edge.pid.and_then(|pid| rss_kib(pid).ok()))
            .collect()
    }

    /// Fails if a process the bench started has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.local.as_mut() {
            Some(local) => local.check_alive(),
            None => Ok(()),
        }
    }

    /// Kills edge `index` and starts it again (see [`LocalDeployment::restart_edge`]);
    /// only an edge the bench started.
    pub(crate) async fn restart_edge(&mut self, index: usize) -> anyhow::Result<()> {
        let local = self
            .local
            .as_mut()
            .context("only an edge the bench started can be restarted")?;
        local.restart_edge(index).await?;
        self.edges[index] = local.edges[index].clone();
        Ok(())
    }

    /// Whether edge `index` (started by the bench) reports ready on `/readyz` now.
    pub(crate) async fn edge_ready(&mut self, index: usize) -> anyhow::Result<bool> {
        self.local
            .as_mut()
            .context("only an edge the bench started can be asked")?
            .edge_ready(index)
            .await
    }
}

/// One edge the clients connect to.
#[derive(Debug, Clone)]
pub struct EdgeTarget {
    /// `ws://host:port`.
    pub url: String,
    /// The admin port's `http://host:port`, to read metrics (local edges).
    pub admin: Option<String>,
    /// The edge's pid, to read its RSS (local edges, or `--edge-pid`).
    pub pid: Option<u32>,
}

/// A deployment the bench started: dropping it stops the children and the embedded
/// Kafka.
pub struct LocalDeployment {
    /// The embedded Kafka, unless the deployment runs on one named by
    /// [`LocalOptions::brokers`].
    pub kafka: Option<EmbeddedKafka>,
    /// The Kafka's bootstrap servers.
    pub brokers: String,
    pub topics: Topics,
    pub partner: String,
    pub secret: String,
    pub edges: Vec<EdgeTarget>,
    /// The api, if [`LocalOptions::api`] asked for it.
    pub api: Option<ApiEndpoint>,
    children: Vec<Child>,
    /// The role of each child, in `children` order.
    child_roles: Vec<&'static str>,
    /// Every child's admin address, for /readyz, in `children` order.
    admins: Vec<String>,
    /// Each edge's place in `children`, and its config file.
    edge_processes: Vec<(usize, PathBuf)>,
    /// The run's directory, for the logs of edges started again.
    run_dir: PathBuf,
    restarts: usize,
    /// The config every child shares, for edges started later ([`Self::spawn_edge`]).
    config: Config,
}

/// An edge process started on its own by [`LocalDeployment::spawn_edge`]: killed when
/// dropped.
pub struct LoneEdge {
    pub target: EdgeTarget,
    pub child: Child,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// What to start.
pub struct LocalOptions<'a> {
    pub edges: usize,
    /// Also ingest and router (scenarios fed by message events).
    pub pipeline: bool,
    pub partitions: i32,
    /// Partitions of the topics keyed by user (user-events and those after it), if not
    /// `partitions`.
    pub user_partitions: Option<i32>,
    /// A running Kafka (`host:port`) to use instead of an embedded one; the run's
    /// topics are created on it.
    pub brokers: Option<&'a str>,
    /// librdkafka settings for every child's clients, after [`LOW_LATENCY_CLIENT`].
    pub kafka_client: &'a [(String, String)],
    /// Also an api process, with an API key for the partner.
    pub api: Option<LocalApi>,
    /// Child logs and configs go here.
    pub run_dir: &'a Path,
}

/// How the api of a local deployment is set up.
#[derive(Debug, Clone, Copy)]
pub struct LocalApi {
    /// `api.requests_per_second`: what one key may make (the default 1000 would cap a
    /// measurement of the api's throughput).
    pub requests_per_second: u32,
}

/// The api process of a local deployment.
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The admin port's `http://host:port`.
    pub admin: String,
    pub pid: Option<u32>,
    /// An API key of the deployment's partner (48 hex digits).
    pub key: String,
    /// The `api.requests_per_second` it runs with.
    pub requests_per_second: u32,
}

impl LocalDeployment {
    pub async fn start(options: &LocalOptions<'_>) -> anyhow::Result<Self> {
        Self::start_with(options, |_| {}).await
    }

    /// As [`Self::start`], with `adjust` applied to the config every child shares
    /// (soak's history window, overload's `max_connections`).
    pub async fn start_with(
        options: &LocalOptions<'_>,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let run_id = fanout_app::tools::random_hex(4);
        let topics = Topics::with_prefix(&format!("bench-{run_id}-"));
        let layout = topics.with_partitions(
            options.partitions,
            options.user_partitions.unwrap_or(options.partitions),
        );
        let (kafka, brokers) = match options.brokers {
            Some(brokers) => {
                crate::system::create_topics(&KafkaSettings::new(brokers), &layout).await?;
                (None, brokers.to_owned())
            }
            None => {
                let kafka =
                    EmbeddedKafka::start(1, &layout).context("starting the embedded Kafka")?;
                let brokers = kafka.bootstrap_servers().to_owned();
                (Some(kafka), brokers)
            }
        };
        std::fs::create_dir_all(options.run_dir)
            .with_context(|| format!("creating {}", options.run_dir.display()))?;
        let partner = "bench".to_owned();
        let secret = fanout_app::tools::random_hex(24);
        let mut config = shared_config(&brokers, &topics, &run_id, &partner, &secret);
        config
            .kafka
            .client
            .extend(options.kafka_client.iter().cloned());
        adjust(&mut config);
        let mut deployment = Self {
            kafka,
            brokers,
            topics,
            partner,
            secret,
            edges: Vec::new(),
            api: None,
            children: Vec::new(),
            child_roles: Vec::new(),
            admins: Vec::new(),
            edge_processes: Vec::new(),
            run_dir: options.run_dir.to_owned(),
            restarts: 0,
            config: config.clone(),
        };
        if options.pipeline {
            for role in ["ingest", "router"] {
                let admin_port = free_port()?;
                let path = options.run_dir.join(format!("{role}.toml"));
                write_role_config(&config, None, &admin_port, &path)?;
                deployment.admins.push(format!("http://{admin_port}"));
                let child = spawn_role(role, &path, &options.run_dir.join(format!("{role}.log")))?;
                deployment.children.push(child);
                deployment.child_roles.push(role);
            }
        }
        if let Some(api) = options.api {
            let api_port = free_port()?;
            let admin_port = free_port()?;
            let key = fanout_app::tools::random_hex(24);
            let path = options.run_dir.join("api.toml");
            let text = api_config(
                &config,
                &deployment.partner,
                &key,
                api,
                &api_port,
                &admin_port,
            )?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            let child = spawn_role("api", &path, &options.run_dir.join("api.log"))?;
            deployment.api = Some(ApiEndpoint {
                url: format!("http://{api_port}"),
                admin: format!("http://{admin_port}"),
                pid: child.id(),
                key,
                requests_per_second: api.requests_per_second,
            });
            deployment.admins.push(format!("http://{admin_port}"));
            deployment.children.push(child);
            deployment.child_roles.push("api");
        }
        for index in 0..options.edges {
            let edge_port = free_port()?;
            let admin_port = free_port()?;
            let path = options.run_dir.join(format!("edge-{index}.toml"));
            write_role_config(&config, Some(&edge_port), &admin_port, &path)?;
            let child = spawn_role(
                "edge",
                &path,
                &options.run_dir.join(format!("edge-{index}.log")),
            )?;
            deployment.edges.push(EdgeTarget {
                url: format!("ws://{edge_port}"),
                admin: Some(format!("http://{admin_port}")),
                pid: child.id(),
            });
            deployment.admins.push(format!("http://{admin_port}"));
            deployment
                .edge_processes
                .push((deployment.children.len(), path));
            deployment.children.push(child);
            deployment.child_roles.push("edge");
        }
        deployment.wait_ready(Duration::from_secs(60)).await?;
        Ok(deployment)
    }

    /// Kills edge `index` with SIGKILL, as a crash or an OOM kill would (every client
    /// sees its connection drop at once; a SIGTERM would drain them over the drain
    /// window), waits for it to exit, and starts a new edge process with the same
    /// config: the same ports. Returns once it is started, not ready.
    pub async fn restart_edge(&mut self, index: usize) -> anyhow::Result<()> {
        let (slot, config) = self
            .edge_processes
            .get(index)
            .cloned()
            .with_context(|| format!("no edge {index}"))?;
        let old = &mut self.children[slot];
        old.start_kill().context("killing the edge")?;
        old.wait().await.context("waiting for the killed edge")?;
        self.restarts += 1;
        let log = self
            .run_dir
            .join(format!("edge-{index}-restart-{}.log", self.restarts));
        let child = spawn_role("edge", &config, &log)?;
        self.edges[index].pid = child.id();
        self.children[slot] = child;
        Ok(())
    }

    /// Starts an edge process of the deployment's config, named `name` (its config and
    /// log are `<name>.toml` and `<name>.log` in the run's directory), apart from the
    /// deployment's children: the caller owns it, and it is killed when dropped. Returns
    /// once it is started, not ready (`table` times its catch-up from here).
    pub fn spawn_edge(&self, name: &str) -> anyhow::Result<LoneEdge> {
        let edge_port = free_port()?;
        let admin_port = free_port()?;
        let path = self.run_dir.join(format!("{name}.toml"));
        write_role_config(&self.config, Some(&edge_port), &admin_port, &path)?;
        let log = self.run_dir.join(format!("{name}.log"));
        let child = spawn_role("edge", &path, &log)?;
        Ok(LoneEdge {
            target: EdgeTarget {
                url: format!("ws://{edge_port}"),
                admin: Some(format!("http://{admin_port}")),
                pid: child.id(),
            },
            child,
            log,
        })
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for admin in self.admins.clone() {
            loop {
                if let Some(status) = self.exited_child()? {
                    anyhow::bail!("a child process exited during startup: {status}");
                }
                if let Ok((200, _)) = http_get(&admin, "/readyz").await {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{admin}/readyz not ready in {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Whether edge `index` answers `/readyz` with 200 now; fails if a child exited.
    pub async fn edge_ready(&mut self, index: usize) -> anyhow::Result<bool> {
        if let Some(status) = self.exited_child()? {
            anyhow::bail!("a child process exited: {status}");
        }
        let admin = self
            .edges
            .get(index)
            .and_then(|edge| edge.admin.clone())
            .with_context(|| format!("edge {index} has no admin address"))?;
        Ok(matches!(http_get(&admin, "/readyz").await, Ok((200, _))))
    }

    /// Pids of the ingest and router processes (empty without them).
    pub fn pipeline_pids(&self) -> Vec<u32> {
        let mut pids = self.pids_of("ingest");
        pids.extend(self.pids_of("router"));
        pids
    }

    /// Admin addresses (`http://host:port`) of the children running `role`.
    pub fn admins_of(&self, role: &str) -> Vec<String> {
        self.admins
            .iter()
            .zip(&self.child_roles)
            .filter(|(_, child_role)| **child_role == role)
            .map(|(admin, _)| admin.clone())
            .collect()
    }

    /// Pids of the children running `role` (`ingest`, `router`, `edge`, `api`).
    pub fn pids_of(&self, role: &str) -> Vec<u32> {
        self.children
            .iter()
            .zip(&self.child_roles)
            .filter(|(_, child_role)| **child_role == role)
            .filter_map(|(child, _)| child.id())
            .collect()
    }

    /// Fails if a child process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited_child()? {
            anyhow::bail!("a child process exited: {status}");
        }
        Ok(())
    }

    /// The exit status of the first child that has exited, if one has.
    fn exited_child(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }
}

/// The config every role of a local deployment shares: the embedded Kafka (with
/// [`LOW_LATENCY_CLIENT`]), the run's topics and consumer groups, the bench's partner;
/// every other key its default.
fn shared_config(
    brokers: &str,
    topics: &Topics,
    run_id: &str,
    partner: &str,
    secret: &str,
) -> Config {
    let mut config = Config {
        kafka: KafkaSettings::new(brokers),
        topics: topics.clone(),
        ..Config::default()
    };
    config.kafka.client = LOW_LATENCY_CLIENT
        .iter()
        .map(|(property, value)| ((*property).to_owned(), (*value).to_owned()))
        .collect();
    config.ingest.group_id = format!("bench-{run_id}-ingest");
    config.router.group_id = format!("bench-{run_id}-router");
    config.edge.partners.insert(
        partner.to_owned(),
        PartnerConfig {
            secrets: vec![SecretConfig {
                kid: None,
                secret: secret.to_owned(),
            }],
            ..PartnerConfig::default()
        },
    );
    config
}

/// Writes [`role_config`] to `path`.
fn write_role_config(
    shared: &Config,
    edge_listen: Option<&str>,
    admin_listen: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let text = role_config(shared, edge_listen, admin_listen)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A role's config file, as the role loads it: the shared config with these listen
/// addresses (no edge: any free port, unused).
fn role_config(
    shared: &Config,
    edge_listen: Option<&str>,
    admin_listen: &str,
) -> anyhow::Result<String> {
    let config = Config {
        listen: Listen {
            edge: edge_listen.unwrap_or("127.0.0.1:0").to_owned(),
            api: "127.0.0.1:0".to_owned(),
            admin: admin_listen.to_owned(),
        },
        ..shared.clone()
    };
    toml::to_string(&config).context("writing a role's config as TOML")
}

/// The api's config file: the shared config with these listen addresses, `key` as the
/// one API key of `partner`, and `api.requests_per_second` as `api` says.
fn api_config(
    shared: &Config,
    partner: &str,
    key: &str,
    api: LocalApi,
    api_listen: &str,
    admin_listen: &str,
) -> anyhow::Result<String> {
    let mut config = Config {
        listen: Listen {
            edge: "127.0.0.1:0".to_owned(),
            api: api_listen.to_owned(),
            admin: admin_listen.to_owned(),
        },
        ..shared.clone()
    };
    config.api.requests_per_second = api.requests_per_second;
    // The key goes in as TOML (`[api.partners.<partner>] keys = [..]`): the bench does
    // not link the api.
    let mut value = toml::Value::try_from(&config).context("writing the api's config")?;
    let partners = value
        .get_mut("api")
        .and_then(|api| api.as_table_mut())
        .context("the config has no [api] table")?
        .entry("partners")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("api.partners is not a table")?;
    let mut keys = toml::Table::new();
    keys.insert(
        "keys".to_owned(),
        toml::Value::Array(vec![toml::Value::String(key.to_owned())]),
    );
    partners.insert(partner.to_owned(), toml::Value::Table(keys));
    toml::to_string(&value).context("writing the api's config as TOML")
}

/// Ports [`free_port`] picks from: below Linux's ephemeral range (32768-60999), so
/// that no outgoing connection and no bind to port 0 (the clients, the Kafka clients,
/// the ceiling's server, the runs of other tests) takes one between the check and the
/// child's bind, as happened with ports the kernel picked.
const CHILD_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// `127.0.0.1:<port>` with a port free right now (the child binds it a moment later):
/// a random one of [`CHILD_PORTS`], or one the kernel picks if none of those tried is.
fn free_port() -> anyhow::Result<String> {
    for _ in 0..64 {
        let port = rand::random_range(CHILD_PORTS);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(listener.local_addr()?.to_string());
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.to_string())
}

fn spawn_role(role: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
    this_binary(log)?
        .arg(role)
        .arg("--config")
        .arg(config)
        .env_remove("FANOUT_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting fanout {role}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn role_configs_are_valid_and_read_back_as_written() {
        let topics = Topics::with_prefix("bench-0a1b-");
        let shared = shared_config(
            "127.0.0.1:39092",
            &topics,
            "0a1b",
            "bench",
            "0123456789abcdef0123456789abcdef",
        );
        let text = role_config(&shared, Some("127.0.0.1:38080"), "127.0.0.1:39090").unwrap();
        let read: Config = toml::from_str(&text).unwrap();
        read.validate().unwrap();
        assert_eq!(read.listen.edge, "127.0.0.1:38080");
        assert_eq!(read.listen.admin, "127.0.0.1:39090");
        assert_eq!(read.topics, topics);
        assert_eq!(read.kafka.client["fetch.wait.max.ms"], "5");
        assert_eq!(read.router.group_id, "bench-0a1b-router");
        assert_eq!(
            read.edge.partners["bench"].secrets[0].secret,
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            read,
            Config {
                listen: read.listen.clone(),
                ..shared
            }
        );
    }

    #[test]
    fn the_api_config_has_the_partners_key_and_the_raised_rate() {
        let topics = Topics::with_prefix("bench-0a1b-");
        let shared = shared_config(
            "127.0.0.1:39092",
            &topics,
            "0a1b",
            "bench",
            "0123456789abcdef0123456789abcdef",
        );
        let key = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let text = api_config(
            &shared,
            "bench",
            key,
            LocalApi {
                requests_per_second: 100_000_000,
            },
            "127.0.0.1:38081",
            "127.0.0.1:39091",
        )
        .unwrap();
        let read: Config = toml::from_str(&text).unwrap();
        read.validate().unwrap();
        assert_eq!(read.listen.api, "127.0.0.1:38081");
        assert_eq!(read.listen.admin, "127.0.0.1:39091");
        assert_eq!(read.api.requests_per_second, 100_000_000);
        assert_eq!(read.api.partners["bench"].keys.len(), 1);
        assert_eq!(read.api.partners["bench"].keys[0].0, key);
        assert_eq!(read.topics, topics);
    }
}
