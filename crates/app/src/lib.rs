//! The application behind the `fanout` binary, as a library so that tests run exactly
//! what `fanout dev` and the roles run: the config that composes every stage's section,
//! the stages as services under one supervisor, the admin port, the roles as processes,
//! dev mode, and the produce and token tools, each command with its arguments (clap)
//! beside its code. The benchmark tool is `fanout-bench`.

pub mod admin;
pub mod config;
pub mod dev;
pub mod logging;
pub mod role;
pub mod stages;
pub mod tools;
