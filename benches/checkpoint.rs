//! Checkpoint data: encode and decode of persisted pane partials, in MB/s
//! and records/s, comparing the format weir ships (each record bincode-encoded,
//! then the `WEIRDLT1` delta file: key groups, shared prefixes, varints,
//! CRC32C) with a plain columnar layout of the same records (one column per
//! field, fixed-width little-endian numbers, keys as lengths + bytes,
//! CRC32C); and the restore of a large checkpoint from disk (read, verify,
//! decode, consolidate, bincode-decode). Abomonation is not considered: it
//! is unsound on untrusted bytes.
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir::checkpoint::cut::key_group;
use weir::checkpoint::format::{
    consolidate, decode_data_file, encode_data_file, CommitRecord, DataFileId, PersistedUpdate,
};
use weir::checkpoint::store::{load_checkpoint, visit_checkpoint_groups};
use weir::gen::SplitMix64;
use weir::job::PaneRecord;
use weir_dataflows::{Agg, Key};

// As in the engine's binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pane partials of 100K Zipf-ish keys over a few panes, as a tap ships them.
fn records(n: usize) -> Vec<(PaneRecord, u64, i64)> {
    let mut rng = SplitMix64::new(7);
    (0..n)
        .map(|i| {
            let key = Key::new(format!("user-{:08}", rng.below(100_000)));
            let pane_start = 1_700_000_000_000 + (i as u64 % 6) * 10_000;
            let mut agg = Agg::of(rng.below(1_000) as i64);
            agg.add(rng.below(1_000) as i64);
            ((key, (pane_start, agg)), pane_start + 9_000, 1)
        })
        .collect()
}

fn persisted(records: &[(PaneRecord, u64, i64)]) -> Vec<PersistedUpdate> {
    let mut updates: Vec<PersistedUpdate> = records
        .iter()
        .map(|(record, time, diff)| PersistedUpdate {
            key_group: key_group(record.0.hash_value()),
            data: bincode::serialize(record).expect("records serialize"),
            time: *time,
            diff: *diff,
        })
        .collect();
    consolidate(&mut updates);
    updates
}

/// The columnar layout: a count, then each field as a column.
fn encode_columnar(records: &[(PaneRecord, u64, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 64);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for ((key, _), _, _) in records {
        out.extend_from_slice(&(key.as_str().len() as u32).to_le_bytes());
    }
    for ((key, _), _, _) in records {
        out.extend_from_slice(key.as_str().as_bytes());
    }
    for ((_, (pane_start, _)), _, _) in records {
        out.extend_from_slice(&pane_start.to_le_bytes());
    }
    for ((_, (_, agg)), _, _) in records {
        out.extend_from_slice(&agg.count.to_le_bytes());
    }
    for ((_, (_, agg)), _, _) in records {
        out.extend_from_slice(&agg.sum.get().to_le_bytes());
    }
    for ((_, (_, agg)), _, _) in records {
        out.extend_from_slice(&agg.min.to_le_bytes());
        out.extend_from_slice(&agg.max.to_le_bytes());
    }
    for (_, time, diff) in records {
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&diff.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_columnar(bytes: &[u8]) -> Vec<(PaneRecord, u64, i64)> {
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc32c::crc32c(body).to_le_bytes(), crc, "checksum");
    let n = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
    let mut at = 8;
    let mut take = |len: usize| {
        let s = &body[at..at + len];
        at += len;
        s
    };
    let lens: Vec<usize> = take(4 * n)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let keys: Vec<Key> = lens
        .iter()
        .map(|&len| Key::new(std::str::from_utf8(take(len)).expect("UTF-8").to_owned()))
        .collect();
    let u64s = |s: &[u8]| -> Vec<u64> {
        s.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let starts = u64s(take(8 * n));
    let counts = u64s(take(8 * n));
    let sums: Vec<i128> = take(16 * n)
        .chunks_exact(16)
        .map(|c| i128::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let min_max = u64s(take(16 * n));
    let time_diff = u64s(take(16 * n));
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let agg = Agg {
                count: counts[i],
                sum: sums[i].into(),
                min: min_max[2 * i] as i64,
                max: min_max[2 * i + 1] as i64,
            };
            (
                (key, (starts[i], agg)),
                time_diff[2 * i],
                time_diff[2 * i + 1] as i64,
            )
        })
        .collect()
}

fn bench_encode_decode(c: &mut Criterion) {
    let n = 200_000;
    let records = records(n);
    let id = DataFileId::delta(1, 0);
    let (delta_bytes, meta) = encode_data_file(id, &persisted(&records));
    let columnar_bytes = encode_columnar(&records);
    for (layout, size) in [
        ("weirdlt1", delta_bytes.len()),
        ("columnar", columnar_bytes.len()),
    ] {
        eprintln!(
            "{layout}: {n} records in {size} bytes ({:.1} bytes/record)",
            size as f64 / n as f64
        );
    }
    let mut g = c.benchmark_group("checkpoint_encode");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(delta_bytes.len() as u64));
    g.bench_function("bincode_weirdlt1", |b| {
        b.iter(|| encode_data_file(id, &persisted(black_box(&records))));
    });
    g.throughput(Throughput::Bytes(columnar_bytes.len() as u64));
    g.bench_function("columnar", |b| {
        b.iter(|| encode_columnar(black_box(&records)));
    });
    g.finish();

    let mut g = c.benchmark_group("checkpoint_decode");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(delta_bytes.len() as u64));
    g.bench_function("bincode_weirdlt1", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            decode_data_file(black_box(&delta_bytes), &meta, &|_| true, 0, &mut out).unwrap();
            decode_records(&out).len()
        });
    });
    g.throughput(Throughput::Bytes(columnar_bytes.len() as u64));
    g.bench_function("columnar", |b| {
        b.iter(|| decode_columnar(black_box(&columnar_bytes)).len());
    });
    g.finish();
}

fn bench_restore(c: &mut Criterion) {
    // A checkpoint of several files on disk, as compaction leaves it.
    let n_per_file = env_usize("WEIR_BENCH_RESTORE_RECORDS", 500_000);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut total_bytes = 0;
    for part in 0..4 {
        let id = DataFileId::delta(1, part);
        let mut recs = records(n_per_file);
        for r in &mut recs {
            r.1 += u64::from(part);
        }
        let (bytes, meta) = encode_data_file(id, &persisted(&recs));
        std::fs::write(dir.path().join(&meta.name), &bytes).unwrap();
        total_bytes += bytes.len() as u64;
        files.push(meta);
    }
    let record = CommitRecord {
        checkpoint_id: 1,
        cut_time: u64::MAX,
        query_fingerprint: 0,
        workers_total: 1,
        files,
        partitions: Vec::new(),
        outputs: Vec::new(),
        timing: None,
    };
    eprintln!("restore: {} records, {total_bytes} bytes", 4 * n_per_file);
    let mut g = c.benchmark_group("checkpoint_restore");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(total_bytes));
    g.bench_function("load_and_decode", |b| {
        b.iter(|| {
            let updates = load_checkpoint(dir.path(), &record, |_| true, 0).unwrap();
            decode_records(&updates).len()
        });
    });
    // The engine's restore: each file's index, then its key groups' byte
    // ranges, decoded straight into records (no copy, no cross-file merge).
    g.bench_function("visit_and_decode", |b| {
        b.iter(|| {
            let mut panes: Vec<(PaneRecord, u64, i64)> = Vec::new();
            visit_checkpoint_groups(
                dir.path(),
                &record,
                |_| true,
                0,
                &mut |_, data, time, diff| {
                    panes.push((
                        bincode::deserialize(data).map_err(|e| e.to_string())?,
                        time,
                        diff,
                    ));
                    Ok(())
                },
            )
            .unwrap();
            panes.len()
        });
    });
    g.finish();
}

fn decode_records(updates: &[PersistedUpdate]) -> Vec<PaneRecord> {
    updates
        .iter()
        .map(|u| bincode::deserialize(&u.data).expect("records decode"))
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

criterion_group!(benches, bench_encode_decode, bench_restore);
criterion_main!(benches);
