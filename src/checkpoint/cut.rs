//! The engine's side of a checkpoint: agreeing on cuts, tapping the
//! persisted collection, and assembling each worker's share of a cut.
//!
//! - [`cut_announcer`]: worker 0, every checkpoint interval (wall clock),
//!   announces the next cut `T` — the largest multiple of the cut step that
//!   the output frontier has passed — and, once the input is exhausted, a
//!   final cut. The announcements are broadcast in-band, so every worker
//!   cuts at the same sequence of times with the same checkpoint ids.
//! - [`persist_tap`]: on each worker, buffers the combiner's partials and,
//!   once its input frontier has passed an announced `T`, ships the
//!   updates with times in `[T_prev, T)` and the resume points
//!   of its partitions for `T`. It tells the process's
//!   [`SidecarPressure`] which cuts it has seen announced and how many
//!   bytes it buffers, so that the sources stop reading while the sidecar
//!   is behind.
//! - [`CutAssembler`]: joins a worker's tap share with its output sink's
//!   share (the output files' lengths at `T`) into one
//!   [`WorkerCut`](crate::checkpoint::transport::ToSidecar) and hands it to the
//!   sidecar client without ever blocking the worker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{ProbeHandle, Scope, Stream};
use weir_dataflows::combiner::{LocalCombiner, Update};

use crate::checkpoint::cadence::{Cadence, SidecarBacklog};
use crate::checkpoint::client::DurableFile;
use crate::checkpoint::format::{OutputLength, PartitionResume, PersistedUpdate, KEY_GROUPS};
use crate::checkpoint::pressure::SidecarPressure;
use crate::checkpoint::resume::SharedProgress;

/// The cut time of the final checkpoint of a finite run: it covers everything.
pub const FINAL_CUT: u64 = u64::MAX;

/// A cut announcement: `(checkpoint id, cut time)`.
pub type Announcement = (u64, u64);

/// What the announcer asks about the sidecar before each announcement:
/// called with the id of the last checkpoint it announced.
pub type BacklogProbe = std::rc::Rc<dyn Fn(u64) -> SidecarBacklog>;

/// Builds the announcer. Only `leader` (worker 0) announces; `probe` watches
/// the query's outputs; cuts are multiples of `step_ms`, paced by `cadence`
/// (at most one per interval of wall clock, and never more than
/// [`MAX_UNCOMMITTED_CHECKPOINTS`](crate::checkpoint::cadence::MAX_UNCOMMITTED_CHECKPOINTS)
/// ahead of the last commit, as `backlog` reports it); ids continue from
/// `last_id`, times from `last_cut`.
pub fn cut_announcer(
    scope: Scope<'_, u64>,
    probe: ProbeHandle<u64>,
    (leader, step_ms): (bool, u64),
    (cadence, backlog): (Cadence, BacklogProbe),
    (last_id, last_cut): (u64, u64),
) -> Stream<'_, u64, Vec<Announcement>> {
    assert!(step_ms > 0);
    let mut builder = OperatorBuilder::new("CutAnnouncer".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let (output, stream) = builder.new_output::<Vec<Announcement>>();
    let mut output: OutputBuilder<u64, CapacityContainerBuilder<Vec<Announcement>>> =
        OutputBuilder::from(output);
    builder.build(move |mut capabilities| {
        let mut cap = capabilities.pop().filter(|_| leader);
        let (mut id, mut cut) = (last_id, last_cut);
        let mut interval_ms = cadence.initial_interval_ms();
        // The end of the input is checked often, so a finite run's final cut
        // does not wait for the next interval; regular cuts wait for it.
        let poll = Duration::from_millis(interval_ms.min(10));
        let mut last_announced = std::time::Instant::now();
        move |_frontiers| {
            let Some(c) = cap.as_ref() else { return };
            let frontier = probe.with_frontier(|f| f.first().copied());
            let since_last_ms = match frontier {
                None => u64::MAX,
                Some(_) => last_announced.elapsed().as_millis() as u64,
            };
            let pending = backlog(id);
            if cadence.may_announce(interval_ms, since_last_ms, pending) {
                match frontier {
                    None => {
                        id += 1;
                        output.activate().session(c).give((id, FINAL_CUT));
                        cap = None;
                        return;
                    }
                    Some(f) => {
                        let t = f - f % step_ms;
                        if t > cut {
                            id += 1;
                            cut = t;
                            last_announced = std::time::Instant::now();
                            interval_ms = cadence.next_interval_ms(interval_ms, pending);
                            output.activate().session(c).give((id, t));
                        }
                    }
                }
            }
            activator.activate_after(poll);
        }
    });
    stream.broadcast()
}

/// A worker's share of a cut from the persist tap.
#[derive(Debug, Default)]
pub struct TapShare {
    /// Cut time of the previous checkpoint (the share covers `[prev, cut)`).
    pub prev_cut_time: u64,
    /// Consolidated updates.
    pub updates: Vec<PersistedUpdate>,
    /// Resume points of the worker's partitions.
    pub partitions: Vec<PartitionResume>,
}

/// Collects the two shares of each cut on one worker.
#[derive(Debug, Default)]
pub struct CutAssembler {
    taps: BTreeMap<u64, (u64, TapShare)>,
    sinks: BTreeMap<u64, (u64, Vec<OutputLength>, Vec<DurableFile>)>,
    /// The `cut` span of each checkpoint with a share here, from its first share.
    spans: BTreeMap<u64, (tracing::Span, Instant)>,
    ready: VecDeque<CutShare>,
    final_assembled: bool,
}

/// One worker's complete share of one checkpoint.
#[derive(Debug)]
pub struct CutShare {
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// Cut time.
    pub cut_time: u64,
    /// From the tap.
    pub tap: TapShare,
    /// Output file lengths at the cut.
    pub outputs: Vec<OutputLength>,
    /// The output files, to make durable before the share is sent.
    pub durable_first: Vec<DurableFile>,
}

impl CutAssembler {
    /// Records the tap's share of checkpoint `id` at `cut_time`.
    pub fn tap_share(&mut self, id: u64, cut_time: u64, share: TapShare) {
        self.started(id, cut_time);
        self.taps.insert(id, (cut_time, share));
        self.join(id);
    }

    /// Records the sink's share of checkpoint `id` at `cut_time`.
    pub fn sink_share(
        &mut self,
        id: u64,
        cut_time: u64,
        outputs: Vec<OutputLength>,
        durable_first: Vec<DurableFile>,
    ) {
        self.started(id, cut_time);
        self.sinks.insert(id, (cut_time, outputs, durable_first));
        self.join(id);
    }

    /// Opens the `cut` span of checkpoint `id` at its first share.
    fn started(&mut self, id: u64, cut_time: u64) {
        self.spans.entry(id).or_insert_with(|| {
            let span = tracing::debug_span!(
                "cut",
                checkpoint_id = id,
                cut_time,
                updates = tracing::field::Empty,
                elapsed_ms = tracing::field::Empty,
            );
            (span, Instant::now())
        });
    }

    fn join(&mut self, id: u64) {
        if self.taps.contains_key(&id) && self.sinks.contains_key(&id) {
            let (cut_time, tap) = self.taps.remove(&id).expect("present");
            let (sink_cut, outputs, durable_first) = self.sinks.remove(&id).expect("present");
            assert_eq!(
                cut_time, sink_cut,
                "tap and sink disagree on the time of checkpoint {id}"
            );
            if cut_time == FINAL_CUT {
                self.final_assembled = true;
            }
            if let Some((span, started)) = self.spans.remove(&id) {
                // The span closes here: from the first share to the whole one.
                span.record("updates", tap.updates.len());
                span.record("elapsed_ms", crate::metrics::millis(started.elapsed()));
            }
            self.ready.push_back(CutShare {
                checkpoint_id: id,
                cut_time,
                tap,
                outputs,
                durable_first,
            });
        }
    }

    /// The next complete share, oldest first.
    pub fn pop_ready(&mut self) -> Option<CutShare> {
        self.ready.pop_front()
    }

    /// Whether the final cut has been assembled and handed on.
    pub fn final_done(&self) -> bool {
        self.final_assembled && self.ready.is_empty()
    }
}

/// Hands the tap's share of checkpoint `id` at `cut` (following
/// `prev_cut`) to the assembler, with the partitions' resume points.
fn share_cut(
    progress: &SharedProgress,
    assembler: &std::cell::RefCell<CutAssembler>,
    (id, cut, prev_cut): (u64, u64, u64),
    updates: Vec<PersistedUpdate>,
) {
    let partitions = progress
        .borrow_mut()
        .iter_mut()
        .map(|p| p.resume_point(cut))
        .collect();
    assembler.borrow_mut().tap_share(
        id,
        cut,
        TapShare {
            prev_cut_time: prev_cut,
            updates,
            partitions,
        },
    );
}

/// The key group (of [`KEY_GROUPS`]) of a key hash.
pub fn key_group(hash: u64) -> u16 {
    (hash % u64::from(KEY_GROUPS)) as u16
}

/// Builds the persist tap on `partials`, shipping into `assembler`; the
/// first cut follows `restored_cut`, and partials older than a cut minus
/// `retention_ms` are not shipped. Reports announcements and its buffer's
/// size (the capacity of its buffer of updates; key text over 24 bytes,
/// kept on the heap, is not counted) to `pressure`.
pub fn persist_tap<'scope, C>(
    partials: &Stream<'scope, u64, Vec<Update<C::Record>>>,
    announcements: &Stream<'scope, u64, Vec<Announcement>>,
    (progress, pressure): (SharedProgress, Arc<SidecarPressure>),
    assembler: std::rc::Rc<std::cell::RefCell<CutAssembler>>,
    (restored_cut, retention_ms, step_ms): (u64, u64, u64),
) where
    C: LocalCombiner,
{
    // Persisted state (retention `u64::MAX`, open sessions): only its value at
    // each cut matters and every cut is a multiple of `step_ms`, so changes
    // are timed at the start of their step and consolidated as they arrive:
    // a session changed many times within a step is buffered once.
    let state_as_of_cut = retention_ms == u64::MAX;
    assert!(step_ms > 0);
    partials
        .clone()
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            announcements.clone(),
            Pipeline,
            Pipeline,
            "PersistTap",
            move |_cap, _info| {
                let mut pending: Vec<Update<C::Record>> = Vec::new();
                let mut queue: VecDeque<Announcement> = VecDeque::new();
                let mut prev_cut = restored_cut;
                let mut consolidated_len = 0;
                let mut reported_bytes = 0u64;
                let update_bytes = std::mem::size_of::<Update<C::Record>>() as u64;
                move |(data, data_frontier), (cuts, _), _output| {
                    data.for_each_stamp(|_, batches| {
                        for batch in batches {
                            if state_as_of_cut {
                                for update in batch.iter_mut() {
                                    update.1 -= update.1 % step_ms;
                                }
                            }
                            // Below the restored cut is restored state flowing
                            // back in, already persisted (every cut drops it):
                            // held until the first cut, a 2.5M-key restore's
                            // filled the taps' bound and paused the replay.
                            if restored_cut > 0 {
                                batch.retain(|u| u.1 >= restored_cut);
                            }
                            pending.append(batch);
                        }
                    });
                    if state_as_of_cut && pending.len() > 2 * consolidated_len + 4_096 {
                        differential_dataflow::consolidation::consolidate_updates(&mut pending);
                        consolidated_len = pending.len();
                    }
                    cuts.for_each_stamp(|_, batches| {
                        for batch in batches {
                            for &(id, _) in batch.iter() {
                                pressure.announced(id);
                            }
                            queue.extend(batch.drain(..));
                        }
                    });
                    while let Some(&(id, cut)) = queue.front() {
                        let passed = data_frontier.frontier().first().is_none_or(|&f| f >= cut);
                        if !passed {
                            break;
                        }
                        queue.pop_front();
                        // Taken out in place: `pending` keeps its allocation
                        // and `shipped` is allocated once at its size (fresh
                        // vectors grown by doubling each checkpoint had the
                        // kernel zeroing pages for a fifth of the workers'
                        // time; decision 51).
                        let due = pending.iter().filter(|u| u.1 < cut).count();
                        let mut shipped = Vec::with_capacity(due);
                        shipped.extend(pending.extract_if(.., |u| u.1 < cut));
                        consolidated_len = pending.len();
                        // The capacity kept counts against the taps' bound:
                        // beyond a quarter of it, a burst's is given back
                        // (else a stall would find the sources held by
                        // memory no update uses).
                        let kept_bytes = pending.capacity() as u64 * update_bytes;
                        if kept_bytes > pressure.tap_bound_bytes() / 4 {
                            pending.shrink_to(2 * pending.len() + 4_096);
                        }
                        // Partials of windows closed by the cut are never needed
                        // again (restored state never got into `pending`).
                        let horizon = cut.saturating_sub(retention_ms);
                        shipped.retain(|u| u.1 >= horizon);
                        if state_as_of_cut {
                            // The changes within the interval are timed at its
                            // start and cancel as they consolidate.
                            for update in &mut shipped {
                                update.1 = prev_cut;
                            }
                            differential_dataflow::consolidation::consolidate_updates(&mut shipped);
                        }
                        // Otherwise (pane partials: one per key, pane and
                        // worker) there is nothing to cancel, and the sidecar
                        // sorts and consolidates every share by its encoded
                        // bytes anyway (`write_delta`): a sort here would be
                        // the same work twice, on the workers' cores.
                        let updates = shipped
                            .into_iter()
                            .map(|(record, time, diff)| PersistedUpdate {
                                key_group: key_group(C::key_hash(&record)),
                                data: bincode::serialize(&record).expect("records serialize"),
                                time,
                                diff: diff as i64,
                            })
                            .collect();
                        share_cut(&progress, &assembler, (id, cut, prev_cut), updates);
                        prev_cut = cut;
                    }
                    let bytes = pending.capacity() as u64 * update_bytes;
                    pressure.tap_resized(reported_bytes, bytes);
                    reported_bytes = bytes;
                }
            },
        );
}

/// The tap of a query whose persisted partials are never needed after a
/// cut (tumbling windows: every partial below a cut belongs to a closed
/// window). It ships only resume points, and does not look at the data, so
/// the partials stream is not copied for it. Announcements come only once the
/// output frontier has passed the cut, so every partition has been read past
/// it and its resume point is known.
pub fn resume_only_tap(
    announcements: &Stream<'_, u64, Vec<Announcement>>,
    (progress, pressure): (SharedProgress, Arc<SidecarPressure>),
    assembler: std::rc::Rc<std::cell::RefCell<CutAssembler>>,
    restored_cut: u64,
) {
    let mut prev_cut = restored_cut;
    announcements
        .clone()
        .sink(Pipeline, "ResumeTap", move |(cuts, _)| {
            cuts.for_each_stamp(|_, batches| {
                for batch in batches {
                    for (id, cut) in batch.drain(..) {
                        pressure.announced(id);
                        share_cut(&progress, &assembler, (id, cut, prev_cut), Vec::new());
                        prev_cut = cut;
                    }
                }
            });
        });
}
