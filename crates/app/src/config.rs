//! fanout's configuration: one TOML file plus `FANOUT_*` environment overrides
//! (`FANOUT_KAFKA__BROKERS=...`: a double underscore separates nested keys). Every key,
//! with its default and what it does, is in `default-config.toml` beside this file,
//! which `fanout default-config` prints.

use std::path::{Path, PathBuf};

use fanout_api::ApiConfig;
use fanout_edge::EdgeConfig;
use fanout_ingest::IngestConfig;
use fanout_kafka::{InvalidSetting, KafkaSettings, LogLimits, Topics};
use fanout_router::RouterConfig;
use figment::Figment;
use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The commented default config file: every key, its default and what it does.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// `FANOUT_*` variables that are command-line options, not config keys.
const NOT_CONFIG_KEYS: [&str; 3] = ["config", "log_format", "token_secret"];

const ENV_PREFIX: &str = "FANOUT_";
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub ingest: IngestConfig,
    pub router: RouterConfig,
    pub edge: EdgeConfig,
    pub api: ApiConfig,
    pub listen: Listen,
    pub shutdown: Shutdown,
    /// How much of a flood of refusals and bad records is logged.
    pub log: LogLimits,
}

/// Addresses the roles bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// The edge's client (WebSocket) address.
    pub edge: String,
    /// The api's HTTP address.
    pub api: String,
    /// The admin address (`/metrics`, `/healthz`, `/readyz`), for every role.
    pub admin: String,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            edge: "0.0.0.0:8080".to_owned(),
            api: "0.0.0.0:8081".to_owned(),
            admin: "0.0.0.0:9090".to_owned(),
        }
    }
}

/// What happens on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// From the signal to the exit: every stage must have drained by then (edge: its
    /// `drain_window_ms` of goodbyes; ingest, router: in-flight records delivered and
    /// committed), or the process logs an error and exits non-zero. Keep it below
    /// Kubernetes' `terminationGracePeriodSeconds`.
    pub grace_ms: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { grace_ms: 30_000 }
    }
}

/// Why a configuration was refused. Every reason names the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// What figment found reading the file and environment: TOML syntax, unknown keys,
    /// wrong types. One line per problem.
    #[error("{}", .0.join("\n"))]
    Read(Vec<String>),
    /// A value of the right type that is still wrong.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Defaults, then the file (if any), then the environment; then [`Self::validate`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(&NOT_CONFIG_KEYS)
                .split(ENV_SEPARATOR),
        );
        let config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Read(describe_figment_error(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot, naming the key of the first problem: each section as
    /// its stage checks it, then what spans sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate().map_err(in_section("kafka"))?;
        self.topics.validate().map_err(in_section("topics"))?;
        self.ingest.validate().map_err(in_section("ingest"))?;
        if self.ingest.group_id == self.router.group_id {
            return Err(invalid(
                "ingest.group_id",
                "must differ from router.group_id",
            ));
        }
        self.router.validate().map_err(in_section("router"))?;
        self.edge.validate().map_err(in_section("edge"))?;
        self.api.validate().map_err(in_section("api"))?;
        self.log.validate().map_err(in_section("log"))?;
        validate_address("listen.edge", &self.listen.edge)?;
        validate_address("listen.api", &self.listen.api)?;
        validate_address("listen.admin", &self.listen.admin)?;
        // Port 0 (any free port) twice is two ports.
        for (key, address) in [
            ("listen.edge", &self.listen.edge),
            ("listen.api", &self.listen.api),
        ] {
            if *address == self.listen.admin && !address.ends_with(":0") {
                return Err(invalid(
                    "listen.admin",
                    format!("must differ from {key} (client traffic and admin are separate)"),
                ));
            }
        }
        if self.listen.edge == self.listen.api && !self.listen.api.ends_with(":0") {
            return Err(invalid("listen.api", "must differ from listen.edge"));
        }
        if self.shutdown.grace_ms <= self.edge.drain_window_ms {
            return Err(invalid(
                "shutdown.grace_ms",
                format!(
                    "must be longer than edge.drain_window_ms ({} ms), or the edge cannot finish its goodbyes",
                    self.edge.drain_window_ms
                ),
            ));
        }
        Ok(())
    }
}

/// A stage's refusal of its own section, its key made a full key (`ingest.` + key).
fn in_section(section: &'static str) -> impl FnOnce(InvalidSetting) -> ConfigError {
    move |error| {
        let InvalidSetting { key, reason } = error.in_section(section);
        ConfigError::Invalid { key, reason }
    }
}

/// `host:port`, the host an IP address or a name, the port a number.
fn validate_address(key: &str, address: &str) -> Result<(), ConfigError> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{address:?} is not host:port (for example 0.0.0.0:8080)"),
        ))
    }
}

/// One line per problem figment found, each naming the key (dotted, as in the file)
/// and where the value came from (the file, or the environment variable).
fn describe_figment_error(error: figment::Error) -> Vec<String> {
    error
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            let what = match &error.kind {
                Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    if expected.is_empty() {
                        "unknown key".to_owned()
                    } else {
                        format!("unknown key (known here: {})", expected.join(", "))
                    }
                }
                Kind::MissingField(field) => {
                    if path.last().map(String::as_str) != Some(field.as_ref()) {
                        path.push(field.to_string());
                    }
                    "required but missing".to_owned()
                }
                Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {actual}")
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {actual}")
                }
                other => other.to_string(),
            };
            let key = if path.is_empty() {
                String::new()
            } else {
                format!("{}: ", path.join("."))
            };
            let from = error.metadata.as_ref().map(|metadata| {
                if let Some(figment::Source::File(file)) = &metadata.source {
                    format!(" (in {})", file.display())
                } else if metadata.name.contains("environment") && !path.is_empty() {
                    let variable = path.join(ENV_SEPARATOR).to_ascii_uppercase();
                    format!(" (from {ENV_PREFIX}{variable})")
                } else {
                    String::new()
                }
            });
            format!("{key}{what}{}", from.unwrap_or_default())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    // figment's Jail runs each test with its own environment and working directory, one
    // at a time; its closures return figment's (large) error type.
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use std::collections::BTreeSet;

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

    fn load_error(text: &str) -> String {
        let mut message = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file("fanout.toml", text)?;
            message = Some(
                Config::load(Some(Path::new("fanout.toml")))
                    .unwrap_err()
                    .to_string(),
            );
            Ok(())
        });
        message.unwrap()
    }

    #[test]
    fn every_kind_of_error_names_the_key() {
        let unknown = load_error("[edge]\nping_interval_mz = 1\n");
        assert!(
            unknown.starts_with("edge.ping_interval_mz: unknown key"),
            "{unknown}"
        );
        assert!(unknown.contains("fanout.toml"), "{unknown}");
        let wrong_type = load_error("[edge]\nping_interval_ms = \"often\"\n");
        assert!(
            wrong_type.starts_with("edge.ping_interval_ms: expected"),
            "{wrong_type}"
        );
        assert!(wrong_type.contains("often"), "{wrong_type}");
        let nested = load_error("[ingest.limits]\nmax_seq = -1\n");
        assert!(nested.starts_with("ingest.limits.max_seq:"), "{nested}");
        let zero = load_error("[router]\nmax_in_flight = 0\n");
        assert_eq!(zero, "router.max_in_flight: must be positive");
        let ingest_zero = load_error("[ingest.limits]\nmax_seq = 0\n");
        assert_eq!(ingest_zero, "ingest.limits.max_seq: must be positive");
        let shared_group = load_error("[router]\ngroup_id = \"fanout-ingest\"\n");
        assert_eq!(
            shared_group,
            "ingest.group_id: must differ from router.group_id"
        );
        let grace = load_error("[edge]\ndrain_window_ms = 40000\n");
        assert!(
            grace.starts_with("shutdown.grace_ms: must be longer"),
            "{grace}"
        );
        let address = load_error("[listen]\nedge = \"8080\"\n");
        assert!(address.starts_with("listen.edge:"), "{address}");
        let topic = load_error("[topics]\ndead_letter = \"user-events\"\n");
        assert!(topic.starts_with("topics.dead_letter:"), "{topic}");
        let kafka = load_error("[kafka.client]\n\"securty.protocol\" = \"ssl\"\n");
        assert!(
            kafka.starts_with(r#"kafka.client."securty.protocol": refused by librdkafka"#),
            "{kafka}"
        );
        let syntax = load_error("[edge\n");
        assert!(syntax.contains("fanout.toml"), "{syntax}");

        figment::Jail::expect_with(|jail| {
            jail.set_env("FANOUT_EDGE__AUTH_TIMEOUT_MS", "soon");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(
                error.starts_with("edge.auth_timeout_ms: expected"),
                "{error}"
            );
            assert!(
                error.contains("FANOUT_EDGE__AUTH_TIMEOUT_MS"),
                "names the variable: {error}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_default_config_file_is_exactly_the_defaults() {
        let parsed: Config = Figment::from(Toml::string(DEFAULT_CONFIG_TOML))
            .extract()
            .unwrap();
        assert_eq!(parsed, Config::default());
        Config::default().validate().unwrap();
    }

    /// Each key of the defaults, dotted, with its default value (an empty table or list
    /// is one leaf; a key whose default is unset is `Null`).
    fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, child, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }

    /// A new config key fails this until default-config.toml documents it: every key
    /// of `Config::default()` is in the file, set to its default with a comment right
    /// above it; a key with no default appears as a commented-out `# key = ...`.
    #[test]
    fn every_key_is_in_the_default_config_file_with_a_comment() {
        let mut defaults = Vec::new();
        leaves(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut defaults,
        );
        let file: serde_json::Value = Figment::from(Toml::string(DEFAULT_CONFIG_TOML))
            .extract()
            .unwrap();
        let mut in_file = Vec::new();
        leaves("", &file, &mut in_file);
        let file_keys: BTreeSet<&str> = in_file.iter().map(|(key, _)| key.as_str()).collect();

        let lines: Vec<&str> = DEFAULT_CONFIG_TOML.lines().collect();
        let mut undocumented = Vec::new();
        for (key, value) in &defaults {
            let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
            if value.is_null() {
                // Unset by default: must be shown commented out.
                let shown = lines.iter().any(|line| {
                    line.trim_start_matches(['#', ' '])
                        .starts_with(&format!("{name} ="))
                        && line.starts_with('#')
                });
                if !shown {
                    undocumented.push(format!("{key} (unset by default: add `# {name} = ...`)"));
                }
                continue;
            }
            if !file_keys.contains(key.as_str()) {
                undocumented.push(format!("{key} (missing)"));
                continue;
            }
            // The line that sets it: `name = ...` inside `[table]`, or the header of an
            // empty table.
            let header = format!("[{key}]");
            let mut current_table = String::new();
            let mut defining_line = None;
            for (index, line) in lines.iter().enumerate() {
                if let Some(section) = line.strip_prefix('[') {
                    current_table = section.trim_end_matches(']').to_owned();
                }
                let sets_key = current_table == table
                    && line
                        .split_once('=')
                        .is_some_and(|(left, _)| left.trim() == name);
                if *line == header || sets_key {
                    defining_line = Some(index);
                    break;
                }
            }
            let commented =
                defining_line.is_some_and(|index| index > 0 && lines[index - 1].starts_with('#'));
            if !commented {
                undocumented.push(format!("{key} (no comment on the line above)"));
            }
        }
        assert!(
            undocumented.is_empty(),
            "document these keys in crates/app/src/default-config.toml: {undocumented:#?}"
        );
        let default_keys: BTreeSet<&str> = defaults.iter().map(|(key, _)| key.as_str()).collect();
        let extra: Vec<&&str> = file_keys.difference(&default_keys).collect();
        assert!(
            extra.is_empty(),
            "keys in the file but not in Config: {extra:?}"
        );
    }

    /// The indented examples in the file's comments (`#   ...` under a table) are valid
    /// config when uncommented in place.
    #[test]
    fn the_commented_examples_are_valid_config() {
        let mut uncommented = String::new();
        let mut pending_example = Vec::new();
        for line in DEFAULT_CONFIG_TOML.lines() {
            if let Some(example) = line.strip_prefix("#   ") {
                pending_example.push(example.to_owned());
                continue;
            }
            uncommented.push_str(line);
            uncommented.push('\n');
            if line.starts_with('[') {
                for example in pending_example.drain(..) {
                    uncommented.push_str(&example);
                    uncommented.push('\n');
                }
            } else if !line.starts_with('#') {
                pending_example.clear();
            }
        }
        let config: Config = Figment::from(Toml::string(&uncommented))
            .extract()
            .unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
        config.validate().unwrap();
        assert_eq!(config.kafka.client["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(config.edge.partners["acme"].secrets.len(), 2);
    }

    #[test]
    fn partner_secrets_come_from_the_environment_too() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "FANOUT_EDGE__PARTNERS__ACME__SECRETS",
                r#"[{ kid = "k1", secret = "from-the-environment-0123" }]"#,
            );
            jail.set_env(
                "FANOUT_EDGE__PARTNERS",
                r#"{ globex = { secrets = [{ secret = "a-whole-table-0123456" }], allowed_origins = ["https://app.globex.example"] } }"#,
            );
            let config = Config::load(None).unwrap();
            let acme = &config.edge.partners["acme"];
            assert_eq!(acme.secrets[0].kid.as_deref(), Some("k1"));
            assert_eq!(acme.secrets[0].secret, "from-the-environment-0123");
            let globex = &config.edge.partners["globex"];
            assert_eq!(globex.secrets[0].secret, "a-whole-table-0123456");
            assert_eq!(globex.allowed_origins, ["https://app.globex.example"]);
            // Checked like any other: too short names the key.
            jail.set_env(
                "FANOUT_EDGE__PARTNERS__ACME__SECRETS",
                r#"[{ secret = "short" }]"#,
            );
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("edge.partners.acme.secrets"), "{error}");
            Ok(())
        });
    }
}
