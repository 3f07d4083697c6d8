//! The shared token of a sidecar listening on loopback TCP: where the file
//! is, how it is read (refusing one others may read), how it is compared.
//! Used by both ends: the sidecar creates and checks it, the client sends it.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// File name of the TCP token in the data dir.
pub const TOKEN_FILE_NAME: &str = "sidecar.token";
/// Token length in random bytes (the file holds twice as many hex digits).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// A token file's accepted size range.
pub const TOKEN_FILE_LEN_BYTES: std::ops::RangeInclusive<usize> = 16..=1024;

/// The token path of a data dir.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE_NAME)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

/// Reads a token file: its contents without a trailing newline. Refuses a
/// file readable by group or others, or of an implausible size.
pub fn read_token_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:o} lets other users read it; chmod 600 it"
        ));
    }
    let max = *TOKEN_FILE_LEN_BYTES.end();
    let mut token = Vec::with_capacity(max + 2);
    Read::by_ref(&mut file)
        .take(max as u64 + 2)
        .read_to_end(&mut token)
        .map_err(|e| e.to_string())?;
    while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        token.pop();
    }
    if !TOKEN_FILE_LEN_BYTES.contains(&token.len()) {
        return Err(format!(
            "a token must have {} to {} bytes",
            TOKEN_FILE_LEN_BYTES.start(),
            TOKEN_FILE_LEN_BYTES.end()
        ));
    }
    Ok(token)
}
