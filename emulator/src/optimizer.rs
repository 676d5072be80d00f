//! The background index builder: a collection that was written and then left idle for
//! [`IDLE`] gets the engine's optimisers run on it (segment merging, HNSW indexes once a
//! segment passes the indexing threshold) — without the collection's lock: Qdrant's
//! optimiser builds the new segments beside the live ones, proxies take the writes made
//! meanwhile, so requests, writes included, go on during the build (the collection's status
//! is yellow until it ends), as on a Qdrant server.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::store::Store;

/// How long a collection must go without writes before its indexes are built.
pub const IDLE: Duration = Duration::from_secs(2);

/// Start the builder; it runs until the returned task is aborted.
pub fn spawn(store: Arc<Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for handle in store.handles().await {
                match handle.optimize_if_idle(IDLE).await {
                    Ok(None) => {}
                    Ok(Some(true)) => info!(collection = %handle.name(), "optimised collection (idle after writes)"),
                    Ok(Some(false)) => debug!(collection = %handle.name(), "nothing to optimise"),
                    Err(e) => warn!(collection = %handle.name(), error = %e, "optimising the collection failed"),
                }
            }
        }
    })
}
