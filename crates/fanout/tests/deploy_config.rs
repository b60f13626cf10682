//! The config files deploy/ mounts are loaded the way a pod loads them: through
//! `Config::load` (unknown keys refused, then `validate`, which reads
//! `edge.secrets_file`). Ingest and router load them as they are; the edge gets
//! `FANOUT_EDGE__SECRETS_FILE` from its Deployment, here pointed at the dev overlay's
//! committed `partners.toml`, which is also parsed with the edge's own parser. A key or
//! a partners file that fanout refuses would otherwise surface only as a crash-looping
//! pod.

// figment's Jail gives each closure its own environment; its closures return figment's
// (large) error type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::path::{Path, PathBuf};

use fanout_app::config::Config;

/// The variable the edge Deployment sets (deploy/base/edge.yaml).
const SECRETS_FILE_ENV: &str = "FANOUT_EDGE__SECRETS_FILE";
/// The variable the api Deployment sets (deploy/base/api.yaml).
const KEYS_FILE_ENV: &str = "FANOUT_API__KEYS_FILE";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn dev_partners_file() -> PathBuf {
    deploy_dir()
        .join("overlays/dev/partners.toml")
        .canonicalize()
        .expect("deploy/overlays/dev/partners.toml")
}

/// Every fanout.toml under deploy/: the base's and each overlay's.
fn config_files() -> Vec<PathBuf> {
    let mut files = vec![deploy_dir().join("base/fanout.toml")];
    for overlay in std::fs::read_dir(deploy_dir().join("overlays")).unwrap() {
        let file = overlay.unwrap().path().join("fanout.toml");
        if file.exists() {
            files.push(file);
        }
    }
    files
}

fn dev_api_keys_file() -> PathBuf {
    deploy_dir()
        .join("overlays/dev/api-keys.toml")
        .canonicalize()
        .expect("deploy/overlays/dev/api-keys.toml")
}

/// The value the edge Deployment gives `name`: the `value:` line after `- name: NAME`.
fn edge_env_value(name: &str) -> Option<String> {
    env_value("edge.yaml", name)
}

/// The value the Deployment in `manifest` gives `name`.
fn env_value(manifest: &str, name: &str) -> Option<String> {
    let manifest = std::fs::read_to_string(deploy_dir().join("base").join(manifest)).unwrap();
    let mut lines = manifest.lines();
    lines.find(|line| line.trim() == format!("- name: {name}"))?;
    let value = lines.next()?.trim().strip_prefix("value:")?;
    Some(value.trim().trim_matches('"').to_owned())
}

#[test]
fn every_deploy_config_file_loads_as_ingest_and_router_load_it() {
    let files = config_files();
    assert!(files.len() >= 3, "base and two overlays, found {files:?}");
    for file in files {
        figment::Jail::expect_with(|_jail| {
            Config::load(Some(&file)).unwrap_or_else(|error| {
                panic!(
                    "{}: {error} (ingest and router do not mount the partner Secret)",
                    file.display()
                )
            });
            Ok(())
        });
    }
}

#[test]
fn every_deploy_config_file_loads_as_the_edge_loads_it() {
    let partners = dev_partners_file();
    for file in config_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(SECRETS_FILE_ENV, partners.display());
            let config = Config::load(Some(&file))
                .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            assert_eq!(
                config.edge.secrets_file.as_deref(),
                Some(partners.as_path()),
                "{}: {SECRETS_FILE_ENV} does not set edge.secrets_file",
                file.display()
            );
            let secrets = fanout_edge::read_secrets_file(&partners).unwrap();
            let merged = config.edge.merged_secrets(&secrets);
            assert!(
                merged
                    .get("demo")
                    .is_some_and(|secrets| !secrets.is_empty()),
                "{}: no secret for the demo partner in {merged:?}",
                file.display()
            );
            Ok(())
        });
    }
}

#[test]
fn the_edge_deployment_names_the_partners_file_the_overlays_provide() {
    let path = edge_env_value(SECRETS_FILE_ENV)
        .unwrap_or_else(|| panic!("deploy/base/edge.yaml sets no {SECRETS_FILE_ENV}"));
    assert_eq!(path, "/etc/fanout/secrets/partners.toml");
    assert_eq!(
        Path::new(&path).file_name(),
        dev_partners_file().file_name(),
        "the dev Secret's key is its file name"
    );
}

#[test]
fn the_dev_partners_file_is_a_valid_secrets_file() {
    let text = std::fs::read_to_string(dev_partners_file()).unwrap();
    let file = fanout_edge::parse_secrets_file(&text)
        .unwrap_or_else(|reason| panic!("deploy/overlays/dev/partners.toml: {reason}"));
    let demo = &file["demo"].secrets;
    assert_eq!(demo.len(), 1);
    assert_eq!(demo[0].kid.as_deref(), Some("dev-1"));
    assert_eq!(demo[0].secret, "dev-only-secret-0123456789");
}

#[test]
fn every_deploy_config_file_loads_as_the_api_loads_it() {
    let keys = dev_api_keys_file();
    for file in config_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(KEYS_FILE_ENV, keys.display());
            let config = Config::load(Some(&file))
                .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            assert_eq!(
                config.api.keys_file.as_deref(),
                Some(keys.as_path()),
                "{}: {KEYS_FILE_ENV} does not set api.keys_file",
                file.display()
            );
            Ok(())
        });
    }
}

#[test]
fn the_api_deployment_names_the_keys_file_the_dev_overlay_provides() {
    let path = env_value("api.yaml", KEYS_FILE_ENV)
        .unwrap_or_else(|| panic!("deploy/base/api.yaml sets no {KEYS_FILE_ENV}"));
    assert_eq!(
        Path::new(&path).file_name(),
        dev_api_keys_file().file_name(),
        "the dev Secret's key is its file name"
    );
    let text = std::fs::read_to_string(dev_api_keys_file()).unwrap();
    let file = fanout_api::config::parse_keys_file(&text)
        .unwrap_or_else(|reason| panic!("deploy/overlays/dev/api-keys.toml: {reason}"));
    assert!(!file["demo"].keys.is_empty());
}
