//! A buffered file writer whose `write` system calls run on a thread of
//! their own.
//!
//! A sliding window with many keys writes more bytes of rows than it reads
//! of events (2M keys, 1 h / 5 m: 2.3 GB of CSV from 20M events); copying
//! them into the page cache was 18 % of the worker thread's time in `perf`.
//! Here the worker fills chunks of [`CHUNK_BYTES`] and hands them over a
//! bounded channel ([`CHUNKS_IN_FLIGHT`]) to a writer thread, which returns
//! the emptied chunks for reuse. [`BackgroundWriter::flush`] returns once
//! every byte given so far has been written to the file (or the first
//! error), which is what a checkpoint's output length needs before the
//! file is synced. Every [`WRITEBACK_BYTES`] the thread has the file's
//! pages written back and dropped from the page cache
//! ([`drop_written_pages`]).

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

/// Bytes gathered before a chunk goes to the writer thread.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks queued for the writer thread at most; a full queue blocks the
/// worker (backpressure from the disk).
pub const CHUNKS_IN_FLIGHT: usize = 4;

enum Message {
    Chunk(Vec<u8>),
    /// Reply once everything before has been written.
    Flush(SyncSender<io::Result<()>>),
}

/// See the module doc.
pub struct BackgroundWriter {
    chunk: Vec<u8>,
    to_thread: Option<SyncSender<Message>>,
    emptied: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackgroundWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundWriter")
            .field("buffered_bytes", &self.chunk.len())
            .finish_non_exhaustive()
    }
}

impl BackgroundWriter {
    /// A writer of `file` on a thread named `weir-out:<label>`.
    pub fn new(file: File, label: &str) -> io::Result<Self> {
        let (to_thread, from_worker) = sync_channel(CHUNKS_IN_FLIGHT);
        let (to_worker, emptied) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("weir-out:{label}"))
            .spawn(move || write_chunks(file, &from_worker, &to_worker))?;
        Ok(BackgroundWriter {
            chunk: Vec::with_capacity(CHUNK_BYTES),
            to_thread: Some(to_thread),
            emptied,
            thread: Some(thread),
        })
    }

    /// Appends `bytes`; a full chunk goes to the writer thread.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.chunk.extend_from_slice(bytes);
        if self.chunk.len() >= CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(())
    }

    /// Appends what `format` writes (it may only append); returns the
    /// number of bytes it wrote.
    pub fn append_with(&mut self, format: impl FnOnce(&mut Vec<u8>)) -> io::Result<usize> {
        let before = self.chunk.len();
        format(&mut self.chunk);
        let written = self.chunk.len() - before;
        if self.chunk.len() >= CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(written)
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self
            .emptied
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES));
        let full = std::mem::replace(&mut self.chunk, next);
        self.send(Message::Chunk(full))
    }

    fn send(&mut self, message: Message) -> io::Result<()> {
        self.to_thread
            .as_ref()
            .expect("the channel lives as long as the writer")
            .send(message)
            .map_err(|_| io::Error::other("the output writer thread stopped"))
    }

    /// Returns once every byte given so far is written to the file, or
    /// with the first error a write hit (every later call fails too).
    pub fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()?;
        let (reply, done) = sync_channel(1);
        self.send(Message::Flush(reply))?;
        done.recv()
            .map_err(|_| io::Error::other("the output writer thread stopped"))?
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Bytes not flushed are written before the thread ends, as a
        // `BufWriter` would on drop; errors were reported by `flush`.
        let _ = self.send_chunk();
        self.to_thread = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Output written between two calls of [`drop_written_pages`].
pub const WRITEBACK_BYTES: usize = 64 << 20;

/// Advises the kernel that the file's pages are not needed again
/// (`POSIX_FADV_DONTNEED`): Linux starts writing the dirty ones back, without
/// waiting, and drops those already written back (by the previous call's
/// writeback), so the output holds ~2 × [`WRITEBACK_BYTES`] of page cache
/// however much is written. Without it an output of gigabytes fills the page
/// cache with fresh pages, and on a virtual machine that hands free memory
/// back to its host (free page reporting, a balloon) each fresh page is a
/// fault on the host: writing 2.3 GB took 12 s that way on this project's
/// machine, 1.6 s with this (decision 38). Durability is unchanged: a
/// checkpoint still syncs the file. Advice only: an error is logged, not
/// returned.
fn drop_written_pages(file: &File) {
    if let Err(e) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::debug!(error = %e, "dropping written output from the page cache");
    }
}

fn write_chunks(mut file: File, chunks: &Receiver<Message>, emptied: &Sender<Vec<u8>>) {
    let mut failed: Option<(io::ErrorKind, String)> = None;
    let mut bytes_since_drop = 0;
    for message in chunks {
        match message {
            Message::Chunk(mut chunk) => {
                if failed.is_none() {
                    bytes_since_drop += chunk.len();
                    if let Err(e) = file.write_all(&chunk) {
                        failed = Some((e.kind(), e.to_string()));
                    } else if bytes_since_drop >= WRITEBACK_BYTES {
                        bytes_since_drop = 0;
                        drop_written_pages(&file);
                    }
                }
                chunk.clear();
                // Back for reuse: no more chunks exist than can be in
                // flight plus the one being filled.
                let _ = emptied.send(chunk);
            }
            Message::Flush(reply) => {
                let result = match &failed {
                    None => Ok(()),
                    Some((kind, text)) => Err(io::Error::new(*kind, text.clone())),
                };
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_in_the_file_after_flush_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut writer = BackgroundWriter::new(File::create(&path).unwrap(), "test").unwrap();
        let mut expected = Vec::new();
        for i in 0..200_000u32 {
            let line = format!("{i},{}\n", i.wrapping_mul(2_654_435_761));
            writer.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            if i % 50_000 == 0 {
                writer.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), expected);
            }
        }
        writer.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        writer.write_all(b"tail\n").unwrap();
        drop(writer);
        expected.extend_from_slice(b"tail\n");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn output_past_the_writeback_size_is_complete_and_dropped_pages_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        let mut writer = BackgroundWriter::new(File::create(&path).unwrap(), "test").unwrap();
        let line = |i: usize| format!("{i:015}\n");
        let lines = WRITEBACK_BYTES * 2 / 16 + 1000;
        for i in 0..lines {
            writer.write_all(line(i).as_bytes()).unwrap();
        }
        writer.flush().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), lines * 16);
        for i in [0, 1, lines / 2, lines - 1] {
            assert_eq!(&written[i * 16..(i + 1) * 16], line(i).as_bytes());
        }
    }

    #[test]
    fn a_write_error_is_returned_by_flush_and_every_flush_after() {
        // A file opened read-only refuses writes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let mut writer = BackgroundWriter::new(File::open(&path).unwrap(), "test").unwrap();
        writer.write_all(&vec![b'x'; CHUNK_BYTES + 1]).unwrap();
        assert!(writer.flush().is_err());
        writer.write_all(b"more").unwrap();
        assert!(writer.flush().is_err());
    }
}
