//! Prometheus text endpoints (`GET /metrics`) on loopback addresses only
//! (DESIGN §4, §5): the exposition format, histograms, the HTTP server and
//! disk usage figures. A leaf: it imports nothing of the engine. The
//! engine's figures (`crate::driver::metrics`) and the sidecar's
//! (`crate::checkpoint::sidecar::SidecarMetrics`) render into an
//! [`Exposition`] and serve it with [`serve_text`].

mod exposition;
mod server;
mod usage;

pub use exposition::{label_value, millis, Exposition, Histogram, LATENCY_BUCKETS_SECONDS};
pub use server::{serve_text, Render};
pub use usage::dir_usage;

/// The wall clock, Unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn metrics_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(60));
        h.observe(Duration::from_secs(3));
        let mut x = Exposition::new();
        x.histogram("t_seconds", "test", &h);
        let text = x.finish();
        for line in [
            "# TYPE weir_t_seconds histogram",
            "weir_t_seconds_bucket{le=\"0.01\"} 1",
            "weir_t_seconds_bucket{le=\"0.1\"} 3",
            "weir_t_seconds_bucket{le=\"1\"} 3",
            "weir_t_seconds_bucket{le=\"+Inf\"} 4",
            "weir_t_seconds_sum 3.115",
            "weir_t_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn metrics_label_values_are_escaped_and_bounded() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label_value(&"k".repeat(100)).len(), 64);
    }
}
