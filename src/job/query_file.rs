//! The `QUERY` file of a data directory: the query a run computes over its
//! log, written by `weir run` (process 0) at its start, so that tools that
//! read the data dir later (`weir explain`) know the windows and the
//! lateness without the run's flags. Text, one `name value` per line, a
//! version first and a CRC32C of the bytes before it last; replaced
//! atomically (temp file, fsync, rename, fsync directory).

use std::path::Path;

use weir_dataflows::aggregates::Aggregates;
use weir_dataflows::emit::Emit;
use weir_dataflows::nexmark::NexmarkQuery;
use weir_dataflows::WindowSpec;

use super::WindowQuery;
use crate::storage::durable::{create_dir_all_durably, write_file_atomically};
use crate::storage::kv_text::{decode_kv, encode_kv};
use crate::storage::IoError;

/// The file's name in the data directory.
pub const QUERY_FILE_NAME: &str = "QUERY";
/// The version this binary writes (2: a `release` line names the writer);
/// versions 1 and 2 are read.
pub const QUERY_FILE_VERSION: u32 = 2;
/// A larger file is refused unread.
const MAX_QUERY_FILE_BYTES: u64 = 4096;
const FIRST_LINE: &str = "weir-query";

/// Writes `query` as `data_dir/QUERY`.
pub fn record_query(data_dir: &Path, query: &WindowQuery) -> Result<(), IoError> {
    create_dir_all_durably(data_dir)?;
    write_file_atomically(&data_dir.join(QUERY_FILE_NAME), &encode(query))
}

/// Why a `QUERY` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryFileError {
    /// Reading it failed (or there is none).
    #[error(transparent)]
    Io(#[from] IoError),
    /// Its bytes are not a query this binary reads.
    #[error("{}: corrupt at byte {byte_offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// Where the bad line starts.
        byte_offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Reads `data_dir/QUERY`.
pub fn read_query(data_dir: &Path) -> Result<WindowQuery, QueryFileError> {
    let path = data_dir.join(QUERY_FILE_NAME);
    let len = std::fs::metadata(&path).map_err(IoError::at(&path))?.len();
    if len > MAX_QUERY_FILE_BYTES {
        return Err(QueryFileError::Corrupt {
            path,
            byte_offset: 0,
            reason: format!("{len} bytes, over the limit of {MAX_QUERY_FILE_BYTES}"),
        });
    }
    let bytes = std::fs::read(&path).map_err(IoError::at(&path))?;
    decode(&bytes).map_err(|(byte_offset, reason)| QueryFileError::Corrupt {
        path,
        byte_offset,
        reason,
    })
}

/// The file's bytes for `query`.
pub fn encode(query: &WindowQuery) -> Vec<u8> {
    let name = query.nexmark.map_or("window", NexmarkQuery::name);
    let mut fields = vec![
        ("query", name.to_owned()),
        ("window", query.spec.to_string()),
        ("granularity_ms", query.granularity_ms.to_string()),
        ("lateness_ms", query.lateness_ms.to_string()),
        ("emit", query.emit.to_string()),
        ("aggregates", query.aggregates.to_string()),
    ];
    if let Some(k) = query.aggregates.topk() {
        fields.push(("topk", k.to_string()));
    }
    fields.push(("fingerprint", format!("{:016x}", query.fingerprint())));
    encode_kv(FIRST_LINE, QUERY_FILE_VERSION, &fields)
}

/// The query of `bytes`, or where and why they are not one.
pub fn decode(bytes: &[u8]) -> Result<WindowQuery, (u64, String)> {
    let fields = decode_kv(bytes, FIRST_LINE, QUERY_FILE_VERSION)?;
    let field = |name: &str| fields.field(name);
    let parse = |name: &str| fields.number(name);
    let (at, spec) = field("window")?;
    let spec: WindowSpec = spec.parse().map_err(|e| (at, format!("{e}")))?;
    let (at, emit) = field("emit")?;
    let emit: Emit = emit.parse().map_err(|e| (at, format!("emit: {e}")))?;
    let (at, aggregates) = field("aggregates")?;
    let mut aggregates: Aggregates = aggregates.parse().map_err(|e| (at, format!("{e}")))?;
    if let Some((at, k)) = fields.optional("topk") {
        let k = k
            .parse()
            .map_err(|_| (at, format!("topk: {k:?} is not a number")))?;
        aggregates = aggregates.with_topk(k).map_err(|e| (at, format!("{e}")))?;
    }
    let (at, name) = field("query")?;
    let nexmark = match name {
        "window" => None,
        _ => Some(
            NexmarkQuery::ALL
                .into_iter()
                .find(|q| q.name() == name)
                .ok_or_else(|| (at, format!("unknown query {name:?}")))?,
        ),
    };
    let query = WindowQuery {
        spec,
        granularity_ms: parse("granularity_ms")?,
        lateness_ms: parse("lateness_ms")?,
        nexmark,
        emit,
        aggregates,
    };
    let (at, fingerprint) = field("fingerprint")?;
    if fingerprint != format!("{:016x}", query.fingerprint()) {
        return Err((
            at,
            format!("fingerprint {fingerprint} is not that of the query the file describes"),
        ));
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use crate::job::WindowQuery;
    use weir_dataflows::nexmark::NexmarkQuery;

    fn queries() -> Vec<WindowQuery> {
        let mut sketches = WindowQuery::generic("tumbling:1h".parse().unwrap(), 0);
        sketches.aggregates = "count,distinct,topk"
            .parse::<weir_dataflows::aggregates::Aggregates>()
            .unwrap()
            .with_topk(7)
            .unwrap();
        sketches.emit = "changes".parse().unwrap();
        vec![
            WindowQuery::generic("sliding:60s/10s".parse().unwrap(), 5_000),
            WindowQuery::generic("session:30s".parse().unwrap(), 250),
            sketches,
            WindowQuery::nexmark(NexmarkQuery::Q5, 1_000),
        ]
    }

    #[test]
    fn round_trips() {
        for q in queries() {
            let back = decode(&encode(&q)).unwrap();
            assert_eq!(back.fingerprint(), q.fingerprint());
            assert_eq!(back.aggregates, q.aggregates);
            assert_eq!(
                (
                    back.spec,
                    back.granularity_ms,
                    back.lateness_ms,
                    back.nexmark,
                    back.emit
                ),
                (q.spec, q.granularity_ms, q.lateness_ms, q.nexmark, q.emit)
            );
        }
    }

    #[test]
    fn matches_the_golden_bytes() {
        let release = crate::release::THIS_RELEASE.to_text();
        let golden = format!(
            "weir-query 2\nrelease {release}\nquery window\nwindow sliding:1m/10s\n\
             granularity_ms 10000\nlateness_ms 5000\nemit all\naggregates count,sum,min,max\n"
        );
        let bytes = encode(&queries()[0]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&golden), "{text}");
        let golden_file = include_bytes!("../../tests/golden/query-v2");
        assert_eq!(
            decode(golden_file).unwrap().fingerprint(),
            queries()[0].fingerprint()
        );
        // The golden file was written by weir 0.1.0: this release in its
        // place, and the checksum line that covers it.
        let golden_file = std::str::from_utf8(golden_file).unwrap();
        let body = golden_file[..golden_file.rfind("crc32c ").unwrap()].replacen(
            "release 0.1.0\n",
            &format!("release {release}\n"),
            1,
        );
        let crc = crc32c::crc32c(body.as_bytes());
        assert_eq!(text, format!("{body}crc32c {crc:08x}\n"));
        // Version 1, without the release line, still reads.
        let v1 = include_bytes!("../../tests/golden/query-v1");
        assert_eq!(
            decode(v1).unwrap().fingerprint(),
            queries()[0].fingerprint()
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let bytes = encode(&queries()[2]);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                assert!(decode(&flipped).is_err(), "byte {i} bit {bit}");
            }
        }
    }
}
