//! Unit tests of the checkpoint codecs: round trips (proptest), canonical
//! names, strict decoding, and that no mutation makes a decoder panic.

use proptest::prelude::*;

use super::*;

fn upd(key_group: u16, data: &[u8], time: u64, diff: i64) -> PersistedUpdate {
    PersistedUpdate {
        key_group,
        data: data.to_vec(),
        time,
        diff,
    }
}

fn decode_all(bytes: &[u8], meta: &FileMeta) -> Result<Vec<PersistedUpdate>, FormatError> {
    let mut out = Vec::new();
    decode_data_file(bytes, meta, &|_| true, 0, &mut out)?;
    Ok(out)
}

/// Updates with few distinct key groups, data and times, so that equal
/// triples, shared prefixes and cancelling diffs are common.
fn arb_updates() -> impl Strategy<Value = Vec<PersistedUpdate>> {
    let data = prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xff]), 0..4);
    let time = prop_oneof![0u64..4, Just(u64::MAX), Just(1 << 40)];
    let diff = prop_oneof![-2i64..=2, Just(i64::MIN), Just(i64::MAX)];
    let group = prop_oneof![0u16..3, Just(KEY_GROUPS - 1)];
    prop::collection::vec(
        (group, data, time, diff).prop_map(|(g, d, t, x)| upd(g, &d, t, x)),
        0..40,
    )
}

fn arb_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn arb_record() -> impl Strategy<Value = CommitRecord> {
    let file = (
        any::<bool>(),
        0u64..5,
        0u32..3,
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    );
    let partition = (any::<u32>(), any::<u64>(), any::<Option<u64>>());
    (
        5u64..u64::MAX,
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(file, 0..5),
        prop::collection::vec(partition, 0..5),
        prop::collection::vec((arb_name(), any::<u64>()), 0..4),
        any::<Option<(u64, u64)>>(),
    )
        .prop_map(|(id, cut, fp, workers, files, parts, outs, timing)| {
            let mut r = CommitRecord {
                checkpoint_id: id,
                cut_time: cut,
                query_fingerprint: fp,
                workers_total: workers,
                files: files
                    .into_iter()
                    .map(|(base, cid, part, size, crc, t)| FileMeta {
                        name: if base {
                            DataFileId::base(cid)
                        } else {
                            DataFileId::delta(cid, part)
                        }
                        .file_name(),
                        size_bytes: size,
                        crc32c: crc,
                        min_time: t / 2,
                        max_time: t,
                    })
                    .collect(),
                partitions: parts
                    .into_iter()
                    .map(
                        |(partition, resume_offset, max_ts_before)| PartitionResume {
                            partition,
                            resume_offset,
                            max_ts_before,
                        },
                    )
                    .collect(),
                outputs: outs
                    .into_iter()
                    .map(|(file_name, length_bytes)| OutputLength {
                        file_name,
                        length_bytes,
                    })
                    .collect(),
                timing: timing.map(|(committed_at_unix_ms, commit_latency_us)| CommitTiming {
                    committed_at_unix_ms,
                    commit_latency_us,
                }),
            };
            let mut seen = std::collections::HashSet::new();
            r.files.retain(|f| seen.insert(f.name.clone()));
            let mut seen = std::collections::HashSet::new();
            r.partitions.retain(|p| seen.insert(p.partition));
            let mut seen = std::collections::HashSet::new();
            r.outputs.retain(|o| seen.insert(o.file_name.clone()));
            r
        })
}

/// The reference consolidation: a map from triple to summed diff.
fn reference(updates: &[PersistedUpdate]) -> Vec<PersistedUpdate> {
    let mut sums = std::collections::BTreeMap::new();
    for u in updates {
        let sum = sums
            .entry((u.key_group, u.data.clone(), u.time))
            .or_insert(0i64);
        *sum = sum.wrapping_add(u.diff);
    }
    sums.into_iter()
        .filter(|&(_, d)| d != 0)
        .map(|((g, data, t), diff)| upd(g, &data, t, diff))
        .collect()
}

proptest! {
    #[test]
    fn consolidate_matches_reference(mut updates in arb_updates()) {
        let expected = reference(&updates);
        consolidate(&mut updates);
        prop_assert!(is_consolidated(&updates));
        prop_assert_eq!(updates, expected);
    }

    #[test]
    fn data_file_round_trip(
        mut updates in arb_updates(),
        id in 1u64..10,
        part in 0u32..1_000_100,
        horizon in 0u64..5,
        groups in prop::collection::vec(any::<bool>(), 3),
    ) {
        consolidate(&mut updates);
        let (bytes, meta) = encode_data_file(DataFileId::delta(id, part), &updates);
        prop_assert_eq!(meta.size_bytes, bytes.len() as u64);
        prop_assert_eq!(DataFileId::parse(&meta.name), Some(DataFileId::delta(id, part)));
        verify_data_file(&bytes, &meta).unwrap();
        prop_assert_eq!(decode_all(&bytes, &meta).unwrap(), updates.clone());
        // Only the selected key groups, only times at or after the horizon.
        let keep = |g: u16| groups.get(usize::from(g)).copied().unwrap_or(true);
        let mut part_out = Vec::new();
        decode_data_file(&bytes, &meta, &keep, horizon, &mut part_out).unwrap();
        let expected: Vec<_> = updates
            .iter()
            .filter(|u| keep(u.key_group) && u.time >= horizon)
            .cloned()
            .collect();
        prop_assert_eq!(part_out, expected);
        // Deterministic bytes.
        prop_assert_eq!(encode_data_file(DataFileId::delta(id, part), &updates).0, bytes);
    }

    #[test]
    fn commit_record_round_trip(r in arb_record()) {
        check_commit_record(&r).unwrap();
        let payload = encode_commit_record(&r);
        prop_assert_eq!(decode_commit_record(&payload).unwrap(), r.clone());
        let mut stream = encode_commits_header();
        stream.extend(encode_commit_frame(&r));
        let scan = scan_commits(&stream).unwrap();
        prop_assert_eq!(scan.records, vec![r]);
        prop_assert_eq!(scan.torn, None);
        prop_assert_eq!(scan.valid_len_bytes, stream.len() as u64);
        prop_assert_eq!(scan.version, COMMITS_FORMAT_VERSION);
        prop_assert_eq!(scan.writer, Some(crate::release::THIS_RELEASE));
    }

    /// A version 1 stream (records without timing) still reads.
    #[test]
    fn commit_stream_version_1_reads_without_timing(r in arb_record()) {
        let v1 = CommitRecord { timing: None, ..r };
        let mut payload = encode_commit_record(&v1);
        payload.truncate(payload.len() - 17);
        let mut stream = encode_commits_header_version(1);
        stream.extend_from_slice(&crate::storage::frame::encode_frame_header(&payload));
        stream.extend_from_slice(&payload);
        let scan = scan_commits(&stream).unwrap();
        prop_assert_eq!(scan.version, 1);
        prop_assert_eq!(scan.writer, None);
        prop_assert_eq!(scan.records, vec![v1.clone()]);
        // The same payload in a version 2 stream is too short.
        prop_assert!(decode_commit_record(&payload).is_err());
    }

    /// A mutated file whose checksums are fixed up decodes to something or
    /// fails cleanly; it never panics or reads out of bounds.
    #[test]
    fn decoders_never_panic_on_mutations(
        mut updates in arb_updates(),
        r in arb_record(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        consolidate(&mut updates);
        let (mut bytes, mut meta) = encode_data_file(DataFileId::base(3), &updates);
        let body = bytes.len() - 4;
        for (at, b) in &edits {
            bytes[at.index(body)] = *b;
        }
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        meta.crc32c = crc;
        verify_data_file(&bytes, &meta).unwrap();
        let _ = decode_all(&bytes, &meta);

        let mut payload = encode_commit_record(&r);
        for (at, b) in &edits {
            let i = at.index(payload.len());
            payload[i] = *b;
        }
        let _ = decode_commit_record(&payload);
    }
}

#[test]
fn every_byte_flip_of_a_data_file_fails_verification() {
    let mut updates = vec![
        upd(0, b"apple", 5, 1),
        upd(0, b"apple", 9, -2),
        upd(0, b"apricot", 1, 3),
        upd(7, b"", 0, 1),
        upd(255, b"zz", u64::MAX, i64::MIN),
    ];
    consolidate(&mut updates);
    let (bytes, meta) = encode_data_file(DataFileId::delta(2, 1), &updates);
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            assert!(
                verify_data_file(&bad, &meta).is_err(),
                "flip at {i} undetected"
            );
        }
    }
    assert!(verify_data_file(&bytes[..bytes.len() - 1], &meta).is_err());
}

#[test]
fn data_file_checks_name_and_time_range() {
    let updates = vec![upd(1, b"k", 10, 1)];
    let (bytes, meta) = encode_data_file(DataFileId::delta(4, 2), &updates);
    assert_eq!((meta.min_time, meta.max_time), (10, 10));
    // A valid file under another name (or kind) is refused.
    for other in [
        DataFileId::delta(4, 3),
        DataFileId::delta(5, 2),
        DataFileId::base(4),
    ] {
        let renamed = FileMeta {
            name: other.file_name(),
            ..meta.clone()
        };
        let e = decode_all(&bytes, &renamed).unwrap_err();
        assert!(e.reason.contains("does not match the file name"), "{e}");
    }
    let narrow = FileMeta {
        min_time: 11,
        max_time: 20,
        ..meta.clone()
    };
    assert!(decode_all(&bytes, &narrow)
        .unwrap_err()
        .reason
        .contains("range"));
    let empty = encode_data_file(DataFileId::base(1), &[]);
    assert_eq!((empty.1.min_time, empty.1.max_time), (0, 0));
    assert_eq!(
        empty.0.len(),
        DATA_FILE_HEADER_LEN_BYTES + 4 + DATA_FILE_TRAILER_LEN_BYTES
    );
    assert_eq!(decode_all(&empty.0, &empty.1).unwrap(), vec![]);
}

#[test]
fn varints_are_strict() {
    for v in [
        0,
        1,
        127,
        128,
        300,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        let mut c = Cursor::new(&b, 0);
        assert_eq!(c.varint("v").unwrap(), v);
        assert_eq!(c.remaining(), 0);
    }
    for bad in [
        &[0x80, 0x00][..],                                             // overlong
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], // > u64
        &[0x80; 11],                                                   // too long
        &[0x80],                                                       // cut short
    ] {
        assert!(Cursor::new(bad, 0).varint("v").is_err(), "{bad:?}");
    }
    for v in [0, 1, -1, i64::MIN, i64::MAX] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
}

#[test]
fn file_names_are_canonical() {
    let d = DataFileId::delta(42, 7);
    assert_eq!(d.file_name(), "delta-00000000000000000042-000007.bin");
    assert_eq!(
        DataFileId::base(42).file_name(),
        "base-00000000000000000042.bin"
    );
    for id in [
        d,
        DataFileId::base(u64::MAX),
        DataFileId::delta(u64::MAX, u32::MAX),
    ] {
        assert_eq!(DataFileId::parse(&id.file_name()), Some(id));
    }
    for bad in [
        "delta-42-7.bin",
        "delta-00000000000000000042-0000007.bin",
        "delta-00000000000000000042-000007.bin.tmp",
        "delta-0000000000000000004x-000007.bin",
        "delta-+0000000000000000042-000007.bin",
        "base-00000000000000000042-000000.bin",
        "base-99999999999999999999.bin",
        "../base-00000000000000000042.bin",
        "commits.log",
    ] {
        assert_eq!(DataFileId::parse(bad), None, "{bad}");
    }
    for ok in ["windows.csv", "late-0.csv", "a", "..."] {
        validate_output_name(ok).unwrap();
    }
    for bad in ["", ".", "..", "a/b", "out put", "é", &"x".repeat(256)] {
        assert!(validate_output_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn commit_records_are_checked() {
    let ok = CommitRecord {
        checkpoint_id: 2,
        cut_time: 100,
        query_fingerprint: 9,
        workers_total: 1,
        files: vec![],
        partitions: vec![],
        outputs: vec![],
        timing: None,
    };
    check_commit_record(&ok).unwrap();
    let file = |name: String| FileMeta {
        name,
        size_bytes: 0,
        crc32c: 0,
        min_time: 0,
        max_time: 0,
    };
    let bad = [
        CommitRecord {
            checkpoint_id: 0,
            ..ok.clone()
        },
        CommitRecord {
            files: vec![file("x.bin".into())],
            ..ok.clone()
        },
        CommitRecord {
            files: vec![file(DataFileId::delta(3, 0).file_name())],
            ..ok.clone()
        },
        CommitRecord {
            files: vec![file(DataFileId::base(1).file_name()); 2],
            ..ok.clone()
        },
        CommitRecord {
            outputs: vec![OutputLength {
                file_name: "../x".into(),
                length_bytes: 0,
            }],
            ..ok.clone()
        },
    ];
    for r in bad {
        assert!(check_commit_record(&r).is_err(), "{r:?}");
        // The decoder refuses what the writer would refuse.
        assert!(decode_commit_record(&encode_commit_record(&r)).is_err());
    }
}

#[test]
fn commit_stream_torn_tail_and_flips() {
    let r = |id| CommitRecord {
        checkpoint_id: id,
        cut_time: id * 10,
        query_fingerprint: 1,
        workers_total: 2,
        files: vec![],
        partitions: vec![PartitionResume {
            partition: 0,
            resume_offset: id,
            max_ts_before: None,
        }],
        outputs: vec![],
        timing: None,
    };
    let mut stream = encode_commits_header();
    stream.extend(encode_commit_frame(&r(1)));
    let last_start = stream.len();
    stream.extend(encode_commit_frame(&r(2)));
    for cut in last_start + 1..stream.len() {
        let scan = scan_commits(&stream[..cut]).unwrap();
        assert_eq!(scan.records, vec![r(1)], "cut at {cut}");
        assert_eq!(scan.valid_len_bytes, last_start as u64);
        assert!(scan.torn.is_some());
    }
    for cut in 0..COMMITS_HEADER_LEN_BYTES {
        assert_eq!(scan_commits(&stream[..cut]).unwrap_err().byte_offset, 0);
    }
    for i in 0..stream.len() {
        let mut bad = stream.clone();
        bad[i] ^= 0x10;
        let e = scan_commits(&bad).unwrap_err();
        let frame_start = if i < COMMITS_HEADER_LEN_BYTES {
            0
        } else if i < last_start {
            COMMITS_HEADER_LEN_BYTES
        } else {
            last_start
        };
        assert_eq!(e.byte_offset, frame_start as u64, "flip at {i}: {e}");
    }
    // Ids must increase.
    let mut twice = encode_commits_header();
    twice.extend(encode_commit_frame(&r(2)));
    twice.extend(encode_commit_frame(&r(2)));
    assert!(scan_commits(&twice).unwrap_err().reason.contains("follows"));
}

/// A stream of a later version is refused naming the release that wrote
/// it (its first 24 header bytes keep their layout); one of version 2 (no
/// release in its 16-byte header) still reads.
#[test]
fn a_newer_commit_stream_is_refused_naming_its_writer() {
    let header = |version: u32, release: [u8; 8]| {
        let mut h = COMMITS_MAGIC.to_vec();
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&release);
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h
    };
    let newer = crate::release::Release::parse("9.8.7");
    let e = scan_commits(&header(COMMITS_FORMAT_VERSION + 1, newer.encode())).unwrap_err();
    assert_eq!(e.byte_offset, 0);
    assert_eq!(
        e.reason,
        format!(
            "commit stream version {}, written by weir 9.8.7 (a newer weir): this binary ({}) \
             reads versions 1 to {COMMITS_FORMAT_VERSION}",
            COMMITS_FORMAT_VERSION + 1,
            crate::release::THIS_RELEASE
        )
    );
    let mut reserved = newer.encode();
    reserved[6] = 1;
    let e = scan_commits(&header(COMMITS_FORMAT_VERSION, reserved)).unwrap_err();
    assert!(e.reason.contains("reserved bytes"), "{e}");
    // A later version may use them: its writer is still named.
    let e = scan_commits(&header(COMMITS_FORMAT_VERSION + 1, reserved)).unwrap_err();
    assert!(
        e.reason.contains("written by weir 9.8.7 (a newer weir)"),
        "{e}"
    );
    let v2 = encode_commits_header_version(2);
    assert_eq!(v2.len(), 16);
    let scan = scan_commits(&v2).unwrap();
    assert_eq!((scan.version, scan.writer), (2, None));
    let v3 = encode_commits_header();
    assert_eq!(v3.len(), COMMITS_HEADER_LEN_BYTES);
    assert_eq!(
        v3[..24],
        header(3, crate::release::THIS_RELEASE.encode())[..]
    );
}

/// A data file names the release that wrote it; one of a later version is
/// refused naming that release, and a version 1 file (28-byte header, no
/// release) still decodes.
#[test]
fn data_files_name_their_writer_and_version_1_still_decodes() {
    let updates = vec![
        PersistedUpdate {
            key_group: 2,
            data: b"k".to_vec(),
            time: 5,
            diff: 3,
        },
        PersistedUpdate {
            key_group: 7,
            data: b"kk".to_vec(),
            time: 9,
            diff: -1,
        },
    ];
    let (bytes, meta) = encode_data_file(DataFileId::delta(4, 1), &updates);
    assert_eq!(bytes[8..12], DATA_FILE_FORMAT_VERSION.to_le_bytes());
    assert_eq!(bytes[12..20], crate::release::THIS_RELEASE.encode());

    // The same file in a version 3 written by weir 9.8.7.
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&3u32.to_le_bytes());
    newer[12..20].copy_from_slice(&crate::release::Release::parse("9.8.7").encode());
    let e = decode_all(&newer, &meta).unwrap_err();
    assert_eq!(e.byte_offset, 8);
    assert!(
        e.reason.starts_with(
            "checkpoint data file version 3, written by weir 9.8.7 (a newer weir): this binary"
        ),
        "{e}"
    );

    // Version 1: no release, everything after it 8 bytes earlier.
    let shift = DATA_FILE_HEADER_LEN_BYTES - DATA_FILE_MIN_HEADER_LEN_BYTES;
    let (index_at, count_at) = (bytes.len() - 20, bytes.len() - 12);
    let index_offset = u64::from_le_bytes(bytes[index_at..count_at].try_into().unwrap());
    let mut v1 = bytes[..8].to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&bytes[20..index_at]);
    // Index entries' offsets move back by the 8 bytes.
    let entries_at = index_offset as usize - shift + 4;
    for entry in v1[entries_at..].chunks_exact_mut(18) {
        let offset = u64::from_le_bytes(entry[2..10].try_into().unwrap()) - shift as u64;
        entry[2..10].copy_from_slice(&offset.to_le_bytes());
    }
    v1.extend_from_slice(&(index_offset - shift as u64).to_le_bytes());
    v1.extend_from_slice(&bytes[count_at..count_at + 8]);
    let crc = crc32c::crc32c(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    let meta_v1 = FileMeta {
        size_bytes: v1.len() as u64,
        crc32c: crc,
        ..meta.clone()
    };
    assert_eq!(v1.len(), bytes.len() - shift);
    assert_eq!(decode_all(&v1, &meta_v1).unwrap(), updates);
}
