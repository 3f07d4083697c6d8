//! What the copiers read of the data dir, read and checked once for all of
//! them: a sidecar with a cold tier and a replica copies every data file
//! and every log chunk twice, and reading and verifying each twice was a
//! third of the copiers' time (decision 48).
//!
//! The copier that reads an object first leaves its bytes here for the
//! others (who wait while it reads); each takes them once and the entry
//! goes when all have. The
//! copiers work in step (both are offered every commit), so an entry is
//! usually taken within one copy; one whose store is down never takes its
//! share, so entries also go, oldest first, beyond [`MAX_HELD_BYTES`] or
//! [`MAX_HELD_ENTRIES`]. A miss only means reading again: an entry holds
//! exactly what its key names (a data file's bytes verified against its
//! commit record's CRC32C; a log chunk's complete records, which never
//! change), so using one is never wrong.
//!
//! The sidecar offers each delta file it writes ([`LocalSource::offer`]):
//! the bytes it just wrote, from which the commit record's CRC32C was
//! computed, so no copier reads those files back at all.
//!
//! Buffers come back ([`LocalSource::recycle`]) once a copier has put
//! them, so a copy does not allocate (the kernel zeroes fresh pages).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The most bytes held for copiers that have not taken them.
pub const MAX_HELD_BYTES: usize = 256 << 20;
/// The most objects held.
pub const MAX_HELD_ENTRIES: usize = 64;
/// The longest wait for another copier's read of the same object (then
/// this copier reads it itself).
pub const MAX_READ_WAIT: Duration = Duration::from_secs(10);
/// Spare buffers kept for reuse.
const MAX_SPARE_BUFFERS: usize = 2;
/// The largest spare buffer kept (a larger one is freed).
const MAX_SPARE_BUFFER_BYTES: usize = 256 << 20;

/// An object of the data dir.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKey {
    /// A data file by name, with the CRC32C its commit record gives.
    File(String, u32),
    /// The log chunk of a topic's partition starting at an offset.
    Chunk(String, u32, u64),
}

/// Bytes read once: a data file's (`end` 0) or a chunk's, with the offset
/// after its last record.
#[derive(Clone, Debug)]
pub struct SourceBytes {
    /// The object's bytes.
    pub bytes: Arc<Vec<u8>>,
    /// For a chunk, the offset after its last record.
    pub end: u64,
}

#[derive(Debug)]
enum Entry {
    /// A copier is reading it.
    Reading,
    /// Read, and not yet taken by `left` copiers.
    Ready { read: SourceBytes, left: usize },
}

#[derive(Debug, Default)]
struct Held {
    entries: BTreeMap<SourceKey, Entry>,
    /// Keys, oldest first (a key may be listed after its entry went).
    order: VecDeque<SourceKey>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl Held {
    /// Leaves `read` as `key` for `left` copiers, then keeps to the bounds.
    fn leave(&mut self, key: SourceKey, read: SourceBytes, left: usize) {
        self.bytes += read.bytes.len();
        self.order.push_back(key.clone());
        self.entries.insert(key, Entry::Ready { read, left });
        self.evict_beyond_bounds();
    }

    /// Drops the oldest objects read beyond the bounds.
    fn evict_beyond_bounds(&mut self) {
        while self.bytes > MAX_HELD_BYTES || self.entries.len() > MAX_HELD_ENTRIES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(Entry::Ready { read, .. }) = self.entries.get(&oldest) {
                self.bytes -= read.bytes.len();
                self.entries.remove(&oldest);
            }
        }
        if self.order.len() > 4 * MAX_HELD_ENTRIES {
            let Self { entries, order, .. } = self;
            order.retain(|k| matches!(entries.get(k), Some(Entry::Ready { .. })));
        }
    }
}

/// The data dir as the copiers of one sidecar read it.
#[derive(Debug)]
pub struct LocalSource {
    copiers: usize,
    held: Mutex<Held>,
    read_done: Condvar,
}

impl LocalSource {
    /// A source shared by `copiers` copiers.
    pub fn new(copiers: usize) -> Arc<Self> {
        Arc::new(Self {
            copiers,
            held: Mutex::new(Held::default()),
            read_done: Condvar::new(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes of `key`: left by another copier (or being read by one:
    /// then this waits for it, up to [`MAX_READ_WAIT`]), or `read` into a
    /// buffer (empty) and left for the others. A `read` that fails or
    /// returns no bytes (a chunk with no record yet) is not left.
    pub fn get_or_read<E>(
        &self,
        key: SourceKey,
        read: impl FnOnce(&mut Vec<u8>) -> Result<u64, E>,
    ) -> Result<SourceBytes, E> {
        let mut held = self.held();
        let waiting_since = Instant::now();
        loop {
            match held.entries.get_mut(&key) {
                Some(Entry::Ready { read, left }) => {
                    *left -= 1;
                    let read = read.clone();
                    if *left == 0 {
                        held.bytes -= read.bytes.len();
                        held.entries.remove(&key);
                    }
                    return Ok(read);
                }
                Some(Entry::Reading) if waiting_since.elapsed() < MAX_READ_WAIT => {
                    let left_to_wait = MAX_READ_WAIT.saturating_sub(waiting_since.elapsed());
                    held = self
                        .read_done
                        .wait_timeout(held, left_to_wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => break,
            }
        }
        let shared = self.copiers > 1 && !held.entries.contains_key(&key);
        if shared {
            held.entries.insert(key.clone(), Entry::Reading);
        }
        let mut buffer = held.spare.pop().unwrap_or_default();
        drop(held);
        buffer.clear();
        let result = read(&mut buffer);
        let mut held = self.held();
        if shared {
            held.entries.remove(&key);
            self.read_done.notify_all();
        }
        let end = match result {
            Ok(end) if !buffer.is_empty() => end,
            Ok(end) => {
                drop(held);
                self.recycle_vec(buffer);
                return Ok(SourceBytes {
                    bytes: Arc::default(),
                    end,
                });
            }
            Err(e) => {
                drop(held);
                self.recycle_vec(buffer);
                return Err(e);
            }
        };
        let read = SourceBytes {
            bytes: Arc::new(buffer),
            end,
        };
        if shared && read.bytes.len() <= MAX_HELD_BYTES {
            held.leave(key, read.clone(), self.copiers - 1);
        }
        Ok(read)
    }

    /// Leaves `bytes`, the object `key` as the sidecar just wrote it, for
    /// every copier (none reads the file back).
    pub fn offer(&self, key: SourceKey, bytes: Vec<u8>) {
        let len = bytes.len();
        if len == 0 || len > MAX_HELD_BYTES {
            return;
        }
        let mut held = self.held();
        if held.entries.contains_key(&key) {
            return;
        }
        let read = SourceBytes {
            bytes: Arc::new(bytes),
            end: 0,
        };
        held.leave(key, read, self.copiers);
        drop(held);
        self.read_done.notify_all();
    }

    /// Takes back the buffer of bytes a copier has put, if no one else
    /// holds it.
    pub fn recycle(&self, read: SourceBytes) {
        if let Ok(buffer) = Arc::try_unwrap(read.bytes) {
            self.recycle_vec(buffer);
        }
    }

    /// Keeps the largest spare buffers (ascending by capacity: the next
    /// read takes the largest, which a chunk or file rarely outgrows).
    fn recycle_vec(&self, buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > MAX_SPARE_BUFFER_BYTES {
            return;
        }
        let mut held = self.held();
        let at = held
            .spare
            .partition_point(|b| b.capacity() < buffer.capacity());
        held.spare.insert(at, buffer);
        if held.spare.len() > MAX_SPARE_BUFFERS {
            held.spare.remove(0);
        }
    }

    /// Bytes held for copiers that have not taken them (for tests and
    /// metrics).
    pub fn held_bytes(&self) -> usize {
        self.held().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_as(bytes: &'static [u8], end: u64) -> impl FnOnce(&mut Vec<u8>) -> Result<u64, ()> {
        move |buffer| {
            buffer.extend_from_slice(bytes);
            Ok(end)
        }
    }

    #[test]
    fn each_copier_takes_an_object_once_and_it_goes() {
        let source = LocalSource::new(2);
        let key = SourceKey::Chunk("t".into(), 0, 5);
        let first = source.get_or_read(key.clone(), read_as(b"abc", 9)).unwrap();
        assert_eq!((first.bytes.as_slice(), first.end), (&b"abc"[..], 9));
        assert_eq!(source.held_bytes(), 3);
        let second = source
            .get_or_read(key.clone(), |_| -> Result<u64, ()> { panic!("read once") })
            .unwrap();
        assert!(Arc::ptr_eq(&first.bytes, &second.bytes));
        assert_eq!(source.held_bytes(), 0);
        // Taken by both: a third request reads again.
        let third = source.get_or_read(key, read_as(b"abcd", 10)).unwrap();
        assert_eq!(third.end, 10);
    }

    #[test]
    fn a_copier_waits_for_the_read_another_is_doing() {
        let source = LocalSource::new(2);
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let (started, go) = std::sync::mpsc::channel();
        let key = SourceKey::File("f".into(), 1);
        std::thread::scope(|scope| {
            let first = scope.spawn(|| {
                source
                    .get_or_read(key.clone(), |buffer| -> Result<u64, ()> {
                        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        started.send(()).unwrap();
                        // Long enough for the second request to find the
                        // read in progress (it waits either way).
                        std::thread::sleep(Duration::from_millis(200));
                        buffer.extend_from_slice(b"once");
                        Ok(0)
                    })
                    .unwrap()
            });
            go.recv().unwrap();
            let second = source
                .get_or_read(key.clone(), |_| -> Result<u64, ()> {
                    reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(0)
                })
                .unwrap();
            let first = first.join().unwrap();
            assert!(Arc::ptr_eq(&first.bytes, &second.bytes));
        });
        assert_eq!(reads.into_inner(), 1);
        assert_eq!(source.held_bytes(), 0);
    }

    #[test]
    fn an_offered_file_is_taken_by_every_copier_without_a_read() {
        for copiers in [1, 2] {
            let source = LocalSource::new(copiers);
            let key = SourceKey::File("delta".into(), 3);
            source.offer(key.clone(), b"written".to_vec());
            for _ in 0..copiers {
                let taken = source
                    .get_or_read(key.clone(), |_| -> Result<u64, ()> { panic!("offered") })
                    .unwrap();
                assert_eq!(taken.bytes.as_slice(), b"written");
            }
            assert_eq!(source.held_bytes(), 0);
        }
    }

    #[test]
    fn one_copier_holds_nothing_and_empty_reads_are_not_held() {
        let alone = LocalSource::new(1);
        alone
            .get_or_read(SourceKey::File("f".into(), 1), read_as(b"xyz", 0))
            .unwrap();
        assert_eq!(alone.held_bytes(), 0);
        let two = LocalSource::new(2);
        two.get_or_read(SourceKey::Chunk("t".into(), 0, 0), read_as(b"", 0))
            .unwrap();
        assert_eq!(two.held_bytes(), 0);
        let failed: Result<SourceBytes, &str> =
            two.get_or_read(SourceKey::File("g".into(), 1), |_| Err("gone"));
        assert_eq!(failed.unwrap_err(), "gone");
    }

    #[test]
    fn a_copier_that_never_comes_cannot_hold_more_than_the_bounds() {
        let source = LocalSource::new(2);
        for i in 0..(MAX_HELD_ENTRIES as u64 * 3) {
            source
                .get_or_read(
                    SourceKey::Chunk("t".into(), 0, i),
                    read_as(b"0123456789", i + 1),
                )
                .unwrap();
        }
        assert_eq!(source.held_bytes(), MAX_HELD_ENTRIES * 10);
        // The newest are the ones held.
        let newest = MAX_HELD_ENTRIES as u64 * 3 - 1;
        let hit = source
            .get_or_read(
                SourceKey::Chunk("t".into(), 0, newest),
                |_| -> Result<u64, ()> { panic!("held") },
            )
            .unwrap();
        assert_eq!(hit.end, newest + 1);
    }

    #[test]
    fn buffers_come_back_once_no_one_holds_them() {
        let source = LocalSource::new(2);
        let key = SourceKey::File("f".into(), 7);
        let first = source
            .get_or_read(key.clone(), read_as(b"data", 0))
            .unwrap();
        let ptr = first.bytes.as_ptr();
        source.recycle(first);
        let second = source
            .get_or_read(key, |_| -> Result<u64, ()> { panic!("held") })
            .unwrap();
        source.recycle(second);
        let reused = source
            .get_or_read(
                SourceKey::File("g".into(), 8),
                |buffer| -> Result<u64, ()> {
                    assert!(buffer.is_empty() && buffer.capacity() >= 4);
                    buffer.extend_from_slice(b"next");
                    Ok(0)
                },
            )
            .unwrap();
        assert_eq!(reused.bytes.as_ptr(), ptr);
    }
}
