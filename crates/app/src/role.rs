//! `fanout ingest`, `fanout router`, `fanout edge` and `fanout api`: one role as its own process,
//! its whole config validated before anything is bound; and `fanout check-config`,
//! which loads a config exactly as they do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::logging::LogFormat;
use crate::stages::{self, Role};

/// sysexits' EX_USAGE, as linkerd uses it: the configuration is wrong, and nothing
/// was bound or connected.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, clap::Args)]
pub struct RoleOptions {
    /// The TOML config file.
    #[arg(long, short, env = "FANOUT_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RoleOptions {
    /// Runs `role`: load and validate the config (exit 64 if it is bad), bind, run
    /// until SIGTERM or SIGINT, drain within `shutdown.grace_ms`.
    pub async fn execute(&self, role: Role, format: LogFormat) -> anyhow::Result<ExitCode> {
        let config = match load(self.config.as_deref(), format) {
            Ok(config) => config,
            Err(code) => return Ok(code),
        };
        let mut listeners = stages::ClientListeners::default();
        match role {
            Role::Edge => {
                listeners.edge = Some(stages::bind_client_listener(&config.listen.edge).await?);
            }
            Role::Api => {
                listeners.api = Some(
                    tokio::net::TcpListener::bind(&config.listen.api)
                        .await
                        .with_context(|| format!("binding {}", config.listen.api))?,
                );
            }
            Role::Ingest | Role::Router => {}
        }
        let admin_listener = tokio::net::TcpListener::bind(&config.listen.admin)
            .await
            .with_context(|| format!("binding {}", config.listen.admin))?;
        let shutdown = CancellationToken::new();
        stages::cancel_on_signal(shutdown.clone());
        let started = stages::start_roles(
            &config,
            &[role],
            listeners,
            admin_listener,
            shutdown.clone(),
        )?;
        let grace = Duration::from_millis(config.shutdown.grace_ms);
        stages::supervise_with_grace(started.stages, shutdown, grace).await?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigOptions {
    /// The TOML config file.
    pub file: PathBuf,
}

impl CheckConfigOptions {
    /// 0 and `<file>: ok` if the config loads, else 64 with the reason.
    pub fn execute(&self, format: LogFormat) -> ExitCode {
        if let Err(code) = load(Some(&self.file), format) {
            return code;
        }
        println!("{}: ok", self.file.display());
        ExitCode::SUCCESS
    }
}

/// [`Config::load`], its refusal reported in `format` and turned into exit code 64.
fn load(file: Option<&Path>, format: LogFormat) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|error| {
        let source = file.map_or_else(String::new, |file| format!(" in {}", file.display()));
        match format {
            LogFormat::Text => eprintln!("fanout: invalid configuration{source}:\n{error}"),
            LogFormat::Json => {
                tracing::error!(%error, "invalid configuration{source}");
            }
        }
        ExitCode::from(EXIT_CONFIG)
    })
}
