//! The sidecar's state machine, without I/O: which engine processes belong to
//! the run, which worker cuts have arrived for which checkpoint, and when a
//! checkpoint is complete. [`commit_checkpoint`] then turns a complete
//! checkpoint into delta files and a commit record (blocking: it fsyncs).
//!
//! Rules:
//! - A hello with an older epoch than the newest seen is refused; a newer
//!   epoch supersedes the run: the older epoch's connections are evicted and
//!   its incomplete checkpoints dropped. Within an epoch, every process must
//!   agree on `workers_total` and the fingerprint, and the fingerprint must
//!   be that of the newest commit (another query needs another data dir).
//! - A cut for an id at or below the last committed one is ignored (it is
//!   replayed after a restore). Ids above it are collected, at most
//!   [`MAX_PENDING_CHECKPOINTS`] ahead; a checkpoint is committed once all
//!   `workers_total` workers' cuts have arrived and every lower id is
//!   committed, so commits are consecutive.
//! - Cuts of one checkpoint must agree on the times and retention, the first
//!   uncommitted checkpoint must start where the last commit ended, and no
//!   partition or output may be reported twice with different values.
//!   Violations refuse the sending connection.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::checkpoint::format::{
    validate_output_name, CommitRecord, PersistedUpdate, KEY_GROUPS, MAX_UPDATE_DATA_BYTES,
};
use crate::checkpoint::transport::{encoded_bytes, CutUpdates, Hello, WorkerCut};

/// At most this many checkpoints may be incomplete at once.
pub const MAX_PENDING_CHECKPOINTS: u64 = 16;
/// Compact every this many checkpoints (ids divisible by it).
pub const COMPACT_EVERY_CHECKPOINTS: u64 = 10;
/// Compact when a commit would reference more files than this.
pub const COMPACT_ABOVE_FILES: usize = 32;

/// Identifies a connection.
pub type ConnId = u64;

/// The run the connected processes belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    epoch: u64,
    workers_total: u32,
    query_fingerprint: u64,
}

/// A checkpoint whose cuts are arriving.
#[derive(Debug)]
pub struct PendingCheckpoint {
    /// Its id.
    pub checkpoint_id: u64,
    /// Start of the updates' times.
    pub prev_cut_time: u64,
    /// The cut.
    pub cut_time: u64,
    /// Retention of the updates.
    pub retention_ms: u64,
    /// The cuts by worker.
    pub cuts: BTreeMap<u32, WorkerCut>,
    /// When the last cut arrived.
    pub completed_at: Option<Instant>,
    /// When the first cut arrived.
    pub first_cut_at: Instant,
}

/// Accepted hello: what to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Connections of an older epoch to evict.
    pub evict: Vec<ConnId>,
    /// `(id, cut time)` of the last commit.
    pub last_committed: Option<(u64, u64)>,
}

/// The sidecar's state.
#[derive(Debug)]
pub struct Coordinator {
    run: Option<Run>,
    /// Newest epoch seen in any accepted hello.
    newest_epoch: Option<u64>,
    /// Live connections: their epoch and process.
    conns: HashMap<ConnId, (u64, u32)>,
    /// The commit the next checkpoint builds on: the newest, or the one the
    /// run restored when the newest was unusable.
    last: Option<CommitRecord>,
    /// Every commit of the store, oldest first (ids keep growing past a fallback).
    history: Vec<CommitRecord>,
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// Leading updates of split shares, by (checkpoint id, worker), until
    /// the share's `WorkerCut` arrives; and their encoded size.
    early_updates: BTreeMap<(u64, u32), Vec<PersistedUpdate>>,
    early_bytes: usize,
}

/// At most this many bytes of split shares' leading updates are held.
pub const MAX_EARLY_UPDATE_BYTES: usize = 8 << 30;

impl Coordinator {
    /// A coordinator continuing after the store's `commits` (oldest first).
    pub fn new(commits: Vec<CommitRecord>) -> Self {
        Self {
            run: None,
            newest_epoch: None,
            conns: HashMap::new(),
            last: commits.last().cloned(),
            history: commits,
            pending: BTreeMap::new(),
            early_updates: BTreeMap::new(),
            early_bytes: 0,
        }
    }

    /// The newest commit.
    pub fn last(&self) -> Option<&CommitRecord> {
        self.last.as_ref()
    }

    /// The newest committed id (new checkpoints number on from it, also
    /// after a fallback to an older base).
    fn last_id(&self) -> u64 {
        self.history.last().map_or(0, |r| r.checkpoint_id)
    }

    /// Number of checkpoints with cuts collected and not committed yet.
    pub fn pending_checkpoints(&self) -> usize {
        self.pending.len()
    }

    /// Number of live (admitted) connections.
    pub fn live_connections(&self) -> usize {
        self.conns.len()
    }

    /// Connections of the current epoch (to tell about commits).
    pub fn current_connections(&self) -> Vec<ConnId> {
        let epoch = self.run.map(|r| r.epoch);
        self.conns
            .iter()
            .filter(|(_, (e, _))| Some(*e) == epoch)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Admits or refuses a hello (the token was checked before).
    pub fn hello(&mut self, conn: ConnId, hello: &Hello) -> Result<Admitted, String> {
        if hello.workers_total == 0 {
            return Err("workers_total must be at least 1".to_owned());
        }
        if let Some(last) = &self.last {
            if last.query_fingerprint != hello.query_fingerprint {
                return Err(format!(
                    "query fingerprint {:#018x} differs from {:#018x} of checkpoint {} in this \
                     data directory; use the query that wrote it, or a fresh data directory",
                    hello.query_fingerprint, last.query_fingerprint, last.checkpoint_id
                ));
            }
        }
        let incoming = Run {
            epoch: hello.epoch,
            workers_total: hello.workers_total,
            query_fingerprint: hello.query_fingerprint,
        };
        let mut admitted = Admitted {
            evict: Vec::new(),
            last_committed: self.history.last().map(|r| (r.checkpoint_id, r.cut_time)),
        };
        match self.newest_epoch {
            Some(newest) if hello.epoch < newest => {
                return Err(format!(
                    "epoch {} is older than epoch {newest} already seen: this process is stale",
                    hello.epoch
                ))
            }
            Some(newest) if hello.epoch == newest => {
                let run = self.run.expect("a run exists once an epoch was seen");
                if run != incoming {
                    return Err(format!(
                        "this process disagrees with its run (epoch {}): {} workers and \
                         fingerprint {:#018x} here, {} workers and {:#018x} there",
                        run.epoch,
                        incoming.workers_total,
                        incoming.query_fingerprint,
                        run.workers_total,
                        run.query_fingerprint
                    ));
                }
                if self.conns.values().any(|&(_, p)| p == hello.process) {
                    return Err(format!(
                        "process {} of epoch {} is already connected",
                        hello.process, hello.epoch
                    ));
                }
            }
            _ => {
                // A new run (or the first): supersede the old one.
                admitted.evict = self.conns.keys().copied().collect();
                for c in &admitted.evict {
                    self.conns.remove(c);
                }
                if !self.pending.is_empty() {
                    tracing::warn!(
                        dropped = self.pending.len(),
                        epoch = hello.epoch,
                        "a newer engine epoch connected: dropping incomplete checkpoints"
                    );
                }
                self.pending.clear();
                self.early_updates.clear();
                self.early_bytes = 0;
                if let Some(base) = hello.restored_from {
                    let Some(record) = self.history.iter().find(|r| r.checkpoint_id == base) else {
                        return Err(format!("the engine restored checkpoint {base}, which this store never committed"));
                    };
                    if self.last.as_ref().is_some_and(|l| l.checkpoint_id != base) {
                        tracing::warn!(
                            base,
                            newest = self.last_id(),
                            "the engine fell back to an older checkpoint: building on it"
                        );
                    }
                    self.last = Some(record.clone());
                }
                self.run = Some(incoming);
                self.newest_epoch = Some(hello.epoch);
            }
        }
        self.conns.insert(conn, (hello.epoch, hello.process));
        Ok(admitted)
    }

    /// A connection ended (goodbye, disconnect or eviction).
    pub fn disconnected(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Holds leading updates of a worker's split share from `conn` until
    /// the share's [`WorkerCut`]; checked with it.
    pub fn cut_updates(&mut self, conn: ConnId, part: CutUpdates) -> Result<(), String> {
        let run = match (self.run, self.conns.get(&conn)) {
            (Some(run), Some(&(epoch, _))) if epoch == run.epoch => run,
            _ => return Err("cut updates from a connection that is not part of the run".to_owned()),
        };
        let (id, last_id) = (part.checkpoint_id, self.last_id());
        if id <= last_id {
            return Ok(());
        }
        if id - last_id > MAX_PENDING_CHECKPOINTS || part.worker >= run.workers_total {
            return Err(format!(
                "cut updates for checkpoint {id} worker {} are out of range (last committed \
                 {last_id}, {} workers)",
                part.worker, run.workers_total
            ));
        }
        let bytes = encoded_bytes(&part.updates);
        if self.early_bytes + bytes > MAX_EARLY_UPDATE_BYTES {
            return Err(format!(
                "split checkpoint shares exceed {MAX_EARLY_UPDATE_BYTES} bytes held"
            ));
        }
        self.early_bytes += bytes;
        self.early_updates
            .entry((id, part.worker))
            .or_default()
            .extend(part.updates);
        Ok(())
    }

    /// Records a worker's cut from `conn`. `Ok(false)`: ignored (already
    /// committed).
    pub fn cut(&mut self, conn: ConnId, mut cut: WorkerCut) -> Result<bool, String> {
        let run = match (self.run, self.conns.get(&conn)) {
            (Some(run), Some(&(epoch, _))) if epoch == run.epoch => run,
            _ => return Err("worker cut from a connection that is not part of the run".to_owned()),
        };
        let id = cut.checkpoint_id;
        if let Some(mut early) = self.early_updates.remove(&(id, cut.worker)) {
            self.early_bytes -= encoded_bytes(&early);
            early.append(&mut cut.updates);
            cut.updates = early;
        }
        let last_id = self.last_id();
        if id <= last_id {
            // An engine that reconnected resends the shares of checkpoints
            // whose ack it never saw; its hello named the newest commit it
            // knows as the base. A resent share that continues that base
            // shows the committed checkpoint is the run's own: build on it.
            let continues_base = self
                .last
                .as_ref()
                .is_some_and(|base| base.checkpoint_id < id && base.cut_time == cut.prev_cut_time);
            if continues_base {
                if let Some(own) = self.history.iter().find(|r| r.checkpoint_id == id) {
                    self.last = Some(own.clone());
                }
            }
            tracing::debug!(
                checkpoint_id = id,
                worker = cut.worker,
                "ignoring a cut of a committed checkpoint"
            );
            return Ok(false);
        }
        if id - last_id > MAX_PENDING_CHECKPOINTS {
            return Err(format!(
                "checkpoint {id} is more than {MAX_PENDING_CHECKPOINTS} ahead of the last \
                 committed checkpoint {last_id}: too many incomplete checkpoints"
            ));
        }
        if cut.worker >= run.workers_total {
            return Err(format!(
                "worker {} is out of range for a run of {} workers",
                cut.worker, run.workers_total
            ));
        }
        if cut.cut_time < cut.prev_cut_time {
            return Err(format!(
                "checkpoint {id}: cut time {} is before the previous cut time {}",
                cut.cut_time, cut.prev_cut_time
            ));
        }
        check_contents(&cut)?;
        // The checkpoint must continue the one before it.
        let before = if id == last_id + 1 {
            self.last.as_ref().map(|r| r.cut_time)
        } else {
            self.pending.get(&(id - 1)).map(|p| p.cut_time)
        };
        if let Some(before) = before {
            if cut.prev_cut_time != before {
                return Err(format!(
                    "checkpoint {id} starts at {} but checkpoint {} ended at {before}",
                    cut.prev_cut_time,
                    id - 1
                ));
            }
        }
        if let Some(p) = self.pending.get(&(id + 1)) {
            if p.prev_cut_time != cut.cut_time {
                return Err(format!(
                    "checkpoint {id} ends at {} but checkpoint {} starts at {}",
                    cut.cut_time,
                    id + 1,
                    p.prev_cut_time
                ));
            }
        }
        let pending = self.pending.entry(id).or_insert_with(|| PendingCheckpoint {
            checkpoint_id: id,
            prev_cut_time: cut.prev_cut_time,
            cut_time: cut.cut_time,
            retention_ms: cut.retention_ms,
            cuts: BTreeMap::new(),
            completed_at: None,
            first_cut_at: Instant::now(),
        });
        if (
            pending.prev_cut_time,
            pending.cut_time,
            pending.retention_ms,
        ) != (cut.prev_cut_time, cut.cut_time, cut.retention_ms)
        {
            return Err(format!(
                "worker {} disagrees on checkpoint {id}: [{}, {}) retention {} ms, others \
                 [{}, {}) retention {} ms",
                cut.worker,
                cut.prev_cut_time,
                cut.cut_time,
                cut.retention_ms,
                pending.prev_cut_time,
                pending.cut_time,
                pending.retention_ms
            ));
        }
        if pending.cuts.contains_key(&cut.worker) {
            return Err(format!("worker {} sent checkpoint {id} twice", cut.worker));
        }
        check_disjoint(pending, &cut)?;
        pending.cuts.insert(cut.worker, cut);
        if pending.cuts.len() == run.workers_total as usize {
            pending.completed_at = Some(Instant::now());
        }
        Ok(true)
    }

    /// The next checkpoint to commit, if it is complete.
    pub fn take_ready(&mut self) -> Option<PendingCheckpoint> {
        let next = self.last_id() + 1;
        if self.pending.get(&next)?.completed_at.is_some() {
            self.pending.remove(&next)
        } else {
            None
        }
    }

    /// The run's fingerprint and worker count (for the commit record).
    pub fn run_identity(&self) -> Option<(u64, u32)> {
        self.run.map(|r| (r.query_fingerprint, r.workers_total))
    }

    /// Records a durable commit.
    pub fn committed(&mut self, record: CommitRecord) {
        let mut freed = 0usize;
        self.early_updates.retain(|&(id, _), updates| {
            let keep = id > record.checkpoint_id;
            if !keep {
                freed += encoded_bytes(updates);
            }
            keep
        });
        self.early_bytes -= freed;
        self.history.push(record.clone());
        self.last = Some(record);
    }
}

/// Checks what the store would refuse, so that a bad cut refuses its sender
/// instead of failing the commit.
fn check_contents(cut: &WorkerCut) -> Result<(), String> {
    for u in &cut.updates {
        if u.key_group >= KEY_GROUPS {
            return Err(format!(
                "update with key group {} (there are {KEY_GROUPS})",
                u.key_group
            ));
        }
        if u.data.len() > MAX_UPDATE_DATA_BYTES {
            return Err(format!(
                "update data of {} bytes is too large",
                u.data.len()
            ));
        }
    }
    for o in &cut.outputs {
        validate_output_name(&o.file_name)?;
    }
    Ok(())
}

/// No partition or output may be reported twice with different values.
fn check_disjoint(pending: &PendingCheckpoint, cut: &WorkerCut) -> Result<(), String> {
    for other in pending.cuts.values() {
        for p in &cut.partitions {
            if let Some(q) = other.partitions.iter().find(|q| q.partition == p.partition) {
                if q != p {
                    return Err(format!(
                        "workers {} and {} report different resume points for partition {}",
                        other.worker, cut.worker, p.partition
                    ));
                }
            }
        }
        for o in &cut.outputs {
            if let Some(q) = other.outputs.iter().find(|q| q.file_name == o.file_name) {
                if q != o {
                    return Err(format!(
                        "workers {} and {} report different lengths for output {}",
                        other.worker, cut.worker, o.file_name
                    ));
                }
            }
        }
    }
    Ok(())
}
