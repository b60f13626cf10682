use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The edge's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// unread-counts partitions this edge reads; empty means all of them.
    pub partitions: Vec<i32>,
    /// ActionCable ping period (Rails uses 3 seconds; the client reconnects after ~6
    /// seconds without one).
    pub ping_interval_ms: u64,
    /// Longest a client may take to complete the WebSocket handshake.
    pub handshake_timeout_ms: u64,
    /// Longest a `/realtime` client may take, from the upgrade, to authenticate with a
    /// successful `authrequest`; then the edge closes with 4408.
    pub auth_timeout_ms: u64,
    /// On shutdown, sessions are told to leave (ActionCable `server_restart`,
    /// `/realtime` close 1012) evenly spread over this window, so their clients do not
    /// reconnect elsewhere in one wave. Keep it below the shutdown grace period.
    pub drain_window_ms: u64,
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub jwt_leeway_seconds: u64,
    /// Partners by code, each with the secrets its tokens may be signed with.
    pub partners: BTreeMap<String, PartnerConfig>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            partitions: Vec::new(),
            ping_interval_ms: 3000,
            handshake_timeout_ms: 5000,
            auth_timeout_ms: 10_000,
            drain_window_ms: 10_000,
            max_frame_bytes: 64 * 1024,
            jwt_leeway_seconds: 5,
            partners: BTreeMap::new(),
        }
    }
}

/// One partner's live signing secrets (several at once during a rotation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    pub secrets: Vec<SecretConfig>,
}

/// An HS256 secret, optionally named by the `kid` that tokens put in their header.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub secret: String,
}

impl fmt::Debug for SecretConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SecretConfig")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}
