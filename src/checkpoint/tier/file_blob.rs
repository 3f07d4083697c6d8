//! A blob store in a directory (`file:///PATH`): a cheaper volume as the
//! cold tier. Keys are relative paths of plain names; a put is atomic and
//! durable (temp file, fsync, rename, fsync directory), so a reader sees a
//! whole object or none.

use std::path::{Path, PathBuf};

use super::{Blob, BlobError};
use crate::storage::durable::{
    create_dir_all_durably, create_file_exclusively, write_cold_file_atomically,
};

/// Objects as files under a root directory.
#[derive(Debug)]
pub struct FileBlob {
    root: PathBuf,
}

impl FileBlob {
    /// The store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        create_dir_all_durably(root).map_err(|e| BlobError::Io {
            what: format!("creating {}", root.display()),
            reason: e.to_string(),
        })?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        super::check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl Blob for FileBlob {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let io = |e: crate::storage::IoError| BlobError::Io {
            what: format!("writing {}", path.display()),
            reason: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            create_dir_all_durably(parent).map_err(io)?;
        }
        write_cold_file_atomically(&path, bytes).map_err(io)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        let io = |e: crate::storage::IoError| BlobError::Io {
            what: format!("creating {}", path.display()),
            reason: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            create_dir_all_durably(parent).map_err(io)?;
        }
        create_file_exclusively(&path, bytes).map_err(io)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::Io {
                what: format!("reading {}", path.display()),
                reason: e.to_string(),
            }),
        }
    }

    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key)?;
        let io = |e: std::io::Error| BlobError::Io {
            what: format!("reading {} bytes {range:?}", path.display()),
            reason: e.to_string(),
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size_bytes = file.metadata().map_err(io)?.len();
        let end = range.end.min(size_bytes);
        let start = range.start.min(end);
        let mut bytes =
            vec![0; usize::try_from(end - start).map_err(|e| io(std::io::Error::other(e)))?];
        file.read_exact_at(&mut bytes, start).map_err(io)?;
        Ok(Some(bytes))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let dir = self.path(prefix)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(BlobError::Io {
                    what: format!("listing {}", dir.display()),
                    reason: e.to_string(),
                })
            }
        };
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of puts in progress are not objects.
            let temporary = std::path::Path::new(&name)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tmp"));
            if entry.path().is_file() && !temporary {
                keys.push(format!("{prefix}/{name}"));
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io {
                what: format!("deleting {}", path.display()),
                reason: e.to_string(),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(&dir.path().join("cold")).unwrap();
        assert_eq!(blob.get("commits/1").unwrap(), None);
        blob.put("commits/1", b"one").unwrap();
        blob.put("commits/2", b"two").unwrap();
        assert_eq!(blob.get("commits/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(blob.list("commits").unwrap(), ["commits/1", "commits/2"]);
        blob.delete("commits/1").unwrap();
        blob.delete("commits/1").unwrap();
        assert!(blob.put_new("epochs/1", b"mine").unwrap());
        assert!(!blob.put_new("epochs/1", b"theirs").unwrap());
        assert_eq!(blob.get("epochs/1").unwrap().as_deref(), Some(&b"mine"[..]));
        assert_eq!(blob.list("epochs").unwrap(), ["epochs/1"]);
        assert_eq!(blob.list("commits").unwrap(), ["commits/2"]);
        assert!(blob.list("nothing").unwrap().is_empty());
        for bad in ["", "/abs", "a/../b", "a//b", "a b", "../x"] {
            assert!(
                matches!(blob.put(bad, b""), Err(BlobError::BadKey(_))),
                "{bad}"
            );
        }
    }
}
