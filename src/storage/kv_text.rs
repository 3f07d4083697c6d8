//! Small text files of `name value` lines: a kind and a version on the
//! first line, from version 2 on the writer's release on the second
//! (`release 0.1.0`), a CRC32C of the bytes before it on the last
//! (`crc32c xxxxxxxx`). The `QUERY` file of a data directory and the cold
//! tier's epoch files are written this way: readable by people, checked
//! by machines, refused with the byte offset of what is wrong.

use std::fmt::Write as _;

use crate::release::{Release, THIS_RELEASE};

/// The first version of every kind whose second line names the writer's
/// release; later versions keep that line there.
pub const RELEASE_LINE_FROM_VERSION: u32 = 2;

/// The lines of a file, checked: `(byte offset, name, value)`.
#[derive(Debug)]
pub struct KvFields<'a> {
    fields: Vec<(u64, &'a str, &'a str)>,
    /// The file's version.
    pub version: u32,
    /// The release that wrote it (version 2 on).
    pub writer: Option<Release>,
}

/// Encodes `fields` after the line `KIND VERSION`, and the CRC line.
pub fn encode_kv(kind: &str, version: u32, fields: &[(&str, String)]) -> Vec<u8> {
    let mut text = format!("{kind} {version}\n");
    if version >= RELEASE_LINE_FROM_VERSION {
        let _ = writeln!(text, "release {}", THIS_RELEASE.to_text());
    }
    for (name, value) in fields {
        debug_assert!(!name.contains(' ') && !value.contains('\n'));
        let _ = writeln!(text, "{name} {value}");
    }
    let crc = crc32c::crc32c(text.as_bytes());
    let _ = writeln!(text, "crc32c {crc:08x}");
    text.into_bytes()
}

/// The fields of `bytes`, a file of `kind` in version 1 up to `version`
/// (the CRC checked), or the byte offset and reason of what is wrong; a
/// later version is refused naming the release that wrote it.
pub fn decode_kv<'a>(
    bytes: &'a [u8],
    kind: &str,
    version: u32,
) -> Result<KvFields<'a>, (u64, String)> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| (e.valid_up_to() as u64, "not UTF-8".to_owned()))?;
    let mut fields: Vec<(u64, &str, &str)> = Vec::new();
    let mut offset = 0u64;
    for line in text.split_inclusive('\n') {
        let Some(content) = line.strip_suffix('\n') else {
            return Err((offset, "the last line is cut short (no newline)".into()));
        };
        let Some((name, value)) = content.split_once(' ') else {
            return Err((offset, format!("expected `name value`, got {content:?}")));
        };
        fields.push((offset, name, value));
        offset += line.len() as u64;
    }
    let Some(&(crc_offset, "crc32c", crc)) = fields.last() else {
        return Err((offset, "no crc32c line at the end".into()));
    };
    let covered = &bytes[..usize::try_from(crc_offset).unwrap_or(usize::MAX)];
    if crc != format!("{:08x}", crc32c::crc32c(covered)) {
        return Err((crc_offset, format!("checksum mismatch (recorded {crc})")));
    }
    let Some(&(_, first, found)) = fields.first() else {
        return Err((0, format!("not a `{kind}` file")));
    };
    if first != kind {
        return Err((0, format!("not a `{kind}` file (it starts with {first:?})")));
    }
    let found_version = found
        .parse::<u32>()
        .ok()
        .filter(|v| v.to_string() == found)
        .ok_or_else(|| (0, format!("version {found:?} is not a number")))?;
    let release_line = fields
        .get(1)
        .filter(|&&(_, name, _)| name == "release" && found_version >= RELEASE_LINE_FROM_VERSION);
    if found_version == 0 || found_version > version {
        let by = match release_line.and_then(|&(_, _, text)| Release::from_text(text)) {
            _ if found_version == 0 => "no weir (there is no version 0)".to_owned(),
            Some(w) => format!("{w} (a newer weir)"),
            None => "a newer weir".to_owned(),
        };
        return Err((
            0,
            format!(
                "version {found_version}, written by {by}; this one ({THIS_RELEASE}) reads \
                 versions 1 to {version}"
            ),
        ));
    }
    let writer = match release_line {
        Some(&(at, _, text)) => Some(
            Release::from_text(text)
                .ok_or_else(|| (at, format!("release {text:?} is not major.minor.patch")))?,
        ),
        None if found_version >= RELEASE_LINE_FROM_VERSION => {
            return Err((0, "no `release` line after the version".into()));
        }
        None => None,
    };
    fields.pop();
    fields.drain(..if writer.is_some() { 2 } else { 1 });
    Ok(KvFields {
        fields,
        version: found_version,
        writer,
    })
}

impl<'a> KvFields<'a> {
    /// The value of `name` with its line's byte offset.
    pub fn field(&self, name: &str) -> Result<(u64, &'a str), (u64, String)> {
        self.fields
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|&(at, _, value)| (at, value))
            .ok_or_else(|| (0, format!("no `{name}` line")))
    }

    /// The value of `name`, if there is such a line.
    pub fn optional(&self, name: &str) -> Option<(u64, &'a str)> {
        self.field(name).ok()
    }

    /// The value of `name` as a number.
    pub fn number(&self, name: &str) -> Result<u64, (u64, String)> {
        let (at, value) = self.field(name)?;
        value
            .parse()
            .map_err(|_| (at, format!("{name}: {value:?} is not a number")))
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_kv, encode_kv};
    use crate::release::THIS_RELEASE;

    #[test]
    fn round_trips_and_refuses_damage_with_its_offset() {
        let bytes = encode_kv(
            "weir-test",
            2,
            &[("epoch", "7".into()), ("who", "a b".into())],
        );
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap().lines().next(),
            Some("weir-test 2")
        );
        let fields = decode_kv(&bytes, "weir-test", 2).unwrap();
        assert_eq!(fields.number("epoch").unwrap(), 7);
        assert_eq!(fields.field("who").unwrap().1, "a b");
        assert!(fields.optional("none").is_none());
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap().lines().nth(1),
            Some(format!("release {}", THIS_RELEASE.to_text()).as_str())
        );
        assert_eq!((fields.version, fields.writer), (2, Some(THIS_RELEASE)));
        assert!(fields.optional("release").is_none());
        // A reader of version 1 only: refused, naming the writer.
        assert_eq!(
            decode_kv(&bytes, "weir-test", 1).unwrap_err().1,
            format!(
                "version 2, written by {THIS_RELEASE} (a newer weir); this one ({THIS_RELEASE}) \
                 reads versions 1 to 1"
            )
        );
        // Version 1 (no release line) still reads.
        let v1 = encode_kv("weir-test", 1, &[("epoch", "7".into())]);
        let fields = decode_kv(&v1, "weir-test", 2).unwrap();
        assert_eq!((fields.version, fields.writer), (1, None));
        assert_eq!(fields.number("epoch").unwrap(), 7);
        assert!(decode_kv(&bytes, "weir-other", 2).is_err());
        for cut in 0..bytes.len() {
            assert!(decode_kv(&bytes[..cut], "weir-test", 2).is_err(), "{cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x04;
            assert!(decode_kv(&bad, "weir-test", 2).is_err(), "{at}");
        }
    }
}
