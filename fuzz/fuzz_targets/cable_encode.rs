//! See `fanout_protocol::fuzzing::cable_encode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_protocol::fuzzing::cable_encode(input));
