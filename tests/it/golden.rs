//! Golden-file tests of the on-disk formats described in `docs/formats.md`.
//!
//! `tests/golden/` holds small files written once by this code:
//! - `csv/input-0.csv`, `csv/input-1.csv`: input CSVs (the second has only
//!   the header);
//! - `log-v2/events/`: the topic `events` that ingesting them gives today
//!   (segment, index and manifest format 2, whose headers name the writer's
//!   release): `MANIFEST`, and per partition `INGEST` and `<base>.seg` /
//!   `<base>.idx` files;
//! - `log-v1/events/`: the same topic as ingest wrote it in formats 1 (no
//!   release), which today's readers and writer must still accept;
//! - `csv/windows.csv`, `csv/late.csv`: output files of fixed rows.
//!
//! The tests check, in both directions, that the formats did not change by
//! accident:
//! - **writing**: the fixed inputs of this file, ingested (segment size 200
//!   bytes, index interval 64 bytes) or formatted by today's code, give files
//!   byte-identical to the current golden ones (but for the writer release,
//!   see `spec::at_release`); so does rebuilding lost indexes and repairing
//!   a torn tail, in every version (a version 1 segment stays version 1);
//! - **reading**: today's readers (CSV, partition reader from every offset,
//!   index, manifest, marker, event codec) return exactly the records and
//!   entries spelled out here, and so does an independent decoder written
//!   from `docs/formats.md` (not from weir's code), so the document and the
//!   code agree; damaged copies of the golden files are told apart as a torn
//!   tail or as corruption, as the document says.
//!
//! # Re-blessing
//! With `WEIR_BLESS=1` in the environment the two writing tests (names
//! ending in `_today`) rewrite the golden files from today's code (then
//! compare, which passes). Bless with only those selected, since the other
//! tests read the files meanwhile, then run them all:
//!
//! ```text
//! WEIR_BLESS=1 cargo nextest run -E 'test(/golden::.*_today$/)'
//! cargo nextest run -E 'test(/golden/)'
//! ```
//!
//! Only do this for an intended format change, and then also bump that
//! format's version, update `docs/formats.md` and the expectations written
//! out in this file (they are never blessed). Golden files of a version
//! readers must still accept should be kept, in a directory of their own.
//!
//! The paths in the golden `MANIFEST` and `INGEST` files are relative
//! (`tests/golden/csv/input-0.csv`): ingest before decision 23 recorded the
//! path as given. Today's ingest records the canonical path, which depends
//! on where the package is checked out, so the writing test checks it and
//! puts the relative path in its place before comparing bytes; and a reading
//! test checks that a manifest of relative paths still makes a rerun skip the
//! files. The tests therefore expect to run in the package directory, as
//! `cargo test` and `cargo nextest` do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir::csv_input::CsvReader;
use weir::event::{decode_event, Event};
use weir::ingest::manifest::{file_identity, FileIdentity, Manifest, ManifestEntry};
use weir::ingest::{ingest_files, MANIFEST_FILE_NAME, MARKER_FILE_NAME};
use weir::job::RowSink;
use weir::log::format::{index_path, list_segments, segment_path};
use weir::log::index::{is_sealed, read_index, IndexEntry};
use weir::log::{
    partition_dir, FsyncPolicy, LogConfig, LogError, PartitionReader, PartitionWriter,
};
use weir::sink::{output_file_names, WorkerOutputs};
use weir_dataflows::{Agg, LateRow, WindowRow, MAX_EVENT_TS_MS};

use crate::support::{copy_tree, snapshot};

/// The topic of the golden log.
const TOPIC: &str = "events";
/// The input files, relative to the package directory (stored in the
/// manifest as given).
const INPUTS: [&str; 2] = [
    "tests/golden/csv/input-0.csv",
    "tests/golden/csv/input-1.csv",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The log format versions with golden files, the current one last.
const LOG_VERSIONS: [u32; 2] = [1, 2];
/// The version today's ingest writes.
const CURRENT_LOG_VERSION: u32 = LOG_VERSIONS[LOG_VERSIONS.len() - 1];

fn golden_log_dir(version: u32) -> PathBuf {
    golden_dir().join(format!("log-v{version}"))
}

fn bless() -> bool {
    std::env::var_os("WEIR_BLESS").is_some_and(|v| v == "1")
}

/// Small segments and a small index interval, so that the golden partition
/// has several segments (one holding a single oversized record) and several
/// index entries per segment.
fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 200,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Never,
    }
}

fn long_key() -> String {
    format!("long-{}", "x".repeat(245))
}

/// The content of `input-0.csv`: quoting, escapes, a line break and non-ASCII
/// in keys, an empty key, the number extremes, the largest accepted `ts`, a
/// record larger than a segment, a CRLF line end and no final line end.
fn input_0() -> String {
    [
        "ts,key,value\n",
        "0,a,1\n",
        "1000,b,-2\n",
        "1500,\"comma,key\",3\n",
        "2000,\"say \"\"hi\"\"\",-4\n",
        "2500,\"two\nlines\",5\n",
        "3000,,6\n",
        "3500,ключ,9223372036854775807\n",
        "4000,\"€\",-9223372036854775808\n",
        "1152921504606846976,max-ts,7\n",
        &format!("5000,{},8\n", long_key()),
        "5500,a,9\r\n",
        "6000,b,10",
    ]
    .concat()
}

/// The content of `input-1.csv`: no rows.
const INPUT_1: &str = "ts,key,value\n";

fn ev(ts: u64, key: &str, value: i64) -> Event {
    Event {
        ts,
        key: key.to_owned(),
        value,
    }
}

/// The events of `input-0.csv` (and of partition 0), in order.
fn expected_events() -> Vec<Event> {
    assert_eq!(MAX_EVENT_TS_MS, 1_152_921_504_606_846_976);
    vec![
        ev(0, "a", 1),
        ev(1000, "b", -2),
        ev(1500, "comma,key", 3),
        ev(2000, "say \"hi\"", -4),
        ev(2500, "two\nlines", 5),
        ev(3000, "", 6),
        ev(3500, "ключ", i64::MAX),
        ev(4000, "€", i64::MIN),
        ev(MAX_EVENT_TS_MS, "max-ts", 7),
        ev(5000, &long_key(), 8),
        ev(5500, "a", 9),
        ev(6000, "b", 10),
    ]
}

/// A segment: `(base offset, records, index entries as (relative offset,
/// byte position))`.
type Segment = (u64, u64, Vec<(u32, u32)>);

/// The segments of each partition in log format `version`.
/// Sealed segments end with the seal entry `(records, file length)`. The
/// segments of both versions hold the same records (a version 2 header is 8
/// bytes longer, and every version 1 segment but the oversized record's
/// ends at least 8 bytes below the 200-byte limit: segment 0 at 192, so
/// 200 in version 2), so only the byte positions differ.
fn expected_segments(partition: u32, version: u32) -> Vec<Segment> {
    let shift = match version {
        1 => 0,
        2 => 8,
        _ => unreachable!(),
    };
    let v1 = match partition {
        0 => vec![
            (0, 5, vec![(3, 119), (5, 192)]),
            (5, 4, vec![(2, 88), (4, 153)]),
            (9, 1, vec![(1, 302)]),
            (10, 2, vec![]),
        ],
        1 => vec![(0, 0, vec![])],
        _ => unreachable!(),
    };
    v1.into_iter()
        .map(|(base, records, entries)| {
            let entries = entries.into_iter().map(|(r, pos)| (r, pos + shift));
            (base, records, entries.collect())
        })
        .collect()
}

/// The manifest entries: partition, records, and the identity of the file.
fn expected_manifest() -> Manifest {
    let input_0_len = input_0().len() as u64;
    Manifest {
        entries: vec![
            ManifestEntry {
                partition: 0,
                records: 12,
                identity: FileIdentity {
                    size_bytes: input_0_len,
                    content_crc32c: 0x6855_F5E9,
                },
                source_path: INPUTS[0].to_owned(),
            },
            ManifestEntry {
                partition: 1,
                records: 0,
                identity: FileIdentity {
                    size_bytes: INPUT_1.len() as u64,
                    content_crc32c: 0x557C_D9C0,
                },
                source_path: INPUTS[1].to_owned(),
            },
        ],
    }
}

/// Fails unless the files under `got` are exactly those under `golden`,
/// naming each file that differs and where.
fn assert_same_files(got: &Path, golden: &Path) {
    let at_this_release = |files: BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
        let release = weir::release::THIS_RELEASE.encode();
        files
            .into_iter()
            .map(|(path, bytes)| {
                let name = path.file_name().unwrap().to_str().unwrap();
                let bytes = spec::at_release(name, &bytes, release);
                (path, bytes)
            })
            .collect()
    };
    let (got, want) = (
        at_this_release(snapshot(got)),
        at_this_release(snapshot(golden)),
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the file sets differ from {}",
        golden.display()
    );
    let mut diffs = Vec::new();
    for (path, bytes) in &got {
        let golden_bytes = &want[path];
        if bytes != golden_bytes {
            let at = bytes
                .iter()
                .zip(golden_bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(bytes.len().min(golden_bytes.len()));
            diffs.push(format!(
                "{}: {} bytes written, {} golden, first difference at byte {at}",
                path.display(),
                bytes.len(),
                golden_bytes.len()
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "today's code writes different bytes than the golden files in {} (an accidental format change?):\n{}",
        golden.display(),
        diffs.join("\n")
    );
}

/// Copies the files of `from` into `to` (one level of subdirectories).
fn assert_in_package_dir() {
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let package = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    assert_eq!(
        cwd, package,
        "the golden tests ingest by relative path and must run in the package directory"
    );
}

// ---------------------------------------------------------------------------
// Writing.

#[test]
fn golden_log_is_what_ingest_writes_today() {
    assert_in_package_dir();
    let inputs = [input_0(), INPUT_1.to_owned()];
    if bless() {
        std::fs::create_dir_all(golden_dir().join("csv")).unwrap();
        for (path, content) in INPUTS.iter().zip(&inputs) {
            std::fs::write(path, content).unwrap();
        }
    }
    for (path, content) in INPUTS.iter().zip(&inputs) {
        assert_eq!(
            std::fs::read(path).unwrap(),
            content.as_bytes(),
            "{path} differs from the input spelled out in this test"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = INPUTS.iter().map(PathBuf::from).collect();
    let report = ingest_files(tmp.path(), TOPIC, &files, &config()).unwrap();
    let records: Vec<_> = report
        .files
        .iter()
        .map(|f| (f.partition, f.records))
        .collect();
    assert_eq!(records, vec![(0, 12), (1, 0)]);
    relativize_recorded_paths(&tmp.path().join(TOPIC));

    let golden = golden_log_dir(CURRENT_LOG_VERSION).join(TOPIC);
    if bless() {
        if golden.exists() {
            std::fs::remove_dir_all(&golden).unwrap();
        }
        copy_tree(&tmp.path().join(TOPIC), &golden);
    }
    // Today's files name this binary's release; the golden ones the
    // release that blessed them (compared apart from that below).
    for (dir, release) in [
        (tmp.path().join(TOPIC), weir::release::THIS_RELEASE),
        (golden.clone(), weir::release::Release::parse("0.1.0")),
    ] {
        let files = snapshot(&dir);
        for (path, bytes) in &files {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                spec::release_of(name, bytes),
                Some(release.encode()),
                "the release in {}",
                dir.join(path).display()
            );
        }
    }
    assert_same_files(&tmp.path().join(TOPIC), &golden);
}

/// Checks that the manifest and markers under `topic_dir` record the
/// inputs' canonical paths and replaces them by the relative `INPUTS`.
fn relativize_recorded_paths(topic_dir: &Path) {
    let canonical = |p: &str| {
        Path::new(p)
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let mut files = vec![topic_dir.join(MANIFEST_FILE_NAME)];
    files.extend((0..INPUTS.len()).map(|p| topic_dir.join(p.to_string()).join(MARKER_FILE_NAME)));
    for file in files {
        let mut m = Manifest::decode(&std::fs::read(&file).unwrap()).unwrap();
        for e in &mut m.entries {
            let input = INPUTS[e.partition as usize];
            assert_eq!(e.source_path, canonical(input), "{}", file.display());
            input.clone_into(&mut e.source_path);
        }
        std::fs::write(&file, m.encode()).unwrap();
    }
}

#[test]
fn golden_indexes_are_rebuilt_and_torn_tails_repaired_byte_for_byte() {
    for version in LOG_VERSIONS {
        indexes_rebuilt_and_torn_tails_repaired(version);
    }
}

/// The golden log of `version`: its indexes rebuilt and its torn tails
/// repaired give its golden files (a segment keeps its version, and its
/// index has the same).
fn indexes_rebuilt_and_torn_tails_repaired(version: u32) {
    let golden = partition_dir(&golden_log_dir(version), TOPIC, 0);
    let segments = expected_segments(0, version);

    // Every index lost: opening the writer rebuilds them all from the data.
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&golden, tmp.path());
    for &(base, _, _) in &segments {
        std::fs::remove_file(index_path(tmp.path(), base)).unwrap();
    }
    drop(PartitionWriter::open(tmp.path(), config()).unwrap());
    assert_same_files(tmp.path(), &golden);

    // A torn write at the end of the last segment: a partial frame header,
    // then a frame with its header but only part of its payload.
    let (last_base, _, _) = *segments.last().unwrap();
    let last = segment_path(tmp.path(), last_base);
    for torn in [&[1u8, 0, 0][..], &frame(b"0123456789abcdef-torn")[..20]] {
        let mut bytes = std::fs::read(&last).unwrap();
        bytes.extend_from_slice(torn);
        std::fs::write(&last, &bytes).unwrap();
        assert_eq!(read_events(tmp.path(), 0).unwrap(), expected_events());
        drop(PartitionWriter::open(tmp.path(), config()).unwrap());
        assert_same_files(tmp.path(), &golden);
    }

    // Appending to the last segment keeps its version; the next segment
    // is the current version.
    let mut w = PartitionWriter::open(tmp.path(), config()).unwrap();
    let event = ev(7000, "appended", 11);
    let mut payload = Vec::new();
    weir::event::encode_event(event.ts, &event.key, event.value, &mut payload);
    for _ in 0..8 {
        w.append(&payload).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let bases = list_segments(tmp.path()).unwrap();
    let versions: Vec<u32> = bases
        .iter()
        .map(|&b| spec_segment(&std::fs::read(segment_path(tmp.path(), b)).unwrap()).0)
        .collect();
    let old = segments.len();
    assert!(bases.len() > old, "{bases:?}");
    assert!(
        versions[..old].iter().all(|&v| v == version),
        "{versions:?}"
    );
    assert!(
        versions[old..].iter().all(|&v| v == CURRENT_LOG_VERSION),
        "{versions:?}"
    );
    // Reopened with every index lost: each is rebuilt in its segment's
    // version, and the log reads from every offset through them.
    for &base in &bases {
        std::fs::remove_file(index_path(tmp.path(), base)).unwrap();
    }
    drop(PartitionWriter::open(tmp.path(), config()).unwrap());
    for (&base, &segment_version) in bases.iter().zip(&versions) {
        let index = std::fs::read(index_path(tmp.path(), base)).unwrap();
        assert_eq!(
            spec::spec_index(&index).0,
            segment_version,
            "index of {base}"
        );
    }
    let mut events = expected_events();
    events.extend(std::iter::repeat_n(event, 8));
    for from in 0..=events.len() {
        assert_eq!(
            read_events(tmp.path(), from as u64).unwrap(),
            events[from..],
            "version {version}, from offset {from}"
        );
    }
}

/// A whole frame of `payload`, built as the document says.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = len.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn window_rows() -> Vec<WindowRow> {
    let agg = |count, sum: i128, min, max| Agg {
        count,
        sum: sum.into(),
        min,
        max,
    };
    let row = |window_start, window_end, key: &str, agg| WindowRow {
        window_start,
        window_end,
        key: key.into(),
        agg,
    };
    vec![
        row(0, 10_000, "a", agg(2, 10, 1, 9)),
        row(0, 10_000, "comma,key", agg(1, 3, 3, 3)),
        row(0, 10_000, "say \"hi\"", agg(1, -4, -4, -4)),
        row(0, 10_000, "two\nlines", agg(1, 5, 5, 5)),
        row(0, 10_000, "", agg(1, 6, 6, 6)),
        row(
            10_000,
            20_000,
            "ключ",
            agg(2, 2 * i128::from(i64::MAX), i64::MAX, i64::MAX),
        ),
        row(
            MAX_EVENT_TS_MS,
            MAX_EVENT_TS_MS + 10_000,
            "max-ts",
            agg(1, 7, 7, 7),
        ),
    ]
}

fn late_rows() -> Vec<LateRow> {
    vec![
        LateRow {
            partition: 0,
            offset: 10,
            ts: 5500,
            key: "a".to_owned(),
            value: 9,
        },
        LateRow {
            partition: 7,
            offset: u64::MAX,
            ts: 0,
            key: "x,\"y\"".to_owned(),
            value: i64::MIN,
        },
    ]
}

#[test]
fn golden_output_csvs_are_what_the_sink_writes_today() {
    assert_eq!(
        output_file_names(2),
        ("windows-2.csv".into(), "late-2.csv".into())
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = WorkerOutputs::open(tmp.path(), 0, true).unwrap();
    sink.window_rows(&mut window_rows());
    sink.late_rows(&mut late_rows());
    sink.flush().unwrap();
    drop(sink);
    // The golden files keep their historical names.
    std::fs::rename(
        tmp.path().join("windows-0.csv"),
        tmp.path().join("windows.csv"),
    )
    .unwrap();
    std::fs::rename(tmp.path().join("late-0.csv"), tmp.path().join("late.csv")).unwrap();

    let golden = golden_dir().join("csv");
    for name in ["windows.csv", "late.csv"] {
        let got = std::fs::read(tmp.path().join(name)).unwrap();
        if bless() {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(golden.join(name), &got).unwrap();
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            std::fs::read_to_string(golden.join(name)).unwrap(),
            "{name} differs from the golden file"
        );
    }
}

mod reading;
mod spec;

use reading::read_events;
use spec::spec_segment;
