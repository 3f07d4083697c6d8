//! Golden files of the checkpoint store formats (`docs/formats.md` §8):
//! `tests/golden/checkpoint-v3/` holds a store of two checkpoints — delta
//! files (one empty) and a compacted base file (data file version 2), and
//! the commit stream (version 3: records with their commit timing); both
//! headers name the writer's release. `tests/golden/checkpoint-v1/` and
//! `-v2/` are the same store with version 1 data files and a version 1 and
//! a version 2 commit stream, kept to check that they still read and that
//! the stream is upgraded when a store opens it for writing.
//!
//! - **writing**: the fixed operations of [`write_golden_store`] give files
//!   byte-identical to the golden ones;
//! - **reading**: `read_commits` and `load_checkpoint` return exactly the
//!   records and updates spelled out here, and so does an independent
//!   decoder written from `docs/formats.md`.
//!
//! # Re-blessing
//! As for `tests/it/golden.rs`: only for an intended format change (with a
//! version bump, `docs/formats.md` updated, and the expectations here, which
//! are never blessed, checked by hand):
//!
//! ```text
//! WEIR_BLESS=1 cargo nextest run -E 'test(/checkpoint_store::golden::.*_today$/)'
//! cargo nextest run -E 'test(/checkpoint/)'
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir::checkpoint::format::{
    CommitRecord, CommitTiming, FileMeta, OutputLength, PartitionResume, PersistedUpdate,
};
use weir::checkpoint::store::{load_checkpoint, read_commits, CheckpointStore};

use super::upd;

fn golden_dir() -> PathBuf {
    golden_dir_version(3)
}

fn golden_dir_version(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/checkpoint-v{version}"))
}

fn bless() -> bool {
    std::env::var_os("WEIR_BLESS").is_some_and(|v| v == "1")
}

const FINGERPRINT: u64 = 0x0123_4567_89ab_cdef;
const D1_0: &str = "delta-00000000000000000001-000000.bin";
const D1_1: &str = "delta-00000000000000000001-000001.bin";
const BASE2: &str = "base-00000000000000000002.bin";
const D2_0: &str = "delta-00000000000000000002-000000.bin";

/// Checkpoint 1, part 0, as handed to `write_delta` (not consolidated: a
/// duplicate and a cancelling pair).
fn delta_1_0_input() -> Vec<PersistedUpdate> {
    vec![
        upd(255, "zz", 7, 1),
        upd(0, "apple", 1000, 1),
        upd(0, "apricot", 1000, -1),
        upd(3, "key\0bin", u64::MAX, i64::MIN),
        upd(0, "apple", 1500, 2),
        upd(3, "gone", 5, 1),
        upd(0, "", 0, 1),
        upd(0, "apple", 1000, 1),
        upd(3, "gone", 5, -1),
    ]
}

/// Checkpoint 2, part 0.
fn delta_2_0_input() -> Vec<PersistedUpdate> {
    vec![upd(1, "new", 2000, 5), upd(0, "apple", 1000, -2)]
}

/// What `delta-1-0` holds, in file order.
fn delta_1_0_expected() -> Vec<PersistedUpdate> {
    vec![
        upd(0, "", 0, 1),
        upd(0, "apple", 1000, 2),
        upd(0, "apple", 1500, 2),
        upd(0, "apricot", 1000, -1),
        upd(3, "key\0bin", u64::MAX, i64::MIN),
        upd(255, "zz", 7, 1),
    ]
}

/// The state of checkpoint 2 (base-2 = checkpoint 1 at horizon 1000, plus
/// delta-2-0).
fn state_2_expected() -> Vec<PersistedUpdate> {
    vec![
        upd(0, "apple", 1500, 2),
        upd(0, "apricot", 1000, -1),
        upd(1, "new", 2000, 5),
        upd(3, "key\0bin", u64::MAX, i64::MIN),
    ]
}

fn partitions(offset: u64, max_ts: u64) -> Vec<PartitionResume> {
    vec![
        PartitionResume {
            partition: 0,
            resume_offset: offset,
            max_ts_before: Some(max_ts),
        },
        PartitionResume {
            partition: 1,
            resume_offset: 0,
            max_ts_before: None,
        },
    ]
}

fn outputs(windows_len: u64) -> Vec<OutputLength> {
    [("windows.csv", windows_len), ("late.csv", 40)]
        .map(|(f, l)| OutputLength {
            file_name: f.to_owned(),
            length_bytes: l,
        })
        .to_vec()
}

fn record(id: u64, files: Vec<FileMeta>) -> CommitRecord {
    let (cut_time, offset, max_ts, windows) = if id == 1 {
        (2000, 12, 6000, 120)
    } else {
        (3000, 14, 7000, 180)
    };
    CommitRecord {
        checkpoint_id: id,
        cut_time,
        query_fingerprint: FINGERPRINT,
        workers_total: 2,
        files,
        partitions: partitions(offset, max_ts),
        outputs: outputs(windows),
        timing: Some(CommitTiming {
            committed_at_unix_ms: 1_700_000_000_000 + id,
            commit_latency_us: 1_500 * id,
        }),
    }
}

/// Writes the golden store into `dir` with today's code.
fn write_golden_store(dir: &Path) {
    let mut store = CheckpointStore::open(dir).unwrap();
    let files = vec![
        store.write_delta(1, 0, &mut delta_1_0_input()).unwrap(),
        store.write_delta(1, 1, &mut Vec::new()).unwrap(),
    ];
    store.commit(record(1, files)).unwrap();
    let mut files = store.compact(2, 1000, false).unwrap();
    files.push(store.write_delta(2, 0, &mut delta_2_0_input()).unwrap());
    store.commit(record(2, files)).unwrap();
}

/// Every file in `dir` but the lock, with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .filter(|(name, _)| name != "LOCK")
        .collect()
}

#[test]
fn golden_checkpoint_store_written_today() {
    let tmp = tempfile::tempdir().unwrap();
    write_golden_store(tmp.path());
    let today = snapshot(tmp.path());
    let golden = golden_dir();
    if bless() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for (name, bytes) in &today {
            std::fs::write(golden.join(name), bytes).unwrap();
        }
    }
    let names: Vec<&str> = today.keys().map(String::as_str).collect();
    assert_eq!(names, [BASE2, "commits.log", D1_0, D1_1, D2_0]);
    assert_eq!(
        snapshot(&golden),
        today,
        "the formats changed (see this module's doc), or the package version did: the data \
         files and the commit stream name the release that wrote them, so a new release \
         number is re-blessed here too"
    );
}

/// The file's metadata as a commit record must give it: size and trailer
/// CRC read from the golden file, time range spelled out.
fn meta(name: &str, min_time: u64, max_time: u64) -> FileMeta {
    meta_in(&golden_dir(), name, min_time, max_time)
}

/// [`meta`] of the file in `dir`.
fn meta_in(dir: &Path, name: &str, min_time: u64, max_time: u64) -> FileMeta {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c(&bytes[..bytes.len() - 4]), "{name}");
    FileMeta {
        name: name.to_owned(),
        size_bytes: bytes.len() as u64,
        crc32c: crc,
        min_time,
        max_time,
    }
}

#[test]
fn golden_checkpoint_store_read_back() {
    let dir = golden_dir();
    let expected = vec![
        record(1, vec![meta(D1_0, 0, u64::MAX), meta(D1_1, 0, 0)]),
        record(2, vec![meta(BASE2, 1000, u64::MAX), meta(D2_0, 1000, 2000)]),
    ];
    let commits = read_commits(&dir).unwrap();
    assert_eq!(commits, expected);
    let [r1, r2] = &commits[..] else {
        unreachable!()
    };
    let mut state_1 = delta_1_0_expected();
    assert_eq!(load_checkpoint(&dir, r1, |_| true, 0).unwrap(), state_1);
    state_1.retain(|u| u.key_group == 3 && u.time >= 6);
    assert_eq!(load_checkpoint(&dir, r1, |g| g == 3, 6).unwrap(), state_1);
    assert_eq!(
        load_checkpoint(&dir, r2, |_| true, 0).unwrap(),
        state_2_expected()
    );

    // Headers, byte by byte.
    // Version 2, the writer's release (0.1.0 blessed these files), kind,
    // checkpoint id, part.
    let d = std::fs::read(dir.join(D1_0)).unwrap();
    assert_eq!(&d[..8], b"WEIRDLT1");
    assert_eq!(
        d[8..36],
        [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let b = std::fs::read(dir.join(BASE2)).unwrap();
    assert_eq!(
        b[8..36],
        [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let c = std::fs::read(dir.join("commits.log")).unwrap();
    assert_eq!(&c[..12], b"WEIRCMT1\x03\x00\x00\x00");
    // The writer's release: 0.1.0 blessed these files.
    assert_eq!(c[12..20], [0, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(c[20..24], crc32c::crc32c(&c[..20]).to_le_bytes());

    // An independent reading, from docs/formats.md.
    assert_eq!(doc_decode(&d), delta_1_0_expected());
    assert_eq!(doc_decode(&std::fs::read(dir.join(D1_1)).unwrap()), vec![]);
    let mut state_2 = doc_decode(&b);
    state_2.extend(doc_decode(&std::fs::read(dir.join(D2_0)).unwrap()));
    let mut sums: BTreeMap<(u16, Vec<u8>, u64), i64> = BTreeMap::new();
    for u in state_2 {
        *sums.entry((u.key_group, u.data, u.time)).or_default() += u.diff;
    }
    let state_2: Vec<_> = sums
        .into_iter()
        .filter(|&(_, diff)| diff != 0)
        .map(|((key_group, data, time), diff)| PersistedUpdate {
            key_group,
            data,
            time,
            diff,
        })
        .collect();
    assert_eq!(state_2, state_2_expected());
}

#[test]
fn golden_checkpoint_stores_of_versions_1_and_2_read_and_are_upgraded_on_open() {
    for version in [1u8, 2] {
        let old = golden_dir_version(u32::from(version));
        // Version 1 records have no commit timing.
        let timing = |r: CommitRecord| {
            if version == 1 {
                CommitRecord { timing: None, ..r }
            } else {
                r
            }
        };
        let meta = |name, min_time, max_time| meta_in(&old, name, min_time, max_time);
        let expected = vec![
            timing(record(1, vec![meta(D1_0, 0, u64::MAX), meta(D1_1, 0, 0)])),
            timing(record(
                2,
                vec![meta(BASE2, 1000, u64::MAX), meta(D2_0, 1000, 2000)],
            )),
        ];
        let c = std::fs::read(old.join("commits.log")).unwrap();
        let mut magic_and_version = b"WEIRCMT1".to_vec();
        magic_and_version.extend_from_slice(&u32::from(version).to_le_bytes());
        assert_eq!(c[..12], magic_and_version[..]);
        assert_eq!(read_commits(&old).unwrap(), expected, "version {version}");
        assert_eq!(
            load_checkpoint(&old, &expected[1], |_| true, 0).unwrap(),
            state_2_expected()
        );
        // Their data files are version 1 (28-byte header, no release).
        for name in [BASE2, D1_0, D1_1, D2_0] {
            let bytes = std::fs::read(old.join(name)).unwrap();
            assert_eq!(bytes[8..12], [1, 0, 0, 0], "{name}");
        }
        assert_eq!(
            load_checkpoint(&old, &expected[0], |_| true, 0).unwrap(),
            delta_1_0_expected()
        );

        // A writer opening it rewrites the stream in the current version,
        // same records.
        let tmp = tempfile::tempdir().unwrap();
        for (name, bytes) in snapshot(&old) {
            std::fs::write(tmp.path().join(name), bytes).unwrap();
        }
        let store = CheckpointStore::open(tmp.path()).unwrap();
        assert_eq!(store.commits(), expected);
        drop(store);
        let upgraded = std::fs::read(tmp.path().join("commits.log")).unwrap();
        assert_eq!(&upgraded[..12], b"WEIRCMT1\x03\x00\x00\x00");
        assert_eq!(read_commits(tmp.path()).unwrap(), expected);
    }
}

/// Decodes a data file as `docs/formats.md` §8 describes it (trailer, then
/// index, then each group's records), checking its CRC32C.
fn doc_decode(f: &[u8]) -> Vec<PersistedUpdate> {
    let u64_at = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap());
    let n = f.len();
    let crc = u32::from_le_bytes(f[n - 4..].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c(&f[..n - 4]));
    let (index_at, count) = (u64_at(n - 20) as usize, u64_at(n - 12));
    let groups = u32::from_le_bytes(f[index_at..index_at + 4].try_into().unwrap()) as usize;
    let entry = |g: usize| index_at + 4 + 18 * g;
    let mut out = Vec::new();
    for g in 0..groups {
        let key_group = u16::from_le_bytes(f[entry(g)..entry(g) + 2].try_into().unwrap());
        let (mut at, records) = (u64_at(entry(g) + 2) as usize, u64_at(entry(g) + 10));
        let (mut data, mut time): (Vec<u8>, u64) = (Vec::new(), 0);
        for i in 0..records {
            let shared = varint(f, &mut at) as usize;
            let suffix_len = varint(f, &mut at) as usize;
            let same = i > 0 && shared == data.len() && suffix_len == 0;
            data.truncate(shared);
            let start = at;
            at += suffix_len;
            data.extend_from_slice(&f[start..at]);
            let t = varint(f, &mut at);
            time = if same { time + t } else { t };
            let z = varint(f, &mut at);
            let diff = ((z >> 1) as i64) ^ -((z & 1) as i64);
            out.push(PersistedUpdate {
                key_group,
                data: data.clone(),
                time,
                diff,
            });
        }
    }
    assert_eq!(out.len() as u64, count);
    out
}

/// An unsigned LEB128 varint at `*at`.
fn varint(f: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let b = f[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b < 0x80 {
            return v;
        }
    }
}
