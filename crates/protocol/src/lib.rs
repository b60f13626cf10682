//! Pure codecs for fanout's client protocols: bytes to frames and back, no I/O, so
//! they can be unit-tested, fuzzed and benchmarked on their own.
//!
//! - [`cable`]: ActionCable (`/cable`, subprotocol `actioncable-v1-json`), byte for byte
//!   as Rails sends it.
//! - [`realtime`]: the JSON "RealTime API" (`/realtime`), authenticated in band.

pub mod cable;
mod json;
pub mod realtime;
