//! See `fanout_ingest::fuzzing::json_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_ingest::fuzzing::json_record(input));
