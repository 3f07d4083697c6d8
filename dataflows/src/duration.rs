//! Parsing and printing of durations written like `500ms`, `10s`, `5m`, `1h`.

use std::fmt;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    /// The text that was refused.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {} (write e.g. 500ms, 10s, 5m, 1h)",
            self.text, self.reason
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses `500ms`, `10s`, `5m`, `1h`, `2d` (or a bare number of ms) into ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let err = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits_end == 0 {
        return Err(err("expected a number"));
    }
    let number: u64 = trimmed[..digits_end]
        .parse()
        .map_err(|_| err("number too large"))?;
    let unit_ms: u64 = match &trimmed[digits_end..] {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err("unknown unit")),
    };
    number.checked_mul(unit_ms).ok_or_else(|| err("too large"))
}

/// Formats ms in the largest unit that divides it exactly (`10s`, `1500ms`).
pub fn format_duration_ms(ms: u64) -> String {
    for (unit, unit_ms) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("10x").is_err());
        assert!(parse_duration_ms("-5s").is_err());
        assert!(parse_duration_ms("99999999999999999999s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for ms in [1, 500, 1_000, 1_500, 60_000, 3_600_000, 7_200_000] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }
    }
}
