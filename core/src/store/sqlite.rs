//! The SQLite dialect: SQL text and row mapping. Timestamps are integer
//! microseconds, ids hyphenated text; lists are passed as one JSON array.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use uuid::Uuid;

use super::decode::{
    backlog_from_row, dead_letter_from_row, lease_owner_from_row, log_entry_from_row,
    message_from_row, positions_from_rows, status_of, StatusParts, Stored,
};
use super::scope::LeaseScope;
use super::{
    headers_json, split_claimed, Claim, ClaimHold, Completion, ConsumerPosition, DeadLetter,
    DeadLetterFilter, DeadLetterQuery, LeaseView, LogEntry, OutboxRow, Placeholders, Slice, Status,
    PARKED_KEYS_SHOWN,
};
use crate::error::{Error, Result};
use crate::message::{to_unix_micros, Message};
use crate::schema::{self, Dialect, MIGRATIONS};
use crate::value::Value;

type Sql = Arc<str>;

/// Rows per multi-row INSERT (10 parameters each, well under SQLite's limit).
const INSERT_CHUNK: usize = 500;

/// Every statement of the SQLite store, with the table prefix applied.
pub(crate) struct SqliteSql {
    prefix: String,
    insert: Sql,
    partition_count: Sql,
    claim_rows: Sql,
    owned_partitions: Sql,
    delete_ids: Sql,
    mark_sent: Sql,
    retry: Sql,
    dead_copy: Sql,
    dead_seq: Sql,
    delete_one: Sql,
    heartbeat: Sql,
    live: Sql,
    live_owners: Sql,
    lease_view: Sql,
    renew: Sql,
    acquire: Sql,
    release_some: Sql,
    release_all: Sql,
    remove_instance: Sql,
    remove_routes: Sql,
    retry_now: Sql,
    unsent: Sql,
    dl_list: Sql,
    dl_retry: Sql,
    dl_purge: Sql,
    dl_seqs_gone: Sql,
    dl_insert: Sql,
    pub(crate) inbox_insert: Sql,
    inbox_purge: Sql,
    purge_sent: Sql,
    pos_get: Sql,
    pos_set: Sql,
    log_append: Sql,
    log_read: Sql,
    backlog: Sql,
    dl_count: Sql,
    parked: Sql,
    owners: Sql,
    pending: Sql,
    register_lane: Option<Sql>,
    seed_lane: Option<Sql>,
    served: Sql,
    /// The lane and its topics (JSON) of relays serving some topics only.
    lane: Option<(String, String)>,
}

const COLUMNS: &str =
    "id, topic, key, partition, type, payload, content_type, headers, created_at, available_at";
const VALUES: &str = "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

impl SqliteSql {
    /// The statements of the relays serving every topic.
    pub(crate) fn new(p: &str) -> SqliteSql {
        SqliteSql::scoped(p, &LeaseScope::every_topic(p))
    }

    /// The statements with the leases and claims of `scope`.
    pub(crate) fn scoped(p: &str, scope: &LeaseScope) -> SqliteSql {
        let s = |text: String| -> Sql { Arc::from(text) };
        let LeaseScope {
            leases: l,
            mine: m,
            peers,
            topics_sqlite: topics,
            parked,
            ..
        } = scope;
        SqliteSql {
            prefix: p.to_string(),
            insert: s(format!("INSERT INTO {p}outbox ({COLUMNS}) VALUES {VALUES}")),
            partition_count: s(format!("SELECT count(*) FROM {p}leases")),
            claim_rows: s(format!(
                "SELECT o.seq, o.partition, o.attempts, {cols} FROM {p}outbox o \
                 WHERE o.sent_at IS NULL AND o.available_at <= ?2{topics} \
                 AND o.partition IN (SELECT partition FROM {l} WHERE {m}owner = ?1 AND expires_at > ?2 AND partition % ?4 = ?5) \
                 AND NOT EXISTS (SELECT 1 FROM {p}outbox h WHERE h.available_at > h.created_at AND h.sent_at IS NULL \
                     AND h.partition = o.partition AND h.key = o.key AND h.seq < o.seq AND h.available_at > ?2){parked} \
                 ORDER BY o.seq LIMIT ?3",
                cols = "o.id, o.topic, o.key, o.type, o.payload, o.content_type, o.headers, o.created_at, o.available_at"
            )),
            owned_partitions: s(format!("SELECT partition FROM {l} WHERE {m}owner = ?1")),
            delete_ids: s(format!("DELETE FROM {p}outbox WHERE id IN (SELECT value FROM json_each(?1))")),
            mark_sent: s(format!(
                "UPDATE {p}outbox SET sent_at = ?2 WHERE id IN (SELECT value FROM json_each(?1))"
            )),
            retry: s(format!(
                "UPDATE {p}outbox SET attempts = attempts + 1, last_error = ?2, available_at = ?3 WHERE id = ?1"
            )),
            dead_copy: s(format!(
                "INSERT INTO {p}dead_letters (id, origin, topic, key, partition, type, payload, content_type, headers, created_at, attempts, last_error, failed_at) \
                 SELECT id, 'relay', topic, key, partition, type, payload, content_type, headers, created_at, attempts + 1, ?2, ?3 FROM {p}outbox WHERE id = ?1 \
                 ON CONFLICT (id, origin) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error, failed_at = excluded.failed_at"
            )),
            // The outbox position of a message the relay dead-letters, for
            // its retry (see `dl_retry`).
            dead_seq: s(format!(
                "INSERT INTO {p}dead_letter_seqs (id, origin, seq) SELECT id, 'relay', seq FROM {p}outbox WHERE id = ?1 \
                 ON CONFLICT (id, origin) DO UPDATE SET seq = excluded.seq"
            )),
            delete_one: s(format!("DELETE FROM {p}outbox WHERE id = ?1")),
            heartbeat: s(format!(
                "INSERT INTO {p}relay_instances (owner, started_at, heartbeat_at, expires_at) VALUES (?1, ?2, ?2, ?3) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at"
            )),
            live: s(format!("SELECT count(*) FROM {p}relay_instances WHERE expires_at > ?1")),
            live_owners: s(format!(
                "SELECT owner FROM {p}relay_instances WHERE expires_at > ?1 AND {peers}"
            )),
            // One look at the leases for relay ?1 at time ?2 (no presence
            // locks on SQLite: a dead relay's leases expire).
            lease_view: s(format!(
                "SELECT (SELECT json_group_array(owner) FROM {p}relay_instances WHERE expires_at > ?2 AND {peers}) AS live, \
                 (SELECT json_group_array(partition) FROM {l} WHERE {m}owner = ?1 AND expires_at > ?2) AS mine, \
                 (SELECT count(*) FROM {l} WHERE {m}(owner IS NULL OR expires_at <= ?2)) AS free"
            )),
            renew: s(format!(
                "UPDATE {l} SET expires_at = ?2 WHERE {m}owner = ?1 RETURNING partition"
            )),
            acquire: s(format!(
                "UPDATE {l} SET owner = ?1, epoch = epoch + 1, expires_at = ?3 \
                 WHERE {m}partition IN (SELECT partition FROM {l} WHERE {m}(owner IS NULL OR expires_at <= ?2) ORDER BY partition LIMIT ?4) \
                 RETURNING partition"
            )),
            release_some: s(format!(
                "UPDATE {l} SET owner = NULL, expires_at = ?2 WHERE {m}owner = ?1 AND partition IN (SELECT value FROM json_each(?3))"
            )),
            release_all: s(format!(
                "UPDATE {l} SET owner = NULL, expires_at = ?2 WHERE {m}owner = ?1"
            )),
            remove_instance: s(format!(
                "DELETE FROM {p}relay_instances WHERE owner = ?1 OR expires_at < ?2"
            )),
            remove_routes: s(format!(
                "DELETE FROM {p}relay_routes WHERE owner = ?1 \
                 OR owner NOT IN (SELECT owner FROM {p}relay_instances)"
            )),
            unsent: s(format!(
                "SELECT id FROM {p}outbox WHERE id IN (SELECT value FROM json_each(?1)) AND sent_at IS NULL"
            )),
            retry_now: s(format!(
                "UPDATE {p}outbox SET available_at = ?3 \
                 WHERE id IN (SELECT value FROM json_each(?2)) AND sent_at IS NULL AND attempts > 0 AND available_at > ?3 \
                 AND partition IN (SELECT partition FROM {l} WHERE {m}owner = ?1 AND expires_at > ?3)"
            )),
            dl_list: s(format!(
                "SELECT id, topic, key, type, payload, content_type, headers, created_at, created_at AS available_at, \
                 origin, attempts, last_error, failed_at FROM {p}dead_letters ORDER BY failed_at, id LIMIT ?1"
            )),
            // A relay's dead letter goes back at the outbox position it had
            // (its `dead_letter_seqs` row), ahead of its key's later messages;
            // one without (a consumer's) at the end, as a new row (a NULL
            // `seq` takes the next one). With several dead letters of one id,
            // `max` picks the row with a position.
            dl_retry: s(format!(
                "INSERT INTO {p}outbox (seq, {COLUMNS}) \
                 SELECT max(s.seq), d.id, d.topic, d.key, d.partition, d.type, d.payload, d.content_type, d.headers, d.created_at, ?2 \
                 FROM {p}dead_letters d LEFT JOIN {p}dead_letter_seqs s ON s.id = d.id AND s.origin = d.origin \
                 WHERE ?1 IS NULL OR d.id IN (SELECT value FROM json_each(?1)) GROUP BY d.id \
                 ON CONFLICT (id) DO UPDATE SET sent_at = NULL, attempts = 0, last_error = NULL, available_at = excluded.available_at"
            )),
            dl_purge: s(format!(
                "DELETE FROM {p}dead_letters WHERE ?1 IS NULL OR id IN (SELECT value FROM json_each(?1))"
            )),
            // The positions of dead letters that are gone (retried or purged).
            dl_seqs_gone: s(format!(
                "DELETE FROM {p}dead_letter_seqs WHERE NOT EXISTS (SELECT 1 FROM {p}dead_letters d \
                 WHERE d.id = {p}dead_letter_seqs.id AND d.origin = {p}dead_letter_seqs.origin)"
            )),
            dl_insert: s(format!(
                "INSERT INTO {p}dead_letters (id, origin, topic, key, partition, type, payload, content_type, headers, created_at, attempts, last_error, failed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (id, origin) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error, failed_at = excluded.failed_at"
            )),
            inbox_insert: s(format!(
                "INSERT INTO {p}inbox (consumer_group, message_id, processed_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
            )),
            inbox_purge: s(format!("DELETE FROM {p}inbox WHERE processed_at < ?1")),
            purge_sent: s(format!("DELETE FROM {p}outbox WHERE sent_at IS NOT NULL AND sent_at < ?1")),
            pos_get: s(format!("SELECT position FROM {p}positions WHERE consumer_group = ?1 AND source = ?2")),
            pos_set: s(format!(
                "INSERT INTO {p}positions (consumer_group, source, position, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (consumer_group, source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at"
            )),
            log_append: s(format!(
                "INSERT INTO {p}log (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            )),
            log_read: s(format!(
                "SELECT position, id, topic, key, type, payload, content_type, headers, created_at, available_at FROM {p}log \
                 WHERE topic = ?1 AND position > ?2 ORDER BY position LIMIT ?3"
            )),
            backlog: s(format!(
                "SELECT topic, count(*) AS pending, min(created_at) AS oldest, sum(attempts > 0) AS retrying \
                 FROM {p}outbox WHERE sent_at IS NULL GROUP BY topic ORDER BY topic"
            )),
            dl_count: s(format!("SELECT count(*) FROM {p}dead_letters")),
            // One row per parked key (its earliest dead letter: `min` picks
            // the row of the bare columns), the first ?1 by time, each with
            // the count of all of them.
            parked: s(format!(
                "SELECT k.topic, k.key, k.partition, k.failed_at, k.id, count(*) OVER () AS total \
                 FROM (SELECT topic, key, partition, min(failed_at) AS failed_at, id FROM {p}dead_letters \
                     WHERE origin = 'relay' AND key IS NOT NULL GROUP BY partition, key) k \
                 ORDER BY k.failed_at, k.partition, k.key LIMIT ?1"
            )),
            owners: s(format!(
                "SELECT owner, count(*) AS n, min(expires_at) AS expires_at \
                 FROM (SELECT owner, expires_at FROM {p}leases UNION ALL SELECT owner, expires_at FROM {p}route_leases) \
                 WHERE owner IS NOT NULL AND expires_at > ?1 GROUP BY owner ORDER BY owner"
            )),
            pending: s(format!("SELECT count(*) FROM {p}outbox WHERE sent_at IS NULL")),
            register_lane: scope.lane.as_ref().map(|_| {
                s(format!(
                    "INSERT INTO {p}relay_routes (owner, lane, topics) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (owner) DO UPDATE SET lane = excluded.lane, topics = excluded.topics"
                ))
            }),
            seed_lane: scope.lane.as_ref().map(|_| {
                s(format!(
                    "INSERT INTO {l} (lane, partition, owner, epoch, expires_at) \
                     SELECT ?1, partition, NULL, 0, 0 FROM {p}leases WHERE true ON CONFLICT DO NOTHING"
                ))
            }),
            served: s(format!(
                "SELECT i.owner, r.topics FROM {p}relay_instances i LEFT JOIN {p}relay_routes r USING (owner) \
                 WHERE i.expires_at > ?1"
            )),
            lane: scope.lane.clone(),
        }
    }

    /// SQL and parameters for a host driver to insert outbox rows (see
    /// [`InsertStatement`](super::InsertStatement)): one multi-row INSERT;
    /// timestamps are integer microseconds, the id and headers text.
    pub(crate) fn host_insert(
        &self,
        messages: &[Message],
        partitions: &[u32],
        style: Placeholders,
    ) -> (String, Vec<Value>) {
        let sql = super::host_insert_sql(&self.prefix, messages.len(), style, &[&[]; 10]);
        let params =
            super::host_insert_params(messages, partitions, |t| Value::Int(to_unix_micros(*t)));
        (sql, params)
    }

    fn insert_many(&self, rows: usize) -> String {
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let b = r * 10;
                format!(
                    "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                )
            })
            .collect();
        format!(
            "INSERT INTO {}outbox ({COLUMNS}) VALUES {}",
            self.prefix,
            values.join(", ")
        )
    }
}

fn q(sql: &Sql) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

fn now_us() -> i64 {
    to_unix_micros(Utc::now())
}

/// `d` in microseconds, at most `i64::MAX`.
fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// Microseconds since the epoch `d` from now.
fn later_us(d: Duration) -> i64 {
    now_us().saturating_add(micros(d))
}

/// Microseconds since the epoch `d` ago.
fn earlier_us(d: Duration) -> i64 {
    now_us() - micros(d)
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("lists serialise")
}

pub(super) async fn migrate(pool: &SqlitePool, prefix: &str, partitions: u32) -> Result<()> {
    let mut conn = pool.acquire().await?;
    // BEGIN IMMEDIATE takes the write lock first, serialising concurrent migrators.
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    sqlx::raw_sql(AssertSqlSafe(schema::migrations_table_sql(
        Dialect::Sqlite,
        prefix,
    )))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {prefix}schema_migrations ORDER BY version"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if let Some(newest) = applied
        .iter()
        .max()
        .filter(|v| **v > schema::latest_version())
    {
        return Err(Error::Schema {
            reason: format!(
                "the database has schema version {newest}, newer than this relaybox ({})",
                schema::latest_version()
            ),
        });
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        sqlx::raw_sql(AssertSqlSafe(m.sql(Dialect::Sqlite, prefix)))
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::Schema {
                reason: format!("migration {} failed: {}", m.version, Error::from(e)),
            })?;
        sqlx::raw_sql(AssertSqlSafe(schema::record_sql(prefix, m)))
            .execute(&mut *tx)
            .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "relaybox migration applied"
        );
    }
    sqlx::raw_sql(AssertSqlSafe(schema::seed_leases_sql(
        Dialect::Sqlite,
        prefix,
        partitions,
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn schema_missing(e: sqlx::Error) -> Error {
    let missing = matches!(&e, sqlx::Error::Database(db) if db.message().contains("no such table"));
    if missing {
        Error::Schema {
            reason: "relaybox tables are missing; run `relaybox migrate` (Store::migrate) first"
                .into(),
        }
    } else {
        Error::from(e)
    }
}

pub(super) async fn partition_count<'e>(
    pool: impl sqlx::SqliteExecutor<'e>,
    sql: &SqliteSql,
) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql.partition_count.clone()))
        .fetch_one(pool)
        .await
        .map_err(schema_missing)?;
    Ok(n as u32)
}

/// Idempotency keys taken in the caller's SQLite transaction (one writer at
/// a time, so no take waits for another transaction here).
pub(super) struct SqliteKeys<'c> {
    pub(super) conn: &'c mut SqliteConnection,
    pub(super) sql: &'c SqliteSql,
}

#[async_trait::async_trait]
impl super::KeyTaker for SqliteKeys<'_> {
    async fn take_key(&mut self, topic: &str, key: &str, id: Uuid) -> Result<Option<Uuid>> {
        let table = format!("{}idempotency_keys", self.sql.prefix);
        let mine: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, key, message_id, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING RETURNING message_id"
        )))
        .bind(topic)
        .bind(key)
        .bind(id.to_string())
        .bind(to_unix_micros(Utc::now()))
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(schema_missing)?;
        if mine.is_some() {
            return Ok(None);
        }
        let holder: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT message_id FROM {table} WHERE topic = ?1 AND key = ?2"
        )))
        .bind(topic)
        .bind(key)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(schema_missing)?;
        Uuid::parse_str(&holder)
            .map(Some)
            .map_err(|e| Error::internal(format!("idempotency key row holds {holder:?}: {e}")))
    }
}

pub(super) async fn insert_outbox(
    conn: &mut SqliteConnection,
    sql: &SqliteSql,
    messages: &[Message],
    partitions: &[u32],
) -> Result<()> {
    if let [m] = messages {
        bind_row(q(&sql.insert), m, partitions[0])
            .execute(conn)
            .await
            .map_err(schema_missing)?;
        return Ok(());
    }
    for (chunk, parts) in messages
        .chunks(INSERT_CHUNK)
        .zip(partitions.chunks(INSERT_CHUNK))
    {
        let mut query = sqlx::query(AssertSqlSafe(sql.insert_many(chunk.len())));
        for (m, p) in chunk.iter().zip(parts) {
            query = bind_row(query, m, *p);
        }
        query.execute(&mut *conn).await.map_err(schema_missing)?;
    }
    Ok(())
}

fn bind_row<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    m: &Message,
    partition: u32,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(m.id.to_string())
        .bind(m.topic.clone())
        .bind(m.key.clone())
        .bind(i64::from(partition))
        .bind(m.event_type.clone())
        .bind(m.payload.clone())
        .bind(m.content_type.clone())
        .bind(headers_json(m))
        .bind(to_unix_micros(m.created_at))
        .bind(to_unix_micros(m.available_at))
}

pub(super) async fn claim(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    slice: Slice,
    limit: u32,
) -> Result<Claim> {
    let rows = q(&sql.claim_rows)
        .bind(owner)
        .bind(now_us())
        .bind(i64::from(limit))
        .bind(i64::from(slice.count))
        .bind(i64::from(slice.index))
        .fetch_all(pool)
        .await?;
    let (rows, messages) = split_claimed(&rows, |row| {
        let place = OutboxRow {
            seq: row.try_get("seq")?,
            partition: row.try_get::<i64, _>("partition")? as u32,
            attempts: row.try_get::<i64, _>("attempts")? as u32,
        };
        Ok((place, message_from_row(row)?))
    })?;
    Ok(Claim {
        rows,
        messages,
        hold: ClaimHold::Sqlite,
    })
}

pub(super) async fn complete(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    rows: &[OutboxRow],
    messages: &[Message],
    done: Completion,
    keep_sent: bool,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    // Fencing: rows of a partition this relay no longer holds stay for its new owner.
    let owned: HashSet<i64> = sqlx::query_scalar(AssertSqlSafe(sql.owned_partitions.clone()))
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let still_ours: HashSet<Uuid> = rows
        .iter()
        .zip(messages)
        .filter(|(r, _)| owned.contains(&i64::from(r.partition)))
        .map(|(_, m)| m.id)
        .collect();
    let now = now_us();
    let delivered: Vec<String> = done
        .delivered
        .iter()
        .filter(|id| still_ours.contains(id))
        .map(Uuid::to_string)
        .collect();
    if !delivered.is_empty() {
        if keep_sent {
            q(&sql.mark_sent)
                .bind(json_list(&delivered))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        } else {
            q(&sql.delete_ids)
                .bind(json_list(&delivered))
                .execute(&mut *tx)
                .await?;
        }
    }
    for (id, err, at) in done.retry.iter().filter(|(id, ..)| still_ours.contains(id)) {
        q(&sql.retry)
            .bind(id.to_string())
            .bind(err)
            .bind(to_unix_micros(*at))
            .execute(&mut *tx)
            .await?;
    }
    for (id, err) in done.dead.iter().filter(|(id, _)| still_ours.contains(id)) {
        q(&sql.dead_copy)
            .bind(id.to_string())
            .bind(err)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        q(&sql.dead_seq)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        q(&sql.delete_one)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A JSON array column (`json_group_array`) as a list.
fn json_column<T: serde::de::DeserializeOwned>(row: &SqliteRow, column: &str) -> Result<Vec<T>> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidValue {
        reason: format!("column {column} is not a JSON list: {e}"),
    })
}

/// One look at the leases for `owner` (`gone` is always empty on SQLite).
pub(super) async fn lease_view(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
) -> Result<LeaseView> {
    let row = q(&sql.lease_view)
        .bind(owner)
        .bind(now_us())
        .fetch_one(pool)
        .await?;
    let mut live: Vec<String> = json_column(&row, "live")?;
    let mut mine: Vec<u32> = json_column(&row, "mine")?;
    live.sort_unstable();
    mine.sort_unstable();
    Ok(LeaseView {
        live,
        gone: Vec::new(),
        mine,
        free: row.try_get::<i64, _>("free")? as u32,
    })
}

/// Records `owner` as live until `ttl` from now; returns the live instances.
pub(super) async fn heartbeat(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    ttl: Duration,
) -> Result<Vec<String>> {
    q(&sql.heartbeat)
        .bind(owner)
        .bind(now_us())
        .bind(later_us(ttl))
        .execute(pool)
        .await?;
    if let (Some(register), Some((lane, topics))) = (&sql.register_lane, &sql.lane) {
        q(register)
            .bind(owner)
            .bind(lane)
            .bind(topics)
            .execute(pool)
            .await?;
    }
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.live_owners.clone()))
        .bind(now_us())
        .fetch_all(pool)
        .await?)
}

/// Creates the lease rows of the lane of `sql`, if it has one and they are
/// missing: one per partition.
pub(super) async fn seed_lane(pool: &SqlitePool, sql: &SqliteSql) -> Result<()> {
    if let (Some(seed), Some((lane, _))) = (&sql.seed_lane, &sql.lane) {
        q(seed)
            .bind(lane)
            .execute(pool)
            .await
            .map_err(schema_missing)?;
    }
    Ok(())
}

pub(super) async fn renew_leases(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    ttl: Duration,
) -> Result<Vec<u32>> {
    let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.renew.clone()))
        .bind(owner)
        .bind(later_us(ttl))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|p| p as u32).collect())
}

pub(super) async fn acquire_leases(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    ttl: Duration,
    max: u32,
) -> Result<Vec<u32>> {
    let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.acquire.clone()))
        .bind(owner)
        .bind(now_us())
        .bind(later_us(ttl))
        .bind(i64::from(max))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|p| p as u32).collect())
}

pub(super) async fn release_leases(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    partitions: Option<&[u32]>,
) -> Result<()> {
    match partitions {
        Some(parts) => {
            q(&sql.release_some)
                .bind(owner)
                .bind(now_us())
                .bind(json_list(parts))
                .execute(pool)
                .await?;
        }
        None => {
            q(&sql.release_all)
                .bind(owner)
                .bind(now_us())
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

pub(super) async fn remove_instance(pool: &SqlitePool, sql: &SqliteSql, owner: &str) -> Result<()> {
    let day_ago = now_us() - 86_400_000_000;
    q(&sql.remove_instance)
        .bind(owner)
        .bind(day_ago)
        .execute(pool)
        .await?;
    q(&sql.remove_routes).bind(owner).execute(pool).await?;
    Ok(())
}

pub(super) async fn unsent(pool: &SqlitePool, sql: &SqliteSql, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows = q(&sql.unsent).bind(json_list(&ids)).fetch_all(pool).await?;
    rows.iter().map(|r| r.id("id")).collect()
}

pub(super) async fn retry_now(
    pool: &SqlitePool,
    sql: &SqliteSql,
    owner: &str,
    ids: &[Uuid],
) -> Result<u64> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    Ok(q(&sql.retry_now)
        .bind(owner)
        .bind(json_list(&ids))
        .bind(now_us())
        .execute(pool)
        .await?
        .rows_affected())
}

fn filter_json(filter: &DeadLetterFilter) -> Option<String> {
    match filter {
        DeadLetterFilter::All => None,
        DeadLetterFilter::Ids(ids) => Some(json_list(
            &ids.iter().map(Uuid::to_string).collect::<Vec<_>>(),
        )),
    }
}

pub(super) async fn dead_letters(
    pool: &SqlitePool,
    sql: &SqliteSql,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let rows = q(&sql.dl_list)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(schema_missing)?;
    rows.iter().map(dead_letter_from_row).collect()
}

pub(super) async fn retry_dead_letters(
    pool: &SqlitePool,
    sql: &SqliteSql,
    filter: &DeadLetterFilter,
) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    let ids = filter_json(filter);
    let moved = q(&sql.dl_retry)
        .bind(ids.clone())
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
    q(&sql.dl_purge).bind(ids).execute(&mut *tx).await?;
    q(&sql.dl_seqs_gone).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(moved.rows_affected())
}

pub(super) async fn purge_dead_letters(
    pool: &SqlitePool,
    sql: &SqliteSql,
    filter: &DeadLetterFilter,
) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    let purged = q(&sql.dl_purge)
        .bind(filter_json(filter))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    q(&sql.dl_seqs_gone).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(purged)
}

pub(super) async fn insert_dead_letter(
    pool: &SqlitePool,
    sql: &SqliteSql,
    m: &Message,
    partition: u32,
    origin: &str,
    attempts: u32,
    error: &str,
) -> Result<()> {
    q(&sql.dl_insert)
        .bind(m.id.to_string())
        .bind(origin)
        .bind(m.topic.clone())
        .bind(m.key.clone())
        .bind(i64::from(partition))
        .bind(m.event_type.clone())
        .bind(m.payload.clone())
        .bind(m.content_type.clone())
        .bind(headers_json(m))
        .bind(to_unix_micros(m.created_at))
        .bind(i64::from(attempts))
        .bind(error)
        .bind(now_us())
        .execute(pool)
        .await?;
    Ok(())
}

/// Records `message_id` for `group`; false when it was already there.
pub(crate) async fn inbox_insert(
    conn: &mut SqliteConnection,
    sql: &SqliteSql,
    group: &str,
    message_id: Uuid,
) -> Result<bool> {
    let done = q(&sql.inbox_insert)
        .bind(group)
        .bind(message_id.to_string())
        .bind(now_us())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn purge_inbox(
    pool: &SqlitePool,
    sql: &SqliteSql,
    older_than: Duration,
) -> Result<u64> {
    let cutoff = earlier_us(older_than);
    Ok(q(&sql.inbox_purge)
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn purge_idempotency_keys(
    pool: &SqlitePool,
    sql: &SqliteSql,
    older_than: Duration,
) -> Result<u64> {
    let p = &sql.prefix;
    let now = now_us();
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {p}idempotency_keys SET released_at = ?1 WHERE released_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM {p}outbox o WHERE o.id = {p}idempotency_keys.message_id AND o.sent_at IS NULL)"
    )))
    .bind(now)
    .execute(pool)
    .await
    .map_err(schema_missing)?;
    let cutoff = now - micros(older_than);
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}idempotency_keys WHERE released_at < ?1"
    )))
    .bind(cutoff)
    .execute(pool)
    .await
    .map_err(schema_missing)?
    .rows_affected())
}

pub(super) async fn purge_log(
    pool: &SqlitePool,
    sql: &SqliteSql,
    older_than: Duration,
    keep_unread: bool,
    limit: u32,
) -> Result<u64> {
    let p = &sql.prefix;
    let cutoff = earlier_us(older_than);
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}log WHERE position IN (SELECT l.position FROM {p}log l \
         WHERE l.appended_at < ?1 \
         AND (NOT ?2 OR l.position <= (SELECT COALESCE(min(s.position), 0) FROM {p}positions s \
              WHERE substr(s.source, 1, length(l.topic) + 5) = 'log:' || l.topic || ':')) \
         ORDER BY l.position LIMIT ?3)"
    )))
    .bind(cutoff)
    .bind(keep_unread)
    .bind(i64::from(limit))
    .execute(pool)
    .await
    .map_err(schema_missing)?
    .rows_affected())
}

pub(super) async fn purge_old_dead_letters(
    pool: &SqlitePool,
    sql: &SqliteSql,
    older_than: Duration,
    limit: u32,
) -> Result<u64> {
    let p = &sql.prefix;
    let cutoff = earlier_us(older_than);
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    let purged = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}dead_letters WHERE rowid IN (SELECT rowid FROM {p}dead_letters \
         WHERE failed_at < ?1 ORDER BY failed_at LIMIT ?2)"
    )))
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await
    .map_err(schema_missing)?
    .rows_affected();
    if purged > 0 {
        q(&sql.dl_seqs_gone).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(purged)
}

pub(super) async fn purge_sent(
    pool: &SqlitePool,
    sql: &SqliteSql,
    older_than: Duration,
) -> Result<u64> {
    let cutoff = earlier_us(older_than);
    Ok(q(&sql.purge_sent)
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn position(
    pool: &SqlitePool,
    sql: &SqliteSql,
    group: &str,
    source: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.pos_get.clone()))
        .bind(group)
        .bind(source)
        .fetch_optional(pool)
        .await?)
}

pub(super) async fn set_position(
    pool: &SqlitePool,
    sql: &SqliteSql,
    group: &str,
    source: &str,
    position: i64,
) -> Result<()> {
    q(&sql.pos_set)
        .bind(group)
        .bind(source)
        .bind(position)
        .bind(now_us())
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn append_log(
    pool: &SqlitePool,
    sql: &SqliteSql,
    messages: &[Message],
    partitions: u32,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    // SQLite has one writer at a time: positions follow commit order by construction.
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    let now = now_us();
    for m in messages {
        let partition = crate::partition::partition_for(m.key.as_deref(), &m.id, partitions);
        bind_row(q(&sql.log_append), m, partition)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn read_log(
    pool: &SqlitePool,
    sql: &SqliteSql,
    topic: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<LogEntry>> {
    let rows = q(&sql.log_read)
        .bind(topic)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(schema_missing)?;
    rows.iter().map(log_entry_from_row).collect()
}

pub(super) async fn status(pool: &SqlitePool, sql: &SqliteSql) -> Result<Status> {
    let now = now_us();
    let topics = q(&sql.backlog)
        .fetch_all(pool)
        .await
        .map_err(schema_missing)?
        .iter()
        .map(|r| {
            let oldest: i64 = r.try_get("oldest")?;
            backlog_from_row(r, (now - oldest).max(0) as f64 / 1e6)
        })
        .collect::<Result<Vec<_>>>()?;
    let dead_letters: i64 = sqlx::query_scalar(AssertSqlSafe(sql.dl_count.clone()))
        .fetch_one(pool)
        .await?;
    let lease_owners = q(&sql.owners)
        .bind(now)
        .fetch_all(pool)
        .await?
        .iter()
        .map(lease_owner_from_row)
        .collect::<Result<Vec<_>>>()?;
    let live_relays: i64 = sqlx::query_scalar(AssertSqlSafe(sql.live.clone()))
        .bind(now)
        .fetch_one(pool)
        .await?;
    let served = live_topics(pool, sql)
        .await?
        .into_iter()
        .map(|(_, topics)| topics)
        .collect();
    let parked = q(&sql.parked)
        .bind(i64::from(PARKED_KEYS_SHOWN))
        .fetch_all(pool)
        .await?;
    status_of(StatusParts {
        topics,
        dead_letters,
        lease_owners,
        live_relays,
        served,
        parked,
    })
}

pub(super) async fn pending_count(pool: &SqlitePool, sql: &SqliteSql) -> Result<i64> {
    sqlx::query_scalar(AssertSqlSafe(sql.pending.clone()))
        .fetch_one(pool)
        .await
        .map_err(schema_missing)
}

/// The inbox INSERT of `message_id` for `group` in `style`, for a host
/// driver to run in its own transaction (host-mode consumer). Parameters:
/// the group and the message id (text) and the time processed (integer
/// microseconds since the epoch, as the inbox stores it).
pub(super) fn inbox_statement(
    sql: &SqliteSql,
    group: &str,
    message_id: Uuid,
    style: Placeholders,
) -> (String, Vec<Value>) {
    let text = format!(
        "INSERT INTO {}inbox (consumer_group, message_id, processed_at) \
         VALUES ({}, {}, {}) ON CONFLICT DO NOTHING",
        sql.prefix,
        style.mark(1),
        style.mark(2),
        style.mark(3)
    );
    (
        text,
        vec![
            Value::Text(group.to_string()),
            Value::Text(message_id.to_string()),
            Value::Int(now_us()),
        ],
    )
}

/// [`Store::inbox_run_statement`] on SQLite: the ids as one JSON array text,
/// so the statement's text is the same for every run; returns the inserted
/// ids.
pub(super) fn inbox_run_statement(
    sql: &SqliteSql,
    group: &str,
    message_ids: &[Uuid],
    style: Placeholders,
) -> (String, Vec<Value>) {
    let text = format!(
        "INSERT INTO {}inbox (consumer_group, message_id, processed_at) \
         SELECT p.grp, j.value, p.at FROM (SELECT {} AS grp, {} AS ids, {} AS at) AS p, \
         json_each(p.ids) AS j WHERE true ON CONFLICT DO NOTHING RETURNING message_id",
        sql.prefix,
        style.mark(1),
        style.mark(2),
        style.mark(3)
    );
    let ids: Vec<String> = message_ids.iter().map(Uuid::to_string).collect();
    (
        text,
        vec![
            Value::Text(group.to_string()),
            Value::Text(serde_json::to_string(&ids).expect("strings serialise")),
            Value::Int(now_us()),
        ],
    )
}

/// The live relay instances and the topics of each (JSON), `None` for one
/// that serves every topic.
pub(super) async fn live_topics(
    pool: &SqlitePool,
    sql: &SqliteSql,
) -> Result<Vec<(String, Option<String>)>> {
    q(&sql.served)
        .bind(now_us())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("owner")?, r.try_get("topics")?)))
        .collect()
}

/// `outbox_high_water`: AUTOINCREMENT's record of the largest `seq` ever used.
pub(super) async fn outbox_high_water(pool: &SqlitePool, sql: &SqliteSql) -> Result<i64> {
    let p = &sql.prefix;
    let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(seq) FROM (SELECT seq FROM sqlite_sequence WHERE name = '{p}outbox' \
         UNION ALL SELECT max(seq) FROM {p}outbox)"
    )))
    .fetch_one(pool)
    .await
    .map_err(schema_missing)?;
    Ok(last.unwrap_or(0))
}

/// `search_dead_letters`: each condition applies when its parameter is set.
pub(super) async fn search_dead_letters(
    pool: &SqlitePool,
    sql: &SqliteSql,
    query: &DeadLetterQuery,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let p = &sql.prefix;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, topic, key, type, payload, content_type, headers, created_at, created_at AS available_at, \
         origin, attempts, last_error, failed_at FROM {p}dead_letters \
         WHERE (?1 IS NULL OR topic = ?1) AND (?2 IS NULL OR key = ?2) \
         AND (?3 IS NULL OR instr(lower(last_error), lower(?3)) > 0) \
         AND (?4 IS NULL OR failed_at >= ?4) AND (?5 IS NULL OR failed_at < ?5) \
         ORDER BY failed_at DESC, id LIMIT ?6"
    )))
    .bind(query.topic.as_deref())
    .bind(query.key.as_deref())
    .bind(query.error_contains.as_deref())
    .bind(query.failed_after.map(to_unix_micros))
    .bind(query.failed_before.map(to_unix_micros))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(schema_missing)?;
    rows.iter().map(dead_letter_from_row).collect()
}

/// `consumer_positions`: the positions, then the head and lag of each log source.
pub(super) async fn consumer_positions(
    pool: &SqlitePool,
    sql: &SqliteSql,
) -> Result<Vec<ConsumerPosition>> {
    let p = &sql.prefix;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT consumer_group, source, position, updated_at FROM {p}positions ORDER BY consumer_group, source"
    )))
    .fetch_all(pool)
    .await
    .map_err(schema_missing)?;
    let head_and_lag = format!(
        "SELECT (SELECT max(position) FROM {p}log WHERE topic = ?1) AS head, \
         (SELECT count(*) FROM {p}log WHERE topic = ?1 AND position > ?2) AS lag"
    );
    positions_from_rows(&rows, |topic, position| {
        let statement = head_and_lag.clone();
        async move {
            let row = sqlx::query(AssertSqlSafe(statement))
                .bind(topic)
                .bind(position)
                .fetch_one(pool)
                .await?;
            Ok((row.try_get("head")?, row.try_get("lag")?))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_insert_in_every_style() {
        let sql = SqliteSql::new("rb_");
        let m = Message::new("orders", b"{}".to_vec()).with_key("k1");
        let messages = vec![m.clone(), Message::new("orders", vec![1u8])];
        let cases = [
            (
                Placeholders::Dollar,
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), ($11,",
            ),
            (
                Placeholders::Question,
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?), (?,",
            ),
            (
                Placeholders::Percent,
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s), (%s,",
            ),
            (
                Placeholders::Named,
                "(:p1, :p2, :p3, :p4, :p5, :p6, :p7, :p8, :p9, :p10), (:p11,",
            ),
            (Placeholders::Pyformat, "(%(p1)s, %(p2)s, %(p3)s,"),
        ];
        for (style, values) in cases {
            let (text, params) = sql.host_insert(&messages, &[2, 5], style);
            assert!(
                text.starts_with(&format!(
                    "INSERT INTO rb_outbox ({COLUMNS}) VALUES {values}"
                )),
                "{style:?}: {text}"
            );
            assert!(!text.contains("CAST"), "no casts on SQLite: {text}");
            assert_eq!(params.len(), 20);
        }
        let (_, params) = sql.host_insert(&messages, &[2, 5], Placeholders::Question);
        assert_eq!(params[0], Value::Text(m.id.to_string()));
        assert_eq!(params[3], Value::Int(2));
        assert_eq!(params[8], Value::Int(to_unix_micros(m.created_at)));
        assert_eq!(params[9], Value::Int(to_unix_micros(m.available_at)));
        assert_eq!(params[12], Value::Null);
    }

    #[test]
    fn log_sources_name_their_topic() {
        assert_eq!(
            ConsumerPosition::log_topic("log:orders:0/1"),
            Some("orders")
        );
        assert_eq!(ConsumerPosition::log_topic("log:a:b:2/3"), Some("a:b"));
        for other in ["kafka:orders", "log:orders", "log::0/1", "log:orders:x/1"] {
            assert_eq!(ConsumerPosition::log_topic(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn dead_letters_are_searched_and_the_high_water_mark_holds() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = crate::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.sqlite_pool().unwrap();
        let sql = SqliteSql::new(&store.options().table_prefix);
        let a = Message::new("orders", b"a".to_vec()).with_key("k1");
        let b = Message::new("orders", b"b".to_vec()).with_key("k2");
        let c = Message::new("billing", b"c".to_vec());
        for (m, error) in [
            (&a, "Connection REFUSED by peer"),
            (&b, "timed out"),
            (&c, "connection refused"),
        ] {
            insert_dead_letter(pool, &sql, m, 0, "relay", 3, error)
                .await
                .unwrap();
        }
        let find = |query: DeadLetterQuery, limit: u32| {
            let store = store.clone();
            async move {
                let mut ids: Vec<Uuid> = store
                    .search_dead_letters(&query, limit)
                    .await
                    .unwrap()
                    .iter()
                    .map(|d| d.message.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        let sorted = |mut ids: Vec<Uuid>| {
            ids.sort();
            ids
        };
        let hour = chrono::Duration::hours(1);
        let all = sorted(vec![a.id, b.id, c.id]);
        assert_eq!(find(DeadLetterQuery::default(), 10).await, all);
        let topic = DeadLetterQuery {
            topic: Some("orders".into()),
            ..Default::default()
        };
        assert_eq!(find(topic, 10).await, sorted(vec![a.id, b.id]));
        let key = DeadLetterQuery {
            key: Some("k2".into()),
            ..Default::default()
        };
        assert_eq!(find(key, 10).await, vec![b.id]);
        let error = DeadLetterQuery {
            error_contains: Some("refused".into()),
            ..Default::default()
        };
        assert_eq!(find(error, 10).await, sorted(vec![a.id, c.id]));
        let later = DeadLetterQuery {
            failed_after: Some(Utc::now() + hour),
            ..Default::default()
        };
        assert_eq!(find(later, 10).await, Vec::<Uuid>::new());
        let window = DeadLetterQuery {
            failed_after: Some(Utc::now() - hour),
            failed_before: Some(Utc::now() + hour),
            ..Default::default()
        };
        assert_eq!(find(window, 10).await, all);
        assert_eq!(find(DeadLetterQuery::default(), 2).await.len(), 2);

        // The enqueue high-water mark does not fall when rows leave.
        assert_eq!(store.outbox_high_water().await.unwrap(), 0);
        let tx = store.begin().await.unwrap();
        tx.enqueue(Message::new("orders", b"x".to_vec()))
            .await
            .unwrap();
        tx.enqueue(Message::new("orders", b"y".to_vec()))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.outbox_high_water().await.unwrap(), 2);
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}outbox", sql.prefix)))
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(store.outbox_high_water().await.unwrap(), 2);
        store.close().await;
    }
}
