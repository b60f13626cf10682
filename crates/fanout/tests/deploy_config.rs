//! The config files deploy/ mounts are loaded the way a pod loads them: through
//! `Config::load` (unknown keys refused, then `validate`), with the dev overlay's partner
//! Secret as the FANOUT_EDGE__PARTNERS variable the edge gets from it. A key that
//! fanout refuses would otherwise surface only as a crash-looping pod.

// figment's Jail gives each closure its own environment; its closures return figment's
// (large) error type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::path::{Path, PathBuf};

use fanout::config::Config;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
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

#[test]
fn every_deploy_config_file_loads() {
    let files = config_files();
    assert!(files.len() >= 3, "base and two overlays, found {files:?}");
    for file in files {
        figment::Jail::expect_with(|_jail| {
            Config::load(Some(&file)).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            Ok(())
        });
    }
}

#[test]
fn the_dev_partner_secret_is_a_valid_partners_override() {
    let value = std::fs::read_to_string(deploy_dir().join("overlays/dev/partners.dev")).unwrap();
    let file = deploy_dir().join("overlays/dev/fanout.toml");
    figment::Jail::expect_with(|jail| {
        jail.set_env("FANOUT_EDGE__PARTNERS", value.trim());
        let config = Config::load(Some(&file)).unwrap();
        let demo = &config.edge.partners["demo"];
        assert_eq!(demo.secrets.len(), 1);
        assert_eq!(demo.secrets[0].kid.as_deref(), Some("dev-1"));
        assert_eq!(demo.secrets[0].secret, "dev-only-secret-0123456789");
        Ok(())
    });
}
