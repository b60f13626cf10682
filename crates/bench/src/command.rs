//! `fanout bench`'s command line: one subcommand per scenario, each parsed into the
//! options of the code that runs it, and what each prints.

use anyhow::Context as _;

use crate::ceiling::CeilingOptions;
use crate::overload::OverloadOptions;
use crate::publish::PublishBenchOptions;
use crate::router::{RouterBenchOptions, router};
use crate::scaling::ScalingOptions;
use crate::scenario::{Scenario, WsBenchOptions};
use crate::soak::SoakOptions;
use crate::table::TableBenchOptions;

/// The subcommands of `fanout bench`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// One router's throughput through a broker: a backlog of user events is produced,
    /// then a router is timed from its first processed event to its last.
    Router(RouterBenchOptions),
    /// N connections subscribed and held; the edge's RSS per connection.
    Idle(WsBenchOptions),
    /// One message to every connected user; produce → every socket latency.
    GroupMessage(WsBenchOptions),
    /// A steady rate of changes (`--rate`) spread over the connected users.
    Steady(WsBenchOptions),
    /// Count records straight to unread-counts as fast as they go; pushes per second.
    PushRate(WsBenchOptions),
    /// N clients connecting at once; authenticated handshakes per second.
    ConnectStorm(WsBenchOptions),
    /// Several edge processes (`--edges`, default one per 18000 connections), N
    /// connections over them, then one group message to every connected user.
    ScaleOut(WsBenchOptions),
    /// One message with 1 KiB of data to every connected user, each subscribed to its
    /// event stream; produce → every socket latency of `message.created`.
    Stream(WsBenchOptions),
    /// 10k stream subscribers on `/realtime`, events at 5000/s with 1 KiB of data, the
    /// edge killed and started again: time from its ready until every client has every
    /// event it missed (no gap, no repeat), and the history window's memory per event.
    ReconnectStorm(WsBenchOptions),
    /// One api process over HTTP: events/s and time to acknowledgement publishing with
    /// batches of 1 and of 100 events, receipts and unread_count queries per second, and
    /// a read receipt's time from the HTTP request to the sender's socket; checked
    /// against the topic's watermarks.
    Publish(PublishBenchOptions),
    /// The count table of users without a connection: one count per user (`--users`,
    /// default 1M) in unread-counts, then a new edge reading them back: its RSS growth
    /// per user over an edge on empty topics, and its time from start to ready.
    Table(TableBenchOptions),
    /// What a minimal server (no Kafka, no auth, frames encoded once, in a process of
    /// its own) does with the same clients and pattern of writes as push-rate or
    /// group-message: pushes/s, server and clients CPU per push, frames per write
    /// syscall; the ceiling the scenarios' figures are stated against.
    Ceiling(CeilingOptions),
    /// group-message and steady over a range of sizes (connections, changes/s): p50 and
    /// p99 latency, delivered of expected and CPU per user event of each process at
    /// each size; `scaling.json` and `scaling.svg`.
    Scaling(ScalingOptions),
    /// N connections on one edge for a long time (default 19000, 30 minutes), counts
    /// and stream events changing at a steady rate, 1 % of the clients reconnecting
    /// each minute: the edge's RSS and open files at the end against a baseline (after
    /// 5 minutes), and every client's final count and stream against a recount. Exits
    /// non-zero naming each invariant that did not hold.
    Soak(SoakOptions),
    /// An edge at its `max_connections` (default 2000) hit by a storm of clients
    /// connecting again and again: time to the refusal (HTTP 503) on /cable and
    /// /realtime, and the connected clients' push latency before and during the storm
    /// and final counts. Exits non-zero naming each invariant that did not hold.
    Overload(OverloadOptions),
    /// The ceiling's server (started by `ceiling`).
    #[command(hide = true)]
    CeilingServer {
        /// The server's spec, JSON.
        #[arg(long)]
        spec: String,
    },
    /// One process of bench clients (started by the scenarios).
    #[command(hide = true)]
    Worker {
        /// The worker's spec, JSON.
        #[arg(long)]
        spec: String,
    },
}

impl BenchCommand {
    /// Runs the command. A WebSocket scenario, `ceiling`, `scaling`, `publish` and `table`
    /// print a human summary on stderr and the result as JSON on stdout; `router` prints
    /// its result as JSON; `worker` is one process of clients and `ceiling-server` the
    /// ceiling's server, each talking to the run that started it.
    pub async fn execute(self) -> anyhow::Result<()> {
        let (scenario, options) = match self {
            Self::Router(options) => {
                let result = router(&options).await?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            Self::Publish(options) => {
                let result = crate::publish::run(&options).await?;
                eprintln!("{}", crate::publish::result::summary(&result));
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            Self::Table(options) => {
                let result = crate::table::run(&options).await?;
                eprintln!("{}", crate::table::result::summary(&result));
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            Self::Ceiling(options) => {
                let result = crate::ceiling::run(&options).await?;
                eprintln!("{}", result.summary());
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            Self::Scaling(options) => {
                let result = crate::scaling::run(&options).await?;
                eprintln!("{}", crate::scaling::summary(&result));
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            Self::Soak(options) => {
                let result = crate::soak::run(&options).await?;
                return report_checked("soak", &result.summary(), &result, &result.checks);
            }
            Self::Overload(options) => {
                let result = crate::overload::run(&options).await?;
                return report_checked("overload", &result.summary(), &result, &result.checks);
            }
            Self::CeilingServer { spec } => {
                let spec = serde_json::from_str(&spec).context("parsing the server spec")?;
                return crate::ceiling::server::run(spec).await;
            }
            Self::Worker { spec } => {
                let spec = serde_json::from_str(&spec).context("parsing the worker spec")?;
                return crate::worker::run(spec).await;
            }
            Self::Idle(options) => (Scenario::Idle, options),
            Self::GroupMessage(options) => (Scenario::GroupMessage, options),
            Self::Steady(options) => (Scenario::Steady, options),
            Self::PushRate(options) => (Scenario::PushRate, options),
            Self::ConnectStorm(options) => (Scenario::ConnectStorm, options),
            Self::ScaleOut(options) => (Scenario::ScaleOut, options),
            Self::Stream(options) => (Scenario::Stream, options),
            Self::ReconnectStorm(options) => (Scenario::ReconnectStorm, options),
        };
        let result = crate::ws::run(scenario, &options).await?;
        eprintln!("{}", crate::result::summary(&result));
        println!("{}", serde_json::to_string_pretty(&result)?);
        Ok(())
    }
}

/// Prints a checked scenario's summary (stderr) and result (stdout, JSON); an error
/// naming every invariant of `checks` that did not hold.
fn report_checked(
    scenario: &str,
    summary: &str,
    result: &impl serde::Serialize,
    checks: &[crate::soak::Check],
) -> anyhow::Result<()> {
    eprintln!("{summary}");
    println!("{}", serde_json::to_string_pretty(result)?);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|check| !check.met)
        .map(|check| check.invariant)
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{scenario}: invariants that did not hold: {}",
        failed.join("; ")
    );
    Ok(())
}
