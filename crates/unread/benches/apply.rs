//! Apply rate of `UserState::apply` on a realistic stream: 10k users with a
//! few conversations each, mostly creates with increasing seqs, some reads
//! and some duplicates, looked up by user id in a `HashMap` as the router
//! does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fanout_unread::{Limits, Op, OpKind, UserState};

const USERS: usize = 10_000;
const WARM_UP_OPS: usize = 200_000;
const MEASURED_OPS: usize = 200_000;

/// xorshift64*: deterministic, good enough for picking users and kinds.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn percent(&mut self) -> u64 {
        self.next() % 100
    }
}

/// A pre-generated op, indexing into the user and conversation id tables.
#[derive(Clone, Copy)]
struct GenOp {
    user: usize,
    conversation: usize,
    seq: u64,
    kind: OpKind,
}

struct Workload {
    user_ids: Vec<String>,
    /// Per user, its conversation ids.
    conversation_ids: Vec<Vec<String>>,
    warm_up: Vec<GenOp>,
    measured: Vec<GenOp>,
}

fn generate() -> Workload {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let user_ids: Vec<String> = (0..USERS)
        .map(|i| format!("partner-{}:user-{i}", i % 7))
        .collect();
    let conversation_ids: Vec<Vec<String>> = (0..USERS)
        .map(|_| {
            let conversations = 2 + rng.below(5);
            (0..conversations)
                .map(|_| format!("conv-{:016x}", rng.next()))
                .collect()
        })
        .collect();
    // The latest seq per (user, conversation): the conversation's messages,
    // of which only some are addressed to this user.
    let mut latest: Vec<Vec<u64>> = conversation_ids.iter().map(|c| vec![0; c.len()]).collect();
    let mut ops: Vec<GenOp> = Vec::with_capacity(WARM_UP_OPS + MEASURED_OPS);
    while ops.len() < WARM_UP_OPS + MEASURED_OPS {
        let user = rng.below(USERS);
        let conversation = rng.below(conversation_ids[user].len());
        let roll = rng.percent();
        let op = if roll < 5 && !ops.is_empty() {
            // A duplicate of a recent op (at-least-once delivery).
            let back = 1 + rng.below(ops.len().min(1_000));
            ops[ops.len() - back]
        } else if roll < 80 {
            let seq = &mut latest[user][conversation];
            *seq += 1 + rng.below(3) as u64;
            GenOp {
                user,
                conversation,
                seq: *seq,
                kind: OpKind::Created,
            }
        } else if roll < 90 {
            let seq = latest[user][conversation];
            GenOp {
                user,
                conversation,
                seq,
                kind: OpKind::ConversationRead,
            }
        } else if roll < 98 {
            let seq = latest[user][conversation].saturating_sub(rng.below(8) as u64);
            GenOp {
                user,
                conversation,
                seq,
                kind: OpKind::MessageRead,
            }
        } else {
            let seq = latest[user][conversation].saturating_sub(rng.below(8) as u64);
            GenOp {
                user,
                conversation,
                seq,
                kind: OpKind::Deleted,
            }
        };
        ops.push(op);
    }
    let measured = ops.split_off(WARM_UP_OPS);
    Workload {
        user_ids,
        conversation_ids,
        warm_up: ops,
        measured,
    }
}

fn apply_all(
    states: &mut HashMap<String, UserState>,
    workload: &Workload,
    ops: &[GenOp],
    limits: &Limits,
) -> u64 {
    let mut changed = 0;
    for op in ops {
        let state = states.get_mut(workload.user_ids[op.user].as_str()).unwrap();
        let outcome = state.apply(
            Op {
                conversation: &workload.conversation_ids[op.user][op.conversation],
                seq: op.seq,
                kind: op.kind,
            },
            limits,
        );
        changed += u64::from(outcome.count_changed);
    }
    changed
}

fn bench_apply(c: &mut Criterion) {
    let workload = generate();
    let limits = Limits::default();
    let mut warmed: HashMap<String, UserState> = workload
        .user_ids
        .iter()
        .map(|id| (id.clone(), UserState::new()))
        .collect();
    apply_all(&mut warmed, &workload, &workload.warm_up, &limits);

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(workload.measured.len() as u64));
    group.sample_size(20);
    group.bench_function("realistic_stream_10k_users", |b| {
        b.iter_batched(
            || warmed.clone(),
            |mut states| {
                let changed = apply_all(&mut states, &workload, &workload.measured, &limits);
                (black_box(changed), states)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
