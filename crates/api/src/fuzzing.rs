//! Fuzz entry point: any bytes as what a client sends the api, through the api's own
//! parsing: a `POST /v1/events` body split into events and each checked as ingest
//! checks a record, and the same bytes as an `Authorization` header value and as a
//! receipts path's `seq`. It panics only when a property below does not hold. `fuzz/` at
//! the repository root calls it from a cargo-fuzz target, and the corpus replay test
//! (`crates/fanout/tests/fuzz_corpus.rs`) calls it on every seed.

use fanout_ingest::{Rejection, decode_event, validate};
use fanout_schema::{CONTENT_TYPE_JSON, KEY_SEPARATOR};

use crate::http::{bearer_key, parse_seq};
use crate::publish::{PARTNER_MISMATCH, check_event, split_body};

/// The partner the fuzzed requests act for.
const PARTNER: &str = "acme";
/// Most events per request, kept small so that inputs reach the limit.
const MAX_BATCH_EVENTS: usize = 8;

/// Checks that every event the api accepts is one ingest accepts, as the very text the
/// client sent, keyed `partner/...`, and that every refusal has a documented code.
pub fn request(input: &[u8]) {
    let limits = fanout_ingest::fuzzing::limits();
    if let Ok(events) = split_body(input, MAX_BATCH_EVENTS) {
        assert!((1..=MAX_BATCH_EVENTS).contains(&events.len()));
        for raw in events {
            match check_event(raw, PARTNER, &limits) {
                Ok(checked) => {
                    assert_eq!(checked.value, raw.get());
                    let scope = checked
                        .key
                        .strip_prefix(PARTNER)
                        .and_then(|rest| rest.strip_prefix(KEY_SEPARATOR));
                    assert!(
                        scope.is_some_and(|scope| !scope.is_empty()),
                        "{}",
                        checked.key
                    );
                    let ingested = decode_event(
                        checked.value.as_bytes(),
                        Some(CONTENT_TYPE_JSON.as_bytes()),
                        &limits,
                    )
                    .and_then(|event| validate(event, &limits));
                    assert!(
                        matches!(&ingested, Ok(valid) if valid.event().event_id == checked.event_id),
                        "accepted by the api, not by ingest: {ingested:?}"
                    );
                }
                Err(refused) => assert!(
                    refused.code == PARTNER_MISMATCH || Rejection::REASONS.contains(&refused.code),
                    "{refused:?}"
                ),
            }
        }
    }

    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Some(key) = bearer_key(text) {
        let scheme = text.split(' ').next().unwrap_or_default();
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
        assert_eq!(key, key.trim());
    }
    let max_seq = limits.max_seq;
    if let Some(seq) = parse_seq(text, max_seq) {
        assert!((1..=max_seq).contains(&seq));
        assert_eq!(text.trim_start_matches('0'), seq.to_string());
    }
}
