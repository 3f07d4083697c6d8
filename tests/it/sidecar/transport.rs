//! Frames between the engine and the sidecar: round trips, and every
//! truncation, byte flip, oversized length or garbage payload is an error,
//! never a panic or a huge allocation.

use std::io::{Cursor, Read};

use proptest::prelude::*;
use weir::checkpoint::format::{OutputLength, PartitionResume, PersistedUpdate};
use weir::checkpoint::transport::{
    decode_frame, encode_frame, encoded_update_bytes, read_frame, split_share, CutUpdates,
    FrameBuffer, FrameError, FromSidecar, Hello, ToSidecar, WorkerCut, FRAME_HEADER_LEN_BYTES,
    MAX_PAYLOAD_BYTES,
};

fn update_strategy() -> impl Strategy<Value = PersistedUpdate> {
    (
        0u16..256,
        proptest::collection::vec(any::<u8>(), 0..24),
        any::<u64>(),
        any::<i64>(),
    )
        .prop_map(|(key_group, data, time, diff)| PersistedUpdate {
            key_group,
            data,
            time,
            diff,
        })
}

fn cut_strategy() -> impl Strategy<Value = WorkerCut> {
    (
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        proptest::collection::vec(update_strategy(), 0..12),
        proptest::collection::vec((any::<u32>(), any::<u64>(), any::<Option<u64>>()), 0..6),
        proptest::collection::vec(("[a-z0-9._-]{1,12}", any::<u64>()), 0..4),
    )
        .prop_map(
            |(
                (worker, checkpoint_id, prev_cut_time, cut_time, retention_ms),
                updates,
                parts,
                outs,
            )| {
                WorkerCut {
                    worker,
                    checkpoint_id,
                    prev_cut_time,
                    cut_time,
                    retention_ms,
                    updates,
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
                }
            },
        )
}

fn to_sidecar_strategy() -> impl Strategy<Value = ToSidecar> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..80),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(token, process, workers_total, query_fingerprint, epoch)| {
                    ToSidecar::Hello(Hello {
                        token,
                        process,
                        workers_total,
                        query_fingerprint,
                        epoch,
                        restored_from: (epoch % 3 != 0).then_some(epoch / 2),
                    })
                }
            ),
        cut_strategy().prop_map(ToSidecar::WorkerCut),
        cut_strategy().prop_map(|c| ToSidecar::CutUpdates(CutUpdates {
            worker: c.worker,
            checkpoint_id: c.checkpoint_id,
            updates: c.updates,
        })),
        Just(ToSidecar::Goodbye),
    ]
}

fn from_sidecar_strategy() -> impl Strategy<Value = FromSidecar> {
    prop_oneof![
        any::<Option<(u64, u64)>>()
            .prop_map(|last_committed| FromSidecar::Welcome { last_committed }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(checkpoint_id, cut_time, commit_latency_us)| {
                FromSidecar::Committed {
                    checkpoint_id,
                    cut_time,
                    commit_latency_us,
                }
            }
        ),
        ".{0,40}".prop_map(|reason| FromSidecar::Refused { reason }),
    ]
}

/// A reader that fails the test if more than `limit` bytes are read from it.
struct Guarded<'a> {
    bytes: &'a [u8],
    pos: usize,
    limit: usize,
}

impl Read for Guarded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        assert!(self.pos + n <= self.limit, "read past byte {}", self.limit);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every message survives encode -> decode, through a slice, a blocking
    /// reader and an incremental buffer fed in arbitrary pieces.
    #[test]
    fn transport_split_shares_keep_every_update_in_order_within_the_budget(
        cut in cut_strategy(),
        budget in 1usize..400,
    ) {
        let mut last = cut.clone();
        let parts = split_share(&mut last, budget);
        // The parts, then the last frame, hold the share's updates in order.
        let mut joined: Vec<PersistedUpdate> = Vec::new();
        for part in &parts {
            prop_assert_eq!((part.worker, part.checkpoint_id), (cut.worker, cut.checkpoint_id));
            prop_assert!(!part.updates.is_empty());
            let bytes: usize = part.updates.iter().map(encoded_update_bytes).sum();
            prop_assert!(bytes <= budget || part.updates.len() == 1, "{} bytes", bytes);
            joined.extend(part.updates.iter().cloned());
        }
        let last_bytes: usize = last.updates.iter().map(encoded_update_bytes).sum();
        prop_assert!(last_bytes <= budget || last.updates.len() <= 1 || parts.is_empty());
        joined.extend(last.updates.iter().cloned());
        prop_assert_eq!(&joined, &cut.updates);
        prop_assert_eq!((&last.partitions, &last.outputs), (&cut.partitions, &cut.outputs));
        let total: usize = cut.updates.iter().map(encoded_update_bytes).sum();
        prop_assert_eq!(parts.is_empty(), total <= budget);
        // The estimate is exact: a frame of updates only is their bytes plus
        // the header, the kind byte, worker, checkpoint id and count.
        let frame = encode_frame(&ToSidecar::CutUpdates(CutUpdates {
            worker: 0,
            checkpoint_id: 0,
            updates: cut.updates.clone(),
        }))
        .unwrap();
        prop_assert_eq!(frame.len(), FRAME_HEADER_LEN_BYTES + 1 + 4 + 8 + 4 + total);
    }

    #[test]
    fn transport_frames_round_trip(
        to in to_sidecar_strategy(),
        from in from_sidecar_strategy(),
        split in any::<prop::sample::Index>(),
    ) {
        let frame = encode_frame(&to).unwrap();
        let (decoded, used) = decode_frame::<ToSidecar>(&frame, MAX_PAYLOAD_BYTES).unwrap();
        prop_assert_eq!(&decoded, &to);
        prop_assert_eq!(used, frame.len());

        let back = encode_frame(&from).unwrap();
        let mut stream = back.clone();
        stream.extend_from_slice(&back);
        let mut cursor = Cursor::new(&stream);
        prop_assert_eq!(read_frame::<FromSidecar>(&mut cursor, MAX_PAYLOAD_BYTES).unwrap(), Some(from.clone()));
        prop_assert_eq!(read_frame::<FromSidecar>(&mut cursor, MAX_PAYLOAD_BYTES).unwrap(), Some(from.clone()));
        prop_assert_eq!(read_frame::<FromSidecar>(&mut cursor, MAX_PAYLOAD_BYTES).unwrap(), None);

        let at = split.index(stream.len() + 1);
        let mut buffer = FrameBuffer::new(MAX_PAYLOAD_BYTES);
        buffer.push(&stream[..at]);
        let mut got = Vec::new();
        while let Some(m) = buffer.pop::<FromSidecar>().unwrap() {
            got.push(m);
        }
        buffer.push(&stream[at..]);
        while let Some(m) = buffer.pop::<FromSidecar>().unwrap() {
            got.push(m);
        }
        prop_assert_eq!(got, vec![from.clone(), from]);
        prop_assert_eq!(buffer.pending_bytes(), 0);
    }

    /// Flipping any bits of any one byte of a frame is an error, never a
    /// panic and never a different message.
    #[test]
    fn transport_any_single_byte_flip_is_rejected(
        message in to_sidecar_strategy(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut frame = encode_frame(&message).unwrap();
        let i = at.index(frame.len());
        frame[i] ^= xor;
        prop_assert!(decode_frame::<ToSidecar>(&frame, MAX_PAYLOAD_BYTES).is_err());
        prop_assert!(read_frame::<ToSidecar>(&mut Cursor::new(&frame), MAX_PAYLOAD_BYTES).is_err());
    }

    /// Random bytes, alone or behind a valid header and checksum (so the
    /// payload decoder itself sees garbage), never panic the decoder.
    #[test]
    fn transport_garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        kind in any::<u8>(),
    ) {
        let _ = decode_frame::<ToSidecar>(&bytes, MAX_PAYLOAD_BYTES);
        let _ = decode_frame::<FromSidecar>(&bytes, MAX_PAYLOAD_BYTES);
        // The payload repeats the kind first; the rest is garbage.
        let mut payload = vec![kind];
        payload.extend_from_slice(&bytes);
        let mut frame = encode_frame(&ToSidecar::Goodbye).unwrap();
        frame.truncate(FRAME_HEADER_LEN_BYTES);
        frame[3] = kind;
        frame[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        frame[8..12].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        match decode_frame::<ToSidecar>(&frame, MAX_PAYLOAD_BYTES) {
            Ok((m, used)) => {
                prop_assert_eq!(used, frame.len());
                // Whatever decoded re-encodes to the same bytes.
                prop_assert_eq!(encode_frame(&m).unwrap(), frame.clone());
            }
            Err(FrameError::Decode { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        let _ = decode_frame::<FromSidecar>(&frame, MAX_PAYLOAD_BYTES);
    }
}

fn sample_cut() -> WorkerCut {
    WorkerCut {
        worker: 3,
        checkpoint_id: 7,
        prev_cut_time: 1000,
        cut_time: 2000,
        retention_ms: 60_000,
        updates: vec![
            PersistedUpdate {
                key_group: 5,
                data: b"key-a".to_vec(),
                time: 1500,
                diff: 2,
            },
            PersistedUpdate {
                key_group: 200,
                data: vec![],
                time: 1999,
                diff: -1,
            },
        ],
        partitions: vec![PartitionResume {
            partition: 2,
            resume_offset: 99,
            max_ts_before: Some(1980),
        }],
        outputs: vec![OutputLength {
            file_name: "windows-3.csv".into(),
            length_bytes: 4096,
        }],
    }
}

#[test]
fn transport_every_truncation_is_rejected() {
    let frame = encode_frame(&ToSidecar::WorkerCut(sample_cut())).unwrap();
    for len in 0..frame.len() {
        let prefix = &frame[..len];
        assert!(
            matches!(
                decode_frame::<ToSidecar>(prefix, MAX_PAYLOAD_BYTES),
                Err(FrameError::Truncated { .. })
            ),
            "prefix of {len} bytes"
        );
        let read = read_frame::<ToSidecar>(&mut Cursor::new(prefix), MAX_PAYLOAD_BYTES);
        if len == 0 {
            assert!(matches!(read, Ok(None)), "empty input is a clean end");
        } else {
            assert!(
                matches!(read, Err(FrameError::Truncated { .. })),
                "prefix of {len} bytes: {read:?}"
            );
        }
        let mut buffer = FrameBuffer::new(MAX_PAYLOAD_BYTES);
        buffer.push(prefix);
        assert!(matches!(buffer.pop::<ToSidecar>(), Ok(None)));
    }
}

#[test]
fn transport_every_byte_flip_of_a_frame_is_rejected_exhaustively() {
    let frame = encode_frame(&ToSidecar::WorkerCut(sample_cut())).unwrap();
    for i in 0..frame.len() {
        for xor in [0x01u8, 0x10, 0x80, 0xff] {
            let mut bad = frame.clone();
            bad[i] ^= xor;
            let err = decode_frame::<ToSidecar>(&bad, MAX_PAYLOAD_BYTES)
                .expect_err(&format!("flip {xor:#x} at byte {i} was accepted"));
            if i < 2 {
                assert!(matches!(err, FrameError::BadMagic { .. }), "{err}");
            } else if i >= FRAME_HEADER_LEN_BYTES || (8..12).contains(&i) {
                assert!(
                    matches!(err, FrameError::BadChecksum { .. }),
                    "byte {i}: {err}"
                );
            }
        }
    }
}

#[test]
fn transport_oversized_length_is_rejected_before_allocation() {
    let mut frame = encode_frame(&ToSidecar::Goodbye).unwrap();
    frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    frame.extend_from_slice(&[0u8; 64]);
    // The reader must stop after the header: nothing past byte 12 is read,
    // so no payload buffer was allocated for the announced length.
    let mut guarded = Guarded {
        bytes: &frame,
        pos: 0,
        limit: FRAME_HEADER_LEN_BYTES,
    };
    match read_frame::<ToSidecar>(&mut guarded, MAX_PAYLOAD_BYTES) {
        Err(FrameError::TooLarge {
            len_bytes,
            max_bytes,
        }) => {
            assert_eq!(len_bytes, u64::from(u32::MAX));
            assert_eq!(max_bytes, MAX_PAYLOAD_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A smaller limit (the sidecar's hello limit) applies the same way.
    let big = encode_frame(&ToSidecar::Hello(Hello {
        token: vec![7; 70_000],
        process: 0,
        workers_total: 1,
        query_fingerprint: 0,
        epoch: 0,
        restored_from: None,
    }))
    .unwrap();
    let mut guarded = Guarded {
        bytes: &big,
        pos: 0,
        limit: FRAME_HEADER_LEN_BYTES,
    };
    assert!(matches!(
        read_frame::<ToSidecar>(&mut guarded, 64 << 10),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_frame::<ToSidecar>(&big, 64 << 10),
        Err(FrameError::TooLarge { .. })
    ));
    // A payload over 64 MiB cannot even be encoded.
    let huge = WorkerCut {
        updates: vec![PersistedUpdate {
            key_group: 0,
            data: vec![0; MAX_PAYLOAD_BYTES],
            time: 0,
            diff: 1,
        }],
        ..sample_cut()
    };
    assert!(matches!(
        encode_frame(&ToSidecar::WorkerCut(huge)),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn transport_lying_counts_do_not_allocate_or_panic() {
    // A worker cut whose update count claims 2^32-1 elements: refused by the
    // bounds check, not by running out of memory.
    let mut frame = encode_frame(&ToSidecar::WorkerCut(WorkerCut {
        updates: vec![],
        ..sample_cut()
    }))
    .unwrap();
    let count_at = FRAME_HEADER_LEN_BYTES + 1 + 4 + 8 * 4; // kind, worker, 4 u64
    frame[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN_BYTES..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    match decode_frame::<ToSidecar>(&frame, MAX_PAYLOAD_BYTES) {
        Err(FrameError::Decode { reason, .. }) => {
            assert!(reason.contains("cannot fit"), "{reason}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}
