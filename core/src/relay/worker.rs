//! The relay's task: one lease loop, `concurrency` batch loops and the
//! backlog sampler, run together until shutdown; then the partitions are
//! handed over.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::recovery::Recovery;
use super::stats::Counters;
use super::{RelayConfig, LOG_TARGET};
use crate::sink::Sink;
use crate::store::{Slice, Store};

/// What the relay's tasks share: the store, the sink, the settings and the
/// state the lease loop and the batch loops pass each other.
pub(super) struct Worker {
    pub(super) store: Store,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) config: RelayConfig,
    pub(super) owner: String,
    pub(super) cancel: CancellationToken,
    pub(super) counters: Arc<Counters>,
    /// The partitions this relay holds, as of the last lease refresh.
    pub(super) held: watch::Sender<Vec<u32>>,
    /// The transport's failures and recovery, shared by the batch loops.
    pub(super) recovery: Mutex<Recovery>,
    /// Bumped when rows were made due at once (the transport recovered):
    /// every batch loop claims.
    pub(super) nudge: watch::Sender<u64>,
    /// With a transactional sink: what was published per adopted partition.
    pub(super) published: super::exactly_once::Published,
}

impl Worker {
    /// Keeps the leases and runs `concurrency` batch loops until shutdown,
    /// then hands the partitions over.
    pub(super) async fn run(self) {
        let mut session = self.store.lease_session(&self.owner);
        let loops = (0..self.config.concurrency).map(|i| {
            self.batch_loop(Slice {
                index: i,
                count: self.config.concurrency,
            })
        });
        let sampler = async {
            let every = self.config.metrics_interval;
            if !every.is_zero() {
                let cancel = self.cancel.clone();
                crate::metrics::sample_backlog(self.store.clone(), every, cancel).await;
            }
        };
        tokio::join!(
            self.lease_loop(&mut session),
            futures::future::join_all(loops),
            sampler
        );
        if let Err(e) = self.store.leave(&self.owner).await {
            tracing::warn!(target: LOG_TARGET, owner = %self.owner, error = %e, "relaybox relay could not release its leases");
        }
        let held = self.counters.partitions_held.swap(0, Ordering::Relaxed);
        crate::metrics::leases_changed(held as usize, 0);
        // Only now: with the presence lock let go earlier, another relay
        // could free this one's leases while its last batches complete.
        session.close().await;
        tracing::info!(target: LOG_TARGET, owner = %self.owner, "relaybox relay stopped");
    }
}
