//! Sizes on the command line: `4GiB`, `512MiB`, `1024` (bytes).

/// Parses a size: a whole number followed by nothing or `B` (bytes), or by
/// `KiB`, `MiB`, `GiB` or `TiB` (powers of 1024). Decimal units (`GB`)
/// are refused rather than guessed.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a whole number and a unit such as 4GiB"
        ));
    }
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size_bytes;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_refused() {
        assert_eq!(parse_size_bytes("1024"), Ok(1024));
        assert_eq!(parse_size_bytes("7B"), Ok(7));
        assert_eq!(parse_size_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size_bytes("1TiB"), Ok(1 << 40));
        for bad in [
            "",
            "GiB",
            "1GB",
            "1.5GiB",
            "-1",
            "99999999999999999999",
            "16777216TiB",
        ] {
            assert!(parse_size_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }
}
