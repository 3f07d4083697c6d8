//! Nexmark input: the reproducible generator (`weir gen nexmark`), the
//! table files a run ingests, and the feeds that hand a query its
//! projection of the stored records.
//!
//! Each table is a log topic (`person`, `auction`, `bid`) with one
//! partition per file. Queries that read several tables (q8) see their
//! partitions under one numbering: table `t` partition `p` is source
//! partition `t * 2^24 + p` ([`source_partition`]); that number is what
//! checkpoints and late rows record.

pub mod feed;
pub mod gen;

use std::path::{Path, PathBuf};

pub use weir_dataflows::nexmark::{NexmarkQuery, NexmarkTable};

/// Partitions per table in the joint numbering.
pub const PARTITIONS_PER_TABLE: u32 = 1 << 24;

/// The source partition number of `table`'s partition `partition`.
pub fn source_partition(table: NexmarkTable, partition: u32) -> u32 {
    assert!(
        partition < PARTITIONS_PER_TABLE,
        "partition {partition} out of range"
    );
    let index = NexmarkTable::ALL
        .iter()
        .position(|t| *t == table)
        .expect("a known table") as u32;
    index * PARTITIONS_PER_TABLE + partition
}

/// The table of a file named `<table>-<n>.csv` (or `<table>.csv`).
pub fn table_of_file(path: &Path) -> Option<NexmarkTable> {
    let stem = path.file_stem()?.to_str()?;
    let name = stem.split_once('-').map_or(stem, |(name, _)| name);
    NexmarkTable::ALL.into_iter().find(|t| t.name() == name)
}

/// Groups input files by table, in the order given; a file that is not
/// named after a table is an error naming it.
pub fn files_by_table(files: &[PathBuf]) -> Result<Vec<(NexmarkTable, Vec<PathBuf>)>, String> {
    let mut grouped: Vec<(NexmarkTable, Vec<PathBuf>)> =
        NexmarkTable::ALL.iter().map(|t| (*t, Vec::new())).collect();
    for file in files {
        let table = table_of_file(file).ok_or_else(|| {
            format!(
                "{}: not a Nexmark table file (expected person-<n>.csv, auction-<n>.csv or bid-<n>.csv)",
                file.display()
            )
        })?;
        grouped
            .iter_mut()
            .find(|(t, _)| *t == table)
            .expect("every table has a group")
            .1
            .push(file.clone());
    }
    Ok(grouped)
}
