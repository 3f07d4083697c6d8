//! Tests of log shipping: rounds, listing again, damage, retention, gaps, the resume filter.

use super::*;
use std::path::PathBuf;

use crate::checkpoint::tier::FileBlob;
use crate::log::{LogConfig, PartitionWriter};

fn append(dir: &Path, from: u64, to: u64) {
    let config = LogConfig {
        segment_size_bytes: 300,
        ..LogConfig::default()
    };
    let mut writer = PartitionWriter::open(dir, config).unwrap();
    for i in from..to {
        assert_eq!(writer.append(format!("record-{i}").as_bytes()).unwrap(), i);
    }
    writer.sync().unwrap();
}

fn records(dir: &Path, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = PartitionReader::open(dir, from).unwrap();
    let mut out = Vec::new();
    while let Some((offset, payload)) = reader.next().unwrap() {
        out.push((offset, payload.to_vec()));
    }
    out
}

#[test]
fn a_shipped_log_comes_back_record_for_record_and_damage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let blob = FileBlob::open(&tmp.path().join("cold")).unwrap();
    let (p0, p1) = (
        partition_dir(&log, "events", 0),
        partition_dir(&log, "events", 1),
    );
    append(&p0, 0, 40);
    append(&p1, 0, 5);
    std::fs::write(log.join("events").join(MANIFEST), b"manifest").unwrap();
    let mut shipped = ShippedLog::default();
    let key0 = ("events".to_owned(), 0);
    // Small chunks: several per round.
    let first = ship_partition(
        &blob,
        (1, 200, u64::MAX),
        (&p0, &key0),
        &mut shipped,
        &LocalSource::new(1),
    )
    .unwrap();
    assert_eq!(first.records, 40);
    assert!(shipped.chunks[&key0].len() > 2, "{:?}", shipped.chunks);
    append(&p0, 40, 55);
    let all = ship_log(
        &blob,
        (1, &log, u64::MAX),
        &mut shipped,
        &LocalSource::new(1),
    )
    .unwrap();
    assert_eq!(all.records, 15 + 5);
    assert_eq!(
        ship_log(
            &blob,
            (1, &log, u64::MAX),
            &mut shipped,
            &LocalSource::new(1)
        )
        .unwrap(),
        Shipped::default()
    );
    // Listed again (after a failure), the store says the same.
    assert_eq!(shipped_log(&blob, 1).unwrap().chunks, shipped.chunks);

    let standby = tmp.path().join("standby-log");
    let fetched = fetch_log(&blob, 1, &standby, ((0, 0), false)).unwrap();
    assert_eq!(fetched.records, 60);
    assert!(fetched.notes.is_empty(), "{:?}", fetched.notes);
    for p in [0, 1] {
        assert_eq!(
            records(&partition_dir(&standby, "events", p), 0),
            records(&partition_dir(&log, "events", p), 0)
        );
    }
    assert_eq!(
        std::fs::read(standby.join("events").join(MANIFEST)).unwrap(),
        b"manifest"
    );

    // Fetched again into the same log: left alone, or replaced whole.
    let again = fetch_log(&blob, 1, &standby, ((0, 0), false)).unwrap();
    assert_eq!(
        (again.records, again.notes.len()),
        (0, 2),
        "{:?}",
        again.notes
    );
    std::fs::remove_file(
        list_segments(&partition_dir(&standby, "events", 0))
            .map(|b| segment_path(&partition_dir(&standby, "events", 0), b[0]))
            .unwrap(),
    )
    .unwrap();
    let replaced = fetch_log(&blob, 1, &standby, ((0, 0), true)).unwrap();
    assert_eq!(replaced.records, 60);
    assert_eq!(
        records(&partition_dir(&standby, "events", 0), 0),
        records(&p0, 0)
    );

    // A checkpoint that resumes both partitions at 30 or later: the
    // chunks before are not fetched; each partition is there to its end.
    let tail = tmp.path().join("tail-log");
    let fetched = fetch_log(&blob, 1, &tail, ((2, 30), false)).unwrap();
    let p0_tail = partition_dir(&tail, "events", 0);
    let first = list_segments(&p0_tail).unwrap()[0];
    assert!(first > 0 && first <= 30, "{first}");
    assert_eq!(records(&p0_tail, 30), records(&p0, 30));
    assert_eq!(
        records(&partition_dir(&tail, "events", 1), 0),
        records(&p1, 0)
    );
    assert_eq!(fetched.records, 55 - first + 5);
    // Listing fewer partitions than the log has: everything is fetched.
    let all = fetch_log(&blob, 1, &tmp.path().join("all-log"), ((1, 30), false)).unwrap();
    assert_eq!(all.records, 60);

    // A damaged chunk is refused, naming it.
    let (chunk_first, chunk_end) = shipped.chunks[&key0][1];
    let chunk_key = format!(
        "{}/{}",
        log_prefix(1),
        chunk_name("events", 0, (chunk_first, chunk_end))
    );
    let mut bytes = blob.get(&chunk_key).unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    blob.put(&chunk_key, &bytes).unwrap();
    let refused = fetch_log(&blob, 1, &tmp.path().join("other"), ((0, 0), false)).unwrap_err();
    assert!(refused.contains(&chunk_key), "{refused}");
}

#[test]
fn chunks_below_the_local_log_are_dropped_and_a_gap_starts_a_new_run() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let blob = FileBlob::open(&tmp.path().join("cold")).unwrap();
    let p0 = partition_dir(&log, "t", 0);
    append(&p0, 0, 40);
    let mut shipped = ShippedLog::default();
    let key = ("t".to_owned(), 0);
    // One round into the store, keeping chunks from `keep_from`.
    let ship = |shipped: &mut ShippedLog, keep_from: u64| {
        let limits = (1, 200, keep_from);
        ship_partition(&blob, limits, (&p0, &key), shipped, &LocalSource::new(1)).unwrap();
    };
    ship(&mut shipped, u64::MAX);
    // Retention deletes the first segments locally: their chunks stay
    // while a kept record resumes below them, then go.
    let bases = list_segments(&p0).unwrap();
    crate::log::retention::delete_segments_before(&p0, bases[2]).unwrap();
    append(&p0, 40, 45);
    let all_chunks = shipped.chunks[&key].clone();
    ship(&mut shipped, 0);
    assert_eq!(shipped.chunks[&key][..all_chunks.len()], all_chunks);
    ship(&mut shipped, u64::MAX);
    assert!(
        shipped.chunks[&key].iter().all(|c| c.1 > bases[2]),
        "{:?}",
        shipped.chunks
    );
    assert_eq!(shipped.chunks[&key].last().unwrap().1, 45);
    let fetched = fetch_log(&blob, 1, &tmp.path().join("a"), ((0, 0), false)).unwrap();
    let first = shipped.chunks[&key][0].0;
    assert_eq!(fetched.records, 45 - first);
    // (The first chunk may start before the local log: it reaches into it.)
    assert!(first <= bases[2]);
    assert_eq!(
        records(&partition_dir(&tmp.path().join("a"), "t", 0), bases[2]),
        records(&p0, bases[2])
    );

    // A gap in the store (a chunk lost): only the run after it is fetched.
    let chunks = shipped.chunks[&key].clone();
    assert!(chunks.len() >= 3, "{chunks:?}");
    blob.delete(&format!(
        "{}/{}",
        log_prefix(1),
        chunk_name("t", 0, chunks[1])
    ))
    .unwrap();
    let fetched = fetch_log(&blob, 1, &tmp.path().join("b"), ((0, 0), false)).unwrap();
    assert!(fetched.notes[0].contains("gap"), "{:?}", fetched.notes);
    assert_eq!(fetched.records, 45 - chunks[2].0);
}

/// A log of `records` in partition 0 of `events` under `tmp/log`, a store
/// in `tmp/cold`, and the path of the dead-letter file `file` beside them
/// (its directory made).
fn with_dead_letters(
    tmp: &Path,
    records: u64,
    file: &str,
) -> (PathBuf, FileBlob, PathBuf, PathBuf) {
    let log = tmp.join("log");
    let blob = FileBlob::open(&tmp.join("cold")).unwrap();
    let p0 = partition_dir(&log, "events", 0);
    append(&p0, 0, records);
    let dead_file = tmp.join("dead-letter").join(file);
    std::fs::create_dir_all(dead_file.parent().unwrap()).unwrap();
    (log, blob, p0, dead_file)
}

/// Whether the object `key` is a dead-letter piece.
fn is_piece(key: &str) -> bool {
    parse_piece(key.rsplit('/').next().unwrap_or_default()).is_some()
}

/// Writes `POSITION` of `dir` committing `dead_letter_len_bytes`.
fn commit_position(dir: &Path, log_next_offset: u64, dead_letter_len_bytes: u64) {
    let position = crate::ingest::stream::position::SourcePosition {
        source: "S".into(),
        log_next_offset,
        dead_letter_len_bytes,
        ..Default::default()
    };
    std::fs::write(dir.join(POSITION), position.encode()).unwrap();
}

#[test]
fn committed_dead_letters_ship_in_pieces_bounded_in_number_and_come_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, blob, p0, dead_file) = with_dead_letters(tmp.path(), 3, "events-source-0.csv");
    let mut rows = b"source,seq,reason,payload\n".to_vec();
    std::fs::write(&dead_file, &rows).unwrap();
    let mut shipped = ShippedLog::default();
    let ship = |shipped: &mut ShippedLog| {
        ship_log(&blob, (1, &log, u64::MAX), shipped, &LocalSource::new(1)).unwrap()
    };
    let pieces = |blob: &FileBlob| {
        blob.list(&log_prefix(1))
            .unwrap()
            .into_iter()
            .filter(|k| is_piece(k))
            .count()
    };
    for round in 0..40_u64 {
        // A row committed, and one written after the commit (cut when the
        // source restarts): only the committed bytes ship.
        rows.extend_from_slice(format!("S,{round},bad,row {round}\n").as_bytes());
        let mut on_disk = rows.clone();
        on_disk.extend_from_slice(b"S,99,uncommitted,x\n");
        std::fs::write(&dead_file, &on_disk).unwrap();
        commit_position(&p0, 3, rows.len() as u64);
        ship(&mut shipped);
        assert!(
            pieces(&blob) <= dead_letters::MAX_SMALL_PIECES,
            "round {round}"
        );
        if round == 5 {
            // Nothing new committed: nothing shipped.
            assert_eq!(ship(&mut shipped), Shipped::default());
        }
    }
    // Listed again (a restarted sidecar), the store says the same: the
    // next round ships only what grew.
    let mut relisted = shipped_log(&blob, 1).unwrap();
    rows.extend_from_slice(b"S,40,bad,last\n");
    std::fs::write(&dead_file, &rows).unwrap();
    commit_position(&p0, 3, rows.len() as u64);
    let round = ship(&mut relisted);
    assert_eq!(round.bytes, b"S,40,bad,last\n".len() as u64);

    let standby = tmp.path().join("standby").join("log");
    let fetched = fetch_log(&blob, 1, &standby, ((0, 0), false)).unwrap();
    assert_eq!(fetched.dead_letter_bytes, rows.len() as u64);
    let standby_file = tmp.path().join("standby/dead-letter/events-source-0.csv");
    assert_eq!(std::fs::read(&standby_file).unwrap(), rows);

    // A damaged piece is refused, naming it; so is a missing one.
    let mut keys: Vec<String> = blob
        .list(&log_prefix(1))
        .unwrap()
        .into_iter()
        .filter(|k| is_piece(k))
        .collect();
    keys.sort();
    let last = keys.last().unwrap().clone();
    let mut bytes = blob.get(&last).unwrap().unwrap();
    bytes[0] ^= 1;
    blob.put(&last, &bytes).unwrap();
    let refused = fetch_log(&blob, 1, &tmp.path().join("a/log"), ((0, 0), false)).unwrap_err();
    assert!(refused.contains(&last), "{refused}");
    // The last piece lost: the file ends before its POSITION's length, said
    // in a note (the log is whole; no older checkpoint has those rows).
    blob.delete(&last).unwrap();
    let short = fetch_log(&blob, 1, &tmp.path().join("c/log"), ((0, 0), false)).unwrap();
    assert!(
        short.notes.iter().any(|n| n.contains("are lost")),
        "{:?}",
        short.notes
    );
    blob.delete(&keys[0]).unwrap();
    let refused = fetch_log(&blob, 1, &tmp.path().join("b/log"), ((0, 0), false)).unwrap_err();
    assert!(refused.contains("missing"), "{refused}");
}

#[test]
fn a_dead_letter_file_rewritten_under_the_source_is_shipped_whole_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, blob, p0, dead_file) = with_dead_letters(tmp.path(), 1, "events-source.csv");
    let mut shipped = ShippedLog::default();
    let mut ship = |rows: &[u8]| {
        std::fs::write(&dead_file, rows).unwrap();
        commit_position(&p0, 1, rows.len() as u64);
        ship_log(
            &blob,
            (1, &log, u64::MAX),
            &mut shipped,
            &LocalSource::new(1),
        )
        .unwrap()
    };
    ship(b"header\nS,1,bad,a\n");
    ship(b"header\nS,1,bad,a\nS,2,bad,b\n");
    // Replaced by a longer file with other bytes: shipped whole again.
    let rewritten = b"header\nS,7,bad,other\nS,8,bad,rows\n";
    assert_eq!(ship(rewritten).bytes, rewritten.len() as u64);
    // Cut below what was shipped: whole again too.
    let cut = b"header\nS,7\n";
    assert_eq!(ship(cut).bytes, cut.len() as u64);
    let fetched = fetch_log(&blob, 1, &tmp.path().join("standby/log"), ((0, 0), false)).unwrap();
    assert_eq!(fetched.dead_letter_bytes, cut.len() as u64);
    assert_eq!(
        std::fs::read(tmp.path().join("standby/dead-letter/events-source.csv")).unwrap(),
        cut
    );
    let pieces = blob
        .list(&log_prefix(1))
        .unwrap()
        .into_iter()
        .filter(|k| is_piece(k))
        .count();
    assert_eq!(pieces, 1);
}

#[test]
fn dead_letters_outside_the_default_directory_are_not_shipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, blob, p0, nats_file) = with_dead_letters(tmp.path(), 1, "events-source.csv");
    commit_position(&p0, 1, 100);
    let ship = |shipped: &mut ShippedLog| {
        ship_log(&blob, (1, &log, u64::MAX), shipped, &LocalSource::new(1))
    };
    let mut shipped = ShippedLog::default();
    ship(&mut shipped).unwrap();
    let keys = blob.list(&log_prefix(1)).unwrap();
    assert!(!keys.iter().any(|k| is_piece(k)), "{keys:?}");
    // A NATS source's file (no partition in its name) is found.
    std::fs::write(&nats_file, vec![b'x'; 120]).unwrap();
    let round = ship(&mut shipped).unwrap();
    assert_eq!(round.bytes, 100);
    // Shorter than its POSITION commits: skipped (with a warning), and the
    // log and POSITION still ship.
    commit_position(&p0, 1, 500);
    append(&p0, 1, 3);
    let round = ship(&mut shipped).unwrap();
    assert_eq!(round.records, 2);
}
