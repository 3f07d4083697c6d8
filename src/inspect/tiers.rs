//! The cold tier and replica part of `weir inspect`: for each store this
//! data dir claimed an epoch in (`checkpoints/COLD_EPOCH`, `REPLICA_EPOCH`,
//! `TAKEOVER_EPOCH`), the store's newest epoch and newest usable
//! checkpoint, and how far it lags the local commit stream — read only,
//! so an unreachable store is a line of the report, not an error.

use std::fmt::Write as _;
use std::path::Path;

use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::tier::epoch::{local_epochs, read_claims};
use crate::checkpoint::tier::{newest_cold_record, open_cold_store};

/// Writes the section (nothing if the data dir claimed no epoch).
pub(super) fn write_tiers(out: &mut String, store_dir: &Path, local: Option<&CommitRecord>) {
    let claimed = match local_epochs(store_dir) {
        Ok(claimed) => claimed,
        Err(e) => {
            writeln!(out, "cold tiers: {e}").ok();
            return;
        }
    };
    for (file, url, mine) in claimed {
        let role = match file {
            "COLD_EPOCH" => "cold tier",
            "REPLICA_EPOCH" => "replica",
            _ => "taken over from",
        };
        writeln!(out, "{role} {url}: this data dir claimed epoch {mine}").ok();
        let status = open_cold_store(&url)
            .map_err(|e| e.to_string())
            .and_then(|blob| {
                let newest_epoch = read_claims(blob.as_ref())?.last().map_or(0, |c| c.epoch);
                Ok((newest_epoch, newest_cold_record(blob.as_ref())?))
            });
        match status {
            Err(e) => {
                writeln!(out, "  unreadable now: {e}").ok();
            }
            Ok((newest_epoch, newest)) => {
                if newest_epoch > mine {
                    writeln!(
                        out,
                        "  FENCED OFF: epoch {newest_epoch} was claimed since (another writer took over)"
                    )
                    .ok();
                }
                match newest {
                    None => {
                        writeln!(out, "  no usable checkpoint yet").ok();
                    }
                    Some((epoch, record)) => {
                        writeln!(
                            out,
                            "  newest usable checkpoint {} (epoch {epoch}){}",
                            record.checkpoint_id,
                            lag(local, &record)
                        )
                        .ok();
                    }
                }
            }
        }
    }
}

/// How far `copied` is behind the local newest checkpoint.
fn lag(local: Option<&CommitRecord>, copied: &CommitRecord) -> String {
    let Some(local) = local else {
        return String::new();
    };
    let checkpoints = local.checkpoint_id.saturating_sub(copied.checkpoint_id);
    let seconds = match (local.timing, copied.timing) {
        (Some(l), Some(c)) => format!(
            ", {:.3} s of commits",
            l.committed_at_unix_ms
                .saturating_sub(c.committed_at_unix_ms) as f64
                / 1e3
        ),
        _ => String::new(),
    };
    format!(
        ": {checkpoints} checkpoint(s) behind the local newest ({}){seconds}",
        local.checkpoint_id
    )
}
