//! Durable file-system operations (`fsync`, atomic replace, durable rename),
//! and taking a lock file within a bounded wait.
//!
//! The design allows only the log and the checkpoint store to call `fsync`
//! and `rename`; both, and other modules that need a durable file (ingest,
//! the sidecar's token), go through these helpers so the discipline lives in
//! one place: a new or renamed entry is durable only once its parent
//! directory has been fsynced.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::IoError;

/// Files at least this large are written around the page cache
/// ([`write_new_file`]).
pub const DIRECT_WRITE_MIN_BYTES: usize = 1 << 20;
/// The alignment of direct writes: buffer address, file offset and length
/// (the largest logical block size of common devices).
const DIRECT_ALIGN_BYTES: usize = 4096;
/// The staging buffer of direct writes.
const DIRECT_STAGE_BYTES: usize = 4 << 20;

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
    replace_file(path, bytes, false)
}

/// As [`write_file_atomically`], for a file written once and not read
/// again many times (a copy in a cold tier, a restored checkpoint data
/// file): a large one goes around the page cache ([`write_new_file`]).
pub fn write_cold_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    replace_file(path, bytes, true)
}

fn replace_file(path: &Path, bytes: &[u8], around_cache: bool) -> Result<(), IoError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    write_synced(
        tmp,
        bytes,
        OpenOptions::new().create(true).truncate(true),
        around_cache,
    )?;
    rename_durably(tmp, path)
}

/// Writes `bytes` as the file `path`, opened with `options` (plus write),
/// around the page cache if asked, and fsyncs it.
fn write_synced(
    path: &Path,
    bytes: &[u8],
    options: &mut OpenOptions,
    around_cache: bool,
) -> Result<(), IoError> {
    let f = options.write(true).open(path).map_err(IoError::at(path))?;
    let written = if around_cache {
        write_new_file(&f, path, bytes)
    } else {
        f.write_all_at(bytes, 0)
    };
    written
        .and_then(|()| f.sync_all())
        .map_err(IoError::at(path))
}

/// Writes `bytes` from the start of `file`, the new (empty) file at `path`
/// opened for writing; the caller fsyncs it. A file of at least
/// [`DIRECT_WRITE_MIN_BYTES`] goes around the page cache (`O_DIRECT`, its
/// whole blocks from `bytes` if aligned, else through a staging buffer,
/// the last partial block through `file`): a buffered write costs this
/// kernel about 3 s of CPU per GB, a direct one about 0.2 s (decision 48).
/// For files not read again soon (checkpoint data files: the copiers get
/// their bytes from the store; cold-tier copies). Where the file system
/// refuses direct writes, everything is written through `file`.
pub fn write_new_file(file: &File, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let direct_len = bytes.len() / DIRECT_ALIGN_BYTES * DIRECT_ALIGN_BYTES;
    if bytes.len() >= DIRECT_WRITE_MIN_BYTES {
        match write_direct(path, &bytes[..direct_len]) {
            Ok(()) => return file.write_all_at(&bytes[direct_len..], direct_len as u64),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(bytes, 0)
}

/// Writes `bytes` (a multiple of [`DIRECT_ALIGN_BYTES`] long) at the start
/// of the file `path` with `O_DIRECT`.
fn write_direct(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    debug_assert_eq!(bytes.len() % DIRECT_ALIGN_BYTES, 0);
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits().cast_signed())
        .open(path)?;
    if bytes.as_ptr().align_offset(DIRECT_ALIGN_BYTES) == 0 {
        return direct.write_all_at(bytes, 0);
    }
    // One staging buffer per thread, kept: a fresh one costs zeroing it.
    thread_local! {
        static STAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    STAGE.with_borrow_mut(|stage| {
        if stage.is_empty() {
            *stage = vec![0_u8; DIRECT_STAGE_BYTES + DIRECT_ALIGN_BYTES];
        }
        let aligned_at = stage.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        let stage = &mut stage[aligned_at..aligned_at + DIRECT_STAGE_BYTES];
        for (i, piece) in bytes.chunks(DIRECT_STAGE_BYTES).enumerate() {
            stage[..piece.len()].copy_from_slice(piece);
            direct.write_all_at(&stage[..piece.len()], (i * DIRECT_STAGE_BYTES) as u64)?;
        }
        Ok(())
    })
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
    write_synced(tmp, bytes, OpenOptions::new().create_new(true), false)?;
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

/// Opens (creating if needed) the lock file `path` and takes its exclusive
/// lock (flock), retrying every `poll` until `wait` has passed; `None` if
/// another holder kept it all that time. `on_held` runs once, the first
/// time the lock is found held (to say that it waits).
pub fn lock_file_within(
    path: &Path,
    (wait, poll): (Duration, Duration),
    mut on_held: impl FnMut(),
) -> std::io::Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !told {
                    on_held();
                    told = true;
                }
                std::thread::sleep(poll);
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
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

    #[test]
    fn large_files_written_around_the_cache_read_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let sizes = [
            DIRECT_WRITE_MIN_BYTES - 1,
            DIRECT_WRITE_MIN_BYTES,
            DIRECT_WRITE_MIN_BYTES + 1,
            DIRECT_STAGE_BYTES * 2 + DIRECT_ALIGN_BYTES + 17,
        ];
        for (i, len) in sizes.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
            let path = tmp.path().join(format!("f{i}"));
            // Over a longer file: nothing of the old content is left.
            std::fs::write(path.with_extension("tmp"), vec![7; len + 5000]).unwrap();
            write_cold_file_atomically(&path, &bytes).unwrap();
            assert!(std::fs::read(&path).unwrap() == bytes, "size {len}");
        }
    }
}
