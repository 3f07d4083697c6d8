//! A log partition read on a thread of its own (decision 66): the thread
//! makes the read calls and checks every frame's checksums, and hands the
//! verified payloads over a bounded channel in chunks of about
//! [`CHUNK_BYTES`]; the worker only decodes them. On a machine with a core
//! the workers leave free, that moves a quarter of a window run's work off
//! the worker.
//!
//! The records, their offsets, the errors (with the offset of a corrupt
//! record, after every record before it) and what the end of the data
//! means (ended with `until_end` or once `stop` is set before the end was
//! read; otherwise more may come) are those of reading inline; only the
//! poll that reports the end may come one after the last records', not
//! with them. At most `CHUNKS_QUEUED + 2` chunks exist per partition
//! (queued, being filled, being decoded); emptied chunks go back to the
//! thread to be filled again, unless a record larger than a chunk made one
//! grow past twice its size.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event::LogRecord;
use crate::log::{LogError, PartitionReader};
use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// Payload bytes (each with a 4-byte length before it) per chunk.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Chunks waiting for the worker, at most.
const CHUNKS_QUEUED: usize = 2;
/// The longest the thread sleeps at the end of a tailed partition.
const IDLE_WAIT_MAX_MS: u64 = 16;

/// What the thread hands over.
enum Ahead {
    /// Records from `first_offset` on, `u32` length then payload each.
    Records { first_offset: u64, bytes: Vec<u8> },
    /// The partition ended (until its end, or stopped).
    Ended,
    /// Reading failed; nothing comes after it.
    Failed(LogError),
}

/// A chunk being decoded.
struct Current {
    next_offset: u64,
    bytes: Vec<u8>,
    at: usize,
}

/// Reads one log partition on its own thread, decoding events on the caller's.
pub struct ReadAheadFeed {
    partition: u32,
    dir: PathBuf,
    until_end: bool,
    received: Option<Receiver<Ahead>>,
    spares: SyncSender<Vec<u8>>,
    closed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    current: Option<Current>,
    ended: bool,
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
        let (sender, received) = mpsc::sync_channel(CHUNKS_QUEUED);
        let (spares, spare_received) = mpsc::sync_channel(CHUNKS_QUEUED + 2);
        let closed = Arc::new(AtomicBool::new(false));
        let thread_closed = Arc::clone(&closed);
        let thread = std::thread::Builder::new()
            .name(format!("weir-read-{partition}"))
            .spawn(move || {
                let ends =
                    move || until_end || stop.as_ref().is_some_and(|s| s.load(Ordering::Acquire));
                read(reader, &ends, (&sender, &spare_received), &thread_closed);
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
                bytes,
            }) => Ok(Some(Current {
                next_offset: first_offset,
                bytes,
                at: 0,
            })),
            Ok(Ahead::Ended) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Ahead::Failed(e)) => Err(self.error(Box::new(e))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                // Only a panic ends the thread without a last word: say which.
                let panic = self.thread.take().and_then(|t| t.join().err());
                let message = panic
                    .as_ref()
                    .and_then(|p| {
                        p.downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                    })
                    .unwrap_or_default();
                let dir = self.dir.display();
                Err(self.error(format!("the thread reading {dir} panicked: {message}").into()))
            }
        }
    }
}

impl PartitionFeed for ReadAheadFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let mut delivered = 0;
        while delivered < max_records {
            if self.current.as_ref().is_none_or(|c| c.at == c.bytes.len()) {
                if let Some(done) = self.current.take() {
                    // The thread makes a new chunk if the return is full.
                    let _ = self.spares.try_send(done.bytes);
                }
                if self.ended {
                    break;
                }
                // A run that reads to the end waits for the thread, which
                // is never long without sending records or the end.
                match self.next_chunk(self.until_end && delivered == 0)? {
                    Some(chunk) => self.current = Some(chunk),
                    None => break,
                }
                continue;
            }
            let current = self.current.as_mut().expect("a chunk with records");
            let len_at = current.at;
            let len = u32::from_le_bytes(
                current.bytes[len_at..len_at + 4]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize;
            let payload = &current.bytes[len_at + 4..len_at + 4 + len];
            current.at = len_at + 4 + len;
            let offset = current.next_offset;
            current.next_offset += 1;
            let record = super::decode_at((self.partition, &self.dir), offset, payload)?;
            deliver(offset, record);
            delivered += 1;
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

/// The thread: reads `reader` into chunks until the partition ends, reading
/// fails, or the feed is dropped.
fn read(
    mut reader: PartitionReader,
    ends: &dyn Fn() -> bool,
    (sender, spares): (&SyncSender<Ahead>, &Receiver<Vec<u8>>),
    closed: &AtomicBool,
) {
    let mut idle_ms = 1;
    let mut kept: Option<Vec<u8>> = None;
    while !closed.load(Ordering::Acquire) {
        // Read before the data: an end reached after the run was stopped
        // ends the partition only if the stop came before that read
        // (records appended before the stop are then all read).
        let ending = ends();
        let mut bytes = kept
            .take()
            .or_else(|| spares.try_recv().ok())
            .filter(|b| b.capacity() <= 2 * CHUNK_BYTES)
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES + 4096));
        bytes.clear();
        let mut first_offset = None;
        let mut at_end = false;
        while bytes.len() < CHUNK_BYTES {
            match reader.next() {
                Ok(Some((offset, payload))) => {
                    first_offset.get_or_insert(offset);
                    let len = u32::try_from(payload.len()).expect("records are at most 16 MiB");
                    bytes.extend_from_slice(&len.to_le_bytes());
                    bytes.extend_from_slice(payload);
                }
                Ok(None) => {
                    at_end = true;
                    break;
                }
                Err(e) => {
                    if let Some(first_offset) = first_offset {
                        let _ = sender.send(Ahead::Records {
                            first_offset,
                            bytes,
                        });
                    }
                    let _ = sender.send(Ahead::Failed(e));
                    return;
                }
            }
        }
        if let Some(first_offset) = first_offset {
            idle_ms = 1;
            if sender
                .send(Ahead::Records {
                    first_offset,
                    bytes,
                })
                .is_err()
            {
                return;
            }
        } else {
            kept = Some(bytes);
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
