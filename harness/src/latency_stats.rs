//! Latency bookkeeping: an `HdrHistogram` of microseconds, percentile
//! extraction in ms, and the `.hgrm` percentile distribution text that
//! `HdrHistogram`'s tools (and `wrk2`) write.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Latencies in µs, from 1 µs to 1 hour, 3 significant digits.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    histogram: Histogram<u64>,
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

/// The percentiles reported in `summary.json`, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: u64,
}

impl LatencyStats {
    /// Records one latency; values outside the bounds are clamped.
    pub fn record_us(&mut self, latency_us: u64) {
        self.histogram.saturating_record(latency_us.max(1));
    }

    /// The reported percentiles, in ms.
    pub fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1_000.0;
        if self.histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(self.histogram.value_at_quantile(0.5)),
            p90: ms(self.histogram.value_at_quantile(0.9)),
            p99: ms(self.histogram.value_at_quantile(0.99)),
            p999: ms(self.histogram.value_at_quantile(0.999)),
            max: ms(self.histogram.max()),
            count: self.histogram.len(),
        }
    }

    /// The percentile distribution in `HdrHistogram`'s `.hgrm` text format
    /// (values in ms).
    pub fn hgrm(&self) -> String {
        let mut out = String::new();
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )
        .ok();
        for v in self.histogram.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "inf")
            };
            writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {inverse}",
                v.value_iterated_to() as f64 / 1_000.0,
                q,
                v.count_since_last_iteration()
            )
            .ok();
        }
        let p = self.percentiles();
        writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            self.histogram.mean() / 1_000.0,
            self.histogram.stdev() / 1_000.0
        )
        .ok();
        writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            p.max, p.count
        )
        .ok();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyStats;

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        let mut stats = LatencyStats::default();
        for ms in 1..=1_000u64 {
            stats.record_us(ms * 1_000);
        }
        let p = stats.percentiles();
        assert_eq!(p.count, 1_000);
        // 3 significant digits: values are exact to within 0.1 %.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p90, 900.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert!(close(p.max, 1_000.0), "{p:?}");
    }

    #[test]
    fn empty_stats_report_zeros_and_hgrm_has_a_footer() {
        let stats = LatencyStats::default();
        assert_eq!(stats.percentiles().count, 0);
        let mut one = LatencyStats::default();
        one.record_us(2_500);
        let text = one.hgrm();
        assert!(text.contains("Total count    =            1"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("2.50")),
            "{text}"
        );
    }
}
