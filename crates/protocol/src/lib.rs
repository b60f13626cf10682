//! Pure codecs for fanout's client protocols: bytes to frames and back, no I/O, so
//! they can be unit-tested, fuzzed and benchmarked on their own.
//!
//! - [`cable`]: ActionCable (`/cable`, subprotocol `actioncable-v1-json`), byte for byte
//!   as Rails sends it.
//! - [`realtime`]: the JSON "RealTime API" (`/realtime`), authenticated in band.
//! - [`close`]: the WebSocket close codes both protocols use.
//! - [`stream`]: the body of a stream event, shared by both protocols' frames.
//! - [`fuzzing`]: the fuzz entry points (`fuzz/` at the repository root).

pub mod cable;
pub mod close;
pub mod fuzzing;
mod json;
pub mod realtime;
pub mod stream;
