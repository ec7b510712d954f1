//! `Outbox`: an open store (PostgreSQL or SQLite) holding the relaybox
//! tables; begins the transactions that write events with business rows.

use std::sync::Arc;

use relaybox::{Store, StoreOptions};

use crate::admin::{self, DeadLetter, OutboxStatus};
use crate::bridge::{blocking, guard, run};
use crate::convert::parse_json;
use crate::error::RelayboxError;
use crate::transaction::Transaction;

/// An open outbox: a connection pool plus the relaybox tables.
#[derive(uniffi::Object)]
pub struct Outbox {
    pub(crate) store: Store,
}

fn options(options_json: Option<String>) -> relaybox::Result<StoreOptions> {
    match options_json {
        None => Ok(StoreOptions::default()),
        Some(text) => StoreOptions::from_json(parse_json("store options", &text)?),
    }
}

async fn connect(url: String, options: StoreOptions, migrate: bool) -> relaybox::Result<Outbox> {
    let store = Store::connect_with(&url, options).await?;
    if migrate {
        store.migrate().await?;
    }
    Ok(Outbox { store })
}

async fn dead_letters(store: &Store, limit: u32) -> relaybox::Result<Vec<DeadLetter>> {
    let letters = store.dead_letters(limit).await?;
    Ok(letters.into_iter().map(DeadLetter::from).collect())
}

#[uniffi::export]
impl Outbox {
    /// Connects to `url` (`postgres://...` or `sqlite:...`). `optionsJson` is
    /// a JSON object of store options (e.g. `{"table_prefix": "app_"}`);
    /// `migrate` applies the schema first.
    #[uniffi::constructor(default(options_json = None, migrate = false))]
    pub async fn open(
        url: String,
        options_json: Option<String>,
        migrate: bool,
    ) -> Result<Arc<Self>, RelayboxError> {
        let options = guard(|| options(options_json))?;
        run(async move { connect(url, options, migrate).await.map(Arc::new) }).await
    }

    /// `open`, blocking the calling thread.
    #[uniffi::constructor(default(options_json = None, migrate = false))]
    pub fn open_blocking(
        url: String,
        options_json: Option<String>,
        migrate: bool,
    ) -> Result<Arc<Self>, RelayboxError> {
        let options = guard(|| options(options_json))?;
        blocking(async move { connect(url, options, migrate).await.map(Arc::new) })
    }

    /// The database URL with its password redacted.
    pub fn url(&self) -> String {
        self.store.url().to_string()
    }

    /// The table prefix.
    pub fn table_prefix(&self) -> String {
        self.store.options().table_prefix.clone()
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), RelayboxError> {
        let store = self.store.clone();
        run(async move { store.migrate().await }).await
    }

    /// `migrate`, blocking the calling thread.
    pub fn migrate_blocking(&self) -> Result<(), RelayboxError> {
        blocking(self.store.migrate())
    }

    /// Begins a transaction: run business SQL with `execute`, add events with
    /// `enqueue`, then `commit` (or `rollback`).
    pub async fn begin(&self) -> Result<Arc<Transaction>, RelayboxError> {
        let store = self.store.clone();
        run(async move { store.begin().await.map(Transaction::owned) }).await
    }

    /// `begin`, blocking the calling thread.
    pub fn begin_blocking(&self) -> Result<Arc<Transaction>, RelayboxError> {
        blocking(async { self.store.begin().await.map(Transaction::owned) })
    }

    /// Undelivered outbox rows.
    pub async fn pending_count(&self) -> Result<i64, RelayboxError> {
        let store = self.store.clone();
        run(async move { store.pending_count().await }).await
    }

    /// `pendingCount`, blocking the calling thread.
    pub fn pending_count_blocking(&self) -> Result<i64, RelayboxError> {
        blocking(self.store.pending_count())
    }

    /// Backlog per topic, dead letters in total, partitions, lease owners
    /// and live relays.
    pub async fn status(&self) -> Result<OutboxStatus, RelayboxError> {
        let store = self.store.clone();
        run(async move { store.status().await.map(OutboxStatus::from) }).await
    }

    /// `status`, blocking the calling thread.
    pub fn status_blocking(&self) -> Result<OutboxStatus, RelayboxError> {
        blocking(async { self.store.status().await.map(OutboxStatus::from) })
    }

    /// Up to `limit` dead letters, oldest failure first.
    #[uniffi::method(default(limit = 100))]
    pub async fn dead_letters(&self, limit: i32) -> Result<Vec<DeadLetter>, RelayboxError> {
        let limit = guard(|| admin::limit(limit))?;
        let store = self.store.clone();
        run(async move { dead_letters(&store, limit).await }).await
    }

    /// `deadLetters`, blocking the calling thread.
    #[uniffi::method(default(limit = 100))]
    pub fn dead_letters_blocking(&self, limit: i32) -> Result<Vec<DeadLetter>, RelayboxError> {
        let limit = guard(|| admin::limit(limit))?;
        blocking(dead_letters(&self.store, limit))
    }

    /// Puts dead letters back into the outbox (same id, attempts reset) so
    /// the relay delivers them again: every one for `ids = null`, those of
    /// the given message ids otherwise. Returns how many went back.
    #[uniffi::method(default(ids = None))]
    pub async fn retry_dead_letters(&self, ids: Option<Vec<String>>) -> Result<i64, RelayboxError> {
        let filter = guard(|| admin::filter(ids))?;
        let store = self.store.clone();
        run(async move { store.retry_dead_letters(&filter).await.map(admin::count) }).await
    }

    /// `retryDeadLetters`, blocking the calling thread.
    #[uniffi::method(default(ids = None))]
    pub fn retry_dead_letters_blocking(
        &self,
        ids: Option<Vec<String>>,
    ) -> Result<i64, RelayboxError> {
        let filter = guard(|| admin::filter(ids))?;
        blocking(async {
            self.store
                .retry_dead_letters(&filter)
                .await
                .map(admin::count)
        })
    }

    /// Deletes dead letters for good: every one for `ids = null`, those of
    /// the given message ids otherwise. Returns how many were deleted.
    #[uniffi::method(default(ids = None))]
    pub async fn purge_dead_letters(&self, ids: Option<Vec<String>>) -> Result<i64, RelayboxError> {
        let filter = guard(|| admin::filter(ids))?;
        let store = self.store.clone();
        run(async move { store.purge_dead_letters(&filter).await.map(admin::count) }).await
    }

    /// `purgeDeadLetters`, blocking the calling thread.
    #[uniffi::method(default(ids = None))]
    pub fn purge_dead_letters_blocking(
        &self,
        ids: Option<Vec<String>>,
    ) -> Result<i64, RelayboxError> {
        let filter = guard(|| admin::filter(ids))?;
        blocking(async {
            self.store
                .purge_dead_letters(&filter)
                .await
                .map(admin::count)
        })
    }

    /// Closes the connection pool of this outbox and of every relay and
    /// consumer using it; later calls fail with `RelayboxException.Closed`.
    pub async fn shutdown(&self) -> Result<(), RelayboxError> {
        let store = self.store.clone();
        run(async move {
            store.close().await;
            Ok(())
        })
        .await
    }

    /// `shutdown`, blocking the calling thread.
    pub fn shutdown_blocking(&self) -> Result<(), RelayboxError> {
        blocking(async {
            self.store.close().await;
            Ok(())
        })
    }
}
