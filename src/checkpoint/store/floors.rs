//! How far back a restore may still read each input partition: the least
//! resume offset over every committed checkpoint whose files are all still
//! in the store (`--log-retention checkpointed` deletes the log below).
//!
//! A restore takes the newest checkpoint whose files all verify
//! ([`super::newest_usable`]), walking back through the whole commit stream.
//! Garbage collection keeps the files the newest `--keep-local` records
//! name, and a record names every file of its checkpoint (the deltas since
//! the last compaction, or a base), so older checkpoints whose files are all
//! among those stay restorable too. The floors are read from what is on
//! disk, not from the store's setting, so a run's workers need not know
//! the `--keep-local` of a sidecar started on its own. The floor of a
//! partition is the least resume offset over all of them; a checkpoint that
//! does not list a partition resumes it from 0.

use std::collections::{HashMap, HashSet};

use super::RETAINED_CHECKPOINTS;
use crate::checkpoint::format::CommitRecord;

/// Per partition, the least offset a restore may resume at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeFloors {
    floors: HashMap<u32, u64>,
}

impl ResumeFloors {
    /// The floors of the commit stream `records` (oldest first), of a store
    /// holding the data files `present`; `None` while fewer than
    /// [`RETAINED_CHECKPOINTS`] of them have all their files (a damaged
    /// only checkpoint would leave a restore nothing but offset 0).
    pub fn of(records: &[CommitRecord], present: &HashSet<String>) -> Option<Self> {
        let restorable: Vec<&CommitRecord> = records
            .iter()
            .filter(|r| r.files.iter().all(|f| present.contains(&f.name)))
            .collect();
        if restorable.len() < RETAINED_CHECKPOINTS {
            return None;
        }
        let mut restorable = restorable.into_iter();
        let first = restorable.next().expect("at least two are restorable");
        let mut floors: HashMap<u32, u64> = first
            .partitions
            .iter()
            .map(|p| (p.partition, p.resume_offset))
            .collect();
        for record in restorable {
            let offsets: HashMap<u32, u64> = record
                .partitions
                .iter()
                .map(|p| (p.partition, p.resume_offset))
                .collect();
            floors.retain(|partition, floor| match offsets.get(partition) {
                Some(&offset) => {
                    *floor = (*floor).min(offset);
                    true
                }
                None => false,
            });
        }
        Some(ResumeFloors { floors })
    }

    /// The least offset of `partition` a restore may resume at.
    pub fn floor(&self, partition: u32) -> u64 {
        self.floors.get(&partition).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::format::{FileMeta, PartitionResume};

    fn record(id: u64, files: &[&str], resumes: &[(u32, u64)]) -> CommitRecord {
        CommitRecord {
            checkpoint_id: id,
            cut_time: id * 1_000,
            query_fingerprint: 1,
            workers_total: 1,
            files: files
                .iter()
                .map(|name| FileMeta {
                    name: (*name).to_owned(),
                    size_bytes: 1,
                    crc32c: 0,
                    min_time: 0,
                    max_time: 0,
                })
                .collect(),
            partitions: resumes
                .iter()
                .map(|&(partition, resume_offset)| PartitionResume {
                    partition,
                    resume_offset,
                    max_ts_before: None,
                })
                .collect(),
            outputs: Vec::new(),
            timing: None,
        }
    }

    fn files(names: &[&str]) -> HashSet<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn every_checkpoint_whose_files_are_kept_counts_not_only_the_last_two() {
        // Deltas accumulate until a compaction: checkpoints 1 to 3 stay
        // restorable while 3 and 4 name their files.
        let records = [
            record(1, &["d1"], &[(0, 10), (1, 5)]),
            record(2, &["d1", "d2"], &[(0, 20), (1, 15)]),
            record(3, &["d1", "d2", "d3"], &[(0, 30), (1, 25)]),
            record(4, &["d1", "d2", "d3", "d4"], &[(0, 40), (1, 35)]),
        ];
        let present = files(&["d1", "d2", "d3", "d4"]);
        let floors = ResumeFloors::of(&records, &present).unwrap();
        assert_eq!((floors.floor(0), floors.floor(1)), (10, 5));
        // After a compaction into a base, the checkpoints whose deltas the
        // last two records no longer name are gone.
        let compacted = [
            record(1, &["d1"], &[(0, 10), (1, 5)]),
            record(2, &["d1", "d2"], &[(0, 20), (1, 15)]),
            record(3, &["b3"], &[(0, 30), (1, 25)]),
            record(4, &["b3", "d4"], &[(0, 40), (1, 35)]),
        ];
        let floors = ResumeFloors::of(&compacted, &files(&["b3", "d4"])).unwrap();
        assert_eq!((floors.floor(0), floors.floor(1)), (30, 25));
        // With `--keep-local 4` the deltas stay, and so does the log for
        // the checkpoints they make restorable.
        let kept = files(&["d1", "d2", "b3", "d4"]);
        let floors = ResumeFloors::of(&compacted, &kept).unwrap();
        assert_eq!((floors.floor(0), floors.floor(1)), (10, 5));
        // Without `d1`, checkpoints 1 and 2 are gone, whatever the count.
        let floors = ResumeFloors::of(&compacted, &files(&["d2", "b3", "d4"])).unwrap();
        assert_eq!((floors.floor(0), floors.floor(1)), (30, 25));
    }

    #[test]
    fn a_checkpoint_with_a_file_gone_does_not_count() {
        // Each checkpoint in a file of its own (a compaction each time).
        let records = [
            record(1, &["b1"], &[(0, 10)]),
            record(2, &["b2"], &[(0, 20)]),
            record(3, &["b3"], &[(0, 30)]),
        ];
        let all = ResumeFloors::of(&records, &files(&["b1", "b2", "b3"])).unwrap();
        assert_eq!(all.floor(0), 10);
        // The oldest lost its file: the log before checkpoint 2 may go.
        let floors = ResumeFloors::of(&records, &files(&["b2", "b3"])).unwrap();
        assert_eq!(floors.floor(0), 20);
        // Only one restorable checkpoint left: nothing may be deleted.
        assert_eq!(ResumeFloors::of(&records, &files(&["b3"])), None);
    }

    #[test]
    fn a_partition_one_checkpoint_does_not_list_keeps_everything() {
        let records = [
            record(1, &["b1"], &[(0, 10)]),
            record(2, &["b1", "d2"], &[(0, 20), (1, 15)]),
        ];
        let present = files(&["b1", "d2"]);
        let floors = ResumeFloors::of(&records, &present).unwrap();
        assert_eq!(
            (floors.floor(0), floors.floor(1), floors.floor(7)),
            (10, 0, 0)
        );
        assert_eq!(ResumeFloors::of(&records[..1], &present), None);
        assert_eq!(ResumeFloors::of(&[], &present), None);
    }
}
