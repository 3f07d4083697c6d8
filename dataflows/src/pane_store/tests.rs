//! The pane store against a plain map of every live pane's partials.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const SLIDE: u64 = 10;

/// The plain model: every live (pane, key) partial.
#[derive(Default)]
struct Model {
    panes: BTreeMap<u64, BTreeMap<String, Agg>>,
}

impl Model {
    fn insert(&mut self, pane: u64, key: &str, agg: Agg) {
        self.panes
            .entry(pane)
            .or_default()
            .entry(key.to_owned())
            .and_modify(|a| a.merge(&agg))
            .or_insert(agg);
    }

    fn evict_before(&mut self, start: u64) {
        self.panes.retain(|&p, _| p >= start);
    }

    fn aggregates(&self) -> BTreeMap<String, Agg> {
        let mut out: BTreeMap<String, Agg> = BTreeMap::new();
        for pane in self.panes.values() {
            for (key, agg) in pane {
                out.entry(key.clone())
                    .and_modify(|a| a.merge(agg))
                    .or_insert(*agg);
            }
        }
        out
    }

    fn partials(&self) -> usize {
        self.panes.values().map(BTreeMap::len).sum()
    }
}

fn store_aggregates(store: &PaneStore) -> BTreeMap<String, Agg> {
    let mut out = BTreeMap::new();
    let mut from = Some(0);
    while let Some(slot) = from {
        // A small limit exercises resuming.
        from = store.aggregates_from(slot, 3, |key, agg| {
            assert!(
                out.insert(key.as_str().to_owned(), agg).is_none(),
                "key twice"
            );
        });
    }
    out
}

fn value() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -50i64..50,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Panes enter one per slide (each with partials of several "workers"),
    /// windows of `panes` slides; after every slide the store's aggregates
    /// and sizes equal the model's, with every pane in memory or under a
    /// memory budget (0: every pane on disk as it enters).
    #[test]
    fn aggregates_equal_a_plain_fold_over_live_panes(
        panes in 1u64..8,
        slides in prop::collection::vec(
            prop::collection::vec((0u8..12, value(), 1u64..3), 0..12),
            1..40,
        ),
        budget in prop_oneof![Just(None), Just(Some(0usize)), (0usize..3000).prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(budget, dir.path());
        let mut model = Model::default();
        for (i, partials) in slides.iter().enumerate() {
            let pane = i as u64 * SLIDE;
            let batch: Vec<(Key, Agg, u64)> = partials
                .iter()
                .map(|&(k, v, copies)| (Key::new(format!("k{k}")), Agg::of(v), copies))
                .collect();
            for (key, agg, copies) in &batch {
                model.insert(pane, key.as_str(), agg.repeated(*copies));
            }
            if !batch.is_empty() {
                store.insert_pane(pane, batch);
            }
            let window_end = pane + SLIDE;
            let start = window_end.saturating_sub(panes * SLIDE);
            store.evict_before(start);
            model.evict_before(start);
            prop_assert_eq!(store_aggregates(&store), model.aggregates());
            prop_assert_eq!(store.live_partials(), model.partials());
            prop_assert_eq!(store.live_keys(), model.aggregates().len());
        }
        let spills = store.spill_counts()[0];
        if budget == Some(0) {
            prop_assert!(spills > 0 || store.is_empty(), "a zero budget spills");
        }
        // Every pane leaves: nothing is left behind, on disk either.
        store.evict_before(u64::MAX);
        prop_assert!(store.is_empty());
        prop_assert_eq!(store.live_keys(), 0);
        prop_assert_eq!(store.live_partials(), 0);
        prop_assert_eq!(store.disk_bytes(), 0);
        if budget.is_some() {
            prop_assert_eq!(std::fs::read_dir(dir.path().join("w0")).unwrap().count(), 0);
            let [spills, _, fetches, _, _, _] = store.spill_counts();
            prop_assert_eq!(spills, fetches, "every pane written is read back once");
        }
    }
}

/// A file of the spill directory `dir`.
fn first_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn store_with(budget: Option<usize>, dir: &std::path::Path) -> PaneStore {
    match budget {
        Some(budget_bytes) => PaneStore::with_spill(
            SLIDE,
            SpillConfig {
                dir: dir.join("w0"),
                budget_bytes,
            },
        )
        .unwrap(),
        None => PaneStore::new(SLIDE),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A restore stages every live pane's partials at one time, in chunks
    /// ordered by key (so panes interleave); applied, they give what the
    /// panes inserted one by one give, under any budget (a small one puts
    /// staged runs on disk too, 0 every run), and every file written is
    /// read back once.
    #[test]
    fn partials_staged_in_chunks_equal_the_panes_inserted(
        panes in prop::collection::vec(
            prop::collection::vec((0u8..12, value(), 1u64..3), 1..12),
            1..8,
        ),
        chunk in 1usize..7,
        budget in prop_oneof![Just(None), Just(Some(0usize)), (0usize..3000).prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = store_with(budget, dir.path());
        let mut inserted = PaneStore::new(SLIDE);
        let mut all: Vec<(Key, u64, Agg, u64)> = Vec::new();
        for (i, partials) in panes.iter().enumerate() {
            let pane = i as u64 * SLIDE;
            let batch: Vec<(Key, Agg, u64)> = partials
                .iter()
                .map(|&(k, v, copies)| (Key::new(format!("k{k}")), Agg::of(v), copies))
                .collect();
            all.extend(batch.iter().map(|(k, a, c)| (k.clone(), pane, *a, *c)));
            inserted.insert_pane(pane, batch);
        }
        all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let time = panes.len() as u64 * SLIDE;
        for run in all.chunks(chunk) {
            staged.stage(time, run.iter().cloned());
        }
        if budget == Some(0) {
            prop_assert!(staged.spill_counts()[0] > 0, "a zero budget spills staged runs");
        }
        staged.apply_staged_through(time);
        prop_assert!(staged.failure().is_none());
        prop_assert_eq!(store_aggregates(&staged), store_aggregates(&inserted));
        prop_assert_eq!(staged.live_partials(), inserted.live_partials());
        staged.evict_before(u64::MAX);
        prop_assert_eq!(staged.live_keys(), 0);
        prop_assert_eq!(staged.disk_bytes(), 0);
        if budget.is_some() {
            prop_assert_eq!(std::fs::read_dir(dir.path().join("w0")).unwrap().count(), 0);
            let [spills, _, fetches, _, _, _] = staged.spill_counts();
            prop_assert_eq!(spills, fetches, "every file written is read back once");
        }
    }
}

#[test]
fn panes_on_disk_merge_with_live_ones_and_flip_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpillConfig {
        dir: dir.path().join("w0"),
        budget_bytes: 0,
    };
    let mut store = PaneStore::with_spill(SLIDE, config).unwrap();
    store.insert_pane(20, [(Key::from("a"), Agg::of(3), 1)]);
    store.insert_pane(0, [(Key::from("a"), Agg::of(1), 1)]);
    store.insert_pane(10, [(Key::from("b"), Agg::of(7), 2)]);
    assert!(
        store.disk_bytes() > 0,
        "a zero budget keeps no pane in memory"
    );
    // The same pane again: read back, merged, and spilled again.
    store.insert_pane(20, [(Key::from("a"), Agg::of(-4), 1)]);
    assert_eq!(store.live_partials(), 3);
    // Leaving pane 0 flips the queue: every pane read, rewritten on disk.
    let disk_reads = store.spill_counts()[5];
    store.evict_before(10);
    assert!(store.disk_bytes() > 0);
    assert!(
        store.spill_counts()[5] >= disk_reads + 3,
        "the flip reads the three panes from disk"
    );
    let aggregates = store_aggregates(&store);
    let mut a = Agg::of(3);
    a.add(-4);
    assert_eq!(aggregates["a"], a);
    assert_eq!(aggregates["b"], Agg::of(7).repeated(2));
    // A damaged file is refused with its name, not read as other entries.
    let file = first_file(&dir.path().join("w0"));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    store.evict_before(u64::MAX);
    let message = store
        .failure()
        .expect("a damaged spill file is refused")
        .to_string();
    assert!(
        message.contains(file.to_str().unwrap()) && message.contains("corrupt at byte"),
        "{message}"
    );
    // Nothing more is spilled once the store failed.
    let written = store.spill_counts()[0];
    store.insert_pane(100, [(Key::from("c"), Agg::of(1), 1)]);
    assert_eq!(store.spill_counts()[0], written);
}

#[test]
fn a_damaged_file_of_staged_partials_fails_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = store_with(Some(0), dir.path());
    store.stage(29, [(Key::from("a"), 10, Agg::of(5), 1)]);
    assert_eq!(store.spill_counts()[0], 1, "a zero budget writes the run");
    let file = first_file(&dir.path().join("w0"));
    std::fs::write(&file, &std::fs::read(&file).unwrap()[..10]).unwrap();
    store.apply_staged_through(29);
    let message = store
        .failure()
        .expect("a truncated staged run is refused")
        .to_string();
    assert!(
        message.contains(file.to_str().unwrap()) && message.contains("corrupt at byte 10"),
        "{message}"
    );
}

#[test]
fn restored_panes_enter_at_once_and_merge_with_live_ones() {
    let mut store = PaneStore::new(SLIDE);
    // A restore brings three panes in one time, out of order.
    store.insert_pane(20, [(Key::from("a"), Agg::of(3), 1)]);
    store.insert_pane(0, [(Key::from("a"), Agg::of(1), 1)]);
    store.insert_pane(10, [(Key::from("b"), Agg::of(7), 2)]);
    // The same pane again at that time (a live partial).
    store.insert_pane(20, [(Key::from("a"), Agg::of(-4), 1)]);
    assert_eq!(store.live_partials(), 3, "one entry per key and pane");
    store.evict_before(10);
    let aggregates = store_aggregates(&store);
    let mut a = Agg::of(3);
    a.add(-4);
    assert_eq!(aggregates["a"], a);
    assert_eq!(aggregates["b"], Agg::of(7).repeated(2));
}

#[test]
fn partials_beyond_the_packed_columns_stay_exact() {
    let mut store = PaneStore::new(SLIDE);
    let huge = Agg {
        count: u64::from(u32::MAX) + 5,
        sum: crate::agg::Sum::from(i128::from(i64::MAX) * 3),
        min: -1,
        max: i64::MAX,
    };
    store.insert_pane(0, [(Key::from("hot"), huge, 1)]);
    store.insert_pane(10, [(Key::from("hot"), Agg::of(2), 1)]);
    let mut total = huge;
    total.add(2);
    assert_eq!(store_aggregates(&store)["hot"], total);
    store.evict_before(10);
    assert_eq!(store_aggregates(&store)["hot"], Agg::of(2));
}

#[test]
fn a_key_that_leaves_frees_its_slot_for_the_next() {
    let mut store = PaneStore::new(SLIDE);
    store.insert_pane(0, [(Key::from("a"), Agg::of(1), 1)]);
    store.evict_before(10);
    assert!(store.is_empty());
    store.insert_pane(10, [(Key::from("b"), Agg::of(5), 1)]);
    assert_eq!(store.live_keys(), 1);
    assert_eq!(store.keys.len(), 1, "the freed slot was reused");
    assert_eq!(store_aggregates(&store)["b"], Agg::of(5));
}

#[test]
fn staged_partials_enter_at_their_time_and_keep_their_key_slot() {
    let mut store = PaneStore::new(SLIDE);
    store.insert_pane(0, [(Key::from("a"), Agg::of(1), 1)]);
    // Released at 19 (pane 10, granule 1): staged, not yet in the window.
    store.stage(19, [(Key::from("a"), 10, Agg::of(5), 1)]);
    // A restore-like time: three panes at once, out of order.
    store.stage(
        29,
        [
            (Key::from("b"), 20, Agg::of(2), 1),
            (Key::from("c"), 10, Agg::of(3), 2),
            (Key::from("b"), 10, Agg::of(4), 1),
        ],
    );
    assert_eq!(store.first_staged_time(), Some(19));
    assert_eq!(
        store_aggregates(&store)["a"],
        Agg::of(1),
        "staged is not live"
    );
    // Pane 0 leaves: "a" has no live pane but keeps its slot for pane 10.
    store.evict_before(10);
    assert!(store.is_empty());
    store.apply_staged_through(19);
    assert_eq!(store_aggregates(&store)["a"], Agg::of(5));
    store.apply_staged_through(29);
    assert_eq!(store.first_staged_time(), None);
    let all = store_aggregates(&store);
    let mut b = Agg::of(2);
    b.add(4);
    assert_eq!((all["b"], all["c"]), (b, Agg::of(3).repeated(2)));
    assert_eq!(store.live_partials(), 4, "a@10, b@10, b@20, c@10");
    store.evict_before(20);
    assert_eq!(store_aggregates(&store).keys().collect::<Vec<_>>(), ["b"]);
}

/// The changes of each window, read a few rows at a time (resuming at the
/// positions `changes_from` returns), equal the difference between the
/// model's windows: every key whose aggregate changed, with its new
/// aggregate, and every key that left, with count 0.
#[test]
fn changes_read_in_small_steps_are_the_windows_differences() {
    let mut store = PaneStore::new(SLIDE);
    store.track_changes(crate::aggregates::Aggregates::default());
    let mut model = Model::default();
    let mut previous: BTreeMap<String, Agg> = BTreeMap::new();
    for step in 0..40u64 {
        let pane = step * SLIDE;
        let partials: Vec<(Key, Agg, u64)> = (0..(step % 7) * 3)
            .map(|k| {
                let key = format!("k{}", (k * 5 + step) % 17);
                (
                    Key::new(key.as_str()),
                    Agg::of((k as i64) - (step as i64)),
                    1,
                )
            })
            .collect();
        for (key, agg, _) in &partials {
            model.insert(pane, key.as_str(), *agg);
        }
        store.insert_pane(pane, partials);
        let window_start = (pane + SLIDE).saturating_sub(4 * SLIDE);
        store.evict_before(window_start);
        model.evict_before(window_start);
        let now = model.aggregates();
        let mut expected: BTreeMap<String, Agg> = now
            .iter()
            .filter(|(key, agg)| previous.get(*key) != Some(agg))
            .map(|(key, agg)| (key.clone(), *agg))
            .collect();
        for key in previous.keys().filter(|key| !now.contains_key(*key)) {
            expected.insert(key.clone(), crate::emit::LEFT);
        }
        let mut got = BTreeMap::new();
        let mut from = Some(0);
        while let Some(position) = from {
            from = store.changes_from(position, 2, |key, agg| {
                assert!(
                    got.insert(key.as_str().to_owned(), agg).is_none(),
                    "key twice"
                );
            });
        }
        assert_eq!(got, expected, "step {step}");
        store.clear_changes();
        previous = now;
    }
}
