//! The sidecar's copiers: one to the cold tier (`--cold-store`) and one to
//! the replica (`--replica`), each claiming its store's next epoch at
//! start ([`crate::checkpoint::tier::epoch`]) and offered every commit,
//! both reading the data dir through one [`LocalSource`], which the store
//! hands each delta file it writes.

use std::sync::Arc;

use super::metrics::SidecarMetrics;
use super::{SidecarConfig, SidecarError, CHECKPOINTS_DIR_NAME};
use crate::checkpoint::store::{CheckpointStore, WrittenFileHook};
use crate::checkpoint::tier::source::{LocalSource, SourceKey};
use crate::checkpoint::tier::{open_cold_store, ColdCopier, CopierRole};

/// The copiers of the cold tier and the replica, each having claimed its
/// store's next epoch (a fenced data dir is refused here).
pub(super) fn start_copiers(
    config: &SidecarConfig,
    store: &mut CheckpointStore,
    metrics: &SidecarMetrics,
) -> Result<Vec<Arc<ColdCopier>>, SidecarError> {
    let store_dir = config.data_dir.join(CHECKPOINTS_DIR_NAME);
    let writer = format!(
        "pid {} with data dir {}",
        std::process::id(),
        config.data_dir.display()
    );
    let fence = store.commits().last().map_or(0, |r| r.checkpoint_id);
    let mut copiers = Vec::new();
    let stores = usize::from(config.cold_store.is_some()) + usize::from(config.replica.is_some());
    let source = LocalSource::new(stores);
    if stores > 0 {
        let _ = metrics.copy_source.set(Arc::clone(&source));
        let offered = Arc::clone(&source);
        store.on_file_written(WrittenFileHook::new(move |meta, bytes| {
            offered.offer(SourceKey::File(meta.name.clone(), meta.crc32c), bytes);
        }));
    }
    for (role, url, figures) in [
        (CopierRole::Cold, &config.cold_store, &metrics.cold),
        (CopierRole::Replica, &config.replica, &metrics.replica),
    ] {
        let Some(url) = url else { continue };
        let copier = ColdCopier::start(
            open_cold_store(url)?,
            (
                store_dir.clone(),
                config.data_dir.join(crate::log::LOG_DIR_NAME),
                Arc::clone(&source),
            ),
            (role, fence),
            &writer,
        )
        .map_err(|reason| SidecarError::ColdEpoch {
            url: url.clone(),
            reason,
        })?;
        let _ = figures.set(Arc::clone(&copier.figures));
        if let Some(last) = store.commits().last() {
            // A restart copies what the last run may not have.
            copier.offer(last);
        }
        copiers.push(Arc::new(copier));
    }
    Ok(copiers)
}
