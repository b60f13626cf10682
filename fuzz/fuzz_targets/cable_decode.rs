//! See `fanout_protocol::fuzzing::cable_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_protocol::fuzzing::cable_command(input));
