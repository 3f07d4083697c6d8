//! Unit tests of ingest recovery (crash leftovers), of what identifies a
//! file, and of the error paths.

use super::*;
use crate::log::list_partitions;

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let a = write(tmp.path(), "a.csv", "ts,key,value\n1,a,1\n2,b,2\n");
    (tmp, log_dir, a)
}

fn cfg() -> LogConfig {
    LogConfig::default()
}

#[test]
fn leftover_tmp_dirs_are_removed() {
    let (_t, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    let stray = log_dir.join("t/1.tmp");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("junk"), b"x").unwrap();
    let r = ingest_files(&log_dir, "t", &[a], &cfg()).unwrap();
    assert!(r.files[0].skipped);
    assert!(!stray.exists());
}

#[test]
fn partition_renamed_before_a_crash_is_adopted() {
    let (tmp, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    // Simulate a crash between the rename and the manifest update.
    let manifest_path = log_dir.join("t").join(MANIFEST_FILE_NAME);
    write_file_atomically(&manifest_path, &Manifest::default().encode()).unwrap();
    let b = write(tmp.path(), "b.csv", "ts,key,value\n3,c,3\n");
    let report = ingest_files(&log_dir, "t", &[a.clone(), b], &cfg()).unwrap();
    assert_eq!(
        report
            .files
            .iter()
            .map(|f| (f.partition, f.records, f.skipped))
            .collect::<Vec<_>>(),
        vec![(0, 2, true), (1, 1, false)]
    );
    let manifest = Manifest::decode(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest.entries.len(), 2);
    assert_eq!(manifest.entries[0].source_path, a.to_string_lossy());
}

#[test]
fn a_marker_of_a_newer_weir_is_named_not_called_unmanaged() {
    let (_t, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    let manifest_path = log_dir.join("t").join(MANIFEST_FILE_NAME);
    write_file_atomically(&manifest_path, &Manifest::default().encode()).unwrap();
    // The partition's marker as a later version would write it: the
    // version 2 header's bytes kept, another version and release.
    let marker_path = log_dir.join("t/0").join(MARKER_FILE_NAME);
    let mut marker = std::fs::read(&marker_path).unwrap();
    marker[8..12].copy_from_slice(&3u32.to_le_bytes());
    marker[16..24].copy_from_slice(&crate::release::Release::parse("7.0.1").encode());
    let crc = crc32c::crc32c(&marker[..24]);
    marker[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&marker_path, &marker).unwrap();
    let e = ingest_files(&log_dir, "t", &[a], &cfg()).unwrap_err();
    match &e.kind {
        IngestErrorKind::ManifestCorrupt { path, reason, .. } => {
            assert_eq!(path, &marker_path);
            assert!(
                reason.contains("written by weir 7.0.1 (a newer weir)"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(marker_path.exists());
}

#[test]
fn foreign_partition_dirs_are_refused_not_deleted() {
    let (_t, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    let foreign = log_dir.join("t/7");
    std::fs::create_dir_all(&foreign).unwrap();
    let e = ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap_err();
    assert!(matches!(e.kind, IngestErrorKind::UnmanagedPartition { ref path } if *path == foreign));
    assert!(foreign.exists());

    // A topic with partitions but no manifest is not touched at all.
    let p0 = log_dir.join("u/0");
    std::fs::create_dir_all(&p0).unwrap();
    let e = ingest_files(&log_dir, "u", &[a], &cfg()).unwrap_err();
    assert!(
        matches!(e.kind, IngestErrorKind::UnmanagedTopic { .. }),
        "{e}"
    );
    assert!(p0.exists());
    assert!(!log_dir.join("u").join(MANIFEST_FILE_NAME).exists());
}

#[test]
fn missing_partition_and_corrupt_manifest_are_errors() {
    let (_t, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    let manifest_path = log_dir.join("t").join(MANIFEST_FILE_NAME);
    let good = std::fs::read(&manifest_path).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&manifest_path, &bad).unwrap();
    let e = ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap_err();
    match &e.kind {
        IngestErrorKind::ManifestCorrupt {
            path, byte_offset, ..
        } => {
            assert_eq!(path, &manifest_path);
            // The first entry starts after the 28-byte header.
            assert_eq!(*byte_offset, 28);
        }
        other => panic!("{other}"),
    }
    std::fs::write(&manifest_path, &good).unwrap();
    std::fs::remove_dir_all(log_dir.join("t/0")).unwrap();
    let e = ingest_files(&log_dir, "t", &[a], &cfg()).unwrap_err();
    assert!(
        matches!(e.kind, IngestErrorKind::MissingPartition { .. }),
        "{e}"
    );
}

#[test]
fn a_file_changing_during_ingest_is_rejected() {
    let (_t, log_dir, a) = setup();
    let topic_dir = log_dir.join("t");
    std::fs::create_dir_all(&topic_dir).unwrap();
    // Stamped before a write that changed its size and time.
    let mut before = parallel::FileStamp::of(&a).unwrap();
    before.size_bytes -= 1;
    let job = parallel::PartitionJob {
        path: a.clone(),
        recorded: a.display().to_string(),
        schema: crate::csv_input::RowSchema::Generic,
        partition: 0,
    };
    let tmp = parallel::tmp_dir(&topic_dir, 0);
    let e = parallel::write_partition(&tmp, &job, before, &cfg(), None).unwrap_err();
    assert!(matches!(e, IngestErrorKind::FileChanged { .. }), "{e}");
    assert!(!topic_dir.join("0").exists());
}

#[test]
fn invalid_topic_and_missing_file() {
    let (t, log_dir, a) = setup();
    let e = ingest_files(&log_dir, "../x", std::slice::from_ref(&a), &cfg()).unwrap_err();
    assert!(matches!(
        e.kind,
        IngestErrorKind::Log(LogError::InvalidTopic { .. })
    ));
    let missing = t.path().join("missing.csv");
    let e = ingest_files(&log_dir, "t", &[a, missing.clone()], &cfg()).unwrap_err();
    assert_eq!(e.completed.files.len(), 1);
    assert!(e.to_string().contains("missing.csv"), "{e}");
    assert_eq!(list_partitions(&log_dir, "t").unwrap(), vec![0]);
}

#[test]
fn oversized_key_names_the_line() {
    let (t, log_dir, _a) = setup();
    let key = "k".repeat(crate::log::MAX_RECORD_SIZE_BYTES);
    let big = write(
        t.path(),
        "big.csv",
        &format!("ts,key,value\n1,a,1\n2,{key},2\n"),
    );
    let e = ingest_files(&log_dir, "t", &[big], &cfg()).unwrap_err();
    match &e.kind {
        IngestErrorKind::Append { line, source, .. } => {
            assert_eq!(*line, 3);
            assert!(matches!(source, LogError::RecordTooLarge { .. }));
        }
        other => panic!("{other}"),
    }
    assert!(list_partitions(&log_dir, "t").unwrap().is_empty());
}

#[test]
fn a_file_is_its_canonical_path_not_its_content() {
    let (t, log_dir, a) = setup();
    let copy = write(t.path(), "copy.csv", &std::fs::read_to_string(&a).unwrap());
    let link = t.path().join("link.csv");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let dotted = t.path().join(".").join("a.csv");
    let files = [a.clone(), copy.clone(), dotted, link, a.clone()];
    let report = ingest_files(&log_dir, "t", &files, &cfg()).unwrap();
    let summary: Vec<_> = report
        .files
        .iter()
        .map(|f| (f.partition, f.records, f.skipped))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 2, false),
            (1, 2, false),
            (0, 2, true),
            (0, 2, true),
            (0, 2, true)
        ]
    );
    let manifest_path = log_dir.join("t").join(MANIFEST_FILE_NAME);
    let manifest = Manifest::decode(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let recorded: Vec<_> = manifest
        .entries
        .iter()
        .map(|e| e.source_path.clone())
        .collect();
    let canonical = |p: &Path| p.canonicalize().unwrap().to_str().unwrap().to_owned();
    assert_eq!(recorded, vec![canonical(&a), canonical(&copy)]);
}

#[test]
fn a_file_changed_since_its_ingest_is_refused() {
    let (t, log_dir, a) = setup();
    ingest_files(&log_dir, "t", std::slice::from_ref(&a), &cfg()).unwrap();
    let before = std::fs::read(log_dir.join("t").join(MANIFEST_FILE_NAME)).unwrap();
    write(t.path(), "a.csv", "ts,key,value\n1,a,1\n2,b,2\n3,c,3\n");
    let b = write(t.path(), "b.csv", "ts,key,value\n4,d,4\n");
    let e = ingest_files(&log_dir, "t", &[b, a.clone()], &cfg()).unwrap_err();
    match &e.kind {
        IngestErrorKind::ChangedSinceIngest {
            path,
            partition: 0,
            ingested,
            now,
        } => {
            assert_eq!(path, &a);
            assert_eq!(ingested.size_bytes + 6, now.size_bytes);
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .contains("a.csv: already ingested into partition 0"),
        "{e}"
    );
    // The file before it went in; the changed one did not.
    assert_eq!(e.completed.files.len(), 1);
    assert_eq!(list_partitions(&log_dir, "t").unwrap(), vec![0, 1]);
    let after =
        Manifest::decode(&std::fs::read(log_dir.join("t").join(MANIFEST_FILE_NAME)).unwrap())
            .unwrap();
    assert_eq!(
        after.entries[0],
        Manifest::decode(&before).unwrap().entries[0]
    );
    assert_eq!(after.entries.len(), 2);
}

/// Tees that record what happened to each partition's records.
#[derive(Default)]
struct RecordingTees {
    /// Per partition: records handed over, and whether it was written;
    /// `None` until its writer is dropped.
    seen: std::sync::Mutex<std::collections::BTreeMap<u32, Option<(u64, bool)>>>,
}

struct RecordingTee<'a> {
    tees: &'a RecordingTees,
    partition: u32,
    records: u64,
    written: bool,
}

impl tee::RecordTee for RecordingTee<'static> {
    fn record(&mut self, offset: u64, _event: crate::event::EventRef<'_>) -> bool {
        assert_eq!(offset, self.records, "offsets in order from 0");
        self.records += 1;
        true
    }

    fn written(&mut self) {
        self.written = true;
    }
}

impl Drop for RecordingTee<'_> {
    fn drop(&mut self) {
        let mut seen = self.tees.seen.lock().unwrap();
        seen.insert(self.partition, Some((self.records, self.written)));
    }
}

impl tee::IngestTees for &'static RecordingTees {
    fn writer(&self, partition: u32) -> Option<Box<dyn tee::RecordTee>> {
        self.seen.lock().unwrap().insert(partition, None);
        Some(Box::new(RecordingTee {
            tees: self,
            partition,
            records: 0,
            written: false,
        }))
    }
}

#[test]
fn tees_get_each_files_records_and_the_ones_never_started_are_dropped_at_once() {
    let (tmp, log_dir, a) = setup();
    let bad = write(tmp.path(), "bad.csv", "ts,key,value\n1,a,1\n2,b,x\n");
    let c = write(tmp.path(), "c.csv", "ts,key,value\n1,a,1\n");
    let tees: &'static RecordingTees = Box::leak(Box::default());
    let files = [a, bad, c];
    // One thread: the file after the bad one is never started.
    let planned = plan_ingest(&log_dir, "t", RowSchema::Generic, &files, &cfg()).unwrap();
    let e = planned.run(1, Some(&tees)).unwrap_err();
    assert!(matches!(e.kind, IngestErrorKind::Csv(_)), "{e}");
    let seen = tees.seen.lock().unwrap().clone();
    // a: both records, written; bad: its first record, not written; c:
    // never started, but its tee taken and dropped (its reader learns
    // that nothing comes without waiting for the files before).
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![
            (0, Some((2, true))),
            (1, Some((1, false))),
            (2, Some((0, false)))
        ]
    );
    assert_eq!(list_partitions(&log_dir, "t").unwrap(), vec![0]);
}
