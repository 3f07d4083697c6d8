//! Reading the golden files back with today's readers, and damaged copies.

use super::spec::{spec_event, spec_index, spec_manifest};
#[allow(clippy::wildcard_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Reading.

pub(super) fn read_events(dir: &Path, from: u64) -> Result<Vec<Event>, LogError> {
    let mut r = PartitionReader::open(dir, from)?;
    let mut out = Vec::new();
    while let Some((offset, payload)) = r.next()? {
        assert_eq!(offset, from + out.len() as u64);
        out.push(decode_event(payload).unwrap().to_event());
    }
    Ok(out)
}

#[test]
fn golden_input_csv_reads_as_expected() {
    let mut r = CsvReader::open(&golden_dir().join("csv/input-0.csv")).unwrap();
    let mut got = Vec::new();
    while let Some(e) = r.next_record().unwrap() {
        got.push(e.to_event());
    }
    assert_eq!(got, expected_events());
    let mut r = CsvReader::open(&golden_dir().join("csv/input-1.csv")).unwrap();
    assert!(r.next_record().unwrap().is_none());
}

#[test]
fn golden_log_reads_as_expected() {
    for version in LOG_VERSIONS {
        log_reads_as_expected(version);
    }
}

fn log_reads_as_expected(version: u32) {
    let log_dir = golden_log_dir(version);
    let all_events = [expected_events(), Vec::new()];
    for (partition, events) in (0..).zip(&all_events) {
        let dir = partition_dir(&log_dir, TOPIC, partition);
        let segments = expected_segments(partition, version);
        let bases: Vec<u64> = segments.iter().map(|s| s.0).collect();
        assert_eq!(list_segments(&dir).unwrap(), bases, "partition {partition}");

        let mut spec_events = Vec::new();
        for (i, (base, records, entries)) in segments.iter().enumerate() {
            let seg = std::fs::read(segment_path(&dir, *base)).unwrap();
            let (seg_version, seg_base, frames) = spec_segment(&seg);
            assert_eq!((seg_version, seg_base), (version, *base));
            assert_eq!(frames.len() as u64, *records);
            spec_events.extend(frames.iter().map(|(_, p)| spec_event(p)));

            let idx_path = index_path(&dir, *base);
            let (idx_version, idx_base, spec_entries) =
                spec_index(&std::fs::read(&idx_path).unwrap());
            assert_eq!((idx_version, idx_base), (version, *base));
            assert_eq!(&spec_entries, entries, "index of segment {base}");
            let got: Vec<(u32, u32)> = read_index(&idx_path, *base, seg.len() as u64)
                .iter()
                .map(|e: &IndexEntry| (e.relative_offset, e.byte_pos))
                .collect();
            assert_eq!(&got, entries);
            let sealed = i + 1 < segments.len();
            assert_eq!(
                is_sealed(
                    &read_index(&idx_path, *base, seg.len() as u64),
                    seg.len() as u64
                ),
                sealed
            );
            // Every entry points at the frame of its record (the seal entry
            // at the end of the file).
            for &(rel, pos) in entries {
                let at = frames.get(rel as usize).map_or(seg.len() as u32, |f| f.0);
                assert_eq!(pos, at, "index entry ({rel}, {pos}) of segment {base}");
            }
        }
        assert_eq!(&spec_events, events, "partition {partition} by the spec");

        for from in 0..=events.len() {
            assert_eq!(
                read_events(&dir, from as u64).unwrap(),
                events[from..],
                "partition {partition} from offset {from}"
            );
        }
    }
}

#[test]
fn golden_manifest_and_markers_read_as_expected() {
    for version in LOG_VERSIONS {
        manifest_and_markers_read_as_expected(version);
    }
}

fn manifest_and_markers_read_as_expected(version: u32) {
    let topic_dir = golden_log_dir(version).join(TOPIC);
    let expected = expected_manifest();
    for e in &expected.entries {
        let id = file_identity(
            &golden_dir()
                .join("csv")
                .join(Path::new(&e.source_path).file_name().unwrap()),
        )
        .unwrap();
        assert_eq!(id, e.identity, "identity of {}", e.source_path);
    }
    let bytes = std::fs::read(topic_dir.join(MANIFEST_FILE_NAME)).unwrap();
    assert_eq!(Manifest::decode(&bytes).unwrap(), expected);
    assert_eq!(spec_manifest(&bytes), (version, expected.clone()));
    for e in &expected.entries {
        let marker = topic_dir
            .join(e.partition.to_string())
            .join(MARKER_FILE_NAME);
        let bytes = std::fs::read(marker).unwrap();
        let one = Manifest {
            entries: vec![e.clone()],
        };
        assert_eq!(Manifest::decode(&bytes).unwrap(), one);
        assert_eq!(spec_manifest(&bytes), (version, one));
    }
}

#[test]
fn golden_manifest_of_paths_as_given_keeps_a_rerun_idempotent() {
    for version in LOG_VERSIONS {
        rerun_is_idempotent(version);
    }
}

fn rerun_is_idempotent(version: u32) {
    assert_in_package_dir();
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&golden_log_dir(version), tmp.path());
    let before = snapshot(tmp.path());
    let as_given: Vec<PathBuf> = INPUTS.iter().map(PathBuf::from).collect();
    let canonical: Vec<PathBuf> = as_given.iter().map(|p| p.canonicalize().unwrap()).collect();
    for files in [as_given, canonical] {
        let report = ingest_files(tmp.path(), TOPIC, &files, &config()).unwrap();
        let summary: Vec<_> = report
            .files
            .iter()
            .map(|f| (f.partition, f.records, f.skipped))
            .collect();
        assert_eq!(summary, vec![(0, 12, true), (1, 0, true)]);
    }
    assert_eq!(snapshot(tmp.path()), before);
}

/// Fails unless `r` is [`LogError::Corrupt`] of `file` at `at`, for `reason`.
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, LogError>, file: &Path, at: u64, reason: &str) {
    match r {
        Err(LogError::Corrupt {
            path,
            byte_offset,
            reason: got,
        }) => {
            assert_eq!((path.as_path(), byte_offset), (file, at), "{got}");
            assert!(got.contains(reason), "{got}");
        }
        other => panic!(
            "expected corruption of {} at {at}, got {other:?}",
            file.display()
        ),
    }
}

#[test]
fn damaged_golden_copies_are_torn_tails_or_corruption() {
    for version in LOG_VERSIONS {
        damaged_copies_are_torn_tails_or_corruption(version);
    }
}

fn damaged_copies_are_torn_tails_or_corruption(version: u32) {
    let golden = partition_dir(&golden_log_dir(version), TOPIC, 0);
    let segments = expected_segments(0, version);
    let events = expected_events();
    let fresh_copy = || {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&golden, tmp.path());
        tmp
    };

    // A torn tail of the last segment is the current end of the data.
    let tmp = fresh_copy();
    let last = segment_path(tmp.path(), segments.last().unwrap().0);
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - 1).unwrap();
    assert_eq!(
        read_events(tmp.path(), 0).unwrap(),
        events[..events.len() - 1]
    );

    // The same cut in a sealed segment is corruption.
    let tmp = fresh_copy();
    let (first_base, first_records, _) = segments[0];
    let first = segment_path(tmp.path(), first_base);
    let len = std::fs::metadata(&first).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap();
    f.set_len(len - 1).unwrap();
    let frame_at = {
        let golden_seg = std::fs::read(segment_path(&golden, first_base)).unwrap();
        u64::from(spec_segment(&golden_seg).2.last().unwrap().0)
    };
    assert_corrupt(
        read_events(tmp.path(), 0),
        &first,
        frame_at,
        "incomplete record",
    );
    // (Reading from the next segment on does not touch the damaged one.)
    assert_eq!(
        read_events(tmp.path(), first_records).unwrap(),
        events[first_records as usize..]
    );

    // A flipped length byte is corruption, not a torn tail, even in the
    // last segment; and so is a flipped payload byte. The writer refuses
    // both instead of truncating.
    let (last_base, _, _) = *segments.last().unwrap();
    let golden_last = std::fs::read(segment_path(&golden, last_base)).unwrap();
    let (_, _, frames) = spec_segment(&golden_last);
    let last_frame = frames.last().unwrap().0 as usize;
    for (flip_at, reason) in [
        (last_frame + 1, "length checksum mismatch"),
        (last_frame + 12, "payload checksum mismatch"),
    ] {
        let tmp = fresh_copy();
        let last = segment_path(tmp.path(), last_base);
        let mut bytes = golden_last.clone();
        bytes[flip_at] ^= 0x04;
        std::fs::write(&last, bytes).unwrap();
        assert_corrupt(read_events(tmp.path(), 0), &last, last_frame as u64, reason);
        assert_corrupt(
            PartitionWriter::open(tmp.path(), config()).map(drop),
            &last,
            last_frame as u64,
            reason,
        );
    }
}
