//! SQLite connection hooks: a commit that inserted outbox rows wakes this
//! process's relays, whichever code ran the transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqliteConnection;

use crate::wake::Wake;

/// The hook sqlx runs on every new pooled SQLite connection.
pub(super) type AfterConnect = Box<
    dyn for<'c> Fn(
            &'c mut SqliteConnection,
            sqlx::pool::PoolConnectionMetadata,
        ) -> futures::future::BoxFuture<'c, std::result::Result<(), sqlx::Error>>
        + Send
        + Sync,
>;

/// Installs SQLite hooks on every pooled connection so that a commit that
/// inserted outbox rows wakes this process's relays, whichever code ran the
/// transaction (relaybox's, or the caller's own through `Store::enqueue`).
pub(super) fn wake_on_sqlite_commit(wake: &Wake, prefix: &str) -> AfterConnect {
    let waker = wake.outbox_waker();
    let table = format!("{prefix}outbox");
    Box::new(move |conn, _| {
        let waker = waker.clone();
        let table = table.clone();
        Box::pin(async move {
            let runtime = tokio::runtime::Handle::current();
            let inserted = Arc::new(AtomicBool::new(false));
            let mut handle = conn.lock_handle().await?;
            let flag = inserted.clone();
            handle.set_update_hook(move |change| {
                if change.table == table
                    && matches!(change.operation, sqlx::sqlite::SqliteOperation::Insert)
                {
                    flag.store(true, Ordering::Relaxed);
                }
            });
            let flag = inserted.clone();
            handle.set_rollback_hook(move || flag.store(false, Ordering::Relaxed));
            handle.set_commit_hook(move || {
                if inserted.swap(false, Ordering::Relaxed) {
                    // The hook runs just before the commit completes; wake a moment later.
                    let waker = waker.clone();
                    runtime.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        waker.wake();
                    });
                }
                true
            });
            Ok(())
        })
    })
}
