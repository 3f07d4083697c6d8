//! Heartbeats: a writer that holds an epoch of a store says, every
//! [`BEAT_INTERVAL`], that it is alive (`e<epoch>/HEARTBEAT`, a counter),
//! so that a data dir that never claimed in the store — a primary whose
//! data dir was wiped, restarted with the same flags while a standby runs
//! the job — does not fence a live writer off: it watches the newest
//! epoch's counter for [`LIVENESS_WAIT`] and is refused if it moves.
//!
//! A deliberate takeover (`--restore-from`) does not look: it is meant to
//! fence the writer off. A writer that cannot reach the store does not
//! beat, and looks dead; what it commits meanwhile is fenced off when it
//! reaches the store again (decision 42).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::epoch::epoch_prefix;
use super::Blob;
use crate::storage::kv_text::{decode_kv, encode_kv};

/// How often a writer beats.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a newcomer watches the newest epoch's counter.
pub const LIVENESS_WAIT: Duration = Duration::from_secs(4);
const BEAT_KIND: &str = "weir-cold-heartbeat";
/// The version written (2: a `release` line names the writer); 1 and 2
/// are read.
const FORMAT_VERSION: u32 = 2;
/// The heartbeat's name in an epoch's prefix.
pub(super) const HEARTBEAT: &str = "HEARTBEAT";

fn beat_key(epoch: u64) -> String {
    format!("{}/{HEARTBEAT}", epoch_prefix(epoch))
}

/// Writes beat number `beats` of epoch `epoch`.
pub fn beat(blob: &dyn Blob, epoch: u64, beats: u64) -> Result<(), String> {
    let bytes = encode_kv(BEAT_KIND, FORMAT_VERSION, &[("beats", beats.to_string())]);
    blob.put(&beat_key(epoch), &bytes)
        .map_err(|e| e.to_string())
}

/// The beat counter of epoch `epoch` (`None`: it never beat).
pub fn read_beats(blob: &dyn Blob, epoch: u64) -> Result<Option<u64>, String> {
    let key = beat_key(epoch);
    let Some(bytes) = blob.get(&key).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let at = |(offset, reason): (u64, String)| format!("{key}: at byte {offset}: {reason}");
    let fields = decode_kv(&bytes, BEAT_KIND, FORMAT_VERSION).map_err(at)?;
    Ok(Some(fields.number("beats").map_err(at)?))
}

/// Refuses, naming the store, if epoch `epoch`'s writer beats within
/// `wait` (it is alive: another process runs this job on the store).
pub fn refuse_if_live(blob: &dyn Blob, epoch: u64, wait: Duration) -> Result<(), String> {
    let first = read_beats(blob, epoch)?;
    let started = Instant::now();
    while started.elapsed() < wait {
        std::thread::sleep((wait / 16).min(Duration::from_millis(250)));
        if read_beats(blob, epoch)? != first {
            return Err(format!(
                "{}: the writer of epoch {epoch} is alive (its heartbeat moved within {} ms): \
                 another process runs this job on this store. This data dir never wrote \
                 there, so it does not take the job over by itself: stop the other writer \
                 first, or start a standby with an empty data dir and --restore-from",
                blob.describe(),
                wait.as_millis()
            ));
        }
    }
    Ok(())
}

/// A thread beating for one epoch until it is stopped.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts beating for `epoch` of `blob` every [`BEAT_INTERVAL`] (a
    /// failed beat is tried again at the next one: the copier reports the
    /// store's trouble).
    pub fn start(blob: Arc<dyn Blob>, epoch: u64) -> Result<Self, String> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("cold-heartbeat".into())
                .spawn(move || {
                    let (lock, stopped) = &*stop;
                    let mut beats = 0_u64;
                    loop {
                        beats += 1;
                        if let Err(reason) = beat(blob.as_ref(), epoch, beats) {
                            tracing::debug!(url = %blob.describe(), %reason, "a heartbeat failed");
                        }
                        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        let (guard, _) = stopped
                            .wait_timeout_while(guard, BEAT_INTERVAL, |stop| !*stop)
                            .unwrap_or_else(PoisonError::into_inner);
                        if *guard {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("spawning the heartbeat: {e}"))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops beating (the epoch then looks dead after [`LIVENESS_WAIT`]).
    pub fn stop(&mut self) {
        let (lock, stopped) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        stopped.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tier::FileBlob;

    #[test]
    fn a_beating_writer_is_live_and_a_stopped_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Arc<dyn Blob> = Arc::new(FileBlob::open(dir.path()).unwrap());
        assert_eq!(read_beats(blob.as_ref(), 3).unwrap(), None);
        // Nobody beats: silent.
        refuse_if_live(blob.as_ref(), 3, Duration::from_millis(50)).unwrap();
        let mut heartbeat = Heartbeat::start(Arc::clone(&blob), 3).unwrap();
        let refused = refuse_if_live(blob.as_ref(), 3, LIVENESS_WAIT).unwrap_err();
        assert!(refused.contains("epoch 3 is alive"), "{refused}");
        heartbeat.stop();
        let beats = read_beats(blob.as_ref(), 3).unwrap().unwrap();
        assert!(beats >= 1, "{beats}");
        refuse_if_live(blob.as_ref(), 3, Duration::from_millis(300)).unwrap();
    }

    #[test]
    fn a_damaged_heartbeat_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(dir.path()).unwrap();
        blob.put(&beat_key(2), b"not a heartbeat").unwrap();
        let damaged = read_beats(&blob, 2).unwrap_err();
        assert!(damaged.contains(&beat_key(2)), "{damaged}");
    }
}
