//! The release of weir that wrote a file, as its headers record it
//! (`docs/formats.md`, "Writer release").
//!
//! Eight bytes: major, minor and patch as `u16` little-endian, then a
//! `u16` that is zero. A format that records its writer keeps these bytes
//! at the same place in every later version of its header, so a binary
//! that cannot read a newer version can still say which release wrote it.
//! A leaf: it imports nothing of the engine.

use std::fmt;

/// Size of an encoded release.
pub const RELEASE_LEN_BYTES: usize = 8;

/// A release number, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Patch version.
    pub patch: u16,
}

/// This binary's release (the package version; a pre-release or build
/// suffix is not recorded).
pub const THIS_RELEASE: Release = Release::parse(env!("CARGO_PKG_VERSION"));

impl Release {
    /// Parses `major.minor.patch` (an optional `-pre` or `+build` suffix is
    /// ignored) at compile time; panics on anything else.
    #[must_use]
    pub const fn parse(text: &str) -> Release {
        let bytes = text.as_bytes();
        let mut end = 0;
        while end < bytes.len() && bytes[end] != b'-' && bytes[end] != b'+' {
            end += 1;
        }
        match Self::from_bytes(bytes.split_at(end).0) {
            Some(release) => release,
            None => panic!("a release is major.minor.patch, each at most 65535"),
        }
    }

    /// Parses `major.minor.patch` exactly (as a text file records it);
    /// `None` for anything else.
    pub fn from_text(text: &str) -> Option<Release> {
        Self::from_bytes(text.as_bytes())
    }

    /// `major.minor.patch` exactly: three non-empty runs of digits, each at
    /// most 65535, separated by dots.
    const fn from_bytes(bytes: &[u8]) -> Option<Release> {
        let mut parts = [0u32; 3];
        let (mut part, mut i, mut digits) = (0, 0, 0);
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'.' {
                if digits == 0 || part == 2 {
                    return None;
                }
                part += 1;
                digits = 0;
            } else {
                if !b.is_ascii_digit() {
                    return None;
                }
                parts[part] = parts[part] * 10 + (b - b'0') as u32;
                if parts[part] > u16::MAX as u32 {
                    return None;
                }
                digits += 1;
            }
            i += 1;
        }
        if digits == 0 || part != 2 {
            return None;
        }
        Some(Release {
            major: parts[0] as u16,
            minor: parts[1] as u16,
            patch: parts[2] as u16,
        })
    }

    /// `major.minor.patch`, as a text file records it.
    pub fn to_text(self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }

    /// The eight bytes a header holds.
    pub fn encode(self) -> [u8; RELEASE_LEN_BYTES] {
        let mut out = [0u8; RELEASE_LEN_BYTES];
        out[0..2].copy_from_slice(&self.major.to_le_bytes());
        out[2..4].copy_from_slice(&self.minor.to_le_bytes());
        out[4..6].copy_from_slice(&self.patch.to_le_bytes());
        out
    }

    /// Reads the eight bytes of a header of a version this binary does not
    /// know, whose reserved bytes may mean something: to name its writer.
    pub fn decode_newer(bytes: &[u8; RELEASE_LEN_BYTES]) -> Release {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        Release {
            major: u16_at(0),
            minor: u16_at(2),
            patch: u16_at(4),
        }
    }

    /// Who wrote a binary header this binary cannot read, for the refusal:
    /// the release in it, read without checking the reserved bytes (a
    /// later version may use them), or, for a version from before the
    /// release was recorded, an older weir.
    pub fn unreadable_writer(release: Option<&[u8; RELEASE_LEN_BYTES]>) -> String {
        release.map_or_else(
            || "an older weir".to_owned(),
            |r| format!("{} (a newer weir)", Self::decode_newer(r)),
        )
    }

    /// The refusal of a `what` header of `version`, outside the versions 1
    /// to `newest` this binary reads, whose later versions keep the writer
    /// release at the place `release` was read from: it names that writer
    /// (or says a version 0 was written by no weir).
    pub fn refusal(
        what: &str,
        version: u32,
        newest: u32,
        release: &[u8; RELEASE_LEN_BYTES],
    ) -> String {
        let writer = if version == 0 {
            "no weir (version 0)".to_owned()
        } else {
            Self::unreadable_writer(Some(release))
        };
        format!(
            "{what} version {version}, written by {writer}: this binary ({THIS_RELEASE}) reads \
             versions 1 to {newest}"
        )
    }

    /// Reads the eight bytes of a header; `None` if the reserved last two
    /// are not zero.
    pub fn decode(bytes: &[u8; RELEASE_LEN_BYTES]) -> Option<Release> {
        (bytes[6..] == [0, 0]).then(|| Self::decode_newer(bytes))
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "weir {}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_release_is_the_package_version() {
        let shown = THIS_RELEASE.to_string();
        let version = env!("CARGO_PKG_VERSION");
        let plain = version.split(['-', '+']).next().unwrap();
        assert_eq!(shown, format!("weir {plain}"));
    }

    #[test]
    fn releases_parse_encode_and_decode() {
        let r = Release::parse("12.0.65535-rc.1+abc");
        assert_eq!(
            r,
            Release {
                major: 12,
                minor: 0,
                patch: 65535
            }
        );
        assert_eq!(r.encode(), [12, 0, 0, 0, 255, 255, 0, 0]);
        assert_eq!(Release::decode(&r.encode()), Some(r));
        assert_eq!(Release::decode(&[12, 0, 0, 0, 255, 255, 1, 0]), None);
        assert!(Release::parse("1.2.3") < Release::parse("1.10.0"));
        assert_eq!(Release::from_text(&r.to_text()), Some(r));
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "1..3",
            "a.b.c",
            "1.2.70000",
            "1.2.3-rc",
        ] {
            assert_eq!(Release::from_text(bad), None, "{bad}");
        }
    }
}
