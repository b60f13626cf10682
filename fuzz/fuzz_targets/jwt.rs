//! See `fanout_edge::fuzzing::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_edge::fuzzing::jwt(input));
