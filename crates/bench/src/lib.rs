//! `fanout bench`: load against fanout's stages, measured from outside.
//!
//! - [`BenchCommand`]: the command line, parsed into each scenario's options.
//! - [`router()`]: one router's throughput through a broker.
//! - [`ws`]: the WebSocket scenarios (`idle`, `group-message`, `steady`, `push-rate`,
//!   `connect-storm`, `scale-out`, `stream`, `reconnect-storm`, named in [`scenario`]
//!   with their options): client connections spread over worker processes ([`worker`],
//!   driven by `pool`), against edges the bench starts itself ([`target`]) or a running
//!   deployment; the producing scenarios' load is in `load`, and reconnect-storm's (the
//!   edge restarted under its clients, and how they recovered) in `storm`; the workers'
//!   reports and the processes' RSS and CPU are merged in `measure` into a [`result`];
//!   latency goes in an HDR histogram and the result is written as JSON and SVG
//!   ([`report`]). What they ask of the machine (this binary, /proc, the children's
//!   admin HTTP) is in [`system`]; a process's write syscalls (perf, /proc) in
//!   [`syscalls`]. CPU is stated per event of the scenario for each process.
//! - [`ceiling`]: the same clients and pattern of writes as push-rate or group-message
//!   against a minimal server of the bench's own in a child process: the figure the
//!   edge's is stated against, measured on its own or in the same run as push-rate
//!   (group-message with `--ceiling`).
//! - [`scaling`]: group-message and steady over a range of sizes, one figure per size.
//! - [`publish`]: one api process over HTTP (publish with batches of 1 and 100,
//!   receipts and unread_count queries, a read receipt from the HTTP request to the
//!   sender's socket), against a deployment [`target`] starts with an api, checked
//!   against message-events' watermarks.
//! - [`soak`]: one edge held for a long time under steady change and reconnections: its
//!   RSS and open files against a baseline, every client against a recount.
//! - [`overload`]: an edge at its `max_connections` under a storm of clients: how fast
//!   the refused are answered, and whether the connected keep receiving.
//! - [`table`]: the count table of users without a connection: 1M counts in
//!   unread-counts, a new edge's RSS growth per user and time to read them back.
//!
//! Modules depend one way, each only on those listed before it: `system`, `syscalls`;
//! `report`, `worker`; `scenario`, `result`, `pool`; `target`; `load`; `measure`;
//! `ceiling`; `storm`; `ws`; `scaling`; `publish`, `table`, `soak`, `overload`; `command`. `router` stands
//! alone, but for `system`.

pub mod ceiling;
mod command;
mod load;
mod measure;
pub mod overload;
mod pool;
pub mod publish;
pub mod report;
pub mod result;
pub mod router;
pub mod scaling;
pub mod scenario;
pub mod soak;
mod storm;
pub mod syscalls;
pub mod system;
pub mod table;
pub mod target;
pub mod worker;
pub mod ws;

pub use command::BenchCommand;
pub use router::{RouterBenchOptions, RouterBenchResult, router};
pub use system::create_topics;
