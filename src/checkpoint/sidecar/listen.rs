//! Where the sidecar listens: a 0600 Unix socket bound through a private
//! directory, or loopback TCP with a token file.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use super::{ensure_token_file, socket_path, Listen, SidecarConfig, SidecarError};

/// Prefix of the private directories the socket is bound in.
const STAGING_PREFIX: &str = ".sidecar-bind-";

/// Removes the socket file when the sidecar stops (if it is still ours).
pub(super) struct SocketGuard {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound listener, with what its connections must prove.
pub(super) enum Listener {
    Unix {
        listener: UnixListener,
        uid: u32,
    },
    Tcp {
        listener: TcpListener,
        token: Arc<Vec<u8>>,
    },
}

impl Listener {
    /// Binds what `config` says to listen on; the guard removes the socket
    /// file when dropped.
    pub(super) async fn bind(
        config: &SidecarConfig,
    ) -> Result<(Self, Option<SocketGuard>), SidecarError> {
        match config.listen {
            Listen::Tcp(addr) => {
                let token = Arc::new(ensure_token_file(&config.data_dir)?);
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| SidecarError::Io {
                            path: PathBuf::from(addr.to_string()),
                            source,
                        })?;
                Ok((Self::Tcp { listener, token }, None))
            }
            Listen::Unix => {
                let (listener, guard, uid) = bind_unix(&config.data_dir)?;
                Ok((Self::Unix { listener, uid }, Some(guard)))
            }
        }
    }
}

/// Binds `<data_dir>/sidecar.sock` with mode 0600: bound in a private 0700
/// directory, chmodded there, then renamed into place. A socket file left by
/// a dead sidecar is removed; one that answers is another sidecar.
fn bind_unix(data_dir: &Path) -> Result<(UnixListener, SocketGuard, u32), SidecarError> {
    let path = socket_path(data_dir);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SidecarError::io(&path)(io::Error::other(
                "exists and is not a socket; remove it",
            )))
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(SidecarError::AlreadyRunning(path));
            }
            tracing::info!(path = %path.display(), "removing a stale sidecar socket");
            std::fs::remove_file(&path).map_err(SidecarError::io(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SidecarError::io(&path)(e)),
    }
    // Leftover staging dirs of dead sidecars (the store lock says none runs).
    if let Ok(entries) = std::fs::read_dir(data_dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let staging = data_dir.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(SidecarError::io(&staging))?;
    let bound = (|| {
        let tmp = staging.join("s");
        let listener =
            std::os::unix::net::UnixListener::bind(&tmp).map_err(SidecarError::io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(SidecarError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(SidecarError::io(&path))?;
        Ok::<_, SidecarError>(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    let listener = bound?;
    let meta = std::fs::symlink_metadata(&path).map_err(SidecarError::io(&path))?;
    let guard = SocketGuard {
        path: path.clone(),
        inode: meta.ino(),
    };
    listener
        .set_nonblocking(true)
        .map_err(SidecarError::io(&path))?;
    let listener = UnixListener::from_std(listener).map_err(SidecarError::io(&path))?;
    Ok((listener, guard, meta.uid()))
}
