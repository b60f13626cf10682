//! `[api]`: the api role's keys and limits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use fanout_kafka::{InvalidSetting, require_positive};
use serde::{Deserialize, Serialize};

use crate::shards::{ShardConfig, ShardMap};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Partners by code, and the API keys that act for them (several live at once
    /// during a rotation).
    pub partners: BTreeMap<String, ApiPartner>,
    /// A TOML file of more keys (`[<partner>] keys = ["..."]`), read at start and
    /// re-read every `keys_reload_interval_ms`; its keys add to those in `partners`.
    pub keys_file: Option<PathBuf>,
    /// How often `keys_file` is checked for changes.
    pub keys_reload_interval_ms: u64,
    /// Largest request body, in bytes (413 `body_too_large` past it).
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events` (413 `batch_too_large` past it).
    pub max_batch_events: usize,
    /// Requests per second one key may make, in bursts of up to as many (429
    /// `rate_limited` past it).
    pub requests_per_second: u32,
    /// How long a publish waits for Kafka's acknowledgement before the event is answered
    /// `unavailable` (503).
    pub publish_timeout_ms: u64,
    /// The `Retry-After` of a 503 or a 429, in seconds.
    pub retry_after_seconds: u64,
    /// Edge shards, when edges run with `edge.partitions`: each shard's URL and the
    /// partitions its edges read, together every partition exactly once. What
    /// `GET /v1/users/{user}/shard` answers from; empty when every edge reads all.
    pub shards: Vec<ShardConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            partners: BTreeMap::new(),
            keys_file: None,
            keys_reload_interval_ms: 5000,
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 500,
            requests_per_second: 1000,
            publish_timeout_ms: 5000,
            retry_after_seconds: 2,
            shards: Vec::new(),
        }
    }
}

/// One partner's API keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiPartner {
    pub keys: Vec<ApiKey>,
}

/// An API key: a bearer secret, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// Keys shorter than this are refused: a key is a password for a whole partner.
pub const MIN_KEY_BYTES: usize = 24;

/// API keys as a keys file holds them: `[<partner>] keys = [...]`.
pub type KeysFile = BTreeMap<String, ApiPartner>;

/// Parses a keys file's text; the error names the partner, never a key.
pub fn parse_keys_file(text: &str) -> Result<KeysFile, String> {
    let file: KeysFile = toml::from_str(text).map_err(|error| error.message().to_owned())?;
    for (code, partner) in &file {
        check_partner(code, partner)?;
    }
    Ok(file)
}

/// Reads and parses a keys file; the error names the file.
pub fn read_keys_file(path: &Path) -> Result<KeysFile, String> {
    let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
    parse_keys_file(&text)
}

fn check_partner(code: &str, partner: &ApiPartner) -> Result<(), String> {
    if !fanout_schema::is_valid_partner(code) {
        return Err(format!(
            "{code:?} is not a valid partner code (1-64 of [A-Za-z0-9._-])"
        ));
    }
    for ApiKey(key) in &partner.keys {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "each key of {code} needs at least {MIN_KEY_BYTES} bytes"
            ));
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(format!(
                "each key of {code} must be printable ASCII without spaces (it travels in a header)"
            ));
        }
    }
    Ok(())
}

impl ApiConfig {
    /// Every partner's keys: those in `partners` plus those in `file`; refused if one
    /// key is listed for two partners (it could act for only one of them, and which
    /// would be an accident). The error names the partners, never the key.
    pub fn merged_keys(&self, file: &KeysFile) -> Result<BTreeMap<String, Vec<ApiKey>>, String> {
        let mut merged: BTreeMap<String, Vec<ApiKey>> = self
            .partners
            .iter()
            .map(|(code, partner)| (code.clone(), partner.keys.clone()))
            .collect();
        for (code, partner) in file {
            merged
                .entry(code.clone())
                .or_default()
                .extend(partner.keys.iter().cloned());
        }
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (code, keys) in &merged {
            for ApiKey(key) in keys {
                if let Some(other) = owners.insert(key, code)
                    && other != code
                {
                    return Err(format!(
                        "a key of {other} is also listed for {code}: a key acts for one partner"
                    ));
                }
            }
        }
        Ok(merged)
    }

    /// Checks what serde cannot, naming the key within `[api]`. Reads `keys_file` if set.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        require_positive(&[
            ("keys_reload_interval_ms", self.keys_reload_interval_ms),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_batch_events", self.max_batch_events as u64),
            ("requests_per_second", u64::from(self.requests_per_second)),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("retry_after_seconds", self.retry_after_seconds),
        ])?;
        for (code, partner) in &self.partners {
            check_partner(code, partner)
                .map_err(|reason| InvalidSetting::new(format!("partners.{code}.keys"), reason))?;
        }
        let file = match &self.keys_file {
            Some(path) => read_keys_file(path).map_err(|reason| {
                InvalidSetting::new("keys_file", format!("{}: {reason}", path.display()))
            })?,
            None => KeysFile::new(),
        };
        self.merged_keys(&file)
            .map_err(|reason| InvalidSetting::new("partners", reason))?;
        ShardMap::new(&self.shards)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_short_key_or_a_bad_partner_is_refused_without_printing_the_key() {
        let error = parse_keys_file("[acme]\nkeys = [\"short-key\"]\n").unwrap_err();
        assert!(error.contains("acme"), "{error}");
        assert!(!error.contains("short-key"), "{error}");
        let error = parse_keys_file("[\"a/b\"]\nkeys = []\n").unwrap_err();
        assert!(error.contains("not a valid partner"), "{error}");
        let error = parse_keys_file("[acme]\nkeys = [\"has a space in the middle of it!!\"]\n")
            .unwrap_err();
        assert!(error.contains("printable"), "{error}");
    }

    #[test]
    fn file_keys_add_to_configured_ones_and_debug_redacts_them() {
        let mut config = ApiConfig::default();
        config.partners.insert(
            "acme".into(),
            ApiPartner {
                keys: vec![ApiKey("acme-configured-key-0123456789".into())],
            },
        );
        let file = parse_keys_file(
            "[acme]\nkeys = [\"acme-file-key-0123456789abcdef\"]\n[globex]\nkeys = [\"globex-key-0123456789abcdefgh\"]\n",
        )
        .unwrap();
        let merged = config.merged_keys(&file).unwrap();
        assert_eq!(merged["acme"].len(), 2);
        assert_eq!(merged["globex"].len(), 1);
        assert!(!format!("{config:?}").contains("configured-key"));
        let shared =
            parse_keys_file("[globex]\nkeys = [\"acme-configured-key-0123456789\"]\n").unwrap();
        let error = config.merged_keys(&shared).unwrap_err();
        assert!(
            error.contains("acme") && error.contains("globex"),
            "{error}"
        );
        assert!(!error.contains("configured-key"), "{error}");
    }
}
