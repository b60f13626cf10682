//! Every seed of every fuzz target (`fuzz/corpus/<target>/`, hand-picked inputs, the
//! inputs of crashes found, and what `fuzz/run cmin` kept of the runs) replayed on
//! stable through the same entry points the cargo-fuzz targets call: each must pass
//! the target's properties. Every target in fuzz/Cargo.toml must be listed here and
//! have a non-empty corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// A fuzz entry point: any bytes in, a panic when a property fails.
type Entry = fn(&[u8]);

/// Each target of fuzz/Cargo.toml and the function its fuzz_targets/<target>.rs calls.
const TARGETS: [(&str, Entry); 7] = [
    ("realtime_decode", fanout_protocol::fuzzing::realtime_frame),
    ("cable_decode", fanout_protocol::fuzzing::cable_command),
    ("cable_encode", fanout_protocol::fuzzing::cable_encode),
    ("ingest_protobuf", fanout_ingest::fuzzing::protobuf_record),
    ("ingest_json", fanout_ingest::fuzzing::json_record),
    ("api_request", fanout_api::fuzzing::request),
    ("jwt", fanout_edge::fuzzing::jwt),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_fuzz_target_is_replayed_here() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut in_manifest: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| bin.lines().find_map(|line| line.strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    in_manifest.sort_unstable();
    let mut replayed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    replayed.sort_unstable();
    assert_eq!(in_manifest, replayed);
    for (target, _) in TARGETS {
        let source =
            std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{target}.rs")))
                .unwrap();
        assert!(source.contains("fuzz_target!"), "{target}");
    }
}

#[test]
fn every_seed_of_every_corpus_passes_its_target() {
    let mut failures = Vec::new();
    for (target, entry) in TARGETS {
        let directory = fuzz_dir().join("corpus").join(target);
        let files: Vec<PathBuf> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("corpus {}: {error}", directory.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .collect();
        assert!(!files.is_empty(), "corpus {} is empty", directory.display());
        for file in &files {
            let input = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| entry(&input))).is_err() {
                failures.push(file.display().to_string());
            }
        }
        eprintln!("{target}: {} inputs replayed", files.len());
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
