//! The pane store's work per slide, by window length: each iteration slides
//! a window over `SLIDES` panes of `KEYS_PER_PANE` partials (enter, leave,
//! and the two-stack pass once per window length) and reads every key's
//! aggregate once per slide, as `--emit all` does. With O(1) amortized work
//! per partial, the time per partial does not grow with the panes per
//! window (60 vs 3,600: a 1 h / 1 min vs a 1 h / 1 s window); reading the
//! aggregates costs one step per live key and slide in both.
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_dataflows::pane_store::PaneStore;
use weir_dataflows::{Agg, Key};

const KEYS: u64 = 10_000;
const KEYS_PER_PANE: u64 = 1_000;
const SLIDES: u64 = 7_200;

fn slide_windows(panes_per_window: u64, keys: &[Key], read_rows: bool) -> u64 {
    let mut store = PaneStore::new(1);
    let mut seen = 0u64;
    for pane in 0..SLIDES {
        // A deterministic spread of keys and values per pane.
        let partials = (0..KEYS_PER_PANE).map(|i| {
            let k = (pane * 7_919 + i * 104_729) % KEYS;
            let value = ((pane * 31 + i * 17) % 2_001) as i64 - 1_000;
            (keys[k as usize].clone(), Agg::of(value), 1)
        });
        store.insert_pane(pane, partials);
        store.evict_before((pane + 1).saturating_sub(panes_per_window));
        if read_rows {
            let mut from = Some(0);
            while let Some(slot) = from {
                from = store.aggregates_from(slot, usize::MAX, |_, agg| seen += agg.count);
            }
        }
    }
    seen + store.live_partials() as u64
}

fn pane_store(c: &mut Criterion) {
    let keys: Vec<Key> = (0..KEYS).map(|k| Key::new(format!("key{k}"))).collect();
    let mut group = c.benchmark_group("pane_store_slide");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SLIDES * KEYS_PER_PANE));
    for panes in [60u64, 3_600] {
        group.bench_with_input(
            BenchmarkId::new("state_only_panes", panes),
            &panes,
            |b, &panes| {
                b.iter(|| slide_windows(panes, &keys, false));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("with_rows_panes", panes),
            &panes,
            |b, &panes| {
                b.iter(|| slide_windows(panes, &keys, true));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pane_store);
criterion_main!(benches);
