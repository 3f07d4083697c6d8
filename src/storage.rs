//! Storage primitives shared by the input log and the checkpoint store: the
//! durable file operations ([`durable`]: fsync, atomic replace, durable
//! rename), the CRC32C record frame ([`frame`]) and small checked text
//! files ([`kv_text`]). A leaf: it imports nothing of the engine, so `log`
//! and `checkpoint` both build on it without depending on each other.

pub mod durable;
pub mod frame;
pub mod kv_text;

use std::path::PathBuf;

/// An I/O operation on `path` failed (the log and the checkpoint store turn
/// it into their own `Io` error, with the same message).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// Wraps an I/O error on `path` (for `map_err`).
    pub fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self { path, source }
    }
}
