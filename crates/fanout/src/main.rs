//! The `fanout` binary: parse the command line, start logging, build the runtime and
//! dispatch to the command. Every command but `bench` lives, arguments and all, in
//! fanout-app; the benchmarks in fanout-bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fanout_app::dev::DevOptions;
use fanout_app::logging::{self, LogFormat};
use fanout_app::role::{CheckConfigOptions, RoleOptions};
use fanout_app::stages::Role;
use fanout_app::tools::{ProduceOptions, TokenOptions};
use fanout_bench::ws::Scenario;

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

#[derive(Subcommand)]
enum Command {
    /// Everything in one process with an embedded Kafka: prints a demo token and URL.
    Dev(DevOptions),
    /// Run the ingest stage.
    Ingest(RoleOptions),
    /// Run the router stage.
    Router(RoleOptions),
    /// Run an edge node.
    Edge(RoleOptions),
    /// Validate a config file (and FANOUT_* overrides) and exit: 0 if it is good, 64
    /// with the reason (naming the key) if not.
    CheckConfig(CheckConfigOptions),
    /// Print the default config file: every key, its default and what it does.
    DefaultConfig,
    /// Produce one message event to Kafka.
    Produce(ProduceOptions),
    /// Mint a JWT for a user, signed with a partner secret.
    Token(TokenOptions),
    /// Measure a stage under load; prints the result as JSON.
    #[command(subcommand)]
    Bench(BenchArgs),
}

#[derive(Subcommand)]
enum BenchArgs {
    /// One router's throughput through a broker: a backlog of user events is produced,
    /// then a router is timed from its first processed event to its last.
    Router {
        /// A running broker (default: the embedded one).
        #[arg(long)]
        brokers: Option<String>,
        /// User events in the backlog.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        /// Distinct users.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Partitions of the fresh topics the run creates.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// N connections subscribed and held; the edge's RSS per connection.
    Idle(WsArgs),
    /// One message to every connected user; produce → every socket latency.
    GroupMessage(WsArgs),
    /// A steady rate of changes (`--rate`) spread over the connected users.
    Steady(WsArgs),
    /// Count records straight to unread-counts as fast as they go; pushes per second.
    PushRate(WsArgs),
    /// N clients connecting at once; authenticated handshakes per second.
    ConnectStorm(WsArgs),
    /// Several edge processes (`--edges`, default 4), N connections over them.
    ScaleOut(WsArgs),
    /// One process of bench clients (started by the scenarios).
    #[command(hide = true)]
    Worker {
        /// The worker's spec, JSON.
        #[arg(long)]
        spec: String,
    },
}

/// Options of the WebSocket scenarios. Without `--edge-url` the bench starts what it
/// needs itself: an embedded Kafka, edge processes, and ingest and router processes.
#[derive(Args)]
struct WsArgs {
    /// Connections (default: the scenario's).
    #[arg(long)]
    connections: Option<u64>,
    /// Client worker processes (default: one per 15000 connections; at most 18000 each).
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long, value_enum, default_value_t = fanout_bench::worker::Protocol::Cable)]
    protocol: fanout_bench::worker::Protocol,
    /// How long the load runs (idle, scale-out: how long connections are held).
    #[arg(long)]
    duration_seconds: Option<f64>,
    /// steady: changes per second (default 20000). push-rate: count records per
    /// second (default 200000; 0: as fast as the producer goes).
    #[arg(long)]
    rate: Option<u64>,
    /// group-message: messages sent, one after the other, each to every user.
    #[arg(long, default_value_t = 5)]
    messages: u64,
    /// Edge processes to start (scale-out: 4, others: 1).
    #[arg(long)]
    edges: Option<usize>,
    /// Partitions of the topics the bench creates.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Connections being set up at once per worker (connect-storm: all at once).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Where `<scenario>.json`, `<scenario>.svg` and the run's logs go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// A running edge (`ws://host:port`; repeat for several) instead of starting one.
    #[arg(long = "edge-url")]
    edge_urls: Vec<String>,
    /// The pid of each running edge, in `--edge-url` order, to read its RSS.
    #[arg(long = "edge-pid")]
    edge_pids: Vec<u32>,
    /// The running deployment's Kafka (needed by group-message, steady, push-rate).
    #[arg(long)]
    brokers: Option<String>,
    /// The running deployment's partner code.
    #[arg(long)]
    partner: Option<String>,
    /// That partner's signing secret.
    #[arg(long)]
    secret: Option<String>,
    /// The running deployment's topic prefix, if any.
    #[arg(long)]
    topic_prefix: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl WsArgs {
    fn into_options(self, scenario: Scenario) -> fanout_bench::ws::WsBenchOptions {
        let external = (!self.edge_urls.is_empty()).then_some(fanout_bench::ws::ExternalTarget {
            edge_urls: self.edge_urls,
            edge_pids: self.edge_pids,
            brokers: self.brokers,
            partner: self.partner,
            secret: self.secret,
            topic_prefix: self.topic_prefix,
        });
        fanout_bench::ws::WsBenchOptions {
            scenario,
            connections: self.connections,
            workers: self.workers,
            protocol: self.protocol,
            duration: self
                .duration_seconds
                .map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
            rate: self.rate,
            messages: self.messages,
            edges: self.edges,
            partitions: self.partitions,
            connect_concurrency: self.connect_concurrency,
            out_dir: self.out_dir,
            external,
            seed: self.seed,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            logging::report(
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
            logging::report(format, &format!("{error:#}"));
            ExitCode::FAILURE
        }
    };
    // Stages that outlived the shutdown grace must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Runs a WebSocket scenario: a human summary on stderr, the result as JSON on stdout.
async fn run_ws_bench(scenario: Scenario, args: WsArgs) -> anyhow::Result<()> {
    let result = fanout_bench::ws::run(&args.into_options(scenario)).await?;
    eprintln!("{}", fanout_bench::ws::summary(&result));
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

async fn run(command: Command, format: LogFormat) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(options) => options.execute(format).await?,
        Command::Ingest(options) => return options.execute(Role::Ingest, format).await,
        Command::Router(options) => return options.execute(Role::Router, format).await,
        Command::Edge(options) => return options.execute(Role::Edge, format).await,
        Command::CheckConfig(options) => return Ok(options.execute(format)),
        Command::DefaultConfig => print!("{}", fanout_app::config::DEFAULT_CONFIG_TOML),
        Command::Produce(options) => options.execute().await?,
        Command::Token(options) => options.execute()?,
        Command::Bench(BenchArgs::Router {
            brokers,
            events,
            users,
            partitions,
            seed,
        }) => {
            let options = fanout_bench::RouterBenchOptions {
                brokers,
                events,
                users,
                partitions,
                seed,
            };
            let result = fanout_bench::router(&options).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Bench(BenchArgs::Worker { spec }) => {
            let spec = serde_json::from_str(&spec).context("parsing the worker spec")?;
            fanout_bench::worker::run(spec).await?;
        }
        Command::Bench(BenchArgs::Idle(args)) => run_ws_bench(Scenario::Idle, args).await?,
        Command::Bench(BenchArgs::GroupMessage(args)) => {
            run_ws_bench(Scenario::GroupMessage, args).await?;
        }
        Command::Bench(BenchArgs::Steady(args)) => run_ws_bench(Scenario::Steady, args).await?,
        Command::Bench(BenchArgs::PushRate(args)) => run_ws_bench(Scenario::PushRate, args).await?,
        Command::Bench(BenchArgs::ConnectStorm(args)) => {
            run_ws_bench(Scenario::ConnectStorm, args).await?;
        }
        Command::Bench(BenchArgs::ScaleOut(args)) => run_ws_bench(Scenario::ScaleOut, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}
