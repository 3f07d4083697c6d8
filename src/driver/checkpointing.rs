//! The driver's side of checkpointing on each worker: handing assembled
//! shares to the sidecar client, telling the cut announcer how far behind
//! the sidecar is, and tending the backpressure gate of the sources and the
//! stall report (decision 27).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::checkpoint::cadence::SidecarBacklog;
use crate::checkpoint::client::{CutSender, DurableFile, SidecarClient};
use crate::checkpoint::cut::{BacklogProbe, CutAssembler};
use crate::checkpoint::pressure::SourceGate;
use crate::checkpoint::transport::WorkerCut;

/// On every round of a worker's loop (at least every 20 ms): tells the
/// process's pressure of the newest commit and wakes this worker's sources
/// if they were held and the hold is lifted. On the process's first worker
/// (`report_stall`), also re-evaluates the stall state (threshold
/// `stall_after`, the checkpoint interval) and logs its changes.
pub(super) fn tend_sidecar(
    client: &SidecarClient,
    gate: Option<&SourceGate>,
    report_stall: bool,
    stall_after: Duration,
) {
    if let Some(gate) = gate {
        if let Some((id, _)) = client.last_committed() {
            gate.pressure().committed(id);
        }
        gate.wake_if_released();
    }
    if report_stall {
        client.stall().check_and_log(stall_after);
    }
}

/// The sidecar backlog for the cut announcer: checkpoints announced since
/// the last commit this process has heard of (the restored one before any),
/// the fill of the queue to the sidecar client thread, and whether the
/// run's own ingest has yet to commit its files (`inputs_committed` unset).
pub(super) fn backlog_probe(
    (client, sender): (Option<&Arc<SidecarClient>>, Option<&CutSender>),
    restored_id: u64,
    inputs_committed: Option<Arc<AtomicBool>>,
) -> BacklogProbe {
    let (client, sender) = (client.cloned(), sender.cloned());
    Rc::new(move |announced_id| {
        let committed = client
            .as_ref()
            .and_then(|c| c.last_committed())
            .map_or(restored_id, |(id, _)| id.max(restored_id));
        let fill = sender.as_ref().map(CutSender::fill);
        SidecarBacklog {
            uncommitted: announced_id.saturating_sub(committed),
            queued: fill.map_or(0, |f| f.queued),
            capacity: fill.map_or(0, |f| f.capacity),
            inputs_uncommitted: inputs_committed
                .as_ref()
                .is_some_and(|c| !c.load(Ordering::Acquire)),
        }
    })
}

/// Hands the assembled shares of cuts to the sidecar client, without
/// blocking: what the bounded channel refuses waits in `backlog` (oldest
/// first) for the next call.
pub(super) fn ship_ready(
    assembler: &Rc<RefCell<CutAssembler>>,
    backlog: &mut VecDeque<(WorkerCut, Vec<DurableFile>)>,
    sender: &crate::checkpoint::client::CutSender,
    (worker, retention_ms): (usize, u64),
    final_id: &Mutex<Option<u64>>,
) {
    let mut assembler = assembler.borrow_mut();
    while let Some(share) = assembler.pop_ready() {
        backlog.push_back((
            WorkerCut {
                worker: worker as u32,
                checkpoint_id: share.checkpoint_id,
                prev_cut_time: share.tap.prev_cut_time,
                cut_time: share.cut_time,
                retention_ms,
                updates: share.tap.updates,
                partitions: share.tap.partitions,
                outputs: share.outputs,
            },
            share.durable_first,
        ));
    }
    while let Some((cut, files)) = backlog.pop_front() {
        let (id, is_final) = (
            cut.checkpoint_id,
            cut.cut_time == crate::checkpoint::cut::FINAL_CUT,
        );
        if let Err(full) = sender.try_send_after_syncing(cut, files) {
            backlog.push_front((*full.0, full.1));
            return;
        }
        if is_final {
            final_id.lock().expect("poisoned").get_or_insert(id);
        }
    }
}
