//! A log partition's feed filled by the ingest that writes it (decision
//! 72): the thread that parses an input file hands each record it appends
//! to the partition over to the run as well, decoded, in the chunks of a
//! read-ahead feed, so the run does not read the partition back from the
//! log. The records and offsets are those the partition holds.
//!
//! The partition ends once its file is written: every row parsed, the file
//! checked unchanged, the partition synced ([`ChunkFiller::written`]); a
//! run that tails its input (no `until_end`) sees it idle from then on, as
//! it would see the log partition, until `stop` is set. A filler dropped
//! before that (the file failed, or an earlier one did and this one was
//! never started) fails the feed: the run then reports the ingest's own
//! error. The ingest is never held by a run that fails: a filler whose feed
//! is gone declines further records.
//!
//! A fed feed is only polled, never waited on: the thread that fills it
//! may not have started yet. At most [`FED_CHUNKS_QUEUED`] chunks wait.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use weir_dataflows::key::Key;

use super::{Ahead, Decoded, ReadAheadFeed, CHUNK_BYTES, CHUNK_RECORDS};
use crate::event::EventRef;

/// Chunks waiting for the worker, at most, per fed partition: enough for
/// the parse to go on through a worker's longest idle wait (16 ms).
pub const FED_CHUNKS_QUEUED: usize = 4;

/// What a fed feed keeps besides a read-ahead feed's state.
pub(super) struct Fed {
    stop: Option<Arc<AtomicBool>>,
    /// The filler said the file is written.
    written: bool,
    /// Records before this offset are not delivered (a run resuming
    /// within the partition).
    skip_before: u64,
}

impl Fed {
    /// Records to skip at the front of a chunk of `len` from `first_offset`.
    pub(super) fn skip(&self, first_offset: u64, len: usize) -> usize {
        usize::try_from(self.skip_before.saturating_sub(first_offset))
            .unwrap_or(usize::MAX)
            .min(len)
    }

    /// The file is not written yet: more records may come.
    pub(super) fn filling(&self) -> bool {
        !self.written
    }

    fn may_end(&self, until_end: bool) -> bool {
        until_end
            || self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// The filler said the file is written: whether the partition ends now.
    pub(super) fn written(&mut self, until_end: bool) -> bool {
        self.written = true;
        self.may_end(until_end)
    }

    /// Every chunk is delivered and the filler is gone: whether the
    /// partition ends now (else it is idle), or why it fails.
    pub(super) fn after_disconnect(&self, until_end: bool) -> Result<bool, String> {
        if self.written {
            Ok(self.may_end(until_end))
        } else {
            Err("its input file was not ingested (the ingest's error says why)".to_owned())
        }
    }
}

/// Makes a fed feed for partition `partition` (directory `dir`, named in
/// errors) and the filler its ingest hands records to; `until_end` and
/// `stop` as for [`super::ReadAheadFeed::start`].
pub fn fed(
    partition: u32,
    dir: PathBuf,
    until_end: bool,
    stop: Option<Arc<AtomicBool>>,
) -> (ReadAheadFeed, ChunkFiller) {
    let (sender, received) = mpsc::sync_channel(FED_CHUNKS_QUEUED);
    let (spares, spare_received) = mpsc::sync_channel(FED_CHUNKS_QUEUED + 2);
    let feed = ReadAheadFeed {
        partition,
        dir,
        until_end,
        received: Some(received),
        spares,
        closed: Arc::new(AtomicBool::new(false)),
        thread: None,
        current: None,
        ended: false,
        fed: Some(Fed {
            stop,
            written: false,
            skip_before: 0,
        }),
    };
    let filler = ChunkFiller {
        sender,
        spares: spare_received,
        records: Vec::new(),
        first_offset: 0,
        payload_bytes: 0,
    };
    (feed, filler)
}

impl ReadAheadFeed {
    /// A fed feed delivers records from `offset` on (a run resuming within
    /// the partition); other feeds start where they were opened.
    pub fn resume_fed_at(&mut self, offset: u64) {
        if let Some(fed) = self.fed.as_mut() {
            fed.skip_before = offset;
        }
    }
}

/// The ingest's end of a fed feed: collects records into chunks and hands
/// them over, waiting while [`FED_CHUNKS_QUEUED`] are queued.
pub struct ChunkFiller {
    sender: SyncSender<Ahead>,
    spares: Receiver<Vec<Decoded>>,
    records: Vec<Decoded>,
    first_offset: u64,
    payload_bytes: usize,
}

impl ChunkFiller {
    /// Adds the record at `offset` (the one after the last added); `false`
    /// once the feed is gone.
    pub fn push(&mut self, offset: u64, event: EventRef<'_>) -> bool {
        if self.records.is_empty() {
            self.first_offset = offset;
            self.payload_bytes = 0;
            if self.records.capacity() == 0 {
                self.records.reserve_exact(CHUNK_RECORDS);
            }
        }
        debug_assert_eq!(offset, self.first_offset + self.records.len() as u64);
        self.payload_bytes += event.key.len() + 16;
        self.records.push(Decoded::Event {
            ts: event.ts,
            value: event.value,
            key: Key::new(event.key),
        });
        if self.records.len() >= CHUNK_RECORDS || self.payload_bytes >= CHUNK_BYTES {
            return self.hand_over();
        }
        true
    }

    /// Hands over the records collected; `false` once the feed is gone.
    fn hand_over(&mut self) -> bool {
        if self.records.is_empty() {
            return true;
        }
        let mut next = self.spares.try_recv().unwrap_or_default();
        next.clear();
        let records = std::mem::replace(&mut self.records, next);
        self.sender
            .send(Ahead::Records {
                first_offset: self.first_offset,
                records,
            })
            .is_ok()
    }

    /// Every record is added and the file is written: hands over the rest
    /// and the end.
    pub fn written(&mut self) {
        if self.hand_over() {
            let _ = self.sender.send(Ahead::Ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::event::LogRecord;
    use crate::source::{FeedStatus, PartitionFeed};

    /// `(offset, ts, key, value)` of each event delivered.
    type Seen = Vec<(u64, u64, String, i64)>;

    fn event(i: u64) -> (u64, String, i64) {
        (i * 10, format!("key-{}", i % 37), i as i64 - 7)
    }

    /// Fills `filler` with events `0..n` on a thread of its own, then says
    /// the file is written (or, without `written`, drops it before).
    fn fill(mut filler: ChunkFiller, n: u64, written: bool) -> std::thread::JoinHandle<bool> {
        std::thread::spawn(move || {
            for i in 0..n {
                let (ts, key, value) = event(i);
                if !filler.push(i, EventRef::new(ts, &key, value)) {
                    return false;
                }
            }
            if written {
                filler.written();
            }
            true
        })
    }

    /// Polls `feed` until it ends or fails.
    fn drain(feed: &mut ReadAheadFeed, batch: usize) -> (Seen, Result<FeedStatus, String>) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = feed.poll(batch, &mut |offset, record| match record {
                LogRecord::Event(e) => {
                    assert_eq!(e.key_hash, Some(weir_dataflows::key::key_hash(e.key)));
                    seen.push((offset, e.ts, e.key.to_owned(), e.value));
                }
                LogRecord::Idle { .. } => panic!("an ingest hands over no markers"),
            });
            match status {
                Ok(FeedStatus::Ended) => return (seen, Ok(FeedStatus::Ended)),
                Err(e) => return (seen, Err(e.to_string())),
                Ok(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the feed neither ended nor failed"
            );
            std::thread::yield_now();
        }
    }

    fn expected(from: u64, to: u64) -> Seen {
        (from..to)
            .map(|i| {
                let (ts, key, value) = event(i);
                (i, ts, key, value)
            })
            .collect()
    }

    #[test]
    fn a_fed_feed_gives_every_record_in_order_then_ends_once_written() {
        for n in [0, 1, CHUNK_RECORDS as u64, 3 * CHUNK_RECORDS as u64 + 5] {
            let (mut feed, filler) = fed(3, PathBuf::from("log/events/3"), true, None);
            let filling = fill(filler, n, true);
            let (seen, end) = drain(&mut feed, 1000);
            assert_eq!(end, Ok(FeedStatus::Ended), "{n} records");
            assert_eq!(seen, expected(0, n), "{n} records");
            assert!(filling.join().unwrap());
        }
    }

    #[test]
    fn a_fed_feed_resumed_within_the_partition_skips_the_records_before() {
        let n = 2 * CHUNK_RECORDS as u64 + 100;
        for from in [1, CHUNK_RECORDS as u64 + 3, n, n + 5] {
            let (mut feed, filler) = fed(0, PathBuf::from("p"), true, None);
            feed.resume_fed_at(from);
            let filling = fill(filler, n, true);
            let (seen, end) = drain(&mut feed, 777);
            assert_eq!(end, Ok(FeedStatus::Ended));
            assert_eq!(seen, expected(from.min(n), n), "from {from}");
            assert!(filling.join().unwrap());
        }
    }

    #[test]
    fn a_file_that_is_not_written_fails_the_feed_after_its_records() {
        let n = CHUNK_RECORDS as u64 + 1;
        let (mut feed, filler) = fed(5, PathBuf::from("log/events/5"), true, None);
        let filling = fill(filler, n, false);
        let (seen, end) = drain(&mut feed, 500);
        let error = end.unwrap_err();
        assert!(
            error.contains("partition 5") && error.contains("not ingested"),
            "{error}"
        );
        // The chunk handed over before the failure is delivered first; the
        // record after it never was.
        assert_eq!(seen, expected(0, CHUNK_RECORDS as u64));
        assert!(filling.join().unwrap());
    }

    #[test]
    fn a_fed_feed_is_polled_never_waited_on() {
        // Its ingest may not have started the file: a run to the end that
        // waited here would hold its worker from the partitions that move.
        let (mut feed, filler) = fed(2, PathBuf::from("p"), true, None);
        assert!(feed.filling());
        let (done, polled) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let status = feed.poll(100, &mut |_, _| panic!("no record yet"));
            let _ = done.send((status.map_err(|e| e.to_string()), feed));
        });
        let (status, mut feed) = polled
            .recv_timeout(Duration::from_secs(30))
            .expect("the poll waited for the ingest");
        assert_eq!(status, Ok(FeedStatus::Idle));
        drop(filler);
        assert!(feed.poll(100, &mut |_, _| {}).is_err());
    }

    #[test]
    fn a_tailing_run_sees_a_written_partition_idle_until_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut feed, filler) = fed(1, PathBuf::from("p"), false, Some(Arc::clone(&stop)));
        assert!(fill(filler, 10, true).join().unwrap());
        let mut seen = 0;
        for _ in 0..20 {
            let status = feed.poll(100, &mut |_, _| seen += 1).unwrap();
            assert_ne!(status, FeedStatus::Ended);
        }
        assert_eq!(seen, 10);
        stop.store(true, Ordering::Release);
        let status = feed.poll(100, &mut |_, _| seen += 1).unwrap();
        assert_eq!((status, seen), (FeedStatus::Ended, 10));
    }

    #[test]
    fn a_filler_whose_feed_is_gone_declines_instead_of_waiting() {
        let (feed, filler) = fed(0, PathBuf::from("p"), true, None);
        drop(feed);
        // More than the queue holds: a filler that waited would never return.
        let n = (FED_CHUNKS_QUEUED as u64 + 2) * CHUNK_RECORDS as u64;
        assert!(!fill(filler, n, true).join().unwrap());
    }

    #[test]
    fn long_keys_make_smaller_chunks() {
        let (mut feed, mut filler) = fed(0, PathBuf::from("p"), true, None);
        let key = "x".repeat(1000);
        let per_chunk = CHUNK_BYTES / (key.len() + 16) + 1;
        for i in 0..per_chunk as u64 {
            assert!(filler.push(i, EventRef::new(i, &key, 0)));
        }
        let mut delivered = 0;
        let status = feed.poll(usize::MAX, &mut |_, _| delivered += 1).unwrap();
        assert_eq!((status, delivered), (FeedStatus::Progress, per_chunk));
    }
}
