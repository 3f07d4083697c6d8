//! Idle markers (decision 29): a quiet partition whose appender writes
//! markers no longer holds back the windows of the others, and what the
//! markers change (which events are late) depends only on the log: the same
//! on every worker count and every replay, and equal to a reference.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use weir::driver::run;
use weir::event::{encode_event, encode_idle_marker};
use weir::ingest::idle::IdleMarkers;
use weir::job::WindowQuery;
use weir::log::{partition_dir, LogConfig, PartitionWriter};
use weir::run::{RowObserver, RunHooks, RunOptions, EVENTS_TOPIC};
use weir::sink::{format_late_row, format_window_row};
use weir_dataflows::reference::reference;
use weir_dataflows::{LateRow, WindowRow, WindowSpec};

use crate::support::sorted_rows;

/// A record of a test partition.
#[derive(Clone, Debug)]
enum Record {
    Event(u64, String, i64),
    Idle(u64),
}

fn write_log(data_dir: &Path, partitions: &[Vec<Record>]) {
    let log_dir = data_dir.join("log");
    let mut payload = Vec::new();
    for (p, records) in partitions.iter().enumerate() {
        let dir = partition_dir(&log_dir, EVENTS_TOPIC, p as u32);
        let mut writer = PartitionWriter::open(&dir, LogConfig::default()).unwrap();
        for record in records {
            payload.clear();
            match record {
                Record::Event(ts, key, value) => encode_event(*ts, key, *value, &mut payload),
                Record::Idle(watermark_ms) => encode_idle_marker(*watermark_ms, &mut payload),
            }
            writer.append(&payload).unwrap();
        }
        writer.sync().unwrap();
    }
}

fn options(data_dir: &Path, out_dir: &Path, query: WindowQuery, workers: usize) -> RunOptions {
    RunOptions {
        data_dir: data_dir.to_owned(),
        out_dir: out_dir.to_owned(),
        inputs: Vec::new(),
        ingest_first: false,
        generated: None,
        query,
        workers,
        cluster: None,
        until_end: true,
        batch_records: 7,
        log_config: LogConfig::default(),
        checkpoint: None,
        hooks: RunHooks::default(),
        metrics_addr: None,
        memory_budget_bytes: None,
    }
}

/// The expected window and late lines: a marker counts for the lateness
/// rule as an event at its watermark would, and adds nothing; the accepted
/// events then go through the plain reference with nothing late.
fn expected(partitions: &[Vec<Record>], query: WindowQuery) -> (Vec<String>, Vec<String>) {
    let mut accepted = Vec::new();
    let mut late = Vec::new();
    for (partition, records) in partitions.iter().enumerate() {
        let mut max_ts: Option<u64> = None;
        for (offset, record) in records.iter().enumerate() {
            let ts = match record {
                Record::Idle(watermark_ms) => *watermark_ms,
                Record::Event(ts, key, value) => {
                    if max_ts.is_some_and(|m| *ts < m.saturating_sub(query.lateness_ms)) {
                        late.push(LateRow {
                            partition: partition as u32,
                            offset: offset as u64,
                            ts: *ts,
                            key: key.clone(),
                            value: *value,
                        });
                    } else {
                        accepted.push((*ts, key.clone(), *value));
                    }
                    *ts
                }
            };
            max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
        }
    }
    let rows = reference(&[accepted], query.spec, u64::MAX).rows;
    (
        lines(&rows, format_window_row),
        lines(&late, format_late_row),
    )
}

fn lines<T>(rows: &[T], format: fn(&T, &mut Vec<u8>)) -> Vec<String> {
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = Vec::new();
            format(row, &mut line);
            String::from_utf8(line).unwrap().trim_end().to_owned()
        })
        .collect();
    lines.sort();
    lines
}

fn query(spec: WindowSpec, lateness_ms: u64) -> WindowQuery {
    WindowQuery {
        spec,
        granularity_ms: spec.default_granularity_ms(),
        lateness_ms,
        nexmark: None,
        emit: weir_dataflows::emit::Emit::All,
        aggregates: weir_dataflows::aggregates::Aggregates::default(),
    }
}

fn partition_strategy() -> impl Strategy<Value = Vec<Record>> {
    let step = prop_oneof![
        4 => (-8i64..12, prop_oneof![Just("hot"), Just("k1"), Just("k2")], -9i64..9)
            .prop_map(|(step, key, value)| (step, Some((key.to_owned(), value)))),
        1 => (-4i64..40).prop_map(|step| (step, None)),
    ];
    prop::collection::vec(step, 0..40).prop_map(|steps| {
        // Times in 250 ms units walk forward with backward jumps; a marker
        // may be ahead of every event so far, or behind (then it changes nothing).
        let mut unit = 0i64;
        steps
            .into_iter()
            .map(|(step, event)| {
                let ts = ((unit + step).max(0) as u64) * 250;
                match event {
                    Some((key, value)) => {
                        unit = (unit + step).max(0);
                        Record::Event(ts, key, value)
                    }
                    None => Record::Idle(ts),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn markers_decide_lateness_alike_on_every_worker_count(
        partitions in prop::collection::vec(partition_strategy(), 1..4),
        spec in prop_oneof![
            Just(WindowSpec::Tumbling { size_ms: 1_000 }),
            Just(WindowSpec::Sliding { size_ms: 2_000, slide_ms: 1_000 }),
        ],
        lateness_ms in prop_oneof![Just(0u64), Just(500), Just(2_000)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        write_log(&data_dir, &partitions);
        let query = query(spec, lateness_ms);
        let (rows, late) = expected(&partitions, query);
        // Workers 2 twice: a replay of the same log.
        for (run_index, workers) in [1, 2, 2, 3].into_iter().enumerate() {
            let out = dir.path().join(format!("out-{run_index}"));
            run(&options(&data_dir, &out, query, workers)).unwrap();
            prop_assert_eq!(&sorted_rows(&out, "windows"), &rows, "{} workers", workers);
            prop_assert_eq!(&sorted_rows(&out, "late"), &late, "{} workers", workers);
        }
    }
}

/// The largest window end emitted so far.
#[derive(Debug, Default)]
struct NewestEnd(AtomicU64);

impl RowObserver for NewestEnd {
    fn window_rows(&self, rows: &mut dyn Iterator<Item = &WindowRow>) {
        for row in rows {
            self.0.fetch_max(row.window_end, Ordering::Relaxed);
        }
    }
}

/// One busy partition and one that went quiet after its first event, as
/// the appender writes them with [`IdleMarkers`] on its own clock. A tailing
/// run closes the windows the busy partition has passed; without the
/// markers the quiet partition's watermark stays at its one event and no
/// window closes until the input ends.
#[test]
fn a_quiet_partition_with_markers_lets_windows_close_while_tailing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log_dir = data_dir.join("log");
    let mut writers: Vec<PartitionWriter> = (0..2)
        .map(|p| {
            PartitionWriter::open(
                &partition_dir(&log_dir, EVENTS_TOPIC, p),
                LogConfig::default(),
            )
            .unwrap()
        })
        .collect();
    let mut markers = IdleMarkers::new(2, 500, 0);
    let mut payload = Vec::new();
    let mut append = |writers: &mut [PartitionWriter], p: usize, ts: u64| {
        payload.clear();
        encode_event(ts, if p == 0 { "busy" } else { "quiet" }, 1, &mut payload);
        writers[p].append(&payload).unwrap();
    };
    append(&mut writers, 1, 0);
    markers.appended(1, 0, 0);
    // The appender's clock runs with event time: one event per 100 ms on partition 0.
    let mut written_markers = 0;
    for ts in (100..=20_000).step_by(100) {
        append(&mut writers, 0, ts);
        markers.appended(0, ts, ts);
        written_markers += markers.append_due(ts, &mut writers).unwrap();
    }
    assert!(
        written_markers >= 30,
        "a marker per 500 ms of quiet: {written_markers}"
    );
    for writer in &mut writers {
        writer.sync().unwrap();
    }

    let newest_end = Arc::new(NewestEnd::default());
    let stop = Arc::new(AtomicBool::new(false));
    let out = dir.path().join("out");
    let mut options = options(
        &data_dir,
        &out,
        query(WindowSpec::Tumbling { size_ms: 1_000 }, 0),
        2,
    );
    options.until_end = false;
    options.hooks.observer = Some(newest_end.clone() as Arc<dyn RowObserver>);
    options.hooks.stop = Some(Arc::clone(&stop));
    let engine = std::thread::spawn(move || run(&options));
    // Partition 0's watermark is 20 s, partition 1's (from its last marker)
    // at least 19.5 s: the window [18 s, 19 s) closes while the run tails.
    let deadline = Instant::now() + Duration::from_secs(60);
    while newest_end.0.load(Ordering::Relaxed) < 19_000 {
        assert!(!engine.is_finished(), "the tailing run ended by itself");
        assert!(
            Instant::now() < deadline,
            "no window closed while tailing (newest end {} ms): the quiet partition holds the frontier",
            newest_end.0.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    engine.join().unwrap().unwrap();
    let windows = sorted_rows(&out, "windows");
    assert!(
        windows.contains(&"18000,19000,busy,10,10,1,1".to_owned()),
        "{windows:?}"
    );
    assert!(
        windows.contains(&"0,1000,quiet,1,1,1,1".to_owned()),
        "{windows:?}"
    );
}

/// Three busy partitions with a few late events, and one that goes quiet
/// early, then gets markers from [`IdleMarkers`] on a simulated appender
/// clock, and later a few events behind those markers (late because of them).
fn busy_and_quiet_partitions(events_per_partition: u64) -> Vec<Vec<Record>> {
    let mut rng = weir::gen::SplitMix64::new(29);
    let mut partitions: Vec<Vec<Record>> = vec![Vec::new(); 4];
    let mut markers = IdleMarkers::new(4, 200, 0);
    for step in 0..events_per_partition {
        let clock_ms = step * 10;
        for (p, records) in partitions.iter_mut().enumerate() {
            let quiet = p == 3 && step > events_per_partition / 10;
            if quiet && step % 997 != 0 {
                continue;
            }
            // Mostly in order; one in 50 up to 4 s back (late with 2 s lateness).
            let back_ms = if rng.below(50) == 0 {
                rng.below(4_000)
            } else {
                0
            };
            let ts = clock_ms.saturating_sub(back_ms);
            let key = format!("k{}", rng.below(40));
            records.push(Record::Event(ts, key, rng.below(100) as i64 - 20));
            if !quiet {
                markers.appended(p, ts, clock_ms);
            }
        }
        for (p, watermark_ms) in markers.due(clock_ms) {
            partitions[p].push(Record::Idle(watermark_ms));
        }
    }
    partitions
}

/// `kill -9` of engine and sidecar at random moments while they run on a
/// log with idle markers (`weir run` on the data dir's log, no `--input`):
/// the restores resume behind and after markers, and the output equals a
/// failure-free run, which equals the reference.
#[test]
fn a_log_with_markers_recovers_exactly_once_across_kills() {
    use crate::kill_clock::{crash_until_done, timed, KillClock};
    use crate::support::{assert_success, log_run_args, weir};

    let dir = tempfile::tempdir().unwrap();
    let partitions = busy_and_quiet_partitions(40_000);
    let markers = partitions[3]
        .iter()
        .filter(|r| matches!(r, Record::Idle(_)))
        .count();
    assert!(markers > 100, "{markers} markers");
    let log_data = dir.path().join("log-data");
    write_log(&log_data, &partitions);
    let query = query(
        WindowSpec::Sliding {
            size_ms: 20_000,
            slide_ms: 5_000,
        },
        2_000,
    );
    let (rows, late) = expected(&partitions, query);
    assert!(
        late.len() > 100 && rows.len() > 1_000,
        "{} late, {} rows",
        late.len(),
        rows.len()
    );

    let data_with_log = |name: &str| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(log_data.join("log"), data.join("log")).unwrap();
        data
    };
    let args = |data: &Path, out: &Path, workers: u64| {
        log_run_args(data, out, workers, &["--checkpoint-interval", "20ms"])
    };
    let reference_out = dir.path().join("ref-out");
    let mut reference_args = args(&data_with_log("ref"), &reference_out, 2);
    reference_args.push("--no-checkpoint".to_owned());
    let (output, reference) = timed(|| weir().args(&reference_args).output().unwrap());
    assert_success(&output, "failure-free run");
    assert_eq!(
        sorted_rows(&reference_out, "windows"),
        rows,
        "the CLI on the log vs the reference"
    );
    assert_eq!(sorted_rows(&reference_out, "late"), late);

    let mut clock = KillClock::new(13, reference);
    let (target, mut kills, mut rounds) = (4, 0, 0);
    while kills < target && rounds < KillClock::max_rounds(target) {
        rounds += 1;
        let data = data_with_log(&format!("data-{rounds}"));
        let out = dir.path().join(format!("out-{rounds}"));
        let round_kills = crash_until_done(&mut clock, |workers| args(&data, &out, workers));
        kills += round_kills;
        assert_eq!(
            sorted_rows(&out, "windows"),
            rows,
            "round {rounds}: window rows"
        );
        assert_eq!(sorted_rows(&out, "late"), late, "round {rounds}: late rows");
    }
    assert!(kills > 0, "no kill landed in {rounds} rounds");
    eprintln!(
        "{kills} kills over {rounds} rounds, {markers} markers, {} late rows",
        late.len()
    );
}
