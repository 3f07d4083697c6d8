//! The checkpoint sidecar: a tokio server (one thread) that collects the
//! engine workers' cuts and turns each complete checkpoint into delta files
//! and a durable commit record in `<data_dir>/checkpoints/`.
//!
//! Listening: a Unix socket `<data_dir>/sidecar.sock` with mode 0600 (bound
//! in a private 0700 directory, chmodded, then renamed into place, so it is
//! never reachable with a wider mode; peers must run as the same user), or a
//! loopback TCP address whose peers must present the token of
//! `<data_dir>/sidecar.token` (mode 0600, 32 random bytes in hex, created if
//! missing; compared in constant time). Non-loopback addresses are refused.
//! At most [`MAX_CONNECTIONS`] connections; a hello must arrive within
//! [`HELLO_TIMEOUT`] and fit in [`MAX_HELLO_BYTES`].
//!
//! One task, the coordinator, owns the state ([`coordinator`]) and the
//! [`CheckpointStore`]; connection tasks feed it through a bounded channel,
//! so a slow disk slows the readers, the sockets and, in the end, fills the
//! engine's bounded queue (the backpressure metric) — workers never block.
//! Commits run on a blocking thread, one at a time, in id order; each is
//! acknowledged with `Committed` to every process of the run.
//!
//! Fencing: the store's directory lock refuses a second sidecar on the same
//! data dir; hellos carry an epoch and an older one than seen is refused.
//! A failed commit is fatal (the disk state after a failed fsync is not to
//! be trusted): every process is told, and [`run_sidecar`] returns the error.

mod commit;
mod coordinator;
mod copiers;
mod listen;
mod metrics;
mod server;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::checkpoint::store::StoreError;

pub use coordinator::{COMPACT_ABOVE_FILES, COMPACT_EVERY_CHECKPOINTS, MAX_PENDING_CHECKPOINTS};
pub use metrics::SidecarMetrics;
// The token helpers live in the transport, which the client shares.
pub use crate::checkpoint::transport::token::{
    constant_time_eq, read_token_file, token_path, TOKEN_FILE_NAME, TOKEN_RANDOM_BYTES,
};

/// File name of the Unix socket in the data dir.
pub const SOCKET_FILE_NAME: &str = "sidecar.sock";
/// Name of the checkpoint store directory in the data dir.
pub const CHECKPOINTS_DIR_NAME: &str = "checkpoints";
/// At most this many connections at once (authenticated or not).
pub const MAX_CONNECTIONS: usize = 64;
/// A connection must say hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest hello frame payload (read before authentication).
pub const MAX_HELLO_BYTES: usize = 64 << 10;

/// Where the sidecar listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `<data_dir>/sidecar.sock`.
    Unix,
    /// A loopback TCP address; the token is `<data_dir>/sidecar.token`.
    Tcp(SocketAddr),
}

/// The sidecar's configuration.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// The data dir: checkpoints in `checkpoints/`, socket and token beside.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: Listen,
    /// Exit once every process that connected has said goodbye or
    /// disconnected (after at least one connected).
    pub exit_when_idle: bool,
    /// How long to wait for the store lock while another writer holds it
    /// (see [`crate::checkpoint::store::CheckpointStore::open_waiting`]); then
    /// [`StoreError::Locked`]. `weir sidecar --lock-wait` defaults to 10 s:
    /// longer than a killed sidecar's last fsync takes to return on a loaded
    /// disk, short enough that a second sidecar is refused promptly.
    pub lock_wait_ms: u64,
    /// The most memory a compaction may hold for one key group's updates
    /// (`weir sidecar --memory-budget`, default
    /// [`crate::checkpoint::store::DEFAULT_COMPACTION_BUDGET_BYTES`]).
    pub compaction_budget_bytes: u64,
    /// Copy each committed checkpoint to this cold tier
    /// ([`crate::checkpoint::tier`]), e.g. `file:///mnt/cold/job`.
    pub cold_store: Option<String>,
    /// Copy each committed checkpoint to this second store too (another
    /// region), on its own copier: `--replica URL`.
    pub replica: Option<String>,
    /// How many of the newest checkpoints keep their files in the data dir
    /// (`--keep-local`, at least
    /// [`crate::checkpoint::store::RETAINED_CHECKPOINTS`]).
    pub keep_local: usize,
}

/// Why the sidecar failed.
#[derive(Debug, Error)]
pub enum SidecarError {
    /// The checkpoint store failed (or is locked by another sidecar).
    #[error("checkpoint sidecar: {0}")]
    Store(#[from] StoreError),
    /// An I/O operation on a path failed.
    #[error("checkpoint sidecar: {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The TCP address is not loopback.
    #[error("checkpoint sidecar: refusing to listen on non-loopback address {0} (loopback only)")]
    NotLoopback(SocketAddr),
    /// Another process answers on the socket.
    #[error("checkpoint sidecar: another process is listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The cold tier's URL is not usable.
    #[error("checkpoint sidecar: {0}")]
    Cold(#[from] crate::checkpoint::tier::BlobError),
    /// The cold tier could not be claimed, or another writer fenced this
    /// one off it.
    #[error("checkpoint sidecar: cold tier {url}: {reason}")]
    ColdEpoch {
        /// The store.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token file is unusable.
    #[error("checkpoint sidecar: token file {}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl SidecarError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The socket path of a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE_NAME)
}

/// Runs the sidecar until it is idle (with `exit_when_idle`) or fails.
#[allow(clippy::needless_pass_by_value)] // the configuration is handed over
pub fn run_sidecar(config: SidecarConfig) -> Result<(), SidecarError> {
    run_sidecar_with_metrics(config, None)
}

/// [`run_sidecar`], serving Prometheus metrics (`GET /metrics`) on
/// `metrics_addr` (loopback only) while it runs.
#[allow(clippy::needless_pass_by_value)] // the configuration is handed over
pub fn run_sidecar_with_metrics(
    config: SidecarConfig,
    metrics_addr: Option<SocketAddr>,
) -> Result<(), SidecarError> {
    let metrics = std::sync::Arc::new(SidecarMetrics::new(
        config.data_dir.join(CHECKPOINTS_DIR_NAME),
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = metrics_addr {
        let render = std::sync::Arc::clone(&metrics);
        let bound = crate::metrics::serve_text(
            addr,
            Box::new(move || render.render()),
            std::sync::Arc::clone(&stop),
        )
        .map_err(|source| SidecarError::Io {
            path: PathBuf::from(format!("--metrics-addr {addr}")),
            source,
        })?;
        tracing::info!(%bound, "sidecar metrics endpoint");
    }
    let result = server::run(&config, metrics);
    stop.store(true, std::sync::atomic::Ordering::Release);
    result
}

/// Reads the token file of `data_dir`, creating it (mode 0600, random) if it
/// does not exist.
fn ensure_token_file(data_dir: &Path) -> Result<Vec<u8>, SidecarError> {
    let path = token_path(data_dir);
    let token_err = |reason: String| SidecarError::Token {
        path: path.clone(),
        reason,
    };
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| token_err(format!("cannot read /dev/urandom: {e}")))?;
    let hex: String = random.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(hex.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(SidecarError::io(&path))?;
            crate::storage::durable::sync_dir(data_dir).map_err(|e| token_err(e.to_string()))?;
            tracing::info!(path = %path.display(), "created a sidecar token");
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(SidecarError::io(&path)(e)),
    }
    read_token_file(&path).map_err(token_err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn constant_time_eq_compares_lengths_and_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"\x00", b"\x80"));
    }

    #[test]
    fn token_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_token_file(dir.path()).unwrap();
        assert_eq!(first.len(), 2 * TOKEN_RANDOM_BYTES);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token_file(dir.path()).unwrap(), first);
        std::fs::set_permissions(
            token_path(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(
            ensure_token_file(dir.path()).is_err(),
            "a world-readable token is refused"
        );
    }
}
