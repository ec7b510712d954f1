//! The relay's background purges of retained rows: sent outbox rows,
//! released idempotency keys, old log rows and old dead letters, run from
//! the lease loop about once a minute.

use super::worker::Worker;
use super::LOG_TARGET;
use crate::error::Result;

impl Worker {
    /// Runs every purge the configuration asks for; a failure is logged.
    pub(super) async fn purge_retained(&self) {
        if let Some(retention) = self.config.retention {
            if let Err(e) = self.store.purge_sent(retention).await {
                tracing::warn!(target: LOG_TARGET, error = %e, "relaybox purge of sent rows failed");
            }
        }
        let window = self.config.idempotency_window;
        if let Err(e) = self.store.purge_idempotency_keys(window).await {
            tracing::warn!(target: LOG_TARGET, error = %e, "relaybox purge of idempotency keys failed");
        }
        if let Some(retention) = self.config.log_retention {
            let keep_unread = self.config.log_keep_unread;
            purge_in_batches("log", || {
                self.store.purge_log(retention, keep_unread, PURGE_BATCH)
            })
            .await;
        }
        if let Some(retention) = self.config.dead_letter_retention {
            purge_in_batches("dead letters", || {
                self.store.purge_old_dead_letters(retention, PURGE_BATCH)
            })
            .await;
        }
    }
}

/// Rows deleted per statement by the relay's background purges.
const PURGE_BATCH: u32 = 1_000;

/// Statements per purge tick: a larger backlog is deleted over later ticks,
/// so one tick never holds the database for long.
const PURGE_BATCHES_PER_TICK: u32 = 10;

/// Runs `purge` (deleting at most [`PURGE_BATCH`] rows) until it deletes
/// fewer, at most [`PURGE_BATCHES_PER_TICK`] times; a failure is logged.
async fn purge_in_batches<F, Fut>(what: &str, purge: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    for _ in 0..PURGE_BATCHES_PER_TICK {
        match purge().await {
            Ok(n) if n < u64::from(PURGE_BATCH) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, error = %e, "relaybox purge of {what} failed");
                break;
            }
        }
    }
}
