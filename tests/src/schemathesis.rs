//! schemathesis (PyPI, MIT), the property-based tester of OpenAPI documents: it sends
//! the api requests generated from docs/openapi.json and checks every answer against it.
//! Installed with pip into a virtualenv of its own under
//! `$HOME/.cache/fanout/tools/schemathesis-<version>` the first time a test needs it
//! (python3 and PyPI needed; under a minute), then reused; `TEST_SCHEMATHESIS` names
//! another binary, `TEST_PYTHON` another Python (3.9 or later) to install with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// The pinned version (supports Python 3.9 to 3.13; tested with 3.11).
pub const VERSION: &str = "4.32.5";

/// Written into the virtualenv once pip succeeded: a virtualenv without it is a partial
/// install (interrupted), removed and made again.
const INSTALLED_MARKER: &str = ".installed";

fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME must be set");
    PathBuf::from(home).join(".cache/fanout/tools")
}

/// The schemathesis CLI, installed if missing. Concurrent test processes wait for one
/// install through a lock file.
pub fn schemathesis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let tools = tools_dir();
    let venv = tools.join(format!("schemathesis-{VERSION}"));
    let binary = venv.join("bin/schemathesis");
    let marker = venv.join(INSTALLED_MARKER);
    if marker.exists() {
        return binary;
    }
    std::fs::create_dir_all(&tools).unwrap();
    // Beside the virtualenv, not in it: a partial virtualenv is removed under the lock.
    let lock =
        std::fs::File::create(tools.join(format!(".schemathesis-{VERSION}-install.lock"))).unwrap();
    lock.lock().unwrap();
    if !marker.exists() {
        eprintln!(
            "installing schemathesis {VERSION} into {} (once per machine)",
            venv.display()
        );
        if venv.exists() {
            std::fs::remove_dir_all(&venv).unwrap();
        }
        let python = std::env::var_os("TEST_PYTHON").unwrap_or_else(|| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap_or_else(|error| {
                panic!("python3 (with venv) must be on PATH to install schemathesis: {error}")
            });
        assert!(
            status.success(),
            "python3 -m venv {} failed",
            venv.display()
        );
        let status = Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                &format!("schemathesis=={VERSION}"),
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip install schemathesis=={VERSION} failed"
        );
        assert!(binary.exists(), "pip installed no {}", binary.display());
        std::fs::write(&marker, VERSION).unwrap();
    }
    lock.unlock().unwrap();
    binary
}
