//! Integration tests of the input log: round trips, segment rolls, reopen,
//! torn-tail repair, byte flips, index loss and concurrent tailing.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use weir::log::{
    FsyncPolicy, LogConfig, LogError, PartitionReader, PartitionWriter, MAX_RECORD_SIZE_BYTES,
};

fn config(segment_size_bytes: u64, index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_size_bytes,
        index_interval_bytes,
        fsync: FsyncPolicy::Never,
    }
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("record-{i}-{}", "x".repeat(i % 23)).into_bytes())
        .collect()
}

fn write_all(dir: &Path, cfg: LogConfig, records: &[Vec<u8>]) {
    let mut w = PartitionWriter::open(dir, cfg).unwrap();
    let first = w.next_offset();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(w.append(r).unwrap(), first + i as u64);
    }
    w.sync().unwrap();
}

/// Reads from `from` to the current end.
fn read_from(dir: &Path, from: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let mut r = PartitionReader::open(dir, from)?;
    let mut out = Vec::new();
    while let Some((offset, payload)) = r.next()? {
        out.push((offset, payload.to_vec()));
    }
    Ok(out)
}

fn numbered(records: &[Vec<u8>], from: u64) -> Vec<(u64, Vec<u8>)> {
    records
        .iter()
        .enumerate()
        .skip(from as usize)
        .map(|(i, r)| (i as u64, r.clone()))
        .collect()
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_random_sizes(
        sizes in proptest::collection::vec(0usize..400, 0..120),
        segment_size_bytes in 1u64..4000,
        index_interval_bytes in 0u64..500,
        from_seed: u64,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        write_all(tmp.path(), config(segment_size_bytes, index_interval_bytes), &records);
        prop_assert_eq!(read_from(tmp.path(), 0).unwrap(), numbered(&records, 0));
        let from = from_seed % (records.len() as u64 + 1);
        prop_assert_eq!(read_from(tmp.path(), from).unwrap(), numbered(&records, from));
    }
}

#[test]
fn tiny_segments_roll_and_every_offset_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let records = payloads(200);
    write_all(tmp.path(), config(120, 30), &records);
    let segments = files_with_ext(tmp.path(), "seg");
    assert!(segments.len() > 40, "only {} segments", segments.len());
    assert_eq!(files_with_ext(tmp.path(), "idx").len(), segments.len());
    for from in 0..=records.len() as u64 {
        assert_eq!(
            read_from(tmp.path(), from).unwrap(),
            numbered(&records, from),
            "from {from}"
        );
    }
    match PartitionReader::open(tmp.path(), 201) {
        Err(LogError::OffsetOutOfRange {
            requested: 201,
            end: 200,
            ..
        }) => {}
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_record_larger_than_a_segment_goes_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let records = vec![vec![1u8; 10], vec![2u8; 5000], vec![3u8; 10], vec![4u8; 10]];
    write_all(tmp.path(), config(1000, 0), &records);
    let names: Vec<String> = files_with_ext(tmp.path(), "seg")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // [0] [1: the big one alone] [2, 3]
    assert_eq!(
        names,
        [
            "00000000000000000000.seg",
            "00000000000000000001.seg",
            "00000000000000000002.seg"
        ]
    );
    assert_eq!(read_from(tmp.path(), 0).unwrap(), numbered(&records, 0));
}

#[test]
fn maximal_record_round_trips_and_larger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(tmp.path(), config(1 << 20, 4096)).unwrap();
    let big = vec![0xA5u8; MAX_RECORD_SIZE_BYTES];
    assert_eq!(w.append(b"small").unwrap(), 0);
    assert_eq!(w.append(&big).unwrap(), 1);
    assert!(matches!(
        w.append(&vec![0u8; MAX_RECORD_SIZE_BYTES + 1]),
        Err(LogError::RecordTooLarge { .. })
    ));
    assert_eq!(w.append(b"after").unwrap(), 2);
    drop(w);
    let got = read_from(tmp.path(), 1).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].1 == big && got[1].1 == b"after");
}

#[test]
fn reopen_continues_appending_with_any_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let records = payloads(90);
    let policies = [
        FsyncPolicy::Never,
        FsyncPolicy::Always,
        FsyncPolicy::Interval { interval_ms: 0 },
    ];
    for (i, chunk) in records.chunks(30).enumerate() {
        let cfg = LogConfig {
            fsync: policies[i],
            ..config(200 + 300 * i as u64, 50)
        };
        let w = PartitionWriter::open(tmp.path(), cfg).unwrap();
        assert_eq!(w.next_offset(), 30 * i as u64);
        drop(w);
        write_all(tmp.path(), cfg, chunk);
    }
    assert_eq!(read_from(tmp.path(), 0).unwrap(), numbered(&records, 0));
    assert_eq!(read_from(tmp.path(), 45).unwrap(), numbered(&records, 45));
}

#[test]
fn empty_partition_reads_nothing_and_waits() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(read_from(tmp.path(), 0).unwrap().is_empty());
    assert!(matches!(
        PartitionReader::open(tmp.path(), 1),
        Err(LogError::OffsetBeforeStart { .. } | LogError::OffsetOutOfRange { .. })
    ));
    let mut r = PartitionReader::open(tmp.path(), 0).unwrap();
    assert!(r.next().unwrap().is_none());
    write_all(tmp.path(), config(1000, 10), &payloads(3));
    assert_eq!(r.next().unwrap().map(|(o, _)| o), Some(0));
}

/// Truncates the last segment at every byte inside its last record: the
/// reader stops before it, the writer repairs the tail and appends again.
#[test]
fn torn_tail_at_every_byte_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("original");
    let records = payloads(40);
    write_all(&original, config(300, 20), &records);
    let last_seg = files_with_ext(&original, "seg").pop().unwrap();
    let seg_len = std::fs::metadata(&last_seg).unwrap().len();
    let last_frame_len = 12 + records.last().unwrap().len() as u64;
    for cut in seg_len - last_frame_len..seg_len {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&original, &dir);
        let seg = dir.join(last_seg.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // A reader sees the incomplete record as the end of data.
        assert_eq!(
            read_from(&dir, 0).unwrap(),
            numbered(&records[..39], 0),
            "cut {cut}"
        );
        let mut w = PartitionWriter::open(&dir, config(300, 20)).unwrap();
        assert_eq!(w.next_offset(), 39);
        assert_eq!(w.append(b"new").unwrap(), 39);
        drop(w);
        let mut expect = numbered(&records[..39], 0);
        expect.push((39, b"new".to_vec()));
        assert_eq!(read_from(&dir, 0).unwrap(), expect, "cut {cut}");
        assert_eq!(read_from(&dir, 30).unwrap(), expect[30..], "cut {cut}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn torn_segment_header_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let records = payloads(10);
    write_all(tmp.path(), config(1 << 20, 20), &records);
    // As if a crash happened while the next segment was being created.
    let next = tmp.path().join(format!("{:020}.seg", 10));
    for len in 0..weir::log::format::SEGMENT_HEADER_LEN_BYTES {
        std::fs::write(&next, &weir::log::format::encode_segment_header(10)[..len]).unwrap();
        assert_eq!(read_from(tmp.path(), 0).unwrap(), numbered(&records, 0));
        let mut w = PartitionWriter::open(tmp.path(), config(1 << 20, 20)).unwrap();
        assert_eq!(w.append(b"x").unwrap(), 10);
        drop(w);
        assert_eq!(
            read_from(tmp.path(), 10).unwrap(),
            vec![(10, b"x".to_vec())]
        );
        std::fs::remove_file(&next).unwrap();
        std::fs::remove_file(tmp.path().join(format!("{:020}.idx", 10))).unwrap();
    }
}

struct FlipFixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    records: Vec<Vec<u8>>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn flip_fixture() -> FlipFixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let records = payloads(30);
    write_all(&dir, config(250, 40), &records);
    let mut paths = files_with_ext(&dir, "seg");
    paths.extend(files_with_ext(&dir, "idx"));
    let files = paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    FlipFixture {
        _tmp: tmp,
        dir,
        records,
        files,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Flip one byte anywhere in any segment or index file: reading returns
    /// exactly the original records up to an error that names the flipped
    /// segment and a byte offset at or before the flip, never other bytes
    /// and never a panic. A flipped index is only a hint: all records read.
    #[test]
    fn flipped_byte_is_detected_never_returned(file_pick: usize, pos_pick: usize, mask in 1u8..=255, from_pick: u64) {
        let fx = flip_fixture();
        let (path, bytes) = &fx.files[file_pick % fx.files.len()];
        let pos = pos_pick % bytes.len();
        let mut bad = bytes.clone();
        bad[pos] ^= mask;
        std::fs::write(path, &bad).unwrap();
        let is_segment = path.extension().unwrap() == "seg";

        let from = from_pick % (fx.records.len() as u64 + 1);
        for start in [0, from] {
            let mut reader = match PartitionReader::open(&fx.dir, start) {
                Ok(r) => r,
                Err(LogError::Corrupt { path: p, byte_offset, .. }) => {
                    prop_assert!(is_segment && p == *path && byte_offset <= pos as u64);
                    continue;
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
            };
            let mut expect = start;
            loop {
                match reader.next() {
                    Ok(Some((offset, payload))) => {
                        prop_assert_eq!(offset, expect);
                        prop_assert_eq!(payload, &fx.records[offset as usize][..]);
                        expect += 1;
                    }
                    Ok(None) => {
                        prop_assert!(!is_segment || start > 0, "flip at {} of {} undetected", pos, path.display());
                        prop_assert_eq!(expect, fx.records.len() as u64);
                        break;
                    }
                    Err(LogError::Corrupt { path: p, byte_offset, reason }) => {
                        prop_assert!(is_segment, "index flip caused {}", reason);
                        prop_assert_eq!(&p, path);
                        prop_assert!(byte_offset <= pos as u64, "{} > {}: {}", byte_offset, pos, reason);
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
                }
            }
        }
        // The writer either opens (flip outside what it checks) or reports corruption.
        match PartitionWriter::open(&fx.dir, config(250, 40)) {
            Ok(_) | Err(LogError::Corrupt { .. }) => {}
            Err(e) => return Err(TestCaseError::fail(format!("unexpected writer error {e}"))),
        }
    }
}

#[test]
fn missing_or_damaged_index_still_reads_and_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let records = payloads(300);
    write_all(tmp.path(), config(4000, 100), &records);
    let indexes = files_with_ext(tmp.path(), "idx");
    assert!(indexes.len() > 2);
    let good: Vec<Vec<u8>> = indexes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let check_all = |what: &str| {
        for from in (0..=300).step_by(7) {
            assert_eq!(
                read_from(tmp.path(), from).unwrap(),
                numbered(&records, from),
                "{what}, from {from}"
            );
        }
    };
    check_all("intact");
    // Swapped indexes (valid checksums, wrong segment) are ignored.
    std::fs::write(&indexes[0], &good[1]).unwrap();
    std::fs::write(&indexes[1], &good[0]).unwrap();
    check_all("swapped");
    for (p, g) in indexes.iter().zip(&good) {
        let mut b = g.clone();
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
        std::fs::write(p, &b).unwrap();
    }
    check_all("flipped");
    for p in &indexes {
        std::fs::write(p, b"garbage").unwrap();
    }
    check_all("garbage");
    for p in &indexes {
        std::fs::remove_file(p).unwrap();
    }
    check_all("deleted");
    // The writer rebuilds them, sealed ones with their seal entry.
    drop(PartitionWriter::open(tmp.path(), config(4000, 100)).unwrap());
    let rebuilt: Vec<Vec<u8>> = indexes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(rebuilt, good);
}

#[test]
fn corruption_in_sealed_segment_or_a_gap_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path(), config(300, 50), &payloads(60));
    let segs = files_with_ext(tmp.path(), "seg");
    // A truncated sealed segment (with its index gone, so the writer scans it).
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&segs[1], &bytes).unwrap();
    std::fs::remove_file(segs[1].with_extension("idx")).unwrap();
    for err in [
        PartitionWriter::open(tmp.path(), config(300, 50)).err(),
        read_from(tmp.path(), 0).err(),
    ] {
        match err {
            Some(LogError::Corrupt { path, .. }) => assert_eq!(path, segs[1]),
            other => panic!("{other:?}"),
        }
    }
    // A missing middle segment.
    std::fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        read_from(tmp.path(), 0),
        Err(LogError::Corrupt { .. })
    ));
    assert!(matches!(
        PartitionWriter::open(tmp.path(), config(300, 50)),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn reader_follows_a_concurrent_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let records = payloads(3000);
    let expected = records.clone();
    let mut w = PartitionWriter::open(&dir, config(500, 64)).unwrap();
    let mut r = PartitionReader::open(&dir, 0).unwrap();
    let writer = std::thread::spawn(move || {
        for (i, rec) in records.iter().enumerate() {
            w.append(rec).unwrap();
            if i % 7 == 0 {
                w.flush().unwrap();
            }
        }
    });
    let mut next = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while next < expected.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "stuck at {next}");
        match r.next().unwrap() {
            Some((offset, payload)) => {
                assert_eq!(offset, next);
                assert_eq!(payload, &expected[offset as usize][..]);
                next += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    writer.join().unwrap();
    assert!(r.next().unwrap().is_none());
}
