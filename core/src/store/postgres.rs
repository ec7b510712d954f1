//! The PostgreSQL dialect: SQL text and row mapping.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use uuid::Uuid;

use super::decode::{
    backlog_from_row, dead_letter_from_row, lease_owner_from_row, log_entry_from_row,
    message_from_row, positions_from_rows, status_of, StatusParts, Stored,
};
use super::scope::LeaseScope;
use super::statements::{claim_sql, log_append_sql, move_to_log_sql, COPY, MOVE};
use super::{
    headers_json, secs, split_claimed, Claim, ClaimHold, Completion, ConsumerPosition, DeadLetter,
    DeadLetterFilter, DeadLetterQuery, LeaseView, LogEntry, OutboxRow, Placeholders, Slice, Status,
    PARKED_KEYS_SHOWN,
};
use crate::error::{Error, Result};
use crate::message::{micros_rfc3339, Message};
use crate::schema::{self, Dialect, MIGRATIONS};
use crate::value::Value;

type Sql = Arc<str>;

/// Every statement of the PostgreSQL store, with the table prefix applied.
pub(crate) struct PgSql {
    prefix: String,
    insert: Sql,
    insert_many: Sql,
    partition_count: Sql,
    claim_leases: Sql,
    claim: Sql,
    delete_rows: Sql,
    mark_rows_sent: Sql,
    retry: Sql,
    dead: Sql,
    heartbeat: Sql,
    live: Sql,
    live_owners: Sql,
    take_presence: Sql,
    lease_view: Sql,
    free_gone: Sql,
    let_go_presence: Sql,
    renew: Sql,
    acquire: Sql,
    release_some: Sql,
    release_all: Sql,
    remove_instance: Sql,
    retry_now: Sql,
    unsent: Sql,
    dl_list: Sql,
    dl_retry: Sql,
    dl_purge: Sql,
    dl_insert: Sql,
    pub(crate) inbox_insert: Sql,
    inbox_purge: Sql,
    purge_sent: Sql,
    pos_get: Sql,
    pos_set: Sql,
    log_lock: Sql,
    log_append: Sql,
    move_to_log: Sql,
    copy_to_log: Sql,
    /// The same two, returning each moved message's trace context too.
    move_to_log_traced: Sql,
    copy_to_log_traced: Sql,
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
/// Casts after each placeholder of a host INSERT: text in, the column's
/// type out, whatever type the driver infers or sends for the parameter.
const HOST_CASTS: [&[&str]; 10] = [
    &["text", "uuid"],
    &["text"],
    &["text"],
    &["int4"],
    &["text"],
    &["bytea"],
    &["text"],
    &["text", "jsonb"],
    &["text", "timestamptz"],
    &["text", "timestamptz"],
];
const MESSAGE_COLUMNS: &str =
    "id, topic, key, partition, type, payload, content_type, headers::text AS headers, created_at, available_at";

impl PgSql {
    /// The statements of the relays serving every topic.
    pub(crate) fn new(p: &str) -> PgSql {
        PgSql::scoped(p, &LeaseScope::every_topic(p))
    }

    /// The statements with the leases and claims of `scope`.
    pub(crate) fn scoped(p: &str, scope: &LeaseScope) -> PgSql {
        let s = |text: String| -> Sql { Arc::from(text) };
        let LeaseScope {
            leases: l,
            mine: m,
            peers,
            topics_pg: topics,
            parked,
            ..
        } = scope;
        PgSql {
            prefix: p.to_string(),
            insert: s(format!(
                "INSERT INTO {p}outbox ({COLUMNS}) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::timestamptz, $10::timestamptz)"
            )),
            insert_many: s(format!(
                "INSERT INTO {p}outbox ({COLUMNS}) SELECT u.id, u.topic, u.key, u.partition, u.type, u.payload, u.content_type, u.headers::jsonb, u.created_at, u.available_at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[]) WITH ORDINALITY \
                 AS u(id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, ord) ORDER BY u.ord"
            )),
            partition_count: s(format!("SELECT count(*) FROM {p}leases")),
            // KEY SHARE: held until the batch is completed, it keeps another
            // relay's `acquire` (FOR UPDATE SKIP LOCKED) off the partition,
            // while this relay's renewals and releases (plain UPDATEs, which
            // take FOR NO KEY UPDATE) never wait for a batch in flight.
            claim_leases: s(format!(
                "SELECT partition FROM {l} WHERE {m}owner = $1 AND expires_at > now() AND partition % $2 = $3 \
                 ORDER BY partition FOR KEY SHARE"
            )),
            claim: s(claim_sql(p, scope)),
            // By the rows' physical addresses (`ctid`, from the claim): a TID
            // scan reads each row's page directly, where `id = ANY` walks the
            // primary key once per row. The claim transaction locked the rows
            // FOR UPDATE and has not changed them, so their addresses hold.
            delete_rows: s(format!("DELETE FROM {p}outbox WHERE ctid = ANY($1::text[]::tid[])")),
            mark_rows_sent: s(format!(
                "UPDATE {p}outbox SET sent_at = now() WHERE ctid = ANY($1::text[]::tid[])"
            )),
            retry: s(format!(
                "UPDATE {p}outbox o SET attempts = o.attempts + 1, last_error = u.err, available_at = u.at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, err, at) WHERE o.id = u.id"
            )),
            dead: s(format!(
                "WITH moved AS (DELETE FROM {p}outbox o USING UNNEST($1::uuid[], $2::text[]) AS u(id, err) WHERE o.id = u.id \
                     RETURNING o.id, o.seq, o.topic, o.key, o.partition, o.type, o.payload, o.content_type, o.headers, o.created_at, o.attempts, u.err) \
                 INSERT INTO {p}dead_letters (id, origin, seq, topic, key, partition, type, payload, content_type, headers, created_at, attempts, last_error, failed_at) \
                 SELECT id, 'relay', seq, topic, key, partition, type, payload, content_type, headers, created_at, attempts + 1, err, now() FROM moved \
                 ON CONFLICT (id, origin) DO UPDATE SET seq = EXCLUDED.seq, attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at"
            )),
            heartbeat: s(format!(
                "INSERT INTO {p}relay_instances (owner, started_at, heartbeat_at, expires_at) \
                 VALUES ($1, now(), now(), now() + make_interval(secs => $2)) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at"
            )),
            live: s(format!("SELECT count(*) FROM {p}relay_instances WHERE expires_at > now()")),
            live_owners: s(format!(
                "SELECT owner FROM {p}relay_instances WHERE expires_at > now() AND {peers}"
            )),
            take_presence: s(format!("SELECT pg_try_advisory_lock({})", presence_keys(p, "$1"))),
            lease_view: s(lease_view_sql(p, scope)),
            // The gone instances' leases are free at once (a batch of theirs
            // still in flight keeps its lease rows locked FOR KEY SHARE, so
            // nobody acquires them before it ends), and they stop counting
            // as live relays.
            free_gone: s(format!(
                "WITH freed AS (UPDATE {l} SET owner = NULL, expires_at = now() WHERE {m}owner = ANY($1) RETURNING partition) \
                 UPDATE {p}relay_instances SET expires_at = now() WHERE owner = ANY($1) AND expires_at > now()"
            )),
            let_go_presence: s(format!(
                "SELECT pg_advisory_unlock({}) FROM unnest($1::text[]) AS u(owner)",
                presence_keys(p, "u.owner")
            )),
            renew: s(format!(
                "UPDATE {l} SET expires_at = now() + make_interval(secs => $2) WHERE {m}owner = $1 RETURNING partition"
            )),
            acquire: s(format!(
                "UPDATE {l} SET owner = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $2) \
                 WHERE {m}partition IN (SELECT partition FROM {l} WHERE {m}(owner IS NULL OR expires_at <= now()) \
                     ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING partition"
            )),
            release_some: s(format!(
                "UPDATE {l} SET owner = NULL, expires_at = now() WHERE {m}owner = $1 AND partition = ANY($2)"
            )),
            release_all: s(format!(
                "UPDATE {l} SET owner = NULL, expires_at = now() WHERE {m}owner = $1"
            )),
            remove_instance: s(format!(
                "WITH gone AS (DELETE FROM {p}relay_instances WHERE owner = $1 OR expires_at < now() - interval '1 day' RETURNING owner) \
                 DELETE FROM {p}relay_routes WHERE owner = $1 OR owner IN (SELECT owner FROM gone)"
            )),
            unsent: s(format!(
                "SELECT id FROM {p}outbox WHERE id = ANY($1) AND sent_at IS NULL"
            )),
            retry_now: s(format!(
                "UPDATE {p}outbox SET available_at = now() \
                 WHERE id = ANY($2) AND sent_at IS NULL AND attempts > 0 AND available_at > now() \
                 AND partition IN (SELECT partition FROM {l} WHERE {m}owner = $1 AND expires_at > now())"
            )),
            dl_list: s(format!(
                "SELECT id, topic, key, type, payload, content_type, headers::text AS headers, created_at, created_at AS available_at, \
                 origin, attempts, last_error, failed_at FROM {p}dead_letters ORDER BY failed_at, id LIMIT $1"
            )),
            // A relay's dead letter goes back at the outbox position it had
            // (`seq`), ahead of its key's later messages; one without a stored
            // position (a consumer's) at the end, as a new row.
            dl_retry: s(format!(
                "WITH moved AS (DELETE FROM {p}dead_letters WHERE $1::uuid[] IS NULL OR id = ANY($1) RETURNING *) \
                 INSERT INTO {p}outbox (seq, {COLUMNS}) OVERRIDING SYSTEM VALUE \
                 SELECT DISTINCT ON (id) COALESCE(seq, nextval(pg_get_serial_sequence('{p}outbox', 'seq'))), \
                     id, topic, key, partition, type, payload, content_type, headers, created_at, now() FROM moved \
                 ORDER BY id, seq NULLS LAST \
                 ON CONFLICT (id) DO UPDATE SET sent_at = NULL, attempts = 0, last_error = NULL, available_at = EXCLUDED.available_at"
            )),
            dl_purge: s(format!("DELETE FROM {p}dead_letters WHERE $1::uuid[] IS NULL OR id = ANY($1)")),
            dl_insert: s(format!(
                "INSERT INTO {p}dead_letters (id, origin, topic, key, partition, type, payload, content_type, headers, created_at, attempts, last_error, failed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, now()) \
                 ON CONFLICT (id, origin) DO UPDATE SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at"
            )),
            inbox_insert: s(format!(
                "INSERT INTO {p}inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, now()) ON CONFLICT DO NOTHING"
            )),
            inbox_purge: s(format!(
                "DELETE FROM {p}inbox WHERE processed_at < now() - make_interval(secs => $1)"
            )),
            purge_sent: s(format!(
                "DELETE FROM {p}outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)"
            )),
            pos_get: s(format!("SELECT position FROM {p}positions WHERE consumer_group = $1 AND source = $2")),
            pos_set: s(format!(
                "INSERT INTO {p}positions (consumer_group, source, position, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (consumer_group, source) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
            )),
            log_lock: s("SELECT pg_advisory_xact_lock($1)".to_string()),
            log_append: s(log_append_sql(p)),
            move_to_log: s(move_to_log_sql(p, topics, parked, MOVE, false)),
            copy_to_log: s(move_to_log_sql(p, topics, parked, COPY, false)),
            move_to_log_traced: s(move_to_log_sql(p, topics, parked, MOVE, true)),
            copy_to_log_traced: s(move_to_log_sql(p, topics, parked, COPY, true)),
            log_read: s(format!(
                "SELECT position, {MESSAGE_COLUMNS} FROM {p}log WHERE topic = $1 AND position > $2 ORDER BY position LIMIT $3"
            )),
            backlog: s(format!(
                "SELECT topic, count(*)::int8 AS pending, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS age, \
                 count(*) FILTER (WHERE attempts > 0)::int8 AS retrying \
                 FROM {p}outbox WHERE sent_at IS NULL GROUP BY topic ORDER BY topic"
            )),
            dl_count: s(format!("SELECT count(*) FROM {p}dead_letters")),
            // One row per parked key (its earliest dead letter), the first
            // `$1` by time, each with the count of all of them.
            parked: s(format!(
                "SELECT k.topic, k.key, k.partition, k.failed_at, k.id, count(*) OVER () AS total \
                 FROM (SELECT DISTINCT ON (partition, key) topic, key, partition, failed_at, id FROM {p}dead_letters \
                     WHERE origin = 'relay' AND key IS NOT NULL ORDER BY partition, key, failed_at, id) k \
                 ORDER BY k.failed_at, k.partition, k.key LIMIT $1"
            )),
            owners: s(format!(
                "SELECT owner, count(*)::int8 AS n, min(expires_at) AS expires_at \
                 FROM (SELECT owner, expires_at FROM {p}leases UNION ALL SELECT owner, expires_at FROM {p}route_leases) l \
                 WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner ORDER BY owner"
            )),
            pending: s(format!("SELECT count(*) FROM {p}outbox WHERE sent_at IS NULL")),
            register_lane: scope.lane.as_ref().map(|_| {
                s(format!(
                    "INSERT INTO {p}relay_routes (owner, lane, topics) VALUES ($1, $2, $3) \
                     ON CONFLICT (owner) DO UPDATE SET lane = EXCLUDED.lane, topics = EXCLUDED.topics"
                ))
            }),
            seed_lane: scope.lane.as_ref().map(|_| {
                s(format!(
                    "INSERT INTO {l} (lane, partition, owner, epoch, expires_at) \
                     SELECT $1, partition, NULL, 0, 'epoch'::timestamptz FROM {p}leases ON CONFLICT DO NOTHING"
                ))
            }),
            served: s(format!(
                "SELECT i.owner, r.topics FROM {p}relay_instances i LEFT JOIN {p}relay_routes r USING (owner) \
                 WHERE i.expires_at > now()"
            )),
            lane: scope.lane.clone(),
        }
    }

    /// SQL and parameters for a host driver to insert outbox rows (see
    /// [`InsertStatement`](super::InsertStatement)): one multi-row INSERT;
    /// the id, headers and timestamps travel as text and the SQL casts them.
    pub(crate) fn host_insert(
        &self,
        messages: &[Message],
        partitions: &[u32],
        style: Placeholders,
    ) -> (String, Vec<Value>) {
        let sql = super::host_insert_sql(&self.prefix, messages.len(), style, &HOST_CASTS);
        let params = super::host_insert_params(messages, partitions, |t| {
            Value::Text(micros_rfc3339::format(t))
        });
        (sql, params)
    }

    fn log_lock_key(&self) -> i64 {
        i64::from(crate::partition::key_hash(&format!("{}log", self.prefix)))
    }
}

/// The two `int4` keys of the presence lock of the relay instance named by
/// the SQL text expression `owner`: a 64-bit hash of the table prefix and the
/// instance id, computed by the server (`hashtextextended`), so every relay
/// on it derives the same keys. relaybox's other advisory locks use the
/// single `bigint` key, a space of its own.
fn presence_keys(p: &str, owner: &str) -> String {
    let hash = format!("hashtextextended('{p}relay:' || {owner}, 0)");
    format!("({hash} >> 32)::int4, (({hash} & 4294967295) - 2147483648)::int4")
}

/// One look at the leases for relay `$1` (see `Store::lease_view`). Every
/// other live instance's presence lock is tried once (the `MATERIALIZED`
/// CTE runs each row once, and both arrays read all of it, so each lock
/// taken is reported in `gone` and let go by the caller).
fn lease_view_sql(p: &str, scope: &LeaseScope) -> String {
    let LeaseScope {
        leases: l,
        mine: m,
        peers,
        ..
    } = scope;
    format!(
        "WITH inst AS MATERIALIZED (SELECT owner, \
             CASE WHEN owner = $1 THEN false ELSE pg_try_advisory_lock({keys}) END AS gone \
             FROM {p}relay_instances WHERE expires_at > now() AND {peers}) \
         SELECT ARRAY(SELECT owner FROM inst WHERE NOT gone) AS live, \
             ARRAY(SELECT owner FROM inst WHERE gone) AS gone, \
             ARRAY(SELECT partition FROM {l} WHERE {m}owner = $1 AND expires_at > now() ORDER BY partition) AS mine, \
             (SELECT count(*) FROM {l} WHERE {m}(owner IS NULL OR expires_at <= now())) AS free",
        keys = presence_keys(p, "owner"),
    )
}

/// Rewrites `$n` placeholders into another style (named styles keep the
/// number: `$3` becomes `:p3` or `%(p3)s`).
fn placeholders(sql: &str, style: Placeholders) -> String {
    if style == Placeholders::Dollar {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            out.push_str(&style.mark(n));
        } else {
            out.push(c);
        }
    }
    out
}

fn q(sql: &Sql) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

pub(super) async fn migrate(pool: &PgPool, prefix: &str, partitions: u32) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Serialise concurrent migrators; the lock ends with the transaction.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from(crate::partition::key_hash(&format!(
            "{prefix}migrate"
        ))))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(schema::migrations_table_sql(
        Dialect::Postgres,
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
        sqlx::raw_sql(AssertSqlSafe(m.sql(Dialect::Postgres, prefix)))
            .execute(&mut *tx)
            .await
            .map_err(|e| migration_error(m.version, e))?;
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
        Dialect::Postgres,
        prefix,
        partitions,
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn migration_error(version: i64, e: sqlx::Error) -> Error {
    Error::Schema {
        reason: format!("migration {version} failed: {}", Error::from(e)),
    }
}

pub(super) async fn partition_count<'e>(
    pool: impl sqlx::PgExecutor<'e>,
    sql: &PgSql,
) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql.partition_count.clone()))
        .fetch_one(pool)
        .await
        .map_err(schema_missing)?;
    Ok(n as u32)
}

/// A missing table means the schema was never migrated: say so.
fn schema_missing(e: sqlx::Error) -> Error {
    match Error::from(e) {
        Error::Database {
            sql_code: Some(code),
            ..
        } if code == "42P01" => Error::Schema {
            reason: "relaybox tables are missing; run `relaybox migrate` (Store::migrate) first"
                .into(),
        },
        other => other,
    }
}

struct Columns {
    ids: Vec<Uuid>,
    topics: Vec<String>,
    keys: Vec<Option<String>>,
    partitions: Vec<i32>,
    types: Vec<String>,
    payloads: Vec<Vec<u8>>,
    content_types: Vec<String>,
    headers: Vec<String>,
    created: Vec<DateTime<Utc>>,
    available: Vec<DateTime<Utc>>,
}

impl Columns {
    fn of(messages: &[Message], partitions: impl Fn(usize, &Message) -> u32) -> Columns {
        Columns {
            ids: messages.iter().map(|m| m.id).collect(),
            topics: messages.iter().map(|m| m.topic.clone()).collect(),
            keys: messages.iter().map(|m| m.key.clone()).collect(),
            partitions: messages
                .iter()
                .enumerate()
                .map(|(i, m)| partitions(i, m) as i32)
                .collect(),
            types: messages.iter().map(|m| m.event_type.clone()).collect(),
            payloads: messages.iter().map(|m| m.payload.clone()).collect(),
            content_types: messages.iter().map(|m| m.content_type.clone()).collect(),
            headers: messages.iter().map(headers_json).collect(),
            created: messages.iter().map(|m| m.created_at).collect(),
            available: messages.iter().map(|m| m.available_at).collect(),
        }
    }

    fn bind(
        self,
        query: sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.topics)
            .bind(self.keys)
            .bind(self.partitions)
            .bind(self.types)
            .bind(self.payloads)
            .bind(self.content_types)
            .bind(self.headers)
            .bind(self.created)
            .bind(self.available)
    }
}

/// Idempotency keys taken in the caller's PostgreSQL transaction. A
/// concurrent transaction holding the same new key makes a take wait for its
/// end: a commit means the key is taken, a rollback that it is free.
pub(super) struct PgKeys<'c> {
    pub(super) conn: &'c mut PgConnection,
    pub(super) sql: &'c PgSql,
}

#[async_trait::async_trait]
impl super::KeyTaker for PgKeys<'_> {
    async fn take_key(&mut self, topic: &str, key: &str, id: Uuid) -> Result<Option<Uuid>> {
        let table = format!("{}idempotency_keys", self.sql.prefix);
        let mine: Option<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, key, message_id, created_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT DO NOTHING RETURNING message_id"
        )))
        .bind(topic)
        .bind(key)
        .bind(id)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(schema_missing)?;
        if mine.is_some() {
            return Ok(None);
        }
        let holder: Uuid = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT message_id FROM {table} WHERE topic = $1 AND key = $2"
        )))
        .bind(topic)
        .bind(key)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(schema_missing)?;
        Ok(Some(holder))
    }
}

pub(super) async fn insert_outbox(
    conn: &mut PgConnection,
    sql: &PgSql,
    messages: &[Message],
    partitions: &[u32],
) -> Result<()> {
    if let [m] = messages {
        q(&sql.insert)
            .bind(m.id)
            .bind(&m.topic)
            .bind(&m.key)
            .bind(partitions[0] as i32)
            .bind(&m.event_type)
            .bind(&m.payload)
            .bind(&m.content_type)
            .bind(headers_json(m))
            .bind(m.created_at)
            .bind(m.available_at)
            .execute(conn)
            .await
            .map_err(schema_missing)?;
    } else {
        Columns::of(messages, |i, _| partitions[i])
            .bind(q(&sql.insert_many))
            .execute(conn)
            .await
            .map_err(schema_missing)?;
    }
    Ok(())
}

/// How the relay's batch transactions begin (one round trip):
///
/// - `synchronous_commit = off`: recording deliveries need not wait for a
///   WAL flush. If a crash undoes a commit, its rows are still in the outbox
///   and are published again (at least once), and retries are tried sooner;
///   the relay's loop does not wait for the disk between batches.
/// - `plan_cache_mode = force_generic_plan`: the claim's statements are
///   planned once per connection instead of at every batch. Left to itself,
///   PostgreSQL keeps planning the claim anew (its generic plan, costed for
///   an unknown `LIMIT`, looks dearer than the custom ones), although both
///   plans are the same walk of the `outbox_pending` index; planning took
///   longer than executing a small claim.
/// - `jit = off`: the generic plan is costed for every row of the outbox,
///   so with a backlog of a few hundred thousand rows its cost passes
///   `jit_above_cost` and PostgreSQL (where JIT is on, its default) would
///   compile the claim to machine code at every batch: 85–225 ms for a claim
///   that runs in about 2 ms interpreted (1,000 rows of a 320,000-row
///   outbox). The relay's statements read a few index entries; compiling
///   them never pays.
/// - `enable_seqscan = off`: the generic plan is made with the statistics of
///   the moment, and an outbox that has just been emptied (or never
///   analyzed) looks like a table of one page. Planned then, the held-key
///   test reads the whole outbox once per candidate row instead of probing
///   the `outbox_held` index: a claim of 100 rows took 70 ms at 1,000
///   messages a second, and the claims took half of PostgreSQL's time. Every
///   statement of the batch has an index made for it, so the plan stays the
///   same whatever the statistics say.
pub(super) const BATCH_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off; \
     SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off; \
     SET LOCAL enable_seqscan = off";

pub(super) async fn claim(
    pool: &PgPool,
    sql: &PgSql,
    owner: &str,
    slice: Slice,
    limit: u32,
) -> Result<Claim> {
    let mut tx = pool.begin_with(BATCH_BEGIN).await?;
    let rows = q(&sql.claim)
        .bind(owner)
        .bind(slice.count as i32)
        .bind(slice.index as i32)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let addresses = rows
        .iter()
        .map(|row| row.try_get::<String, _>("row_address"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (rows, messages) = split_claimed(&rows, |row| {
        let place = OutboxRow {
            seq: row.try_get("seq")?,
            partition: row.try_get::<i32, _>("partition")? as u32,
            attempts: row.try_get::<i32, _>("attempts")? as u32,
        };
        Ok((place, message_from_row(row)?))
    })?;
    Ok(Claim {
        rows,
        messages,
        hold: ClaimHold::Postgres { tx, addresses },
    })
}

/// Moves a batch from the outbox into the log in one transaction; returns how
/// many per topic, and with `traced` the moved messages' topic, id and trace
/// context headers (the rest of each message is left empty).
pub(super) async fn move_to_log(
    pool: &PgPool,
    sql: &PgSql,
    owner: &str,
    slice: Slice,
    limit: u32,
    keep_sent: bool,
    traced: bool,
) -> Result<(Vec<(String, u64)>, Vec<Message>)> {
    let mut tx = pool.begin_with(BATCH_BEGIN).await?;
    let partitions: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(sql.claim_leases.clone()))
        .bind(owner)
        .bind(slice.count as i32)
        .bind(slice.index as i32)
        .fetch_all(&mut *tx)
        .await?;
    if partitions.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // Appenders take turns on the log (positions in commit order). This
    // transaction commits without waiting for its WAL flush (`BATCH_BEGIN`),
    // so the turn lasts the statement, not a disk flush: the move is atomic (the rows
    // leave the outbox and enter the log together, or neither), and whoever
    // records having processed an entry commits synchronously after it, which
    // flushes the WAL up to and past this commit. A crash can only undo a
    // move nobody has acted on yet: its rows are back in the outbox and are
    // relayed again (at least once).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock({})",
        sql.log_lock_key()
    )))
    .execute(&mut *tx)
    .await?;
    let stmt = match (keep_sent, traced) {
        (true, false) => &sql.copy_to_log,
        (false, false) => &sql.move_to_log,
        (true, true) => &sql.copy_to_log_traced,
        (false, true) => &sql.move_to_log_traced,
    };
    let mut moved_messages = Vec::new();
    let topics: Vec<String> = if traced {
        let rows: Vec<(String, Uuid, Option<String>, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(stmt.clone()))
                .bind(&partitions)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
        rows.into_iter()
            .map(|(topic, id, parent, state)| {
                let mut message = Message::new(topic.clone(), Vec::new());
                message.id = id;
                let context = [("traceparent", parent), ("tracestate", state)];
                for (name, value) in context {
                    if let Some(value) = value {
                        message.headers.insert(name.to_string(), value);
                    }
                }
                moved_messages.push(message);
                topic
            })
            .collect()
    } else {
        sqlx::query_scalar(AssertSqlSafe(stmt.clone()))
            .bind(&partitions)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?
    };
    tx.commit().await?;
    // Messages moved per topic (for the relay's metrics).
    let mut moved: Vec<(String, u64)> = Vec::new();
    for topic in topics {
        match moved.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, n)) => *n += 1,
            None => moved.push((topic, 1)),
        }
    }
    Ok((moved, moved_messages))
}

/// Records what became of a claimed batch in its claim transaction `tx`:
/// the delivered rows (found by their `addresses`, one per message of
/// `messages`, as the claim returned them) are deleted or marked sent, the
/// others are scheduled for a retry or moved to dead letters.
pub(super) async fn complete(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    addresses: Vec<String>,
    messages: &[Message],
    sql: &PgSql,
    done: Completion,
    keep_sent: bool,
) -> Result<()> {
    // The claim began `tx` with `BATCH_BEGIN`: its commit does not wait for
    // a WAL flush.
    if !done.delivered.is_empty() {
        let delivered: HashSet<Uuid> = done.delivered.iter().copied().collect();
        let rows: Vec<String> = messages
            .iter()
            .zip(addresses)
            .filter(|(m, _)| delivered.contains(&m.id))
            .map(|(_, address)| address)
            .collect();
        if rows.len() != delivered.len() {
            return Err(Error::internal(format!(
                "{} delivered ids, {} of them among the claimed rows",
                delivered.len(),
                rows.len()
            )));
        }
        let stmt = if keep_sent {
            &sql.mark_rows_sent
        } else {
            &sql.delete_rows
        };
        q(stmt).bind(&rows).execute(&mut *tx).await?;
    }
    if !done.retry.is_empty() {
        let (ids, rest): (Vec<Uuid>, Vec<(String, DateTime<Utc>)>) = done
            .retry
            .into_iter()
            .map(|(id, e, at)| (id, (e, at)))
            .unzip();
        let (errors, ats): (Vec<String>, Vec<DateTime<Utc>>) = rest.into_iter().unzip();
        q(&sql.retry)
            .bind(ids)
            .bind(errors)
            .bind(ats)
            .execute(&mut *tx)
            .await?;
    }
    if !done.dead.is_empty() {
        let (ids, errors): (Vec<Uuid>, Vec<String>) = done.dead.into_iter().unzip();
        q(&sql.dead)
            .bind(ids)
            .bind(errors)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A connection of its own (outside the pool) for the presence lock of
/// relay `owner`, named `relaybox <owner>` in `pg_stat_activity`.
pub(super) async fn presence_connection(
    pool: &PgPool,
    owner: &str,
    timeout: Duration,
) -> Result<PgConnection> {
    use sqlx::ConnectOptions;
    let mut name = format!("relaybox {owner}");
    // PostgreSQL keeps 63 bytes of an application name.
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    let options = (*pool.connect_options()).clone().application_name(&name);
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(Error::Database {
            message: format!("no connection for the relay's presence lock within {timeout:?}"),
            sql_code: None,
            retryable: true,
        }),
    }
}

/// Takes relay `owner`'s presence lock on `conn`; false when another session
/// holds it.
pub(super) async fn take_presence(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
) -> Result<bool> {
    sqlx::query_scalar(AssertSqlSafe(sql.take_presence.clone()))
        .bind(owner)
        .fetch_one(conn)
        .await
        .map_err(Error::from)
}

/// One look at the leases for `owner` on its presence connection; the
/// leases and heartbeats of instances found gone are freed, then their
/// presence locks let go.
pub(super) async fn lease_view(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
) -> Result<LeaseView> {
    let row = q(&sql.lease_view)
        .bind(owner)
        .fetch_one(&mut *conn)
        .await
        .map_err(schema_missing)?;
    let mut live: Vec<String> = row.try_get("live")?;
    let gone: Vec<String> = row.try_get("gone")?;
    let mine: Vec<i32> = row.try_get("mine")?;
    let free: i64 = row.try_get("free")?;
    if !gone.is_empty() {
        // Locks taken by the look stay until let go; if this fails, the
        // caller drops the connection, which lets them go too.
        q(&sql.free_gone).bind(&gone).execute(&mut *conn).await?;
        q(&sql.let_go_presence)
            .bind(&gone)
            .fetch_all(&mut *conn)
            .await?;
    }
    live.sort_unstable();
    Ok(LeaseView {
        live,
        gone,
        mine: mine.into_iter().map(|p| p as u32).collect(),
        free: free as u32,
    })
}

/// Records `owner` as live until `ttl` from now; returns the live instances.
pub(super) async fn heartbeat(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
    ttl: Duration,
) -> Result<Vec<String>> {
    q(&sql.heartbeat)
        .bind(owner)
        .bind(secs(ttl))
        .execute(&mut *conn)
        .await?;
    if let (Some(register), Some((lane, topics))) = (&sql.register_lane, &sql.lane) {
        q(register)
            .bind(owner)
            .bind(lane)
            .bind(topics)
            .execute(&mut *conn)
            .await?;
    }
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.live_owners.clone()))
        .fetch_all(&mut *conn)
        .await?)
}

/// Creates the lease rows of the lane of `sql`, if it has one and they are
/// missing: one per partition.
pub(super) async fn seed_lane(pool: &PgPool, sql: &PgSql) -> Result<()> {
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
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
    ttl: Duration,
) -> Result<Vec<u32>> {
    let rows: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(sql.renew.clone()))
        .bind(owner)
        .bind(secs(ttl))
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|p| p as u32).collect())
}

pub(super) async fn acquire_leases(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
    ttl: Duration,
    max: u32,
) -> Result<Vec<u32>> {
    let rows: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(sql.acquire.clone()))
        .bind(owner)
        .bind(secs(ttl))
        .bind(i64::from(max))
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|p| p as u32).collect())
}

pub(super) async fn release_leases(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
    partitions: Option<&[u32]>,
) -> Result<()> {
    match partitions {
        Some(parts) => {
            let parts: Vec<i32> = parts.iter().map(|p| *p as i32).collect();
            q(&sql.release_some)
                .bind(owner)
                .bind(parts)
                .execute(conn)
                .await?;
        }
        None => {
            q(&sql.release_all).bind(owner).execute(conn).await?;
        }
    }
    Ok(())
}

pub(super) async fn remove_instance(
    conn: &mut PgConnection,
    sql: &PgSql,
    owner: &str,
) -> Result<()> {
    q(&sql.remove_instance).bind(owner).execute(conn).await?;
    Ok(())
}

pub(super) async fn unsent(pool: &PgPool, sql: &PgSql, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    let rows = q(&sql.unsent).bind(ids).fetch_all(pool).await?;
    rows.iter().map(|r| r.id("id")).collect()
}

pub(super) async fn retry_now(
    pool: &PgPool,
    sql: &PgSql,
    owner: &str,
    ids: &[Uuid],
) -> Result<u64> {
    Ok(q(&sql.retry_now)
        .bind(owner)
        .bind(ids)
        .execute(pool)
        .await?
        .rows_affected())
}

fn filter_ids(filter: &DeadLetterFilter) -> Option<Vec<Uuid>> {
    match filter {
        DeadLetterFilter::All => None,
        DeadLetterFilter::Ids(ids) => Some(ids.clone()),
    }
}

pub(super) async fn dead_letters(
    pool: &PgPool,
    sql: &PgSql,
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
    pool: &PgPool,
    sql: &PgSql,
    filter: &DeadLetterFilter,
) -> Result<u64> {
    Ok(q(&sql.dl_retry)
        .bind(filter_ids(filter))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn purge_dead_letters(
    pool: &PgPool,
    sql: &PgSql,
    filter: &DeadLetterFilter,
) -> Result<u64> {
    Ok(q(&sql.dl_purge)
        .bind(filter_ids(filter))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn insert_dead_letter(
    pool: &PgPool,
    sql: &PgSql,
    m: &Message,
    partition: u32,
    origin: &str,
    attempts: u32,
    error: &str,
) -> Result<()> {
    q(&sql.dl_insert)
        .bind(m.id)
        .bind(origin)
        .bind(&m.topic)
        .bind(&m.key)
        .bind(partition as i32)
        .bind(&m.event_type)
        .bind(&m.payload)
        .bind(&m.content_type)
        .bind(headers_json(m))
        .bind(m.created_at)
        .bind(attempts as i32)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs `savepoint` (the savepoint commands of one message of a consumer's
/// shared transaction) and records `message_id` for `group`, in one round
/// trip: a simple query with the group and id as literals. False when the
/// id was already there.
pub(crate) async fn savepoint_inbox_insert(
    conn: &mut PgConnection,
    sql: &PgSql,
    savepoint: &str,
    group: &str,
    message_id: Uuid,
) -> Result<bool> {
    let text = format!(
        "{savepoint}; INSERT INTO {}inbox (consumer_group, message_id, processed_at) \
         VALUES ({}, '{message_id}', now()) ON CONFLICT DO NOTHING",
        sql.prefix,
        group_literal(group)?
    );
    // The savepoint commands count no rows: what is counted is the insert's.
    let done = sqlx::raw_sql(AssertSqlSafe(text)).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// A consumer group as a PostgreSQL string constant with C-style escapes
/// (`E'…'`), which reads the same whatever `standard_conforming_strings`
/// says.
fn group_literal(text: &str) -> Result<String> {
    if text.contains('\0') {
        return Err(Error::config(
            "group",
            "must not contain the NUL character (PostgreSQL text cannot)",
        ));
    }
    Ok(format!(
        "E'{}'",
        text.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// Records `message_id` for `group`; false when it was already there.
pub(crate) async fn inbox_insert(
    conn: &mut PgConnection,
    sql: &PgSql,
    group: &str,
    message_id: Uuid,
) -> Result<bool> {
    let done = q(&sql.inbox_insert)
        .bind(group)
        .bind(message_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn purge_inbox(pool: &PgPool, sql: &PgSql, older_than: Duration) -> Result<u64> {
    Ok(q(&sql.inbox_purge)
        .bind(secs(older_than))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn purge_idempotency_keys(
    pool: &PgPool,
    sql: &PgSql,
    older_than: Duration,
) -> Result<u64> {
    let p = &sql.prefix;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {p}idempotency_keys k SET released_at = now() WHERE k.released_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM {p}outbox o WHERE o.id = k.message_id AND o.sent_at IS NULL)"
    )))
    .execute(pool)
    .await
    .map_err(schema_missing)?;
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}idempotency_keys WHERE released_at < now() - make_interval(secs => $1)"
    )))
    .bind(secs(older_than))
    .execute(pool)
    .await
    .map_err(schema_missing)?
    .rows_affected())
}

pub(super) async fn purge_log(
    pool: &PgPool,
    sql: &PgSql,
    older_than: Duration,
    keep_unread: bool,
    limit: u32,
) -> Result<u64> {
    let p = &sql.prefix;
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}log WHERE position IN (SELECT l.position FROM {p}log l \
         WHERE l.appended_at < now() - make_interval(secs => $1) \
         AND (NOT $2 OR l.position <= (SELECT COALESCE(min(s.position), 0) FROM {p}positions s \
              WHERE left(s.source, length(l.topic) + 5) = 'log:' || l.topic || ':')) \
         ORDER BY l.position LIMIT $3)"
    )))
    .bind(secs(older_than))
    .bind(keep_unread)
    .bind(i64::from(limit))
    .execute(pool)
    .await
    .map_err(schema_missing)?
    .rows_affected())
}

pub(super) async fn purge_old_dead_letters(
    pool: &PgPool,
    sql: &PgSql,
    older_than: Duration,
    limit: u32,
) -> Result<u64> {
    let p = &sql.prefix;
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {p}dead_letters WHERE (id, origin) IN (SELECT id, origin FROM {p}dead_letters \
         WHERE failed_at < now() - make_interval(secs => $1) ORDER BY failed_at LIMIT $2)"
    )))
    .bind(secs(older_than))
    .bind(i64::from(limit))
    .execute(pool)
    .await
    .map_err(schema_missing)?
    .rows_affected())
}

pub(super) async fn purge_sent(pool: &PgPool, sql: &PgSql, older_than: Duration) -> Result<u64> {
    Ok(q(&sql.purge_sent)
        .bind(secs(older_than))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn position(
    pool: &PgPool,
    sql: &PgSql,
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
    pool: &PgPool,
    sql: &PgSql,
    group: &str,
    source: &str,
    position: i64,
) -> Result<()> {
    q(&sql.pos_set)
        .bind(group)
        .bind(source)
        .bind(position)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn append_log(
    pool: &PgPool,
    sql: &PgSql,
    messages: &[Message],
    partitions: u32,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    // Appenders take turns, so identity values are assigned in commit order and
    // a reader that saw position N never later finds a new row below N.
    q(&sql.log_lock)
        .bind(sql.log_lock_key())
        .execute(&mut *tx)
        .await?;
    Columns::of(messages, |_, m| {
        crate::partition::partition_for(m.key.as_deref(), &m.id, partitions)
    })
    .bind(q(&sql.log_append))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn read_log(
    pool: &PgPool,
    sql: &PgSql,
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

pub(super) async fn status(pool: &PgPool, sql: &PgSql) -> Result<Status> {
    let topics = q(&sql.backlog)
        .fetch_all(pool)
        .await
        .map_err(schema_missing)?
        .iter()
        .map(|r| backlog_from_row(r, r.try_get("age")?))
        .collect::<Result<Vec<_>>>()?;
    let dead_letters: i64 = sqlx::query_scalar(AssertSqlSafe(sql.dl_count.clone()))
        .fetch_one(pool)
        .await?;
    let lease_owners = q(&sql.owners)
        .fetch_all(pool)
        .await?
        .iter()
        .map(lease_owner_from_row)
        .collect::<Result<Vec<_>>>()?;
    let live_relays: i64 = sqlx::query_scalar(AssertSqlSafe(sql.live.clone()))
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

pub(super) async fn pending_count(pool: &PgPool, sql: &PgSql) -> Result<i64> {
    sqlx::query_scalar(AssertSqlSafe(sql.pending.clone()))
        .fetch_one(pool)
        .await
        .map_err(schema_missing)
}

/// The inbox INSERT of `message_id` for `group` in `style`, for a host
/// driver to run in its own transaction (host-mode consumer). Both
/// parameters are text; the SQL casts the id (`CAST`, not `::`, which
/// SQLAlchemy's `text()` would take for a named parameter).
pub(super) fn inbox_statement(
    sql: &PgSql,
    group: &str,
    message_id: Uuid,
    style: Placeholders,
) -> (String, Vec<Value>) {
    let text = format!(
        "INSERT INTO {}inbox (consumer_group, message_id, processed_at) \
         VALUES ($1, CAST(CAST($2 AS text) AS uuid), now()) ON CONFLICT DO NOTHING",
        sql.prefix
    );
    (
        placeholders(&text, style),
        vec![
            Value::Text(group.to_string()),
            Value::Text(message_id.to_string()),
        ],
    )
}

/// [`Store::inbox_run_statement`] on PostgreSQL: one text of the ids,
/// comma-separated, so the statement's text is the same for every run
/// (drivers cache and prepare it); returns the inserted ids as text.
pub(super) fn inbox_run_statement(
    sql: &PgSql,
    group: &str,
    message_ids: &[Uuid],
    style: Placeholders,
) -> (String, Vec<Value>) {
    let text = format!(
        "INSERT INTO {}inbox (consumer_group, message_id, processed_at) \
         SELECT $1, CAST(id AS uuid), now() FROM unnest(string_to_array(CAST($2 AS text), ',')) AS id \
         ON CONFLICT DO NOTHING RETURNING CAST(message_id AS text)",
        sql.prefix
    );
    let ids: Vec<String> = message_ids.iter().map(Uuid::to_string).collect();
    (
        placeholders(&text, style),
        vec![Value::Text(group.to_string()), Value::Text(ids.join(","))],
    )
}

/// The live relay instances and the topics of each (JSON), `None` for one
/// that serves every topic.
pub(super) async fn live_topics(
    pool: &PgPool,
    sql: &PgSql,
) -> Result<Vec<(String, Option<String>)>> {
    q(&sql.served)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("owner")?, r.try_get("topics")?)))
        .collect()
}

/// `outbox_high_water`: the last value of the `seq` identity's sequence.
pub(super) async fn outbox_high_water(pool: &PgPool, sql: &PgSql) -> Result<i64> {
    let p = &sql.prefix;
    let last: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('{p}outbox', 'seq'))"
    )))
    .fetch_one(pool)
    .await
    .map_err(schema_missing)?;
    Ok(last.unwrap_or(0))
}

/// `search_dead_letters`: each condition applies when its parameter is set.
pub(super) async fn search_dead_letters(
    pool: &PgPool,
    sql: &PgSql,
    query: &DeadLetterQuery,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let p = &sql.prefix;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, topic, key, type, payload, content_type, headers::text AS headers, created_at, created_at AS available_at, \
         origin, attempts, last_error, failed_at FROM {p}dead_letters \
         WHERE ($1::text IS NULL OR topic = $1) AND ($2::text IS NULL OR key = $2) \
         AND ($3::text IS NULL OR strpos(lower(last_error), lower($3)) > 0) \
         AND ($4::timestamptz IS NULL OR failed_at >= $4) AND ($5::timestamptz IS NULL OR failed_at < $5) \
         ORDER BY failed_at DESC, id LIMIT $6"
    )))
    .bind(query.topic.as_deref())
    .bind(query.key.as_deref())
    .bind(query.error_contains.as_deref())
    .bind(query.failed_after)
    .bind(query.failed_before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(schema_missing)?;
    rows.iter().map(dead_letter_from_row).collect()
}

/// `consumer_positions`: the positions, then the head and lag of each log source.
pub(super) async fn consumer_positions(
    pool: &PgPool,
    sql: &PgSql,
) -> Result<Vec<ConsumerPosition>> {
    let p = &sql.prefix;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT consumer_group, source, position, updated_at FROM {p}positions ORDER BY consumer_group, source"
    )))
    .fetch_all(pool)
    .await
    .map_err(schema_missing)?;
    let head_and_lag = format!(
        "SELECT (SELECT max(position) FROM {p}log WHERE topic = $1) AS head, \
         (SELECT count(*) FROM {p}log WHERE topic = $1 AND position > $2) AS lag"
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
    fn group_literals_escape_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(group_literal("billing").unwrap(), "E'billing'");
        assert_eq!(group_literal(r"o'k\n").unwrap(), r"E'o''k\\n'");
        assert!(matches!(
            group_literal("a\0b"),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn placeholder_styles() {
        assert_eq!(
            placeholders("VALUES ($1, $2::uuid, $10)", Placeholders::Percent),
            "VALUES (%s, %s::uuid, %s)"
        );
        assert_eq!(
            placeholders("VALUES ($1, $2::uuid, $10)", Placeholders::Named),
            "VALUES (:p1, :p2::uuid, :p10)"
        );
        assert_eq!(
            placeholders("VALUES ($1, $12)", Placeholders::Pyformat),
            "VALUES (%(p1)s, %(p12)s)"
        );
        assert_eq!(
            placeholders("VALUES ($1, $12)", Placeholders::Dollar),
            "VALUES ($1, $12)"
        );
        assert_eq!(
            placeholders("VALUES ($1, $2)", Placeholders::Question),
            "VALUES (?, ?)"
        );
    }

    fn two_messages() -> Vec<Message> {
        vec![
            Message::new("orders", b"{}".to_vec()).with_key("k1"),
            Message::new("orders", vec![0u8, 255]),
        ]
    }

    #[test]
    fn host_insert_in_every_style() {
        let sql = PgSql::new("rb_");
        let messages = two_messages();
        let cases = [
            (Placeholders::Dollar, "(CAST(CAST($1 AS text) AS uuid), CAST($2 AS text), CAST($3 AS text), CAST($4 AS int4), CAST($5 AS text), CAST($6 AS bytea), CAST($7 AS text), CAST(CAST($8 AS text) AS jsonb), CAST(CAST($9 AS text) AS timestamptz), CAST(CAST($10 AS text) AS timestamptz)), (CAST(CAST($11 AS text) AS uuid),", "CAST(CAST($20 AS text) AS timestamptz))"),
            (Placeholders::Percent, "(CAST(CAST(%s AS text) AS uuid), CAST(%s AS text),", "CAST(CAST(%s AS text) AS timestamptz))"),
            (Placeholders::Question, "(CAST(CAST(? AS text) AS uuid), CAST(? AS text),", "CAST(CAST(? AS text) AS timestamptz))"),
            (Placeholders::Pyformat, "(CAST(CAST(%(p1)s AS text) AS uuid), CAST(%(p2)s AS text),", "CAST(CAST(%(p20)s AS text) AS timestamptz))"),
            (Placeholders::Named, "(CAST(CAST(:p1 AS text) AS uuid), CAST(:p2 AS text),", "CAST(CAST(:p20 AS text) AS timestamptz))"),
        ];
        for (style, start, end) in cases {
            let (text, params) = sql.host_insert(&messages, &[3, 7], style);
            assert!(
                text.starts_with(&format!(
                    "INSERT INTO rb_outbox (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at) VALUES {start}"
                )),
                "{style:?}: {text}"
            );
            assert!(text.ends_with(end), "{style:?}: {text}");
            assert_eq!(text.matches("AS text) AS uuid)").count(), 2, "{text}");
            assert!(!text.contains("::"), "no `::` casts: {text}");
            assert_eq!(params.len(), 20);
        }
        let (_, params) = sql.host_insert(&messages, &[3, 7], Placeholders::Dollar);
        let m = &messages[0];
        assert_eq!(params[0], Value::Text(m.id.to_string()));
        assert_eq!(params[1], Value::Text("orders".into()));
        assert_eq!(params[2], Value::Text("k1".into()));
        assert_eq!(params[3], Value::Int(3));
        assert_eq!(params[5], Value::Bytes(b"{}".to_vec()));
        assert_eq!(params[7], Value::Text("{}".into()));
        assert_eq!(
            params[8],
            Value::Text(micros_rfc3339::format(&m.created_at))
        );
        assert_eq!(params[12], Value::Null, "the second message has no key");
        assert_eq!(params[13], Value::Int(7));
        assert_eq!(params[15], Value::Bytes(vec![0, 255]));
    }
}
