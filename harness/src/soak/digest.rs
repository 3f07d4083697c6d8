//! An order-free fingerprint of a run's output rows, per minute of event
//! time, so two outputs of an hour-long run compare in bounded memory (no
//! sort of every row) and a difference is located to a minute.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};

/// Per (kind, minute): rows, and two sums of row hashes (wrapping): equal
/// multisets give equal digests; a changed, lost or duplicated row changes
/// the count or, but for a 2^-64-ish chance, a sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputDigest {
    buckets: BTreeMap<(char, u64), (u64, u64, u64)>,
}

impl OutputDigest {
    /// The digest of every `windows*.csv` and `late*.csv` under `dir`.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let mut digest = OutputDigest::default();
        for (name, path) in crate::csv_files(dir)? {
            let kind = match name {
                n if n.starts_with("windows") => 'w',
                n if n.starts_with("late") => 'l',
                _ => continue,
            };
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            for line in std::io::BufReader::new(file).lines().skip(1) {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                digest.add(kind, &line);
            }
        }
        Ok(digest)
    }

    /// Adds one row: window rows by `window_start`, late rows by `ts`.
    pub fn add(&mut self, kind: char, line: &str) {
        let time_field = if kind == 'w' { 0 } else { 2 };
        let ms: u64 = line
            .split(',')
            .nth(time_field)
            .and_then(|f| f.parse().ok())
            .unwrap_or(u64::MAX);
        let hash = fnv1a(line.as_bytes());
        let bucket = self.buckets.entry((kind, ms / 60_000)).or_insert((0, 0, 0));
        bucket.0 += 1;
        bucket.1 = bucket.1.wrapping_add(hash);
        bucket.2 = bucket.2.wrapping_add(hash.wrapping_mul(hash | 1));
    }

    /// Rows of `kind`.
    pub fn rows(&self, kind: char) -> u64 {
        self.buckets
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, b)| b.0)
            .sum()
    }

    /// The first (kind, minute) where `self` and `other` differ, described.
    pub fn first_difference(&self, other: &Self) -> Option<String> {
        let keys = self.buckets.keys().chain(other.buckets.keys());
        let mut differing: Vec<&(char, u64)> = keys
            .filter(|k| self.buckets.get(k) != other.buckets.get(k))
            .collect();
        differing.sort_unstable();
        let &&(kind, minute) = differing.first()?;
        let rows = |d: &Self| d.buckets.get(&(kind, minute)).map_or(0, |b| b.0);
        Some(format!(
            "{} rows of event-time minute {minute} (from {} ms): {} here, {} expected",
            if kind == 'w' { "window" } else { "late" },
            minute * 60_000,
            rows(self),
            rows(other)
        ))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_multisets_in_any_order_and_a_lost_or_changed_row_found() {
        let rows = [
            "0,1000,a,1,1,1,1",
            "60000,61000,b,2,3,1,2",
            "0,1000,c,1,5,5,5",
        ];
        let mut a = OutputDigest::default();
        let mut b = OutputDigest::default();
        for r in rows {
            a.add('w', r);
        }
        for r in rows.iter().rev() {
            b.add('w', r);
        }
        assert_eq!(a, b);
        assert_eq!(a.rows('w'), 3);
        assert!(a.first_difference(&b).is_none());
        let mut changed = OutputDigest::default();
        for r in [
            "0,1000,a,1,1,1,1",
            "60000,61000,b,2,3,1,3",
            "0,1000,c,1,5,5,5",
        ] {
            changed.add('w', r);
        }
        let diff = changed.first_difference(&a).unwrap();
        assert!(diff.contains("minute 1 "), "{diff}");
        let mut lost = a.clone();
        lost.buckets.remove(&('w', 0));
        assert!(lost.first_difference(&a).unwrap().contains("minute 0 "));
        let mut duplicated = a.clone();
        duplicated.add('w', rows[0]);
        assert!(duplicated.first_difference(&a).is_some());
    }
}
