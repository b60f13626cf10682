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

/// `FANOUT_*` variables that are command-line options, not config keys.
const NOT_CONFIG_KEYS: [&str; 4] = ["config", "log_format", "token_secret", "test_seed"];

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
    /// The admin address (`/metrics`, `/healthz`, `/readyz`), for every role.
    pub admin: String,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            edge: "0.0.0.0:8080".to_owned(),
            admin: "0.0.0.0:9090".to_owned(),
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
        figment = figment.merge(
            Env::prefixed("FANOUT_")
                .ignore(&NOT_CONFIG_KEYS)
                .split("__"),
        );
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
        for code in self.edge.partners.keys() {
            if !fanout_ingest::events::is_valid_partner(code) {
                return Err(format!("edge.partners.{code}: not a valid partner code"));
            }
        }
        self.edge.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // figment's Jail runs each test with its own environment and working directory, one
    // at a time; its closures return figment's (large) error type.
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use super::*;

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "good.toml",
                "[kafka]\nbrokers = \"k1:9092\"\n[edge.partners.acme]\nsecrets = [{ secret = \"0123456789abcdef\" }]\n",
            )?;
            let config = Config::load(Some(Path::new("good.toml"))).unwrap();
            assert_eq!(config.kafka.brokers, "k1:9092");
            assert_eq!(config.topics, Topics::default());
            assert_eq!(config.edge.partners["acme"].secrets.len(), 1);

            jail.create_file("bad.toml", "[kafka]\nbrokers = \"k1:9092\"\nbrokerz = 1\n")?;
            let error = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("brokerz"), "{error}");

            jail.create_file(
                "weak.toml",
                "[edge.partners.acme]\nsecrets = [{ secret = \"short\" }]\n",
            )?;
            let error = Config::load(Some(Path::new("weak.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("edge.partners.acme.secrets"), "{error}");

            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_nested_keys_and_ignores_command_line_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FANOUT_KAFKA__BROKERS", "from-env:9092");
            jail.set_env("FANOUT_CONFIG", "/etc/fanout.toml");
            jail.set_env("FANOUT_LOG_FORMAT", "json");
            let config = Config::load(None).unwrap();
            assert_eq!(config.kafka.brokers, "from-env:9092");
            jail.set_env("FANOUT_KAFKA__BROKERZ", "typo");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("brokerz"), "{error}");
            Ok(())
        });
    }
}
