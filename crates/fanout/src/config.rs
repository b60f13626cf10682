//! fanout's configuration: one TOML file plus `FANOUT_*` environment overrides
//! (`FANOUT_KAFKA__BROKERS=...`: a double underscore separates nested keys).

use std::path::Path;

use fanout_edge::EdgeConfig;
use fanout_ingest::IngestConfig;
use fanout_kafka::{KafkaSettings, Topics};
use fanout_router::RouterConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub ingest: IngestConfig,
    pub router: RouterConfig,
    pub edge: EdgeConfig,
    pub listen: Listen,
}

/// Addresses the roles bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// The edge's client (WebSocket) address.
    pub edge: String,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            edge: "0.0.0.0:8080".to_owned(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("FANOUT_").split("__"));
        let config: Config = figment.extract().map_err(Box::new)?;
        config
            .validate()
            .map_err(|reason| Box::new(figment::Error::from(reason)))?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.kafka.brokers.trim().is_empty() {
            return Err("kafka.brokers must name at least one broker".to_owned());
        }
        for (code, partner) in &self.edge.partners {
            if !fanout_ingest::events::is_valid_partner(code) {
                return Err(format!("edge.partners.{code}: not a valid partner code"));
            }
            if partner.secrets.is_empty() {
                return Err(format!(
                    "edge.partners.{code}.secrets must list at least one secret"
                ));
            }
            if partner
                .secrets
                .iter()
                .any(|secret| secret.secret.len() < 16)
            {
                return Err(format!(
                    "edge.partners.{code}.secrets: each secret needs at least 16 bytes"
                ));
            }
        }
        if self.edge.ping_interval_ms == 0 {
            return Err("edge.ping_interval_ms must be positive".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("fanout-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[kafka]\nbrokers = \"k1:9092\"\n[edge.partners.acme]\nsecrets = [{ secret = \"0123456789abcdef\" }]\n",
        )
        .unwrap();
        let config = Config::load(Some(&good)).unwrap();
        assert_eq!(config.kafka.brokers, "k1:9092");
        assert_eq!(config.topics, Topics::default());
        assert_eq!(config.edge.partners["acme"].secrets.len(), 1);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[kafka]\nbrokers = \"k1:9092\"\nbrokerz = 1\n").unwrap();
        let error = Config::load(Some(&bad)).unwrap_err().to_string();
        assert!(error.contains("brokerz"), "{error}");

        let weak = dir.join("weak.toml");
        std::fs::write(
            &weak,
            "[edge.partners.acme]\nsecrets = [{ secret = \"short\" }]\n",
        )
        .unwrap();
        let error = Config::load(Some(&weak)).unwrap_err().to_string();
        assert!(error.contains("edge.partners.acme.secrets"), "{error}");

        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
    }
}
