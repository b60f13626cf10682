//! The `fanout` binary: parse the command line, start logging, build the runtime and
//! dispatch to the command. Every command but `bench` lives, arguments and all, in
//! fanout-app; the benchmarks in fanout-bench.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fanout_app::dev::DevOptions;
use fanout_app::logging::{self, LogFormat};
use fanout_app::role::{CheckConfigOptions, RoleOptions};
use fanout_app::stages::Role;
use fanout_app::tools::{ProduceOptions, ShardOptions, TokenOptions};

/// Every role's allocator: under glibc's malloc an edge's RSS kept climbing for 20
/// minutes of steady load while its live heap stayed flat (docs/benchmarks.md, Soak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the HTTP api: publish events, query unread counts and read receipts.
    Api(RoleOptions),
    /// Validate a config file (and FANOUT_* overrides) and exit: 0 if it is good, 64
    /// with the reason (naming the key) if not.
    CheckConfig(CheckConfigOptions),
    /// Print the default config file: every key, its default and what it does.
    DefaultConfig,
    /// Produce one message event to Kafka.
    Produce(ProduceOptions),
    /// Mint a JWT for a user, signed with a partner secret.
    Token(TokenOptions),
    /// Print the partition of a user's records and, with `[api] shards`, the URL of the
    /// edge shard that serves the user.
    Shard(ShardOptions),
    /// Measure a stage under load; prints the result as JSON.
    #[command(subcommand)]
    Bench(fanout_bench::BenchCommand),
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

async fn run(command: Command, format: LogFormat) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(options) => options.execute(format).await?,
        Command::Ingest(options) => return options.execute(Role::Ingest, format).await,
        Command::Router(options) => return options.execute(Role::Router, format).await,
        Command::Edge(options) => return options.execute(Role::Edge, format).await,
        Command::Api(options) => return options.execute(Role::Api, format).await,
        Command::CheckConfig(options) => return Ok(options.execute(format)),
        Command::DefaultConfig => print!("{}", fanout_app::config::DEFAULT_CONFIG_TOML),
        Command::Produce(options) => options.execute().await?,
        Command::Token(options) => options.execute()?,
        Command::Shard(options) => options.execute()?,
        Command::Bench(bench) => bench.execute().await?,
    }
    Ok(ExitCode::SUCCESS)
}
