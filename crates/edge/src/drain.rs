//! Spreading the goodbye over a window: on shutdown every session is told to leave
//! (ActionCable's `server_restart` disconnect, `/realtime`'s 1012 close), but not all at
//! once, so that N clients do not reconnect to the remaining edges in one wave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The open sessions' own shutdown tokens.
#[derive(Default)]
pub struct Drain {
    state: Mutex<DrainState>,
}

#[derive(Default)]
struct DrainState {
    next_id: u64,
    draining: bool,
    sessions: HashMap<u64, CancellationToken>,
}

/// A session's registration: its token, and its removal when dropped.
pub struct DrainGuard {
    drain: Arc<Drain>,
    id: u64,
    token: CancellationToken,
}

impl DrainGuard {
    /// Cancelled when this session's turn to leave has come.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.drain.lock().sessions.remove(&self.id);
    }
}

impl Drain {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DrainState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session. One registered after the drain began leaves at once.
    pub fn register(self: &Arc<Self>) -> DrainGuard {
        let token = CancellationToken::new();
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        if state.draining {
            token.cancel();
        } else {
            state.sessions.insert(id, token.clone());
        }
        DrainGuard {
            drain: self.clone(),
            id,
            token,
        }
    }

    /// Tells every session registered now to leave, evenly spaced over `window`: the
    /// first at once, the last just before the window ends. Returns when all are told.
    pub async fn run(&self, window: Duration) {
        let tokens: Vec<CancellationToken> = {
            let mut state = self.lock();
            state.draining = true;
            let mut sessions: Vec<(u64, CancellationToken)> = state.sessions.drain().collect();
            sessions.sort_unstable_by_key(|(id, _)| *id);
            sessions.into_iter().map(|(_, token)| token).collect()
        };
        if tokens.is_empty() {
            return;
        }
        tracing::info!(
            sessions = tokens.len(),
            window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            "draining sessions"
        );
        let started = Instant::now();
        let count = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        for (index, token) in tokens.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            tokio::time::sleep_until(started + window / count * index).await;
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_leave_evenly_over_the_window() {
        let drain = Drain::new();
        let guards: Vec<DrainGuard> = (0..4).map(|_| drain.register()).collect();
        let started = Instant::now();
        let run = tokio::spawn({
            let drain = drain.clone();
            async move { drain.run(Duration::from_secs(4)).await }
        });
        let mut left_at = Vec::new();
        for guard in &guards {
            guard.token().cancelled().await;
            left_at.push(started.elapsed().as_secs());
        }
        run.await
            .unwrap_or_else(|error| panic!("drain task: {error}"));
        assert_eq!(left_at, vec![0, 1, 2, 3]);
        // A session that arrives during the drain leaves at once.
        assert!(drain.register().token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_session_is_forgotten() {
        let drain = Drain::new();
        let kept = drain.register();
        drop(drain.register());
        assert_eq!(drain.lock().sessions.len(), 1);
        drain.run(Duration::from_secs(10)).await;
        assert!(kept.token().is_cancelled());
    }
}
