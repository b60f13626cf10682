use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use fanout_kafka::InvalidSetting;
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
    /// Largest client frame accepted, in bytes; a larger one closes the connection
    /// with 1009.
    pub max_frame_bytes: usize,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub jwt_leeway_seconds: u64,
    /// Longest token accepted, in bytes (`token_too_large` beyond it).
    pub max_token_bytes: usize,
    /// Furthest `exp` may lie in the future, in seconds (`lifetime_too_long` beyond it).
    /// It also bounds how long a token id is remembered for replay protection.
    pub max_token_lifetime_seconds: u64,
    /// Token ids (`jti`) remembered, each until its token expires, so that a token is
    /// accepted once per node. When this many unexpired ids are held, new tokens are
    /// refused with `try_again_later` rather than accepted unchecked.
    pub jti_cache_capacity: usize,
    /// ActionCable subscriptions one connection may hold; one more is rejected
    /// (`reject_subscription`).
    pub max_subscriptions_per_connection: usize,
    /// Stream events waiting to be written to one connection; a client that falls
    /// further behind has its stream subscription ended (`events_ended` on `/realtime`;
    /// on `/cable`, a RoomChannel message `fanout.stream_ended` then
    /// `reject_subscription`) and subscribes again. Counts are not queued: they coalesce.
    pub max_stream_queue: usize,
    /// Commands (ActionCable) or requests (`/realtime`) one connection may send per
    /// second, in bursts of up to as many; more close the connection (4429, and
    /// ActionCable's `invalid_request` disconnect first).
    pub max_commands_per_second: u32,
    /// Client connections this node holds at once, from accept to close; one more is
    /// answered with HTTP 503.
    pub max_connections: usize,
    /// A TOML file of partner secrets (`[<partner>] secrets = [{ kid, secret }]`), read
    /// at start and re-read every `secrets_reload_interval_ms`; a partner's secrets are
    /// those listed here plus those in `partners`. A mounted Kubernetes Secret fits.
    pub secrets_file: Option<PathBuf>,
    /// How often `secrets_file` is checked for changes.
    pub secrets_reload_interval_ms: u64,
    /// How long an extended-protocol session can be restored by its `sid` after its
    /// connection closed.
    pub session_restore_ttl_ms: u64,
    /// The history window every edge keeps.
    pub history: HistoryConfig,
    /// Partners by code: the secrets their tokens may be signed with, and their limits.
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
            max_token_bytes: 4096,
            max_token_lifetime_seconds: 86_400,
            jti_cache_capacity: 1_000_000,
            max_subscriptions_per_connection: 10,
            max_stream_queue: 1024,
            max_commands_per_second: 50,
            max_connections: 100_000,
            secrets_file: None,
            secrets_reload_interval_ms: 5000,
            session_restore_ttl_ms: 300_000,
            history: HistoryConfig::default(),
            partners: BTreeMap::new(),
        }
    }
}

/// The history window (`[edge.history]`): each user's recent stream events, from which
/// a reconnecting client gets what it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per user.
    pub max_events_per_user: usize,
    /// Oldest event kept, by its write time.
    pub max_age_ms: u64,
    /// All users' events together (bodies plus a fixed overhead each).
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    /// AnyCable's defaults for its streams' history (100 messages, 5 minutes): long
    /// enough for a tunnel or a deploy, short enough that a client back from sleep
    /// fetches its state afresh.
    fn default() -> Self {
        Self {
            max_events_per_user: 100,
            max_age_ms: 300_000,
            max_bytes: 256 << 20,
        }
    }
}

impl HistoryConfig {
    pub fn limits(&self) -> crate::streams::HistoryLimits {
        crate::streams::HistoryLimits {
            max_events_per_user: self.max_events_per_user,
            max_age_ms: self.max_age_ms,
            max_bytes: self.max_bytes,
        }
    }
}

/// One partner: its live signing secrets (several at once during a rotation) and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartnerConfig {
    pub secrets: Vec<SecretConfig>,
    /// Connections of this partner one node holds at once; `None`: only the node's
    /// `max_connections` applies.
    pub max_connections: Option<usize>,
    /// Origins (`https://app.example.com`) whose pages may connect for this partner;
    /// empty allows any. A request without `Origin` (not a browser) is allowed.
    pub allowed_origins: Vec<String>,
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

/// Partner secrets as a secrets file holds them: `[<partner>] secrets = [...]`.
pub type SecretsFile = BTreeMap<String, PartnerSecrets>;

/// One partner's entry in the secrets file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSecrets {
    pub secrets: Vec<SecretConfig>,
}

/// Secrets shorter than this are refused: HS256 wants at least its 256 bits, and a
/// short secret is guessable offline from one token.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a secrets file was refused. Names the file and the partner, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", .path.display())]
pub struct SecretsFileError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// Reads and checks a secrets file.
pub fn read_secrets_file(path: &std::path::Path) -> Result<SecretsFile, SecretsFileError> {
    let error = |reason: String| SecretsFileError {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|io| error(io.to_string()))?;
    parse_secrets_file(&text).map_err(error)
}

/// Parses a secrets file's text; the error names the partner, never a secret.
pub fn parse_secrets_file(text: &str) -> Result<SecretsFile, String> {
    let file: SecretsFile = toml::from_str(text).map_err(|error| error.message().to_owned())?;
    for (code, partner) in &file {
        check_secrets(code, &partner.secrets)?;
    }
    Ok(file)
}

/// Checks one partner's secrets; the error names the partner.
pub fn check_secrets(code: &str, secrets: &[SecretConfig]) -> Result<(), String> {
    if secrets
        .iter()
        .any(|secret| secret.secret.len() < MIN_SECRET_BYTES)
    {
        return Err(format!(
            "each secret of {code} needs at least {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok(())
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        reason: reason.into(),
    }
}

impl EdgeConfig {
    /// Every partner's secrets: those in `partners` plus those in `file`.
    pub fn merged_secrets(&self, file: &SecretsFile) -> BTreeMap<String, Vec<SecretConfig>> {
        let mut merged: BTreeMap<String, Vec<SecretConfig>> = self
            .partners
            .iter()
            .map(|(code, partner)| (code.clone(), partner.secrets.clone()))
            .collect();
        for (code, partner) in file {
            merged
                .entry(code.clone())
                .or_default()
                .extend(partner.secrets.iter().cloned());
        }
        merged
    }

    /// Checks what serde cannot, naming the offending key within `[edge]` and why.
    /// Reads `secrets_file` if set.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let mut partitions = BTreeSet::new();
        for partition in &self.partitions {
            if *partition < 0 || !partitions.insert(*partition) {
                return Err(invalid(
                    "partitions",
                    format!("{partition} is negative or listed twice"),
                ));
            }
        }
        let positive = [
            ("ping_interval_ms", self.ping_interval_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_token_bytes", self.max_token_bytes as u64),
            (
                "max_token_lifetime_seconds",
                self.max_token_lifetime_seconds,
            ),
            ("jti_cache_capacity", self.jti_cache_capacity as u64),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection as u64,
            ),
            ("max_stream_queue", self.max_stream_queue as u64),
            (
                "max_commands_per_second",
                u64::from(self.max_commands_per_second),
            ),
            ("max_connections", self.max_connections as u64),
            (
                "secrets_reload_interval_ms",
                self.secrets_reload_interval_ms,
            ),
            ("session_restore_ttl_ms", self.session_restore_ttl_ms),
            (
                "history.max_events_per_user",
                self.history.max_events_per_user as u64,
            ),
            ("history.max_age_ms", self.history.max_age_ms),
            ("history.max_bytes", self.history.max_bytes as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(*key, "must be positive"));
        }
        if self.history.max_events_per_user >= self.max_stream_queue {
            return Err(invalid(
                "history.max_events_per_user",
                format!(
                    "must be below max_stream_queue ({}): a resumed client gets its missed events queued at once",
                    self.max_stream_queue
                ),
            ));
        }
        for (code, partner) in &self.partners {
            if !fanout_schema::is_valid_partner(code) {
                return Err(invalid(
                    format!("partners.{code}"),
                    "not a valid partner code (1-64 of [A-Za-z0-9._-])",
                ));
            }
            check_secrets(code, &partner.secrets)
                .map_err(|reason| invalid(format!("partners.{code}.secrets"), reason))?;
            if partner.max_connections == Some(0) {
                return Err(invalid(
                    format!("partners.{code}.max_connections"),
                    "must be positive",
                ));
            }
            for origin in &partner.allowed_origins {
                if origin.is_empty() || origin.ends_with('/') || !origin.contains("://") {
                    return Err(invalid(
                        format!("partners.{code}.allowed_origins"),
                        format!("{origin:?} is not an origin like \"https://app.example.com\""),
                    ));
                }
            }
        }
        let file = match &self.secrets_file {
            Some(path) => read_secrets_file(path)
                .map_err(|error| invalid("secrets_file", error.to_string()))?,
            None => SecretsFile::new(),
        };
        for (code, secrets) in self.merged_secrets(&file) {
            if secrets.is_empty() {
                return Err(invalid(
                    format!("partners.{code}.secrets"),
                    "must list at least one secret (here or in edge.secrets_file)",
                ));
            }
        }
        Ok(())
    }
}
