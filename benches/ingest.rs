//! Ingest throughput: four `ts,key,value` CSV files (Zipf keys, as `weir gen
//! zipf` writes them) into a fresh log, parsed and written by 1 and by 2
//! threads, in rows/s and CSV bytes/s. Files are in the page cache.
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir::csv_input::RowSchema;
use weir::gen::{generate_zipf, ZipfParams};
use weir::ingest::ingest_files_with_threads;
use weir::log::LogConfig;

fn bench_ingest(c: &mut Criterion) {
    let rows: u64 = std::env::var("WEIR_BENCH_INGEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let input = tempfile::tempdir().expect("temp dir");
    let params = ZipfParams {
        events: rows,
        partitions: 4,
        ..ZipfParams::default()
    };
    let files: Vec<PathBuf> = generate_zipf(&params, input.path()).expect("generating the input");
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("input file").len())
        .sum();
    for threads in [1, 2] {
        for (unit, throughput) in [
            ("rows", Throughput::Elements(rows)),
            ("csv_bytes", Throughput::Bytes(bytes)),
        ] {
            let mut g = c.benchmark_group(format!("ingest_{threads}_threads"));
            g.throughput(throughput);
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(8));
            g.bench_function(unit, |b| {
                b.iter_batched(
                    || tempfile::tempdir().expect("temp dir"),
                    |dir| {
                        let log_dir = dir.path().join("log");
                        let report = ingest_files_with_threads(
                            &log_dir,
                            "events",
                            RowSchema::Generic,
                            &files,
                            &LogConfig::default(),
                            threads,
                        )
                        .expect("ingest");
                        assert_eq!(report.files.len(), files.len());
                        dir
                    },
                    BatchSize::PerIteration,
                );
            });
            g.finish();
        }
    }
}

criterion_group!(ingest_benches, bench_ingest);
criterion_main!(ingest_benches);
