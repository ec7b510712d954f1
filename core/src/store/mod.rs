//! The store: one handle over PostgreSQL or SQLite that owns the connection
//! pool, the schema and every query relaybox runs. The dialect modules
//! (`postgres`, `sqlite`) hold the SQL; the others hold what both share.
//!
//! Modules: `options` (settings), `connect` (URLs, opening the pool),
//! `sqlite_hooks` (wake-ups on SQLite commits), `rows` (the rows returned),
//! `columns` (shared column encodings), `decode` (reading either dialect's
//! rows alike), `enqueue` (writing through the
//! caller's connection), `host` (statements for host-language drivers),
//! `dispatch` (operations run alike on either dialect), `lease` (relay
//! leases), `claim` (relay batches), `scope` (statements of relays serving
//! some topics), `statements` (the SQL the relay runs on PostgreSQL, public
//! for `EXPLAIN`), `tls` (PostgreSQL TLS).

/// Runs the dialect module's function `$f` of the same name for the store's
/// pool: `on_dialect!(store, f(a, b))` is `postgres::f(pool, sql, a, b)` or
/// `sqlite::f(pool, sql, a, b)`, awaited.
macro_rules! on_dialect {
    ($store:expr, $f:ident($($arg:expr),*)) => {
        match $store.pool()? {
            Pool::Postgres(pool, sql) => postgres::$f(pool, sql $(, $arg)*).await,
            Pool::Sqlite(pool, sql) => sqlite::$f(pool, sql $(, $arg)*).await,
        }
    };
}

mod claim;
mod columns;
mod connect;
mod decode;
mod dispatch;
mod enqueue;
mod host;
mod lease;
mod options;
mod postgres;
mod rows;
mod scope;
mod sqlite;
mod sqlite_hooks;
pub mod statements;
pub(crate) mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::partition;
use crate::redact::DatabaseUrl;
use crate::schema::Dialect;
use crate::validate::Limits;
use crate::wake::Wake;

pub(crate) use claim::{split_claimed, Claim, ClaimHold, Completion, Slice};
pub(crate) use columns::{headers_json, secs};
pub(crate) use enqueue::KeyTaker;
pub use enqueue::{OutboxConnection, Written};
pub(crate) use host::{host_insert_params, host_insert_sql};
pub use host::{InboxStatement, InsertStatement, Placeholders, HOST_BATCH_MAX};
pub(crate) use lease::{LeaseSession, LeaseView};
pub use options::StoreOptions;
pub(crate) use postgres::{
    inbox_insert as pg_inbox_insert, savepoint_inbox_insert as pg_savepoint_inbox_insert, PgSql,
};
pub use rows::{
    ConsumerPosition, DeadLetter, DeadLetterFilter, DeadLetterQuery, LeaseOwner, LogEntry,
    OutboxRow, ParkedKey, Status, TopicBacklog, PARKED_KEYS_SHOWN,
};
pub(crate) use sqlite::{inbox_insert as sqlite_inbox_insert, SqliteSql};

/// The store's pool with the statements of its dialect.
#[derive(Clone)]
pub(crate) enum Pool {
    Postgres(PgPool, Arc<PgSql>),
    Sqlite(SqlitePool, Arc<SqliteSql>),
}

struct StoreInner {
    url: DatabaseUrl,
    pool: Pool,
    options: StoreOptions,
    limits: Limits,
    partitions: OnceCell<u32>,
    wake: Wake,
    closed: AtomicBool,
    shutdown: CancellationToken,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One handle over a PostgreSQL or SQLite database holding the relaybox tables.
///
/// Cheap to clone (all clones share one pool), `Send + Sync`. The outbox side:
/// [`enqueue`](Store::enqueue) into your own sqlx transaction, or
/// [`begin`](Store::begin) an owned [`Transaction`](crate::Transaction).
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
    /// The pool with the statements of a relay serving some topics only
    /// (see [`Store::for_topics`]); `None` for every topic.
    scoped: Option<Arc<Pool>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.inner.url)
            .field("dialect", &self.dialect())
            .field("table_prefix", &self.inner.options.table_prefix)
            .finish()
    }
}

impl Store {
    /// The database URL, redacted when displayed.
    pub fn url(&self) -> &DatabaseUrl {
        &self.inner.url
    }

    /// PostgreSQL or SQLite.
    pub fn dialect(&self) -> Dialect {
        match self.inner.pool {
            Pool::Postgres(..) => Dialect::Postgres,
            Pool::Sqlite(..) => Dialect::Sqlite,
        }
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The message limits applied on enqueue.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The PostgreSQL pool, to run your own queries (None on SQLite).
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.inner.pool {
            Pool::Postgres(p, _) => Some(p),
            Pool::Sqlite(..) => None,
        }
    }

    /// The SQLite pool, to run your own queries (None on PostgreSQL).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.inner.pool {
            Pool::Sqlite(p, _) => Some(p),
            Pool::Postgres(..) => None,
        }
    }

    pub(crate) fn pool(&self) -> Result<&Pool> {
        self.check_open()?;
        Ok(self.scoped.as_deref().unwrap_or(&self.inner.pool))
    }

    /// Wake-ups for new outbox rows (same process, or any process on PostgreSQL).
    pub(crate) fn subscribe_outbox(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.wake.outbox()
    }

    /// A sum that moves whenever outbox rows of one of `partitions` are
    /// announced (see [`OutboxMarks`](crate::wake::OutboxMarks)): a relay
    /// loop claims after a wake-up only when its partitions' sum moved.
    pub(crate) fn outbox_stamp(&self, partitions: impl IntoIterator<Item = u32>) -> u64 {
        self.inner.wake.outbox_marks().stamp(partitions)
    }

    /// Wakes the relays of every process for committed outbox rows of `partitions`.
    pub(crate) fn outbox_changed_in(&self, partitions: &[u32]) {
        self.inner.wake.outbox_changed_in(partitions);
    }

    /// Wake-ups for new log entries (same process, or any process on PostgreSQL).
    pub(crate) fn subscribe_log(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.wake.log()
    }

    /// Tells relays that outbox rows were committed: those of this process at
    /// once and, on PostgreSQL, those of other processes through a NOTIFY.
    /// relaybox does this itself after its own commits; call it after
    /// committing rows that your own driver wrote with
    /// [`insert_statement`](Store::insert_statement). Relays that are not
    /// told find the rows at their next `poll_interval`.
    pub fn wake_relays(&self) {
        self.inner.wake.outbox_changed();
    }

    /// A statement to run inside your own transaction after writing outbox
    /// rows with [`insert_statement`](Store::insert_statement): when that
    /// transaction commits, relays of every process wake (PostgreSQL
    /// `NOTIFY`, delivered only on commit). `None` on SQLite, where relays of
    /// other processes find rows at their next `poll_interval`.
    pub fn wake_statement(&self) -> Option<String> {
        match self.dialect() {
            Dialect::Postgres => Some(format!("NOTIFY {}outbox", self.options().table_prefix)),
            Dialect::Sqlite => None,
        }
    }

    /// Fails with [`Error::Closed`] once [`close`](Store::close) was called.
    pub fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed { what: "store" })
        } else {
            Ok(())
        }
    }

    /// Whether [`close`](Store::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Closes the pool; later calls on any clone fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        match &self.inner.pool {
            Pool::Postgres(p, _) => p.close().await,
            Pool::Sqlite(p, _) => p.close().await,
        }
    }

    /// Applies every embedded migration not yet applied, and creates the lease
    /// rows of the configured partition count on first run. Idempotent and safe
    /// to run from several processes at once.
    pub async fn migrate(&self) -> Result<()> {
        let options = &self.inner.options;
        match self.pool()? {
            Pool::Postgres(pool, _) => {
                postgres::migrate(pool, &options.table_prefix, options.partitions).await
            }
            Pool::Sqlite(pool, _) => {
                sqlite::migrate(pool, &options.table_prefix, options.partitions).await
            }
        }
    }

    /// The partition count, read once from the lease table.
    pub async fn partitions(&self) -> Result<u32> {
        if let Some(n) = self.cached_partitions() {
            return Ok(n);
        }
        let n = on_dialect!(self, partition_count())?;
        self.cache_partitions(n)
    }

    /// Checks the store is open and every message is valid; nothing is written.
    pub(crate) fn validate_messages(&self, messages: &[Message]) -> Result<()> {
        self.check_open()?;
        for m in messages {
            self.inner.limits.check(m)?;
        }
        Ok(())
    }

    pub(crate) fn cached_partitions(&self) -> Option<u32> {
        self.inner.partitions.get().copied()
    }

    pub(crate) fn cache_partitions(&self, n: u32) -> Result<u32> {
        if n == 0 {
            return Err(Error::Schema {
                reason: "the lease table is empty; run `relaybox migrate` (Store::migrate) first"
                    .into(),
            });
        }
        let _ = self.inner.partitions.set(n);
        self.inner.wake.outbox_marks().size(n);
        Ok(n)
    }

    pub(crate) fn place(messages: &[Message], n: u32) -> Vec<u32> {
        messages
            .iter()
            .map(|m| partition::partition_for(m.key.as_deref(), &m.id, n))
            .collect()
    }

    /// Validates messages and computes their partitions; nothing is written.
    pub(crate) async fn prepare(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.validate_messages(messages)?;
        Ok(Store::place(messages, self.partitions().await?))
    }

    /// Begins an owned transaction for your business writes and enqueues.
    pub async fn begin(&self) -> Result<crate::Transaction> {
        crate::transaction::Transaction::begin(self.clone()).await
    }

    /// Whether `other` is this very store (same pool), so that one
    /// transaction can span what both do.
    pub(crate) fn same_store(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
