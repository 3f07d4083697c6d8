//! The Prometheus text exposition format: metric families with HELP and
//! TYPE lines, label escaping, and a lock-free histogram of durations.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets (upper bounds, seconds) of the latency histograms.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram of durations with fixed buckets, updated lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with the upper bounds `bounds` (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds a response in the Prometheus text exposition format (0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        writeln!(
            self.out,
            "# HELP weir_{name} {help}\n# TYPE weir_{name} {kind}"
        )
        .ok();
    }

    /// A counter `weir_<name>` (the name ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        writeln!(self.out, "weir_{name} {value}").ok();
    }

    /// A gauge `weir_<name>`.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        writeln!(self.out, "weir_{name} {value}").ok();
    }

    /// A labelled family: `samples` are `(labels, value)`, labels already
    /// formatted as `a="x",b="y"` (see [`label_value`]).
    pub fn labelled(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
        self.family(name, kind, help);
        for (labels, value) in samples {
            writeln!(self.out, "weir_{name}{{{labels}}} {value}").ok();
        }
    }

    /// A histogram `weir_<name>` with its buckets, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = h
                .bounds
                .get(i)
                .map_or("+Inf".to_owned(), ToString::to_string);
            writeln!(self.out, "weir_{name}_bucket{{le=\"{le}\"}} {cumulative}").ok();
        }
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        // The count is the +Inf bucket, so the two always agree.
        writeln!(
            self.out,
            "weir_{name}_sum {sum}\nweir_{name}_count {cumulative}"
        )
        .ok();
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value, escaped (backslash, quote, newline) and cut to 64 characters.
pub fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(64) + 2);
    for c in value.chars().take(64) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A duration in milliseconds, to the microsecond (for span fields).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
