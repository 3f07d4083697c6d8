//! The soak's engine: a `weir run` process tailing the log with
//! checkpoints (and the sidecar it starts), started, killed and restarted.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::latency::samplers::free_loopback_port;

/// The engine: `weir run` tailing the log, restarted after each kill.
pub(super) struct Engine {
    pub(super) weir: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) data: PathBuf,
    pub(super) stderr: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) metrics: Option<std::net::SocketAddr>,
}

impl Engine {
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
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .with_context(|| format!("opening {}", self.stderr.display()))
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(super) fn sidecar_pattern(&self) -> String {
        format!(
            "sidecar --exit-when-idle --data-dir {}",
            self.data.display()
        )
    }

    pub(super) fn sidecar_pid(&self) -> Option<String> {
        let out = Command::new("pgrep")
            .args(["-f", &self.sidecar_pattern()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_owned)
    }

    /// Fails if the engine exited although nothing killed it.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .map(Child::try_wait)
            .transpose()?
            .flatten()
        {
            bail!(
                "the engine exited by itself ({status}); see {}",
                self.stderr.display()
            );
        }
        Ok(())
    }

    /// `kill -9` of the process group, and the wait for it.
    pub(super) fn kill_group(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// `kill -9` of the sidecar (waiting up to 2 minutes for it to exist);
    /// the engine then ends (decision 27), waited for up to a minute.
    pub(super) fn kill_sidecar(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let pid = loop {
            if let Some(pid) = self.sidecar_pid() {
                break pid;
            }
            self.check_alive()?;
            anyhow::ensure!(Instant::now() < deadline, "no sidecar within 2 minutes");
            std::thread::sleep(Duration::from_millis(20));
        };
        Command::new("kill").args(["-9", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .child
            .as_mut()
            .map(Child::try_wait)
            .transpose()?
            .flatten()
            .is_none()
        {
            if Instant::now() > deadline {
                eprintln!("soak: the engine outlived its sidecar by a minute: killing it");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_group()
    }
}
