//! How fanout writes to its operator: logs on stderr as text or as JSON lines, and fatal
//! errors in the same form.

/// Log format: human-readable text, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts logging to stderr in `format`, at `RUST_LOG`'s levels (default `info`).
pub fn init(format: LogFormat) {
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
pub fn report(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("fanout: {message}"),
        LogFormat::Json => tracing::error!("{message}"),
    }
}
