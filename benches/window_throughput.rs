//! End-to-end throughput from the input log: tumbling 10 s count/sum/min/max
//! over Zipf keys, with 1 and 2 workers. Each iteration reads the whole log
//! and writes the output files, as `weir run --until-end` does.
//!
//! `WEIR_BENCH_EVENTS` sets the number of events (default 2,000,000).
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir::driver::run;
use weir::gen::{generate_zipf, ZipfParams};
use weir::job::WindowQuery;
use weir::log::LogConfig;
use weir::run::RunOptions;

// Same allocator as the `weir` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn window_throughput(c: &mut Criterion) {
    let events: u64 = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input");
    let params = ZipfParams {
        events,
        partitions: 4,
        keys: 100_000,
        rate_per_s: 100_000,
        ..ZipfParams::default()
    };
    generate_zipf(&params, &input).expect("generating input");
    let options = |workers: usize| RunOptions {
        data_dir: dir.path().join("data"),
        out_dir: dir.path().join(format!("out-{workers}")),
        inputs: vec![input.clone()],
        ingest_first: false,
        generated: None,
        query: WindowQuery {
            spec: "tumbling:10s".parse().expect("window"),
            granularity_ms: 10_000,
            lateness_ms: 5_000,
            nexmark: None,
            emit: weir_dataflows::emit::Emit::All,

            aggregates: weir_dataflows::aggregates::Aggregates::default(),
        },
        workers,
        cluster: None,
        until_end: true,
        batch_records: 8_192,
        log_config: LogConfig::default(),
        checkpoint: None,
        hooks: weir::run::RunHooks::default(),
        metrics_addr: None,
        memory_budget_bytes: None,
    };
    // Ingest once, outside the measurement (later runs find the files ingested).
    run(&options(1)).expect("warm-up run");

    let mut group = c.benchmark_group("window_from_log");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(events));
    for workers in [1usize, 2] {
        let opts = options(workers);
        group.bench_with_input(
            BenchmarkId::new("tumbling_10s_workers", workers),
            &opts,
            |b, opts| {
                b.iter(|| run(opts).expect("run"));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, window_throughput);
criterion_main!(benches);
