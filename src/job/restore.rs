//! A worker's restored state: its key groups' share of the checkpoint a run
//! resumes from, fed into the query dataflow.
//!
//! Pane partials are streamed: the `RestoredState` operator reads and
//! decodes a few key groups per activation, straight from the files' byte
//! ranges, so the restored state is never held twice (once in a vector, once
//! in the arrangements) and the downstream operators start on it at once.
//! They are not consolidated across files: the windows' `reduce` arranges
//! and so consolidates its input, and the collection is the same either
//! way. Open sessions must form a set as of the cut, so they are loaded and
//! consolidated before the dataflow starts.

use std::path::Path;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{Scope, Stream};
use weir_dataflows::combiner::Update;
use weir_dataflows::WindowSpec;

use super::{SessionRecord, WindowQuery};
use crate::checkpoint::cut::FINAL_CUT;
use crate::checkpoint::format::{consolidate_as_of_cut, push_updates, CommitRecord};
use crate::checkpoint::store::{CheckpointGroups, StoreError};
use weir_dataflows::combiner::PaneValue;
use weir_dataflows::Key;

/// Records decoded per activation of the `RestoredState` operator (a few
/// milliseconds of work, so other operators run in between).
const RESTORE_CHUNK_RECORDS: u64 = 65_536;

/// Why a worker's share of a checkpoint could not be restored (the driver
/// reports it as the run's error, with the same message).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint store could not be read, or a record is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The persisted state does not decode into what the query keeps.
    #[error("restore: {0}")]
    Invalid(String),
}

/// Where a worker's restore reports its outcome.
pub struct RestoreReport {
    /// Called once every update was delivered: how many, and the time spent
    /// reading and decoding them.
    pub done: Box<dyn FnOnce(u64, Duration)>,
    /// Called on a read or decode error. The restored stream then keeps its
    /// capability, so nothing downstream ever takes the state as complete.
    pub failed: Box<dyn FnOnce(RestoreError)>,
}

/// The persisted state a worker restores: pane partials of fixed windows
/// (streamed), or open sessions.
pub enum RestoredState {
    /// Pane partials, read as the dataflow runs (nothing to read: `None`).
    Panes(Option<PaneStream>),
    /// Open sessions.
    Sessions(Vec<Update<SessionRecord>>),
}

/// A worker's pane partials, still on disk.
pub struct PaneStream {
    groups: CheckpointGroups,
    horizon_time: u64,
    /// Restored partials enter no earlier than this: the restored cut's
    /// last granule (see [`restored_panes`]).
    earliest_time: u64,
    report: RestoreReport,
    delivered: u64,
    busy: Duration,
}

impl RestoredState {
    /// Nothing restored, for `query`.
    pub fn empty(query: &WindowQuery) -> Self {
        match query.spec {
            WindowSpec::Session { .. } => RestoredState::Sessions(Vec::new()),
            _ => RestoredState::Panes(None),
        }
    }
}

/// Opens this worker's share of checkpoint `record` (found by
/// [`crate::checkpoint::store::newest_usable`] in this process): the key
/// groups `key_groups` accepts, updates with time `>= horizon_time`. Every
/// file's layout is read and checked here; sessions are loaded here, pane
/// partials as the dataflow runs. A record that does not decode is refused
/// with its file and offset.
pub fn open_restore(
    query: &WindowQuery,
    dir: &Path,
    record: &CommitRecord,
    key_groups: impl Fn(u16) -> bool,
    horizon_time: u64,
    report: RestoreReport,
) -> Result<RestoredState, RestoreError> {
    let started = Instant::now();
    let groups = CheckpointGroups::open(dir, record, key_groups)?;
    if !matches!(query.spec, WindowSpec::Session { .. }) {
        let earliest_time = if record.cut_time == FINAL_CUT {
            0
        } else {
            record.cut_time.saturating_sub(query.granularity_ms)
        };
        return Ok(RestoredState::Panes(Some(PaneStream {
            groups,
            horizon_time,
            earliest_time,
            report,
            delivered: 0,
            busy: started.elapsed(),
        })));
    }
    let mut updates = Vec::new();
    groups.visit(horizon_time, &mut push_updates(&mut updates))?;
    consolidate_as_of_cut(&mut updates);
    if let Some(bad) = updates.iter().find(|u| u.diff != 1) {
        return Err(RestoreError::Invalid(format!(
            "persisted sessions do not form a set: an update has multiplicity {}",
            bad.diff
        )));
    }
    let sessions: Vec<Update<SessionRecord>> = updates
        .into_iter()
        .map(|u| {
            let record: SessionRecord = bincode::deserialize(&u.data).map_err(|e| {
                RestoreError::Invalid(format!(
                    "persisted session at time {} does not decode: {e}",
                    u.time
                ))
            })?;
            Ok((record, u.time, u.diff as isize))
        })
        .collect::<Result<_, RestoreError>>()?;
    (report.done)(sessions.len() as u64, started.elapsed());
    Ok(RestoredState::Sessions(sessions))
}

/// Pane partials of type `P` as the restored stream gives them.
type PaneUpdates<P> = Vec<Update<(Key, (u64, P))>>;

/// What one activation of the restored stream produced.
enum Produced {
    /// Updates were added to the buffer, and more may follow.
    More,
    /// Updates may have been added; that was the last of them.
    Done,
    /// The restore failed (and reported it).
    Failed,
}

impl PaneStream {
    /// Reads and decodes the next few key groups into `chunk`; returns
    /// whether any are left.
    fn next_chunk<P: PaneValue>(
        &mut self,
        chunk: &mut PaneUpdates<P>,
    ) -> Result<bool, RestoreError> {
        let started = Instant::now();
        let before = chunk.len();
        let earliest_time = self.earliest_time;
        let more = self.groups.visit_some(
            self.horizon_time,
            RESTORE_CHUNK_RECORDS,
            &mut |_, data, time, diff| {
                let pane: (Key, (u64, P)) = bincode::deserialize(data)
                    .map_err(|e| format!("persisted pane partial does not decode: {e}"))?;
                chunk.push((pane, time.max(earliest_time), diff as isize));
                Ok(())
            },
        )?;
        self.busy += started.elapsed();
        self.delivered += (chunk.len() - before) as u64;
        Ok(more)
    }
}

/// The restored pane partials as a stream of updates (at timely time 0),
/// read a chunk per activation. Each enters at the restored cut's last
/// granule `T - G` (or its own time, if later): the windows' `reduce` then
/// evaluates the restored state once, at `T - G`, instead of at every slide
/// of the retention before it, whose rows were committed before the crash
/// and would be dropped by the sink anyway. Each pane still leaves at its
/// own time (the windows compute it from the pane), so from `T - G` on the
/// collection is the same as in a run without the crash.
pub fn restored_panes<P: PaneValue>(
    scope: Scope<'_, u64>,
    panes: Option<PaneStream>,
) -> Stream<'_, u64, PaneUpdates<P>> {
    let mut panes = panes;
    restored_stream(scope, move |chunk| {
        let Some(stream) = panes.as_mut() else {
            return Produced::Done;
        };
        match stream.next_chunk(chunk) {
            Ok(true) => Produced::More,
            Ok(false) => {
                let PaneStream {
                    report,
                    delivered,
                    busy,
                    ..
                } = panes.take().expect("checked above");
                (report.done)(delivered, busy);
                Produced::Done
            }
            Err(e) => {
                let PaneStream { report, .. } = panes.take().expect("checked above");
                (report.failed)(e);
                Produced::Failed
            }
        }
    })
}

/// Restored open sessions as a stream of updates (at timely time 0).
pub fn restored_sessions(
    scope: Scope<'_, u64>,
    sessions: Vec<Update<SessionRecord>>,
) -> Stream<'_, u64, Vec<Update<SessionRecord>>> {
    let mut sessions = Some(sessions);
    restored_stream(scope, move |chunk| {
        if let Some(all) = sessions.take() {
            *chunk = all;
        }
        Produced::Done
    })
}

/// An operator that gives what `produce` puts in its buffer (one call per
/// activation; the buffer is reused, so its memory stays warm) at timely
/// time 0 until it is done. After a failure it holds its capability: the
/// run is stopping and nothing may look complete.
fn restored_stream<D: Clone + 'static>(
    scope: Scope<'_, u64>,
    mut produce: impl FnMut(&mut Vec<Update<D>>) -> Produced + 'static,
) -> Stream<'_, u64, Vec<Update<D>>> {
    let mut builder = OperatorBuilder::new("RestoredState".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let (output, stream) = builder.new_output::<Vec<Update<D>>>();
    let mut output: OutputBuilder<u64, CapacityContainerBuilder<Vec<Update<D>>>> =
        OutputBuilder::from(output);
    builder.build(move |mut capabilities| {
        let mut cap = capabilities.pop();
        let mut failed = false;
        let mut buffer = Vec::new();
        move |_frontiers| {
            let Some(c) = cap.as_ref().filter(|_| !failed) else {
                return;
            };
            let produced = produce(&mut buffer);
            if matches!(produced, Produced::Failed) {
                failed = true;
                return;
            }
            output.activate().session(c).give_iterator(buffer.drain(..));
            match produced {
                Produced::More => activator.activate(),
                _ => cap = None,
            }
        }
    });
    stream
}
