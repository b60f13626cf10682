//! See `fanout_api::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_api::fuzzing::request(input));
