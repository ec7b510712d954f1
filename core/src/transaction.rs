//! An owned database transaction: the caller's business writes and enqueues
//! commit or roll back together. Used directly by bindings, which cannot hand
//! over an sqlx transaction, and by the consumer for the handler's writes.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow, PgTypeInfo};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column, PgConnection, Postgres, Row, Sqlite, SqliteConnection, TypeInfo,
    ValueRef,
};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::store::{Pool, Store};
use crate::value::{Row as ValueRow, Value};

pub(crate) enum TxState {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

/// An open transaction on a [`Store`].
///
/// Clones share the one transaction (so a binding can hand it to host code);
/// every method takes `&self`. After [`commit`](Transaction::commit) or
/// [`rollback`](Transaction::rollback) every clone fails with [`Error::Closed`].
/// When the last clone is dropped uncommitted, the transaction rolls back.
#[derive(Clone)]
pub struct Transaction {
    store: Store,
    state: Arc<Mutex<Option<TxState>>>,
    /// A statement failed on PostgreSQL: the server aborted the transaction.
    aborted: Arc<std::sync::atomic::AtomicBool>,
    /// The partitions of the outbox rows written: their relays are woken
    /// after the commit.
    enqueued: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("store", &self.store)
            .finish()
    }
}

/// Exclusive access to the connection of an open [`Transaction`], for running
/// sqlx queries directly.
pub struct TxConnection<'a> {
    guard: MutexGuard<'a, Option<TxState>>,
}

impl TxConnection<'_> {
    /// The PostgreSQL connection (None on SQLite).
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self.guard.as_mut() {
            Some(TxState::Postgres(tx)) => Some(&mut **tx),
            _ => None,
        }
    }

    /// The SQLite connection (None on PostgreSQL).
    pub fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        match self.guard.as_mut() {
            Some(TxState::Sqlite(tx)) => Some(&mut **tx),
            _ => None,
        }
    }
}

impl Transaction {
    pub(crate) async fn begin(store: Store) -> Result<Transaction> {
        let state = match store.pool()? {
            Pool::Postgres(pool, _) => TxState::Postgres(pool.begin().await?),
            // Take the write lock up front: a deferred transaction that reads
            // first could not upgrade later without failing.
            Pool::Sqlite(pool, _) => TxState::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        };
        Ok(Transaction {
            store,
            state: Arc::new(Mutex::new(Some(state))),
            aborted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            enqueued: Arc::default(),
        })
    }

    /// The store this transaction belongs to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn open(&self) -> Result<MutexGuard<'_, Option<TxState>>> {
        let guard = self.state.lock().await;
        if guard.is_none() {
            return Err(Error::Closed {
                what: "transaction",
            });
        }
        Ok(guard)
    }

    /// Direct access to the connection, to run sqlx queries in this transaction.
    pub async fn connection(&self) -> Result<TxConnection<'_>> {
        Ok(TxConnection {
            guard: self.open().await?,
        })
    }

    /// Runs a statement with parameters (`$1`.. on PostgreSQL, `?1`.. or `?` on SQLite);
    /// returns the number of rows affected.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut guard = self.open().await?;
        let done = match guard.as_mut().expect("checked open") {
            TxState::Postgres(tx) => {
                let r = bind_pg(sqlx::query(AssertSqlSafe(sql)), params)?
                    .execute(&mut **tx)
                    .await
                    .map_err(Error::from);
                self.note(&r);
                r?.rows_affected()
            }
            TxState::Sqlite(tx) => bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        };
        Ok(done)
    }

    /// Remembers a database error: on PostgreSQL it aborts the transaction.
    fn note<T>(&self, r: &Result<T>) {
        if let Err(Error::Database { .. }) = r {
            self.aborted
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Runs a query with parameters and returns all rows.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<ValueRow>> {
        let mut guard = self.open().await?;
        match guard.as_mut().expect("checked open") {
            TxState::Postgres(tx) => {
                let r = bind_pg(sqlx::query(AssertSqlSafe(sql)), params)?
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(Error::from);
                self.note(&r);
                r?.iter().map(pg_row).collect()
            }
            TxState::Sqlite(tx) => bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(sqlite_row)
                .collect(),
        }
    }

    /// Writes a message to the outbox in this transaction. Validated first:
    /// an invalid message writes nothing and the transaction stays usable.
    ///
    /// A message with an idempotency key already taken on its topic writes
    /// nothing; the id returned is then the id of the message that took it.
    pub async fn enqueue(&self, message: Message) -> Result<Uuid> {
        let ids = self.enqueue_batch(std::slice::from_ref(&message)).await?;
        Ok(ids[0])
    }

    /// Writes many messages in one statement; all are validated before any is written.
    pub async fn enqueue_batch(&self, messages: &[Message]) -> Result<Vec<Uuid>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let messages = &*crate::telemetry::stamp(messages);
        self.store.validate_messages(messages)?;
        let mut guard = self.open().await?;
        let result = match guard.as_mut().expect("checked open") {
            TxState::Postgres(tx) => {
                crate::store::OutboxConnection::insert_outbox(&mut **tx, &self.store, messages)
                    .await
            }
            TxState::Sqlite(tx) => {
                crate::store::OutboxConnection::insert_outbox(&mut **tx, &self.store, messages)
                    .await
            }
        };
        self.note(&result);
        let written = result?;
        let mut enqueued = self.enqueued.lock().expect("not poisoned");
        enqueued.extend(written.partitions);
        enqueued.sort_unstable();
        enqueued.dedup();
        Ok(written.ids)
    }

    /// Records a consumed message id in the inbox; false if the group had it already.
    pub(crate) async fn inbox_insert(&self, group: &str, message_id: Uuid) -> Result<bool> {
        let mut guard = self.open().await?;
        match (guard.as_mut().expect("checked open"), self.store.pool()?) {
            (TxState::Postgres(tx), Pool::Postgres(_, sql)) => {
                crate::store::pg_inbox_insert(tx, sql, group, message_id).await
            }
            (TxState::Sqlite(tx), Pool::Sqlite(_, sql)) => {
                crate::store::sqlite_inbox_insert(tx, sql, group, message_id).await
            }
            _ => Err(Error::internal("transaction of another dialect")),
        }
    }

    /// Commits. If messages were enqueued, relays wake at once.
    pub async fn commit(&self) -> Result<()> {
        let state = self.state.lock().await.take().ok_or(Error::Closed {
            what: "transaction",
        })?;
        match state {
            TxState::Postgres(tx) => {
                if self.aborted.load(std::sync::atomic::Ordering::Acquire) {
                    // COMMIT would silently roll back: say so.
                    let _ = tx.rollback().await;
                    return Err(Error::Database {
                        message: "a statement of this transaction failed, so PostgreSQL aborted it; it was rolled back".into(),
                        sql_code: Some("25P02".into()),
                        retryable: false,
                    });
                }
                tx.commit().await?
            }
            TxState::Sqlite(tx) => tx.commit().await?,
        }
        let enqueued = std::mem::take(&mut *self.enqueued.lock().expect("not poisoned"));
        if !enqueued.is_empty() {
            self.store.outbox_changed_in(&enqueued);
        }
        Ok(())
    }

    /// Rolls back: nothing written in this transaction remains, enqueued messages included.
    pub async fn rollback(&self) -> Result<()> {
        let state = self.state.lock().await.take().ok_or(Error::Closed {
            what: "transaction",
        })?;
        match state {
            TxState::Postgres(tx) => tx.rollback().await?,
            TxState::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    /// Whether commit or rollback already happened.
    pub async fn is_finished(&self) -> bool {
        self.state.lock().await.is_none()
    }

    /// Starts the savepoint that isolates one message of the consumer inside
    /// a transaction shared by several (with `release_previous`, the previous
    /// message's savepoint is released first), then records the message as
    /// [`inbox_insert`](Self::inbox_insert) does, inside it: on PostgreSQL
    /// in one round trip.
    pub(crate) async fn message_savepoint_inbox_insert(
        &self,
        release_previous: bool,
        group: &str,
        message_id: Uuid,
    ) -> Result<bool> {
        let savepoint = if release_previous {
            "RELEASE SAVEPOINT relaybox_message; SAVEPOINT relaybox_message"
        } else {
            "SAVEPOINT relaybox_message"
        };
        let mut guard = self.open().await?;
        let r = match (guard.as_mut().expect("checked open"), self.store.pool()?) {
            (TxState::Postgres(tx), Pool::Postgres(_, sql)) => {
                crate::store::pg_savepoint_inbox_insert(tx, sql, savepoint, group, message_id).await
            }
            (TxState::Sqlite(tx), Pool::Sqlite(_, sql)) => {
                match sqlx::raw_sql(savepoint).execute(&mut **tx).await {
                    Ok(_) => crate::store::sqlite_inbox_insert(tx, sql, group, message_id).await,
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(Error::internal("transaction of another dialect")),
        };
        self.note(&r);
        r
    }

    /// Undoes everything since [`message_savepoint_inbox_insert`](Self::message_savepoint_inbox_insert);
    /// the transaction is usable again, on PostgreSQL also after a failed statement.
    pub(crate) async fn rollback_to_message_savepoint(&self) -> Result<()> {
        self.raw("ROLLBACK TO SAVEPOINT relaybox_message").await?;
        self.aborted
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether a statement failed on PostgreSQL, so the transaction is aborted.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn raw(&self, sql: &'static str) -> Result<()> {
        let mut guard = self.open().await?;
        let r = match guard.as_mut().expect("checked open") {
            TxState::Postgres(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ()),
            TxState::Sqlite(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ()),
        }
        .map_err(Error::from);
        self.note(&r);
        r
    }
}

/// The SQL NULL of no declared type, so PostgreSQL infers it from context.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;
type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn bind_pg<'q>(mut q: PgQuery<'q>, params: &[Value]) -> Result<PgQuery<'q>> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(UntypedNull),
            Value::Bool(v) => q.bind(v),
            Value::Int(v) => q.bind(v),
            Value::Float(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            Value::Json(v) => q.bind(sqlx::types::Json(v)),
            Value::Uuid(v) => q.bind(v),
            Value::Timestamp(v) => q.bind(v),
        };
    }
    Ok(q)
}

fn bind_sqlite<'q>(mut q: SqliteQuery<'q>, params: &[Value]) -> SqliteQuery<'q> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(Option::<i64>::None),
            Value::Bool(v) => q.bind(v),
            Value::Int(v) => q.bind(v),
            Value::Float(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            Value::Json(v) => q.bind(v.to_string()),
            Value::Uuid(v) => q.bind(v.to_string()),
            Value::Timestamp(v) => q.bind(crate::message::micros_rfc3339::format(&v)),
        };
    }
    q
}

fn pg_row(row: &PgRow) -> Result<ValueRow> {
    let mut out = ValueRow::default();
    for (i, col) in row.columns().iter().enumerate() {
        out.columns.push(col.name().to_string());
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match col.type_info().name() {
                "BOOL" => Value::Bool(row.try_get(i)?),
                "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
                "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
                "INT8" => Value::Int(row.try_get(i)?),
                "FLOAT4" => Value::Float(row.try_get::<f32, _>(i)?.into()),
                "FLOAT8" => Value::Float(row.try_get(i)?),
                "BYTEA" => Value::Bytes(row.try_get(i)?),
                "UUID" => Value::Uuid(row.try_get(i)?),
                "JSON" | "JSONB" => Value::Json(row.try_get::<sqlx::types::Json<serde_json::Value>, _>(i)?.0),
                "TIMESTAMPTZ" => Value::Timestamp(row.try_get::<DateTime<Utc>, _>(i)?),
                "TIMESTAMP" => Value::Timestamp(row.try_get::<NaiveDateTime, _>(i)?.and_utc()),
                "DATE" => Value::Text(row.try_get::<NaiveDate, _>(i)?.to_string()),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" => Value::Text(row.try_get(i)?),
                other => {
                    return Err(Error::InvalidValue {
                        reason: format!(
                            "column {:?} has type {other}, which relaybox cannot decode; cast it to text in the query",
                            col.name()
                        ),
                    })
                }
            }
        };
        out.values.push(value);
    }
    Ok(out)
}

fn sqlite_row(row: &SqliteRow) -> Result<ValueRow> {
    let mut out = ValueRow::default();
    for (i, col) in row.columns().iter().enumerate() {
        out.columns.push(col.name().to_string());
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" => Value::Int(row.try_get(i)?),
                "REAL" => Value::Float(row.try_get(i)?),
                "BLOB" => Value::Bytes(row.try_get(i)?),
                _ => Value::Text(row.try_get(i)?),
            }
        };
        out.values.push(value);
    }
    Ok(out)
}
