//! See `fanout_protocol::fuzzing::realtime_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| fanout_protocol::fuzzing::realtime_frame(input));
