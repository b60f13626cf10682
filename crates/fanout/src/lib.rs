//! The pieces behind the `fanout` binary, as a library so that tests run exactly what
//! `fanout dev` runs: configuration, the wiring of each stage, dev mode and the tools.

pub mod admin;
pub mod bench;
pub mod config;
pub mod dev;
pub mod stages;
pub mod tools;
