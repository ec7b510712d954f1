//! The relay's counters: [`RelayStats`], the snapshot a running relay
//! reports, and the atomic counters its tasks update.

use std::sync::atomic::AtomicU64;

/// Counters of a running relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages the sink acknowledged.
    pub delivered: u64,
    /// Failed attempts that were scheduled for retry.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
    /// Batches published.
    pub batches: u64,
    /// Claims run against the outbox, those that found nothing included
    /// (each is a database transaction). A steady trickle costs about one
    /// claim per batch: a loop claims when rows of its own partitions were
    /// committed, after a full batch, at a retry and at `poll_interval`.
    pub claims: u64,
    /// Partitions held right now.
    pub partitions_held: u64,
}

/// The live counters behind [`RelayStats`], shared by the relay's tasks.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) claims: AtomicU64,
    pub(super) partitions_held: AtomicU64,
    pub(super) leases: crate::health::LeaseHealth,
}
