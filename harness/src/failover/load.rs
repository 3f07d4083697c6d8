//! The failover experiment's load: events appended to the primary's log
//! at a paced rate (open loop: [`crate::pacing::Pacer`]), after an optional
//! prefill appended at once. Event `i` is fully determined by `i` (time,
//! key, value, partition), so what reached the replica can be recomputed
//! by a failure-free run over the replicated log.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weir::event::encode_event;
use weir::log::{partition_dir, FsyncPolicy, LogConfig, PartitionWriter};
use weir::run::EVENTS_TOPIC;

use crate::pacing::Pacer;

/// Event time of event 0 (ms since the epoch).
const BASE_TS_MS: u64 = 1_700_000_000_000;

/// What the load is.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Events in all (the load stops earlier when told to).
    pub events: u64,
    /// Appended at once before the paced part.
    pub prefill: u64,
    /// Paced events per second.
    pub rate_per_s: u64,
    /// Event-time ms per wall-clock ms at that rate: event `i` is at
    /// `i * 1000 * time_scale / rate` ms of event time.
    pub time_scale: u64,
    /// Log partitions (event `i` goes to `i % partitions`).
    pub partitions: u32,
    /// Distinct keys.
    pub keys: u64,
}

/// A running load.
pub struct Loader {
    /// Events appended so far.
    pub appended: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

fn encode(load: &Load, i: u64, out: &mut Vec<u8>) -> usize {
    // SplitMix64 of i: keys and values independent of the pacing.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let ts = BASE_TS_MS + i * 1_000 * load.time_scale.max(1) / load.rate_per_s.max(1);
    let key = format!("k{}", z % load.keys.max(1));
    out.clear();
    encode_event(ts, &key, ((z >> 32) % 1_000) as i64 - 100, out);
    (i % u64::from(load.partitions)) as usize
}

impl Loader {
    /// Creates the partitions under `log_dir` and appends the prefill;
    /// `start` then paces the rest.
    pub fn prefill(load: Load, log_dir: &Path) -> Result<(Vec<PartitionWriter>, u64)> {
        let config = LogConfig {
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        };
        let mut writers = (0..load.partitions)
            .map(|p| PartitionWriter::open(&partition_dir(log_dir, EVENTS_TOPIC, p), config))
            .collect::<Result<Vec<_>, _>>()
            .context("creating the log partitions")?;
        let mut payload = Vec::with_capacity(64);
        let prefill = load.prefill.min(load.events);
        for i in 0..prefill {
            let partition = encode(&load, i, &mut payload);
            writers[partition].append(&payload)?;
        }
        for w in &mut writers {
            w.flush()?;
        }
        Ok((writers, prefill))
    }

    /// Paces the events after the prefill on a thread of its own.
    pub fn start(load: Load, mut writers: Vec<PartitionWriter>, prefilled: u64) -> Self {
        let appended = Arc::new(AtomicU64::new(prefilled));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (appended, stop) = (Arc::clone(&appended), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<u64> {
                let pacer = Pacer {
                    rate_per_s: load.rate_per_s,
                };
                let started = Instant::now();
                let mut payload = Vec::with_capacity(64);
                let mut next = prefilled;
                while next < load.events && !stop.load(Ordering::Relaxed) {
                    let due = (prefilled + pacer.due_before(started.elapsed().as_micros() as u64))
                        .min(load.events);
                    while next < due {
                        let partition = encode(&load, next, &mut payload);
                        writers[partition].append(&payload)?;
                        next += 1;
                    }
                    for w in &mut writers {
                        w.flush()?;
                    }
                    appended.store(next, Ordering::Release);
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok(next)
            })
        };
        Self {
            appended,
            stop,
            thread,
        }
    }

    /// Stops the load; the events appended.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
    }
}
