//! Which aggregates the generic window query writes (`--aggregates`), and
//! the CSV columns they make.

use std::fmt;
use std::str::FromStr;

use crate::agg::{Agg, Sum};
use crate::sketch::top::{format_top, DEFAULT_TOPK, MAX_TOPK};

/// One output aggregate, in the order columns are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aggregate {
    /// Number of events.
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Estimated number of distinct values (HyperLogLog, decision 26).
    Distinct,
    /// The most frequent values with their counts (decision 32).
    TopK,
}

impl Aggregate {
    /// Every aggregate, in column order.
    pub const ALL: [Aggregate; 6] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Distinct,
        Aggregate::TopK,
    ];

    /// The name on the command line and in the header.
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Distinct => "distinct",
            Aggregate::TopK => "topk",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Aggregate`]s; columns follow [`Aggregate::ALL`]'s order
/// whatever order they were given in. With [`Aggregate::TopK`], also how
/// many values a row lists (`--topk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregates {
    bits: u8,
    topk: u16,
}

impl Default for Aggregates {
    /// Count, sum, min and max: the columns weir always wrote.
    fn default() -> Self {
        Aggregates::of(&[
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Min,
            Aggregate::Max,
        ])
    }
}

impl Aggregates {
    /// The set of `aggregates`.
    pub fn of(aggregates: &[Aggregate]) -> Self {
        Aggregates {
            bits: aggregates.iter().fold(0, |bits, a| bits | a.bit()),
            topk: DEFAULT_TOPK as u16,
        }
    }

    /// Whether `aggregate` is selected.
    pub fn contains(self, aggregate: Aggregate) -> bool {
        self.bits & aggregate.bit() != 0
    }

    /// The same set, listing `k` values per row for `topk` (1 to
    /// [`MAX_TOPK`]).
    pub fn with_topk(self, k: usize) -> Result<Self, AggregatesError> {
        if !(1..=MAX_TOPK).contains(&k) {
            return Err(AggregatesError {
                text: k.to_string(),
                reason: format!("--topk must be between 1 and {MAX_TOPK}"),
            });
        }
        Ok(Aggregates {
            topk: u16::try_from(k).expect("at most MAX_TOPK"),
            ..self
        })
    }

    /// How many values a row lists, when `topk` is selected.
    pub fn topk(self) -> Option<usize> {
        self.contains(Aggregate::TopK)
            .then_some(usize::from(self.topk))
    }

    /// Whether this is the default selection.
    pub fn is_default(self) -> bool {
        self == Aggregates::default()
    }

    /// Whether a sketch is needed (the windows keep sketch partials).
    pub fn needs_sketches(self) -> bool {
        self.contains(Aggregate::Distinct) || self.contains(Aggregate::TopK)
    }

    /// The selected aggregates, in column order.
    pub fn iter(self) -> impl Iterator<Item = Aggregate> {
        Aggregate::ALL
            .into_iter()
            .filter(move |&a| self.contains(a))
    }

    /// `agg` with the aggregates not selected zeroed: what `--emit changes`
    /// compares, so that a row is written only when a column written changes.
    pub fn project(self, agg: &Agg) -> Agg {
        Agg {
            count: if self.contains(Aggregate::Count) {
                agg.count
            } else {
                0
            },
            sum: if self.contains(Aggregate::Sum) {
                agg.sum
            } else {
                Sum::ZERO
            },
            min: if self.contains(Aggregate::Min) {
                agg.min
            } else {
                0
            },
            max: if self.contains(Aggregate::Max) {
                agg.max
            } else {
                0
            },
        }
    }

    /// The header of the window rows file.
    pub fn header(self) -> String {
        let mut header = String::from("window_start,window_end,key");
        for a in self.iter() {
            header.push(',');
            header.push_str(a.name());
        }
        header
    }

    /// Appends the selected columns of a row, each after a comma.
    /// `sketches` holds the estimate when [`Aggregate::Distinct`] is
    /// selected and the top values when [`Aggregate::TopK`] is.
    pub fn format_columns(self, agg: &Agg, sketches: SketchColumns<'_>, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        for a in self.iter() {
            out.push(b',');
            let text = match a {
                Aggregate::Count => number.format(agg.count),
                // Most sums fit an i64, whose formatting is cheaper.
                Aggregate::Sum => match i64::try_from(agg.sum.get()) {
                    Ok(sum) => number.format(sum),
                    Err(_) => number.format(agg.sum.get()),
                },
                Aggregate::Min => number.format(agg.min),
                Aggregate::Max => number.format(agg.max),
                Aggregate::Distinct => number.format(
                    sketches
                        .distinct
                        .expect("a distinct estimate when it is selected"),
                ),
                Aggregate::TopK => {
                    format_top(sketches.top.expect("top values when topk is selected"), out);
                    continue;
                }
            };
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// The sketch columns of a row, for [`Aggregates::format_columns`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SketchColumns<'a> {
    /// The distinct-count estimate.
    pub distinct: Option<u64>,
    /// The most frequent values with their counts, most frequent first.
    pub top: Option<&'a [(i64, u64)]>,
}

/// Why an `--aggregates` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --aggregates {text:?}: {reason}")]
pub struct AggregatesError {
    text: String,
    reason: String,
}

impl FromStr for Aggregates {
    type Err = AggregatesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| AggregatesError {
            text: text.to_owned(),
            reason,
        };
        let mut bits = 0u8;
        if text.trim().is_empty() {
            return Err(bad("no aggregate named".to_owned()));
        }
        for name in text.split(',').map(str::trim) {
            let aggregate = Aggregate::ALL
                .into_iter()
                .find(|a| a.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = Aggregate::ALL.iter().map(|a| a.name()).collect();
                    bad(format!(
                        "unknown aggregate {name:?} (known: {})",
                        known.join(", ")
                    ))
                })?;
            if bits & aggregate.bit() != 0 {
                return Err(bad(format!("{name} is given twice")));
            }
            bits |= aggregate.bit();
        }
        Ok(Aggregates {
            bits,
            topk: DEFAULT_TOPK as u16,
        })
    }
}

impl fmt::Display for Aggregates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(Aggregate::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_any_order_and_writes_in_column_order() {
        let a: Aggregates = "distinct, max,count".parse().unwrap();
        assert_eq!(a.to_string(), "count,max,distinct");
        assert_eq!(a.header(), "window_start,window_end,key,count,max,distinct");
        let mut agg = Agg::of(4);
        agg.add(-2);
        let mut out = Vec::new();
        let sketches = SketchColumns {
            distinct: Some(2),
            top: Some(&[(4, 1), (-2, 1)]),
        };
        a.format_columns(&agg, sketches, &mut out);
        assert_eq!(out, b",2,4,2");
        let t: Aggregates = "topk,count".parse().unwrap();
        assert_eq!(t.header(), "window_start,window_end,key,count,topk");
        assert_eq!(t.topk(), Some(DEFAULT_TOPK));
        assert_eq!(t.with_topk(3).unwrap().topk(), Some(3));
        assert_eq!(a.topk(), None);
        out.clear();
        t.format_columns(&agg, sketches, &mut out);
        assert_eq!(out, b",2,4:1|-2:1");
        assert!(a.needs_sketches() && !a.is_default());
        assert!(Aggregates::default().to_string() == "count,sum,min,max");
    }

    #[test]
    fn refuses_unknown_duplicate_and_empty_names() {
        for (text, why) in [
            ("count,median", "unknown aggregate \"median\""),
            ("count,count", "count is given twice"),
            ("", "no aggregate named"),
            ("count,", "unknown aggregate \"\""),
            ("top", "unknown aggregate \"top\""),
        ] {
            let e = text.parse::<Aggregates>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        for k in [0, MAX_TOPK + 1] {
            let e = Aggregates::default().with_topk(k).unwrap_err().to_string();
            assert!(e.contains("--topk must be between 1 and 1000"), "{k}: {e}");
        }
    }
}
