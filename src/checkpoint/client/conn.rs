//! Where the sidecar listens, and the socket to it (Unix or loopback TCP).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ClientError;
use crate::checkpoint::transport::token::TOKEN_FILE_NAME;

/// Where the sidecar listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SidecarAddress {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A loopback TCP address, with the file holding the shared token.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The token file (`<data_dir>/sidecar.token`).
        token_file: PathBuf,
    },
}

impl SidecarAddress {
    /// Parses `unix:/path/to/sidecar.sock` or `tcp:127.0.0.1:7000`; for TCP,
    /// the token is read from `<data_dir>/sidecar.token`.
    pub fn parse(spec: &str, data_dir: &Path) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadAddress {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = spec.strip_prefix("tcp:") {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| bad("expected tcp:IP:PORT, e.g. tcp:127.0.0.1:7000"))?;
            if !addr.ip().is_loopback() {
                return Err(bad("only loopback addresses are allowed"));
            }
            Ok(Self::Tcp {
                addr,
                token_file: data_dir.join(TOKEN_FILE_NAME),
            })
        } else {
            Err(bad("expected unix:PATH or tcp:IP:PORT"))
        }
    }
}

impl fmt::Display for SidecarAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "tcp:{addr}"),
        }
    }
}

/// A connected socket of either kind.
#[derive(Debug)]
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(super) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_nonblocking(on),
            Self::Tcp(s) => s.set_nonblocking(on),
        }
    }
    pub(super) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Tcp(s) => s.set_read_timeout(timeout),
        }
    }
    pub(super) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_write_timeout(timeout),
            Self::Tcp(s) => s.set_write_timeout(timeout),
        }
    }
    pub(super) fn shutdown(&self) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}
