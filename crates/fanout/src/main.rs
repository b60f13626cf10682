//! The `fanout` binary: parse the command line, start logging, run one role until
//! SIGTERM/SIGINT. Everything else lives in the library and the stage crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fanout_app::config::Config;
use fanout_app::dev::{DevOptions, banner};
use fanout_app::stages::{self, Role};
use fanout_app::tools::{EventSpec, mint_token, produce};
use fanout_kafka::KafkaSettings;
use tokio_util::sync::CancellationToken;

/// Kafka message events in, live per-user unread counts out over WebSockets.
#[derive(Parser)]
#[command(name = "fanout", version)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line (for log
    /// collectors; `fanout dev` then prints its banner as one JSON object too).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FANOUT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process with an embedded Kafka: prints a demo token and URL.
    Dev(DevArgs),
    /// Run the ingest stage.
    Ingest(RoleArgs),
    /// Run the router stage.
    Router(RoleArgs),
    /// Run an edge node.
    Edge(RoleArgs),
    /// Validate a config file (and FANOUT_* overrides) and exit: 0 if it is good, 64
    /// with the reason (naming the key) if not.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the default config file: every key, its default and what it does.
    DefaultConfig,
    /// Produce one message event to Kafka.
    Produce(ProduceArgs),
    /// Mint a JWT for a user, signed with a partner secret.
    Token(TokenArgs),
    /// Measure a stage under load; prints the result as JSON.
    #[command(subcommand)]
    Bench(fanout_bench::BenchCommand),
}

#[derive(Args)]
struct DevArgs {
    /// Address of the WebSocket listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Address of the admin port: /metrics, /healthz, /readyz (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: String,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The demo partner's code.
    #[arg(long, default_value = "demo")]
    partner: String,
    /// The demo partner's secret (random if not given).
    #[arg(long)]
    secret: Option<String>,
    /// The user the printed token is for.
    #[arg(long, default_value = "demo-user")]
    user: String,
    /// Also write the printed facts as JSON to this file.
    #[arg(long)]
    info_file: Option<PathBuf>,
}

#[derive(Args)]
struct RoleArgs {
    /// The TOML config file.
    #[arg(long, short, env = "FANOUT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The message-events topic.
    #[arg(long, default_value = "message-events")]
    topic: String,
    /// Send the proto3 JSON form (with `content-type: application/json`).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    event: EventArgs,
}

/// Which message an event is about.
#[derive(Args)]
struct MessageRef {
    #[arg(long)]
    partner: String,
    #[arg(long)]
    conversation: String,
    /// The message's per-conversation sequence number.
    #[arg(long)]
    seq: u64,
}

#[derive(Subcommand)]
enum EventArgs {
    /// A message was posted.
    Created {
        #[command(flatten)]
        message: MessageRef,
        /// The sender.
        #[arg(long)]
        from: String,
        /// A recipient (repeat for several).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[arg(long)]
        message_id: Option<String>,
    },
    /// A user read one message.
    Read {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long)]
        user: String,
    },
    /// A user read a conversation up to a seq.
    ConversationRead {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long)]
        user: String,
    },
    /// A message was deleted for its recipients.
    Deleted {
        #[command(flatten)]
        message: MessageRef,
        #[arg(long = "to", required = true)]
        to: Vec<String>,
    },
}

impl EventArgs {
    fn into_spec(self) -> (String, EventSpec) {
        match self {
            Self::Created {
                message,
                from,
                to,
                message_id,
            } => (
                message.partner,
                EventSpec::Created {
                    conversation: message.conversation,
                    seq: message.seq,
                    from,
                    to,
                    message_id,
                },
            ),
            Self::Read { message, user } => (
                message.partner,
                EventSpec::Read {
                    conversation: message.conversation,
                    seq: message.seq,
                    user,
                },
            ),
            Self::ConversationRead { message, user } => (
                message.partner,
                EventSpec::ConversationRead {
                    conversation: message.conversation,
                    seq: message.seq,
                    user,
                },
            ),
            Self::Deleted { message, to } => (
                message.partner,
                EventSpec::Deleted {
                    conversation: message.conversation,
                    seq: message.seq,
                    to,
                },
            ),
        }
    }
}

#[derive(Args)]
struct TokenArgs {
    /// The partner secret to sign with.
    #[arg(long, env = "FANOUT_TOKEN_SECRET")]
    secret: String,
    /// The user (`uniqueId` claim).
    #[arg(long)]
    user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
    /// Key id to put in the header (for partners with several secrets).
    #[arg(long)]
    kid: Option<String>,
    /// Add a `partner` claim.
    #[arg(long)]
    partner: Option<String>,
}

/// sysexits' EX_USAGE, as linkerd uses it: the configuration is wrong, and nothing
/// was bound or connected.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report(
                cli.log_format,
                &format!("cannot start the async runtime: {error}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let format = cli.log_format;
    let code = match runtime.block_on(run(cli.command, format)) {
        Ok(code) => code,
        Err(error) => {
            report(format, &format!("{error:#}"));
            ExitCode::FAILURE
        }
    };
    // Stages that outlived the shutdown grace must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // `level`, `message` and the event's fields at the top level of each object.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A fatal error: a plain line for a person at a terminal, a log event for a collector.
fn report(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("fanout: {message}"),
        LogFormat::Json => tracing::error!("{message}"),
    }
}

fn load_config(file: Option<&std::path::Path>, format: LogFormat) -> Result<Config, ExitCode> {
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

/// Runs one role: validate the whole config before binding anything, bind, run until
/// a signal, drain.
async fn run_role(
    role: Role,
    config_file: Option<&std::path::Path>,
    format: LogFormat,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let config = match load_config(config_file, format) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let edge_listener = match role {
        Role::Edge => Some(stages::bind_client_listener(&config.listen.edge).await?),
        Role::Ingest | Role::Router => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(&config.listen.admin)
        .await
        .with_context(|| format!("binding {}", config.listen.admin))?;
    stages::cancel_on_signal(shutdown.clone());
    let started = stages::start_roles(
        &config,
        &[role],
        edge_listener,
        admin_listener,
        shutdown.clone(),
    )?;
    let grace = Duration::from_millis(config.shutdown.grace_ms);
    stages::supervise_with_grace(started.stages, shutdown, grace).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run(command: Command, format: LogFormat) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    match command {
        Command::Dev(args) => {
            stages::cancel_on_signal(shutdown.clone());
            let options = DevOptions {
                listen: args.listen,
                admin_listen: args.admin_listen,
                partitions: args.partitions,
                partner: args.partner,
                secret: args.secret,
                user: args.user,
                info_file: args.info_file,
            };
            fanout_app::dev::run(options, shutdown, |info| match format {
                LogFormat::Text => println!("{}", banner(info)),
                // One object, so that every line of the output parses.
                LogFormat::Json => match serde_json::to_string(info) {
                    Ok(json) => println!("{json}"),
                    Err(error) => tracing::error!(%error, "cannot print the dev info"),
                },
            })
            .await?;
        }
        Command::Ingest(args) => {
            return run_role(Role::Ingest, args.config.as_deref(), format, shutdown).await;
        }
        Command::Router(args) => {
            return run_role(Role::Router, args.config.as_deref(), format, shutdown).await;
        }
        Command::Edge(args) => {
            return run_role(Role::Edge, args.config.as_deref(), format, shutdown).await;
        }
        Command::CheckConfig { file } => {
            if let Err(code) = load_config(Some(&file), format) {
                return Ok(code);
            }
            println!("{}: ok", file.display());
        }
        Command::DefaultConfig => print!("{}", fanout_app::config::DEFAULT_CONFIG_TOML),
        Command::Produce(args) => {
            let (partner, spec) = args.event.into_spec();
            let event = produce(
                &KafkaSettings::new(args.brokers),
                &args.topic,
                &partner,
                &spec,
                args.json,
            )
            .await?;
            println!("produced event {} to {}", event.event_id, args.topic);
        }
        Command::Token(args) => {
            let token = mint_token(
                &args.secret,
                &args.user,
                Duration::from_secs(args.ttl_seconds),
                args.kid.as_deref(),
                args.partner.as_deref(),
            )?;
            println!("{token}");
        }
        Command::Bench(bench) => bench.execute().await?,
    }
    Ok(ExitCode::SUCCESS)
}
