//! Hot reload of `edge.secrets_file`: a changed file replaces every partner's secrets
//! for new tokens; a file that does not parse leaves the previous secrets in use. And
//! [`watch_file`], the reload loop the api's keys file shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::parse_secrets_file;
use crate::node::Node;

/// Checks the file every `edge.secrets_reload_interval_ms` until `shutdown`: a changed
/// file replaces every partner's secrets; one that does not parse leaves them as they
/// are.
pub async fn watch(path: PathBuf, node: Arc<Node>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(node.config.secrets_reload_interval_ms);
    let shown = path.display().to_string();
    watch_file(path, interval, shutdown, |read| {
        let parsed = read.and_then(|bytes| {
            std::str::from_utf8(bytes)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(parse_secrets_file)
                .map_err(|reason| format!("{shown}: {reason}"))
        });
        match parsed {
            Ok(file) => {
                let secrets = node.config.merged_secrets(&file);
                node.auth.replace_secrets(&secrets);
                node.metrics.secrets_reloaded(Ok(secrets.len()));
            }
            Err(reason) => node.metrics.secrets_reloaded(Err(&reason)),
        }
    })
    .await;
}

/// Reads `path` every `interval` until `shutdown` and calls `changed` with its content
/// each time it differs from the last read, or with why it could not be read (once, until
/// it can again). The file is compared by content, not modification time: a Kubernetes
/// Secret volume swaps a symlink, which keeps the old time on some setups. The read at
/// the start is the baseline, not a change. Errors name the file.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
    mut changed: impl FnMut(Result<&[u8], String>),
) {
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
                    changed(Err(format!("{}: {error}", path.display())));
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(current.as_slice()) {
            continue;
        }
        changed(Ok(&current));
        last = Some(current);
    }
}
