//! The soak's engine: a `weir run` process tailing the log with
//! checkpoints (and the sidecar it starts as its child), started, killed
//! and restarted without stopping the load: a kill only starts a restart,
//! which [`Engine::poll`] completes once the old process is gone. Dropped,
//! it kills its process group, so a failed soak leaves nothing running.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::latency::samplers::free_loopback_port;

/// How long an engine may outlive its killed sidecar before it is killed too
/// (decision 27: it ends its run once it notices).
const ENGINE_AFTER_SIDECAR_MAX: Duration = Duration::from_secs(60);

/// The engine: `weir run` tailing the log, restarted after each kill.
pub(super) struct Engine {
    pub(super) weir: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) stderr: PathBuf,
    child: Option<Child>,
    metrics: Option<std::net::SocketAddr>,
    /// A kill happened and the engine is to be started again once the old
    /// process has exited; past this moment it is killed outright.
    restart_by: Option<Instant>,
}

impl Engine {
    /// An engine not started yet.
    pub(super) fn new(weir: PathBuf, args: Vec<String>, stderr: PathBuf) -> Self {
        Engine {
            weir,
            args,
            stderr,
            child: None,
            metrics: None,
            restart_by: None,
        }
    }

    pub(super) fn start(&mut self) -> Result<()> {
        let stderr = self.stderr_file()?;
        self.metrics = free_loopback_port();
        let mut args = self.args.clone();
        if let Some(addr) = self.metrics {
            args.extend(["--metrics-addr".to_owned(), addr.to_string()]);
        }
        self.child = Some(
            Command::new(&self.weir)
                .args(&args)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .context("starting weir run")?,
        );
        Ok(())
    }

    /// The file the engine's runs write their stderr to, for appending.
    pub(super) fn stderr_file(&self) -> Result<std::fs::File> {
        crate::append_file(&self.stderr)
    }

    /// The running engine's pid and metrics address (none while restarting).
    pub(super) fn running(&self) -> Option<(u32, Option<std::net::SocketAddr>)> {
        if self.restart_by.is_some() {
            return None;
        }
        self.child.as_ref().map(|c| (c.id(), self.metrics))
    }

    /// The pid of the sidecar the engine started (its child).
    pub(super) fn sidecar_pid(&self) -> Option<String> {
        let (pid, _) = self.running()?;
        crate::sidecar_child_of(pid)
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self
            .child
            .as_mut()
            .map(Child::try_wait)
            .transpose()?
            .flatten())
    }

    /// Completes a pending restart; fails if the engine exited although
    /// nothing killed it.
    pub(super) fn poll(&mut self) -> Result<()> {
        match self.restart_by {
            Some(deadline) => {
                let exited = self.child.is_none() || self.exited()?.is_some();
                if exited || Instant::now() > deadline {
                    if !exited {
                        eprintln!("soak: the engine outlived its sidecar by a minute: killing it");
                    }
                    self.kill_group()?;
                    self.restart_by = None;
                    self.start()?;
                }
            }
            None => {
                if let Some(status) = self.exited()? {
                    bail!(
                        "the engine exited by itself ({status}); {}",
                        crate::stderr_tail(&self.stderr, 30)
                    );
                }
            }
        }
        Ok(())
    }

    /// `kill -9` of the process group, and the wait for it.
    pub(super) fn kill_group(&mut self) -> Result<()> {
        self.child.take().map_or(Ok(()), crate::kill_process_group)
    }

    /// `kill -9` of the engine's process group; it restarts at the next poll.
    pub(super) fn kill_engine(&mut self) -> Result<()> {
        self.kill_group()?;
        self.restart_by = Some(Instant::now());
        Ok(())
    }

    /// `kill -9` of the sidecar (waiting up to 2 minutes for it to exist);
    /// the engine then ends (decision 27) and restarts at a later poll.
    pub(super) fn kill_sidecar(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let pid = loop {
            if let Some(pid) = self.sidecar_pid() {
                break pid;
            }
            self.poll()?;
            anyhow::ensure!(Instant::now() < deadline, "no sidecar within 2 minutes");
            std::thread::sleep(Duration::from_millis(20));
        };
        Command::new("kill").args(["-9", &pid]).status()?;
        self.restart_by = Some(Instant::now() + ENGINE_AFTER_SIDECAR_MAX);
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.kill_group();
    }
}
