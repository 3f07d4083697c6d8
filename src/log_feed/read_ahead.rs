//! A log partition read on a thread of its own (decisions 66 and 69): the
//! thread makes the read calls, checks every frame's checksums and decodes
//! the events (their keys checked as UTF-8 and hashed), and hands them over
//! a bounded channel in chunks of at most [`CHUNK_RECORDS`] records or
//! about [`CHUNK_BYTES`] of payload; the worker only walks them. On a
//! machine with a core the workers leave free, that moves a third of a
//! window run's source work off the worker.
//!
//! The records, their offsets, the errors (with the offset of a corrupt or
//! undecodable record, after every record before it) and what the end of
//! the data means (ended with `until_end` or once `stop` is set before the
//! end was read; otherwise more may come) are those of reading inline; only
//! the poll that reports the end may come one after the last records', not
//! with them. At most `CHUNKS_QUEUED + 2` chunks exist per partition
//! (queued, being filled, being delivered); emptied chunks go back to the
//! thread to be filled again.
//!
//! A feed can also be filled by the ingest that writes its partition
//! ([`fed`], decision 72) instead of a reading thread.

pub mod fed;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weir_dataflows::key::Key;

use crate::event::{EventRef, LogRecord};
use crate::log::PartitionReader;
use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// Payload bytes per chunk, about (a chunk ends after the record that
/// reaches it).
pub const CHUNK_BYTES: usize = 256 << 10;
/// Chunks waiting for the worker, at most.
const CHUNKS_QUEUED: usize = 2;
/// The longest the thread sleeps at the end of a tailed partition.
const IDLE_WAIT_MAX_MS: u64 = 16;

/// Records per chunk, at most.
pub const CHUNK_RECORDS: usize = 8192;

/// A record decoded on the thread.
pub(crate) enum Decoded {
    Event { ts: u64, value: i64, key: Key },
    Idle { watermark_ms: u64 },
}

/// What the thread hands over.
pub(crate) enum Ahead {
    /// Records from `first_offset` on.
    Records {
        first_offset: u64,
        records: Vec<Decoded>,
    },
    /// The partition ended (until its end, or stopped).
    Ended,
    /// Reading or decoding failed; nothing comes after it.
    Failed(FeedError),
}

/// A chunk being delivered.
struct Current {
    next_offset: u64,
    records: Vec<Decoded>,
    at: usize,
}

/// Reads and decodes one log partition on its own thread.
pub struct ReadAheadFeed {
    partition: u32,
    dir: PathBuf,
    until_end: bool,
    received: Option<Receiver<Ahead>>,
    spares: SyncSender<Vec<Decoded>>,
    closed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    current: Option<Current>,
    ended: bool,
    /// Filled by an ingest rather than a reading thread.
    fed: Option<fed::Fed>,
}

impl ReadAheadFeed {
    /// Starts reading `reader` (partition `partition`, directory `dir`) on
    /// a thread; `until_end` and `stop` as for [`super::LogFeed`].
    pub fn start(
        reader: PartitionReader,
        partition: u32,
        until_end: bool,
        stop: Option<Arc<AtomicBool>>,
    ) -> std::io::Result<Self> {
        let dir = reader.dir().to_owned();
        let thread_dir = dir.clone();
        let (sender, received) = mpsc::sync_channel(CHUNKS_QUEUED);
        let (spares, spare_received) = mpsc::sync_channel(CHUNKS_QUEUED + 2);
        let closed = Arc::new(AtomicBool::new(false));
        let thread_closed = Arc::clone(&closed);
        let thread = std::thread::Builder::new()
            .name(format!("weir-read-{partition}"))
            .spawn(move || {
                let ends =
                    move || until_end || stop.as_ref().is_some_and(|s| s.load(Ordering::Acquire));
                let place = (partition, thread_dir.as_path());
                read(
                    (reader, place),
                    &ends,
                    (&sender, &spare_received),
                    &thread_closed,
                );
            })?;
        Ok(ReadAheadFeed {
            partition,
            dir,
            until_end,
            received: Some(received),
            spares,
            closed,
            thread: Some(thread),
            current: None,
            ended: false,
            fed: None,
        })
    }

    fn error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> FeedError {
        FeedError {
            partition: self.partition,
            source,
        }
    }

    /// The next chunk: waits for one when `wait`; `Ok(None)` when none is
    /// there yet (or the partition ended: then `self.ended`).
    fn next_chunk(&mut self, wait: bool) -> Result<Option<Current>, FeedError> {
        let received = self.received.as_ref().expect("open until dropped");
        let next = if wait {
            received.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            received.try_recv()
        };
        match next {
            Ok(Ahead::Records {
                first_offset,
                records,
            }) => {
                let skip = self
                    .fed
                    .as_ref()
                    .map_or(0, |f| f.skip(first_offset, records.len()));
                Ok(Some(Current {
                    next_offset: first_offset + skip as u64,
                    records,
                    at: skip,
                }))
            }
            Ok(Ahead::Ended) => {
                self.ended = self.fed.as_mut().is_none_or(|f| f.written(self.until_end));
                Ok(None)
            }
            Ok(Ahead::Failed(e)) => Err(e),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                if let Some(fed) = self.fed.as_ref() {
                    return match fed.after_disconnect(self.until_end) {
                        Ok(ended) => {
                            self.ended = ended;
                            Ok(None)
                        }
                        Err(reason) => Err(self.error(reason.into())),
                    };
                }
                // Only a panic ends the thread without a last word: say which.
                let panic = self.thread.take().and_then(|t| t.join().err());
                let message = panic
                    .as_deref()
                    .and_then(crate::panic_message::panic_message)
                    .unwrap_or_default();
                let dir = self.dir.display();
                Err(self.error(format!("the thread reading {dir} panicked: {message}").into()))
            }
        }
    }
}

impl PartitionFeed for ReadAheadFeed {
    fn filling(&self) -> bool {
        self.fed.as_ref().is_some_and(fed::Fed::filling)
    }

    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let mut delivered = 0;
        while delivered < max_records {
            if self
                .current
                .as_ref()
                .is_none_or(|c| c.at == c.records.len())
            {
                if let Some(done) = self.current.take() {
                    // The thread makes a new chunk if the return is full.
                    let _ = self.spares.try_send(done.records);
                }
                if self.ended {
                    break;
                }
                // A run that reads to the end waits for the thread, which
                // is never long without sending records or the end. An
                // ingest may be: a fed feed is only polled.
                let wait = self.until_end && delivered == 0 && self.fed.is_none();
                match self.next_chunk(wait)? {
                    Some(chunk) => self.current = Some(chunk),
                    None => break,
                }
                continue;
            }
            let current = self.current.as_mut().expect("a chunk with records");
            let take = (max_records - delivered).min(current.records.len() - current.at);
            for record in &current.records[current.at..current.at + take] {
                let record = match record {
                    Decoded::Event { ts, value, key } => LogRecord::Event(EventRef {
                        ts: *ts,
                        key: key.as_str(),
                        value: *value,
                        key_hash: Some(key.hash_value()),
                    }),
                    Decoded::Idle { watermark_ms } => LogRecord::Idle {
                        watermark_ms: *watermark_ms,
                    },
                };
                deliver(current.next_offset, record);
                current.next_offset += 1;
            }
            current.at += take;
            delivered += take;
        }
        Ok(match (delivered, self.ended) {
            (0, true) => FeedStatus::Ended,
            (0, false) => FeedStatus::Idle,
            _ => FeedStatus::Progress,
        })
    }
}

impl Drop for ReadAheadFeed {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // A thread blocked handing over a chunk sees the channel closed.
        drop(self.received.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: reads and decodes the partition (`reader`, at `place`) into
/// chunks until it ends, reading or decoding fails, or the feed is dropped.
fn read(
    (mut reader, place): (PartitionReader, (u32, &std::path::Path)),
    ends: &dyn Fn() -> bool,
    (sender, spares): (&SyncSender<Ahead>, &Receiver<Vec<Decoded>>),
    closed: &AtomicBool,
) {
    let mut idle_ms = 1;
    let mut kept: Option<Vec<Decoded>> = None;
    while !closed.load(Ordering::Acquire) {
        // Read before the data: an end reached after the run was stopped
        // ends the partition only if the stop came before that read
        // (records appended before the stop are then all read).
        let ending = ends();
        let mut records = kept
            .take()
            .or_else(|| spares.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_RECORDS));
        records.clear();
        let mut first_offset = None;
        let mut at_end = false;
        let mut payload_bytes = 0;
        while records.len() < CHUNK_RECORDS && payload_bytes < CHUNK_BYTES {
            let failed = match reader.next() {
                Ok(Some((offset, payload))) => {
                    first_offset.get_or_insert(offset);
                    payload_bytes += payload.len();
                    match super::decode_at(place, offset, payload) {
                        Ok(LogRecord::Event(event)) => {
                            records.push(Decoded::Event {
                                ts: event.ts,
                                value: event.value,
                                key: Key::new(event.key),
                            });
                            continue;
                        }
                        Ok(LogRecord::Idle { watermark_ms }) => {
                            records.push(Decoded::Idle { watermark_ms });
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Ok(None) => {
                    at_end = true;
                    break;
                }
                Err(e) => FeedError {
                    partition: place.0,
                    source: Box::new(e),
                },
            };
            if let Some(first_offset) = first_offset.filter(|_| !records.is_empty()) {
                let _ = sender.send(Ahead::Records {
                    first_offset,
                    records,
                });
            }
            let _ = sender.send(Ahead::Failed(failed));
            return;
        }
        if let Some(first_offset) = first_offset {
            idle_ms = 1;
            if sender
                .send(Ahead::Records {
                    first_offset,
                    records,
                })
                .is_err()
            {
                return;
            }
        } else {
            kept = Some(records);
            if at_end && !ending {
                std::thread::sleep(Duration::from_millis(idle_ms));
                idle_ms = (idle_ms * 2).min(IDLE_WAIT_MAX_MS);
            }
        }
        if at_end && ending {
            let _ = sender.send(Ahead::Ended);
            return;
        }
    }
}
