//! Codec throughput: decoding the official client's subscribe command (and the
//! `/realtime` request) and encoding the count frame every push sends.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fanout_protocol::{cable, realtime};
use std::hint::black_box;

fn codec(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("cable");
    group.throughput(Throughput::Elements(1));
    let subscribe = br#"{"command":"subscribe","identifier":"{\"channel\":\"PartnerChannel\"}"}"#;
    group.bench_function("decode_subscribe", |bencher| {
        bencher.iter(|| cable::decode_command(black_box(subscribe)))
    });
    let identifier = r#"{"channel":"PartnerChannel"}"#;
    group.bench_function("encode_unread_count", |bencher| {
        bencher.iter(|| cable::unread_count(black_box(identifier), black_box(12345)))
    });
    group.finish();

    let mut group = criterion.benchmark_group("realtime");
    group.throughput(Throughput::Elements(1));
    let request = br#"{"type":"get_unread_count","id":"req-12345"}"#;
    group.bench_function("decode_get_unread_count", |bencher| {
        bencher.iter(|| realtime::decode(black_box(request)))
    });
    group.bench_function("encode_unread_count", |bencher| {
        bencher.iter(|| realtime::unread_count(black_box(12345), None))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
