//! The count table's hot path: a count change applied for a user nobody watches, and for
//! a user with two sessions, each taking the change and its frame (encoded once, shared).
//!
//! `cargo bench -p fanout-edge --bench table`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fanout_edge::frames::Shape;
use fanout_edge::table::{CountTable, CountValue};

const USERS: u64 = 10_000;

fn keys() -> Vec<String> {
    (0..USERS).map(|user| format!("acme/user-{user}")).collect()
}

fn value(count: u64) -> CountValue {
    CountValue {
        count,
        version: count,
        occurred_at_ms: 1,
        changes: 0,
    }
}

fn apply_unwatched(c: &mut Criterion) {
    let table = CountTable::new();
    let keys = keys();
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(USERS));
    let mut version = 0;
    group.bench_function("apply, nobody watching (10k users)", |b| {
        b.iter(|| {
            version += 1;
            for key in &keys {
                black_box(table.apply(key, value(version)));
            }
        });
    });
    group.finish();
}

fn apply_take_frame(c: &mut Criterion) {
    let table = CountTable::new();
    let keys = keys();
    let mut sessions: Vec<_> = keys
        .iter()
        .flat_map(|key| [table.subscription(key), table.subscription(key)])
        .collect();
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(USERS));
    let mut version = 0;
    group.bench_function(
        "apply, two sessions take it and its shared frame (10k users)",
        |b| {
            b.iter(|| {
                version += 1;
                for key in &keys {
                    table.apply(key, value(version));
                }
                for session in &mut sessions {
                    let (taken, _) = session.take();
                    let frame = session.frame(&taken, Shape::Realtime, || {
                        fanout_protocol::realtime::unread_count(taken.count, None)
                    });
                    black_box(frame);
                }
            });
        },
    );
    group.finish();
}

criterion_group!(benches, apply_unwatched, apply_take_frame);
criterion_main!(benches);
