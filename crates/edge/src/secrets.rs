//! Hot reload of `edge.secrets_file`: a changed file replaces every partner's secrets
//! for new tokens; a file that does not parse leaves the previous secrets in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::parse_secrets_file;
use crate::node::Node;

/// Checks the file every `edge.secrets_reload_interval_ms` until `shutdown`. The file is
/// compared by content, not modification time: a Kubernetes Secret volume swaps a
/// symlink, which keeps the old time on some setups.
pub async fn watch(path: PathBuf, node: Arc<Node>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(node.config.secrets_reload_interval_ms);
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                // Mid-swap, or gone: keep what works, say so once per change.
                if last.is_some() {
                    let reason = format!("{}: {error}", path.display());
                    node.metrics.secrets_reloaded(Err(&reason));
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(current.as_slice()) {
            continue;
        }
        let parsed = std::str::from_utf8(&current)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(parse_secrets_file);
        match parsed {
            Ok(file) => {
                let secrets = node.config.merged_secrets(&file);
                node.auth.replace_secrets(&secrets);
                node.metrics.secrets_reloaded(Ok(secrets.len()));
            }
            Err(reason) => {
                let reason = format!("{}: {reason}", path.display());
                node.metrics.secrets_reloaded(Err(&reason));
            }
        }
        last = Some(current);
    }
}
