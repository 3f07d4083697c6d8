//! Input log throughput: append (fsync `never` and `always`) and read, in
//! records/s and bytes/s, with ~30-byte payloads (a typical encoded event).
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir::event::encode_event;
use weir::log::{FsyncPolicy, LogConfig, PartitionReader, PartitionWriter};

const PAYLOAD_LEN_BYTES: usize = 30;
/// Bytes per record on disk: 12-byte frame header + payload.
const FRAME_LEN_BYTES: u64 = 12 + PAYLOAD_LEN_BYTES as u64;

fn payload() -> Vec<u8> {
    let mut p = Vec::new();
    encode_event(1_700_000_000_000, "user-0000012345", 42, &mut p);
    p.resize(PAYLOAD_LEN_BYTES, b'x');
    p
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        ..LogConfig::default()
    }
}

fn bench_append(c: &mut Criterion, name: &str, fsync: FsyncPolicy, records: u64) {
    let p = payload();
    for (unit, throughput) in [
        ("records", Throughput::Elements(records)),
        ("bytes", Throughput::Bytes(records * FRAME_LEN_BYTES)),
    ] {
        let mut g = c.benchmark_group(format!("log_append_{name}"));
        g.throughput(throughput);
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(5));
        g.bench_function(unit, |b| {
            b.iter_batched(
                || tempfile::tempdir().expect("temp dir"),
                |dir| {
                    let mut w = PartitionWriter::open(dir.path(), config(fsync)).expect("open");
                    for _ in 0..records {
                        black_box(w.append(&p).expect("append"));
                    }
                    w.sync().expect("sync");
                    dir
                },
                BatchSize::PerIteration,
            );
        });
        g.finish();
    }
}

fn bench_read(c: &mut Criterion) {
    const RECORDS: u64 = 2_000_000;
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut w = PartitionWriter::open(dir.path(), config(FsyncPolicy::Never)).expect("open");
        let p = payload();
        for _ in 0..RECORDS {
            w.append(&p).expect("append");
        }
        w.sync().expect("sync");
    }
    for (unit, throughput) in [
        ("records", Throughput::Elements(RECORDS)),
        ("bytes", Throughput::Bytes(RECORDS * FRAME_LEN_BYTES)),
    ] {
        let mut g = c.benchmark_group("log_read");
        g.throughput(throughput);
        g.sample_size(10);
        g.bench_function(unit, |b| {
            b.iter(|| {
                let mut r = PartitionReader::open(dir.path(), 0).expect("open");
                let mut n = 0u64;
                let mut sum = 0usize;
                while let Some((_, payload)) = r.next().expect("read") {
                    n += 1;
                    sum += payload.len();
                }
                assert_eq!(n, RECORDS);
                black_box(sum)
            });
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_append(c, "fsync_never", FsyncPolicy::Never, 1_000_000);
    bench_append(c, "fsync_always", FsyncPolicy::Always, 200);
    bench_read(c);
}

criterion_group!(log_benches, benches);
criterion_main!(log_benches);
