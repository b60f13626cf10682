//! What the count table costs per user without a session: the process's resident
//! memory (VmRSS) before and after a million users' counts are applied, keys
//! `<partner>/user-<n>` of the length given (default 21 bytes: `acme/user-0000000042`
//! plus padding), none subscribed. One figure per process: memory freed by one table
//! would be reused by the next.
//!
//!     cargo run --release -p fanout-edge --example table_memory -- [users] [key bytes]

use fanout_edge::table::{CountTable, CountValue};

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let mut arguments = std::env::args()
        .skip(1)
        .map(|argument| argument.parse::<usize>().unwrap_or(0));
    let users = arguments.next().unwrap_or(1_000_000).max(1);
    let key_bytes = arguments.next().unwrap_or(21).max(16);
    let keys: Vec<String> = (0..users)
        .map(|user| {
            let key = format!("acme/user-{user:010}");
            format!("{key}{}", "x".repeat(key_bytes.saturating_sub(key.len())))
        })
        .collect();
    let before = resident_bytes();
    let table = CountTable::new();
    for (version, key) in keys.iter().enumerate() {
        let value = CountValue {
            count: 3,
            version: version as u64 + 1,
            occurred_at_ms: 1_764_000_000_000,
            changes: 0,
        };
        table.apply(key, value);
    }
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{} users, keys of {} bytes, none subscribed: {:.0} B per user ({} MiB)",
        table.len(),
        keys[0].len(),
        grown as f64 / table.len() as f64,
        grown / (1 << 20)
    );
}
