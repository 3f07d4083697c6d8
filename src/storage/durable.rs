//! Durable file-system operations (`fsync`, atomic replace, durable rename).
//!
//! The design allows only the log and the checkpoint store to call `fsync`
//! and `rename`; both, and other modules that need a durable file (ingest,
//! the sidecar's token), go through these helpers so the discipline lives in
//! one place: a new or renamed entry is durable only once its parent
//! directory has been fsynced.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::IoError;

/// Fsyncs a directory, making the creation, removal or renaming of its
/// entries durable.
pub fn sync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IoError::at(dir))
}

/// Fsyncs the data of an existing file (through a fresh handle: on Linux
/// `fsync` flushes the file, whichever descriptor is used).
pub fn sync_file(path: &Path) -> Result<(), IoError> {
    File::open(path)
        .and_then(|f| f.sync_data())
        .map_err(IoError::at(path))
}

/// The parent of `path`, or `.` for a bare file name.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors, fsyncing the parent of each
/// directory it created.
pub fn create_dir_all_durably(dir: &Path) -> Result<(), IoError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent_of(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(IoError::at(dir)(e)),
    }
}

/// Replaces the file at `path` by `bytes` atomically: writes `<path>.tmp`,
/// fsyncs it, renames it over `path` and fsyncs the directory. After a crash
/// `path` holds either the old or the new content.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    write_synced(tmp, bytes, OpenOptions::new().create(true).truncate(true))?;
    rename_durably(tmp, path)
}

/// Writes `bytes` as the file `path`, opened with `options` (plus write),
/// and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8], options: &mut OpenOptions) -> Result<(), IoError> {
    let mut f = options.write(true).open(path).map_err(IoError::at(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(IoError::at(path))
}

/// Creates the file at `path` with `bytes` unless it exists (then returns
/// `false` and leaves it alone): writes a temporary file unique to this
/// call, fsyncs it, hard-links it as `path` (which fails if `path` exists:
/// of two racing creators exactly one wins), removes the temporary name and
/// fsyncs the directory.
pub fn create_file_exclusively(path: &Path, bytes: &[u8]) -> Result<bool, IoError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = Path::new(&tmp_name);
    write_synced(tmp, bytes, OpenOptions::new().create_new(true))?;
    let linked = match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(IoError::at(path)(e)),
    };
    std::fs::remove_file(tmp).map_err(IoError::at(tmp))?;
    let created = linked?;
    sync_dir(parent_of(path))?;
    Ok(created)
}

/// Renames `from` to `to` (a file or a directory) and fsyncs the parent
/// directories of both.
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), IoError> {
    std::fs::rename(from, to).map_err(IoError::at(from))?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// Cuts the file at `path` to `len_bytes` and fsyncs it (a side file whose
/// committed length is recorded elsewhere, after a crash left more).
pub fn truncate_file_durably(path: &Path, len_bytes: u64) -> Result<(), IoError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len_bytes).and_then(|()| f.sync_all()))
        .map_err(IoError::at(path))
}

/// Removes a directory tree (if it exists) and fsyncs its parent.
pub fn remove_dir_all_durably(dir: &Path) -> Result<(), IoError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => sync_dir(parent_of(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::at(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_rename_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b/c");
        create_dir_all_durably(&d).unwrap();
        create_dir_all_durably(&d).unwrap();
        assert!(d.is_dir());
        let f = d.join("F");
        write_file_atomically(&f, b"one").unwrap();
        write_file_atomically(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!d.join("F.tmp").exists());
        sync_file(&f).unwrap();
        let e = tmp.path().join("a/e");
        rename_durably(&d, &e).unwrap();
        assert_eq!(std::fs::read(e.join("F")).unwrap(), b"two");
        remove_dir_all_durably(&e).unwrap();
        remove_dir_all_durably(&e).unwrap();
        assert!(!e.exists());
    }
}
