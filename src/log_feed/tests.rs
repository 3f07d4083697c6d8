//! A partition read ahead on a thread gives what reading it inline gives:
//! the same records at the same offsets, the same error after the same
//! records, the same end; a tailed one sees what is appended later.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::LogFeed;
use crate::event::{encode_event, encode_idle_marker, LogRecord};
use crate::log::{LogConfig, PartitionWriter};
use crate::source::{FeedStatus, PartitionFeed};

/// A record as delivered, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Event(u64, u64, String, i64),
    Idle(u64, u64),
}

/// Events (and an idle marker every 97th) `from..to`, key `k<i % keys>`
/// with a non-ASCII letter in every seventh.
fn append(dir: &Path, from: u64, to: u64, segment_size_bytes: u64) {
    let config = LogConfig {
        segment_size_bytes,
        ..LogConfig::default()
    };
    let mut writer = PartitionWriter::open(dir, config).unwrap();
    let mut payload = Vec::new();
    for i in from..to {
        payload.clear();
        if i % 97 == 96 {
            encode_idle_marker(i * 10, &mut payload);
        } else {
            let key = if i % 7 == 0 {
                format!("ключ{}", i % 13)
            } else {
                format!("k{}", i % 1000)
            };
            encode_event(i * 10, &key, i as i64 - 500, &mut payload);
        }
        writer.append(&payload).unwrap();
    }
    writer.sync().unwrap();
}

/// Polls `feed` (at most `batch` records a poll) until it ends or fails.
fn drain(feed: &mut dyn PartitionFeed, batch: usize) -> (Vec<Seen>, Result<(), String>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = feed.poll(batch, &mut |offset, record| {
            seen.push(match record {
                LogRecord::Event(e) => Seen::Event(offset, e.ts, e.key.to_owned(), e.value),
                LogRecord::Idle { watermark_ms } => Seen::Idle(offset, watermark_ms),
            });
        });
        match status {
            Ok(FeedStatus::Ended) => return (seen, Ok(())),
            Ok(_) => assert!(Instant::now() < deadline, "the feed never ended"),
            Err(e) => return (seen, Err(e.to_string())),
        }
    }
}

fn open(dir: &Path, from: u64, until_end: bool) -> LogFeed {
    LogFeed::open_with_stop(dir, 3, from, until_end, None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn read_ahead_gives_what_reading_inline_gives(
        records in 0u64..30_000,
        from_fraction in 0.0f64..1.0,
        segment_size_bytes in prop_oneof![Just(512u64), Just(64 << 10), Just(64 << 20)],
        batch in 1usize..3_000,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        append(tmp.path(), 0, records, segment_size_bytes);
        let from = (records as f64 * from_fraction) as u64;
        let inline = drain(&mut open(tmp.path(), from, true), batch);
        let ahead = drain(&mut open(tmp.path(), from, true).read_ahead().unwrap(), batch);
        prop_assert_eq!(inline.0.len() as u64, records - from);
        prop_assert_eq!(&ahead, &inline);
    }
}

#[test]
fn a_corrupt_record_fails_after_the_same_records_with_the_same_error() {
    let tmp = tempfile::tempdir().unwrap();
    append(tmp.path(), 0, 20_000, 64 << 20);
    let segment = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let inline = drain(&mut open(tmp.path(), 0, true), 1_000);
    let ahead = drain(&mut open(tmp.path(), 0, true).read_ahead().unwrap(), 1_000);
    assert!(
        inline.1.as_ref().is_err_and(|e| e.contains("checksum")),
        "{:?}",
        inline.1
    );
    assert!(inline.0.len() > 10_000);
    assert_eq!(ahead, inline);
}

#[test]
fn an_undecodable_record_fails_after_the_same_records_with_the_same_error() {
    // Around the read-ahead chunk's record limit: before it, at it, after it.
    for bad_at in [
        super::read_ahead::CHUNK_RECORDS as u64 - 1,
        super::read_ahead::CHUNK_RECORDS as u64,
        super::read_ahead::CHUNK_RECORDS as u64 + 5,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        append(tmp.path(), 0, bad_at, 64 << 20);
        // A frame whose checksums hold but whose event key is not UTF-8.
        let mut payload = Vec::new();
        encode_event(1, "k", 2, &mut payload);
        payload.push(0xFF);
        let mut writer = PartitionWriter::open(tmp.path(), LogConfig::default()).unwrap();
        writer.append(&payload).unwrap();
        writer.sync().unwrap();
        drop(writer);
        append(tmp.path(), bad_at + 1, bad_at + 100, 64 << 20);
        let inline = drain(&mut open(tmp.path(), 0, true), 1_000);
        let ahead = drain(&mut open(tmp.path(), 0, true).read_ahead().unwrap(), 1_000);
        assert!(
            inline
                .1
                .as_ref()
                .is_err_and(|e| e.contains(&format!("offset {bad_at}")) && e.contains("UTF-8")),
            "{:?}",
            inline.1
        );
        assert_eq!(inline.0.len() as u64, bad_at);
        assert_eq!(ahead, inline);
    }
}

#[test]
fn a_tailed_partition_gets_what_is_appended_and_ends_once_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    append(tmp.path(), 0, 1_000, 64 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let mut feed = LogFeed::open_with_stop(tmp.path(), 0, 0, false, Some(Arc::clone(&stop)))
        .unwrap()
        .read_ahead()
        .unwrap();
    let mut seen = 0u64;
    let mut poll_until = |feed: &mut dyn PartitionFeed, records: u64, status: FeedStatus| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = feed.poll(100, &mut |_, _| seen += 1).unwrap();
            if seen == records && got == status {
                return;
            }
            assert!(seen <= records, "more records than written");
            assert!(
                Instant::now() < deadline,
                "{seen} of {records} records, last {got:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    poll_until(&mut feed, 1_000, FeedStatus::Idle);
    append(tmp.path(), 1_000, 1_500, 64 << 20);
    poll_until(&mut feed, 1_500, FeedStatus::Idle);
    stop.store(true, Ordering::Release);
    poll_until(&mut feed, 1_500, FeedStatus::Ended);
}

#[test]
fn a_feed_dropped_while_its_thread_waits_to_hand_over_ends_the_thread() {
    let tmp = tempfile::tempdir().unwrap();
    // Several chunks' worth: the thread fills the channel and waits.
    append(tmp.path(), 0, 60_000, 64 << 20);
    let mut feed = open(tmp.path(), 0, true).read_ahead().unwrap();
    let mut seen = 0;
    feed.poll(1, &mut |_, _| seen += 1).unwrap();
    assert_eq!(seen, 1);
    std::thread::sleep(Duration::from_millis(50));
    drop(feed); // joins the thread: returns only if it stopped
}

#[test]
fn records_appended_before_the_stop_are_read_before_the_end() {
    for round in 0..40 {
        for read_ahead in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            append(tmp.path(), 0, 100, 64 << 20);
            let stop = Arc::new(AtomicBool::new(false));
            let feed =
                LogFeed::open_with_stop(tmp.path(), 0, 0, false, Some(Arc::clone(&stop))).unwrap();
            let mut feed: Box<dyn PartitionFeed> = if read_ahead {
                Box::new(feed.read_ahead().unwrap())
            } else {
                Box::new(feed)
            };
            let mut seen = 0u64;
            // Caught up and idle, then more records and the stop at once.
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen < 100 {
                feed.poll(1_000, &mut |_, _| seen += 1).unwrap();
                assert!(Instant::now() < deadline, "never caught up");
            }
            std::thread::sleep(Duration::from_millis(round % 3));
            append(tmp.path(), 100, 150, 64 << 20);
            stop.store(true, Ordering::Release);
            let (rest, end) = drain(feed.as_mut(), 7);
            assert_eq!(end, Ok(()));
            assert_eq!(seen + rest.len() as u64, 150, "read ahead: {read_ahead}");
        }
    }
}
