//! The distinct-count sketch's three operations: inserting values (the
//! combiner's work per event), merging two sketches (the sketch windows'
//! work per partial and slide), and estimating (once per row).
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_dataflows::sketch::hll::Hll;

fn sketch_of(values: std::ops::Range<i64>) -> Hll {
    let mut hll = Hll::new();
    for v in values {
        hll.insert(v);
    }
    hll
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("hll");
    // Sparse (100 values) and dense (100,000 values) sketches.
    for distinct in [100i64, 100_000] {
        group.throughput(Throughput::Elements(distinct as u64));
        group.bench_with_input(BenchmarkId::new("insert", distinct), &distinct, |b, &n| {
            b.iter(|| sketch_of(0..n));
        });
        let a = sketch_of(0..distinct);
        let other = sketch_of(distinct / 2..distinct * 3 / 2);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("merge", distinct), &distinct, |b, _| {
            b.iter(|| {
                let mut merged = a.clone();
                merged.merge(&other);
                merged
            });
        });
        group.bench_with_input(BenchmarkId::new("estimate", distinct), &distinct, |b, _| {
            b.iter(|| a.estimate());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
