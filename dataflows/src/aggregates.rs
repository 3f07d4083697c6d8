//! Which aggregates the generic window query writes (`--aggregates`), and
//! the CSV columns they make.

use std::fmt;
use std::str::FromStr;

use crate::agg::{Agg, Sum};

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
}

impl Aggregate {
    /// Every aggregate, in column order.
    pub const ALL: [Aggregate; 5] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Distinct,
    ];

    /// The name on the command line and in the header.
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Distinct => "distinct",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Aggregate`]s; columns follow [`Aggregate::ALL`]'s order
/// whatever order they were given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregates(u8);

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
        Aggregates(aggregates.iter().fold(0, |bits, a| bits | a.bit()))
    }

    /// Whether `aggregate` is selected.
    pub fn contains(self, aggregate: Aggregate) -> bool {
        self.0 & aggregate.bit() != 0
    }

    /// Whether this is the default selection.
    pub fn is_default(self) -> bool {
        self == Aggregates::default()
    }

    /// Whether a sketch is needed (the windows keep sketch partials).
    pub fn needs_sketches(self) -> bool {
        self.contains(Aggregate::Distinct)
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
    /// `distinct` is the estimate when [`Aggregate::Distinct`] is selected.
    pub fn format_columns(self, agg: &Agg, distinct: Option<u64>, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        for a in self.iter() {
            out.push(b',');
            out.extend_from_slice(
                match a {
                    Aggregate::Count => number.format(agg.count),
                    Aggregate::Sum => number.format(agg.sum.get()),
                    Aggregate::Min => number.format(agg.min),
                    Aggregate::Max => number.format(agg.max),
                    Aggregate::Distinct => {
                        number.format(distinct.expect("a distinct estimate when it is selected"))
                    }
                }
                .as_bytes(),
            );
        }
    }
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
        Ok(Aggregates(bits))
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
        a.format_columns(&agg, Some(2), &mut out);
        assert_eq!(out, b",2,4,2");
        assert!(a.needs_sketches() && !a.is_default());
        assert!(Aggregates::default().to_string() == "count,sum,min,max");
    }

    #[test]
    fn refuses_unknown_duplicate_and_empty_names() {
        for (text, why) in [
            ("count,median", "unknown aggregate \"median\""),
            ("count,count", "count is given twice"),
            ("", "unknown aggregate \"\""),
            ("topk", "unknown aggregate \"topk\""),
        ] {
            let e = text.parse::<Aggregates>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
