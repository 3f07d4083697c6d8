//! Where each input partition must be resumed from for a checkpoint cut.
//!
//! For a cut at time `T` (a multiple of the cut step), a partition resumes at
//! the first offset where its running maximum event time reached `T`, with
//! the maximum before that offset (DESIGN §2). Every accepted event before
//! that offset has a time below `T`, so its effect is in the checkpoint; the
//! events from it on are replayed, and the lateness rule sees the same
//! maximum as in the original run.
//!
//! Only increases of the maximum that cross a multiple of the cut step are
//! remembered, so a partition keeps about one mark per step between the
//! last cut and its read position (bounded by the sources' read-ahead).
//!
//! The source operator records its progress here; the checkpoint tap
//! (`cut`) reads the resume points from it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::checkpoint::format::PartitionResume;

/// The read progress of a worker's partitions, shared by its source with
/// the checkpoint tap.
pub type SharedProgress = Rc<RefCell<Vec<PartitionProgress>>>;

/// The maximum crossed one or more cut boundaries at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    offset: u64,
    max_before: Option<u64>,
    max_after: u64,
}

/// Read progress of one partition, for resume points.
#[derive(Clone, Debug)]
pub struct PartitionProgress {
    partition: u32,
    next_offset: u64,
    max_ts: Option<u64>,
    marks: VecDeque<Mark>,
}

impl PartitionProgress {
    /// A partition read from `start_offset` with `max_ts` the maximum before it.
    pub fn new(partition: u32, start_offset: u64, max_ts: Option<u64>) -> Self {
        PartitionProgress {
            partition,
            next_offset: start_offset,
            max_ts,
            marks: VecDeque::new(),
        }
    }

    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The largest event time read so far.
    pub fn max_ts(&self) -> Option<u64> {
        self.max_ts
    }

    /// Records the event at `offset` with time `ts`; `step_ms` is the cut step
    /// (0: no marks are kept).
    #[inline]
    pub fn observe(&mut self, offset: u64, ts: u64, step_ms: u64) {
        debug_assert!(offset >= self.next_offset, "offsets go backwards");
        self.next_offset = offset + 1;
        let before = self.max_ts;
        if before.is_some_and(|m| ts <= m) {
            return;
        }
        self.max_ts = Some(ts);
        if step_ms == 0 {
            return;
        }
        let crosses = match before {
            None => true,
            Some(m) => m / step_ms != ts / step_ms,
        };
        if crosses {
            self.marks.push_back(Mark {
                offset,
                max_before: before,
                max_after: ts,
            });
        }
    }

    /// The resume point for a cut at `cut_time` (a multiple of the step), and
    /// forgets marks no later cut needs.
    pub fn resume_point(&mut self, cut_time: u64) -> PartitionResume {
        while self.marks.front().is_some_and(|m| m.max_after < cut_time) {
            self.marks.pop_front();
        }
        match self.marks.front() {
            Some(mark) => PartitionResume {
                partition: self.partition,
                resume_offset: mark.offset,
                max_ts_before: mark.max_before,
            },
            // Not reached yet (an ended partition): resume at the end.
            None => PartitionResume {
                partition: self.partition,
                resume_offset: self.next_offset,
                max_ts_before: self.max_ts,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_at_the_first_offset_whose_max_reaches_the_cut() {
        let mut p = PartitionProgress::new(7, 100, None);
        // offsets 100.. with times (ms); step 10.
        for (i, ts) in [3u64, 9, 12, 11, 8, 25, 19, 31].into_iter().enumerate() {
            p.observe(100 + i as u64, ts, 10);
        }
        let at = |p: &mut PartitionProgress, t| {
            let r = p.resume_point(t);
            (r.resume_offset, r.max_ts_before)
        };
        assert_eq!(at(&mut p, 10), (102, Some(9)));
        assert_eq!(at(&mut p, 20), (105, Some(12)));
        assert_eq!(at(&mut p, 30), (107, Some(25)));
        // Beyond what was read: resume at the end with the current maximum.
        assert_eq!(at(&mut p, 40), (108, Some(31)));
    }

    #[test]
    fn an_unread_partition_resumes_where_it_started() {
        let mut p = PartitionProgress::new(0, 42, Some(5));
        let r = p.resume_point(10);
        assert_eq!((r.resume_offset, r.max_ts_before), (42, Some(5)));
    }
}
