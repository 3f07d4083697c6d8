//! Window specifications (`tumbling:10s`, `sliding:60s/10s`, `session:30s`)
//! and the granularity rules of DESIGN §2.

use std::fmt;
use std::str::FromStr;

use crate::duration::{format_duration_ms, parse_duration_ms};
use crate::pane_store::MAX_PANES_PER_WINDOW;

/// The shape of the windows of the generic window query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// Back-to-back windows `[k*size, (k+1)*size)`.
    Tumbling {
        /// Window length in ms.
        size_ms: u64,
    },
    /// Overlapping windows `[k*slide, k*slide + size)`; `size` is a multiple
    /// of `slide`.
    Sliding {
        /// Window length in ms.
        size_ms: u64,
        /// Distance between window starts in ms.
        slide_ms: u64,
    },
    /// Per key, maximal runs of events whose consecutive times differ by less
    /// than `gap`; the window is `[first, last + gap)`.
    Session {
        /// Inactivity gap in ms.
        gap_ms: u64,
    },
}

/// Why a window specification or granularity was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpecError(pub String);

impl fmt::Display for WindowSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WindowSpecError {}

impl WindowSpec {
    /// The largest distance in ms from a window's start to its end.
    /// Sessions have no fixed length; their bound is the gap.
    pub fn size_ms(&self) -> u64 {
        match *self {
            WindowSpec::Tumbling { size_ms } | WindowSpec::Sliding { size_ms, .. } => size_ms,
            WindowSpec::Session { gap_ms } => gap_ms,
        }
    }

    /// The distance between consecutive window starts, for fixed windows.
    pub fn slide_ms(&self) -> Option<u64> {
        match *self {
            WindowSpec::Tumbling { size_ms } => Some(size_ms),
            WindowSpec::Sliding { slide_ms, .. } => Some(slide_ms),
            WindowSpec::Session { .. } => None,
        }
    }

    /// The granularity used when none is given: the slide for fixed windows
    /// (coarser would be wrong, finer closes no window earlier, because window
    /// ends are multiples of the slide), and `min(gap, 1s)` for sessions.
    pub fn default_granularity_ms(&self) -> u64 {
        match *self {
            WindowSpec::Tumbling { size_ms } => size_ms,
            WindowSpec::Sliding { slide_ms, .. } => slide_ms,
            WindowSpec::Session { gap_ms } => gap_ms.min(1_000),
        }
    }

    /// Checks that `granularity_ms` is usable with this window: it must divide
    /// the slide (fixed windows) or be at most the gap (sessions, so that all
    /// events of one granule belong to one session).
    pub fn check_granularity(&self, granularity_ms: u64) -> Result<(), WindowSpecError> {
        if granularity_ms == 0 {
            return Err(WindowSpecError("granularity must be positive".into()));
        }
        match *self {
            WindowSpec::Tumbling { .. } | WindowSpec::Sliding { .. } => {
                let slide_ms = self.slide_ms().unwrap_or(granularity_ms);
                if !slide_ms.is_multiple_of(granularity_ms) {
                    return Err(WindowSpecError(format!(
                        "granularity {} does not divide the window slide {}",
                        format_duration_ms(granularity_ms),
                        format_duration_ms(slide_ms)
                    )));
                }
            }
            WindowSpec::Session { gap_ms } => {
                if granularity_ms > gap_ms {
                    return Err(WindowSpecError(format!(
                        "granularity {} is larger than the session gap {}",
                        format_duration_ms(granularity_ms),
                        format_duration_ms(gap_ms)
                    )));
                }
            }
        }
        Ok(())
    }
}

impl FromStr for WindowSpec {
    type Err = WindowSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| WindowSpecError(format!("invalid window {text:?}: {why}"));
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            bad("expected tumbling:SIZE, sliding:SIZE/SLIDE or session:GAP".into())
        })?;
        let duration = |s: &str| -> Result<u64, WindowSpecError> {
            match parse_duration_ms(s) {
                Ok(0) => Err(bad("durations must be positive".into())),
                Ok(ms) if ms > crate::MAX_EVENT_TS_MS => Err(bad("duration too large".into())),
                Ok(ms) => Ok(ms),
                Err(e) => Err(bad(e.to_string())),
            }
        };
        match kind {
            "tumbling" => Ok(WindowSpec::Tumbling {
                size_ms: duration(rest)?,
            }),
            "sliding" => {
                let (size, slide) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("expected sliding:SIZE/SLIDE".into()))?;
                let (size_ms, slide_ms) = (duration(size)?, duration(slide)?);
                if !size_ms.is_multiple_of(slide_ms) {
                    return Err(bad("the size must be a multiple of the slide".into()));
                }
                let panes = size_ms / slide_ms;
                if panes > MAX_PANES_PER_WINDOW {
                    return Err(bad(format!(
                        "a window of {panes} slides is over the limit of {MAX_PANES_PER_WINDOW}"
                    )));
                }
                Ok(WindowSpec::Sliding { size_ms, slide_ms })
            }
            "session" => Ok(WindowSpec::Session {
                gap_ms: duration(rest)?,
            }),
            other => Err(bad(format!("unknown window kind {other:?}"))),
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WindowSpec::Tumbling { size_ms } => {
                write!(f, "tumbling:{}", format_duration_ms(size_ms))
            }
            WindowSpec::Sliding { size_ms, slide_ms } => write!(
                f,
                "sliding:{}/{}",
                format_duration_ms(size_ms),
                format_duration_ms(slide_ms)
            ),
            WindowSpec::Session { gap_ms } => write!(f, "session:{}", format_duration_ms(gap_ms)),
        }
    }
}

/// Rounds `ts` down to a multiple of `step`.
#[inline]
pub fn round_down(ts: u64, step: u64) -> u64 {
    ts - ts % step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for text in [
            "tumbling:10s",
            "sliding:1m/10s",
            "session:30s",
            "sliding:1500ms/500ms",
        ] {
            let spec: WindowSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn refuses_bad_specs() {
        for text in [
            "tumbling",
            "tumbling:0s",
            "sliding:10s",
            "sliding:10s/3s",
            "sliding:1200000s/1s",
            "hopping:1s",
            "session:",
        ] {
            assert!(text.parse::<WindowSpec>().is_err(), "{text} accepted");
        }
    }

    #[test]
    fn granularity_rules() {
        let sliding: WindowSpec = "sliding:60s/10s".parse().unwrap();
        assert!(sliding.check_granularity(1_000).is_ok());
        assert!(sliding.check_granularity(3_000).is_err());
        assert!(sliding.check_granularity(0).is_err());
        let session: WindowSpec = "session:5s".parse().unwrap();
        assert!(session.check_granularity(5_000).is_ok());
        assert!(session.check_granularity(5_001).is_err());
        assert_eq!(session.default_granularity_ms(), 1_000);
    }
}
