//! The sidecar phase: start the checkpoint sidecar (process 0, unless one
//! was given with `--sidecar`) or reach it, and say hello.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use super::{weir_binary, Place, SIDECAR_TIMEOUT};
use crate::checkpoint::client::{SidecarAddress, SidecarClient};
use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::transport::Hello;
use crate::run::{RunError, RunOptions};

/// The connection to the sidecar (checkpoints on), and the sidecar this
/// process started, if any.
pub(super) struct Sidecar {
    /// Connected and welcomed.
    pub(super) client: Option<Arc<SidecarClient>>,
    /// Started by this process (waited for at the end).
    pub(super) child: Option<Child>,
}

/// Starts or reaches the sidecar and says hello, as resuming from
/// `restored`.
pub(super) fn start(
    options: &RunOptions,
    place: Place,
    restored: Option<&CommitRecord>,
) -> Result<Sidecar, RunError> {
    let mut sidecar_child: Option<Child> = None;
    let Some(c) = options.checkpoint.as_ref() else {
        return Ok(Sidecar {
            client: None,
            child: None,
        });
    };
    let address = if let Some(spec) = &c.sidecar {
        SidecarAddress::parse(spec, &options.data_dir)?
    } else {
        if place.process == 0 {
            sidecar_child = Some(spawn_sidecar(
                &options.data_dir,
                (c.cold_store.as_deref(), c.replica.as_deref()),
                c.keep_local,
            )?);
        }
        SidecarAddress::Unix(options.data_dir.join("sidecar.sock"))
    };
    let hello = Hello {
        token: Vec::new(),
        process: place.process as u32,
        workers_total: place.workers_total as u32,
        query_fingerprint: options.query.fingerprint(),
        // The same in every process of a run (they restore the same
        // checkpoint) and newer than any earlier run that committed.
        epoch: restored.map_or(1, |r| r.checkpoint_id + 1),
        restored_from: restored.map(|r| r.checkpoint_id),
    };
    // A sidecar started here that exits before it listens (killed, or it
    // refused the data dir) ends the wait at once.
    let child_gone = || {
        let status = sidecar_child.as_mut()?.try_wait();
        match status {
            Ok(Some(status)) => Some(format!(
                "the sidecar it started exited ({status}) before listening"
            )),
            Ok(None) => None,
            Err(e) => Some(format!("cannot check on the sidecar it started: {e}")),
        }
    };
    // Only a sidecar run separately can be restarted by hand.
    let reconnect_for = (c.sidecar.is_some() && c.sidecar_reconnect_ms > 0)
        .then(|| Duration::from_millis(c.sidecar_reconnect_ms));
    let client = SidecarClient::connect_while(
        &address,
        &hello,
        (SIDECAR_TIMEOUT, reconnect_for),
        child_gone,
    )?;
    Ok(Sidecar {
        client: Some(Arc::new(client)),
        child: sidecar_child,
    })
}

/// Starts `weir sidecar` for `data_dir` as a child of this process (same
/// process group, so a kill of the group takes both).
fn spawn_sidecar(
    data_dir: &Path,
    (cold_store, replica): (Option<&str>, Option<&str>),
    keep_local: usize,
) -> Result<Child, RunError> {
    let exe = weir_binary().ok_or_else(|| {
        RunError::Usage("cannot find the weir binary to start the sidecar (set WEIR_BIN)".into())
    })?;
    let mut command = Command::new(&exe);
    command
        .args(["sidecar", "--exit-when-idle", "--data-dir"])
        .arg(data_dir);
    if let Some(url) = cold_store {
        command.args(["--cold-store", url]);
    }
    if let Some(url) = replica {
        command.args(["--replica", url]);
    }
    command.args(["--keep-local", &keep_local.to_string()]);
    command.spawn().map_err(|e| {
        RunError::Usage(format!(
            "cannot start the checkpoint sidecar {}: {e}",
            exe.display()
        ))
    })
}
