//! Which rows fixed windows write: every (window, key), or only changes.
//!
//! With `changes`, a key's row for window `e` is written only when its
//! aggregate differs from its row for the previous window `e - slide`, and
//! a key present in the previous window but not in this one gets a row
//! with count 0 (and sum, min, max 0). A consumer rebuilds every window by
//! walking window ends in order (one slide apart) and applying each end's
//! rows to a map from key to aggregate: a row with count 0 removes the
//! key, any other row sets it; the map after window `e`'s rows is window
//! `e` (README, "Formats"). The rows of `all` are exactly those rebuilt
//! windows (tested in `tests/it/oracle.rs`).

use std::fmt;
use std::str::FromStr;

use crate::agg::{Agg, Sum};

/// The rows fixed windows emit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Emit {
    /// One row per key present in each window.
    #[default]
    All,
    /// A key's row only when it differs from the previous window's, and a
    /// count-0 row when the key leaves.
    Changes,
}

/// The aggregate of a key's row when it left the window.
pub const LEFT: Agg = Agg {
    count: 0,
    sum: Sum::ZERO,
    min: 0,
    max: 0,
};

impl FromStr for Emit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(Emit::All),
            "changes" => Ok(Emit::Changes),
            other => Err(format!(
                "unknown emit mode {other:?}: expected all or changes"
            )),
        }
    }
}

impl fmt::Display for Emit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Emit::All => "all",
            Emit::Changes => "changes",
        })
    }
}
