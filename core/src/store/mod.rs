//! The store: one handle over PostgreSQL or SQLite that owns the connection
//! pool, the schema and every query relaybox runs. The dialect modules hold
//! the SQL; this module holds what both share.

mod postgres;
mod scope;
mod sqlite;
pub mod statements;
pub(crate) mod tls;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::partition::{self, DEFAULT_PARTITIONS};
use crate::redact::DatabaseUrl;
use crate::schema::{self, Dialect};
use crate::validate::Limits;
use crate::wake::Wake;

pub(crate) use postgres::{inbox_insert as pg_inbox_insert, PgSql};
pub(crate) use sqlite::{inbox_insert as sqlite_inbox_insert, SqliteSql};

/// Options of a [`Store`]; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Prefix of every table name (default `relaybox_`).
    pub table_prefix: String,
    /// Number of outbox partitions created by the first migration (default 16).
    /// Fixed afterwards: it is read back from the lease table.
    pub partitions: u32,
    /// Largest payload accepted on enqueue, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Largest number of pooled connections (default 10 for PostgreSQL, 4 for SQLite).
    pub max_connections: Option<u32>,
    /// Connections the pool opens after connecting and keeps open when idle
    /// (default 0: they are opened on demand), so that the first burst after
    /// a quiet spell does not wait for new connections. At most
    /// `max_connections`.
    pub min_connections: u32,
    /// How long to wait for a connection (default 10 s).
    #[serde(deserialize_with = "crate::duration::deserialize", skip_serializing)]
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            table_prefix: schema::DEFAULT_PREFIX.to_string(),
            partitions: DEFAULT_PARTITIONS,
            max_payload_bytes: crate::validate::DEFAULT_MAX_PAYLOAD_BYTES,
            max_connections: None,
            min_connections: 0,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl StoreOptions {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        schema::check_prefix(&self.table_prefix)?;
        if !(1..=4096).contains(&self.partitions) {
            return Err(Error::config("partitions", "must be between 1 and 4096"));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 256 * 1024 * 1024 {
            return Err(Error::config(
                "max_payload_bytes",
                "must be between 1 byte and 256 MiB",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be positive"));
        }
        Ok(())
    }

    /// Options from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let options: StoreOptions = serde_json::from_value(value)
            .map_err(|e| Error::config("store options", e.to_string()))?;
        options.validate()?;
        Ok(options)
    }
}

/// The pool size of `options`, `default` when it sets none; a
/// `min_connections` above it is a config error.
fn max_connections(options: &StoreOptions, default: u32) -> Result<u32> {
    let max = options.max_connections.unwrap_or(default);
    if options.min_connections > max {
        return Err(Error::config(
            "min_connections",
            format!("must be at most the pool size ({max})"),
        ));
    }
    Ok(max)
}

/// Placeholder style of generated SQL, for host-language drivers.
///
/// Named styles ([`Pyformat`](Placeholders::Pyformat),
/// [`Named`](Placeholders::Named)) call the parameters `p1`, `p2`, ... in
/// order; [`InsertStatement::names`] lists them, so a binding can build the
/// mapping its driver takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placeholders {
    /// `$1, $2, ...` (sqlx, asyncpg, node-postgres, Postgrex/Ecto).
    Dollar,
    /// `%s, %s, ...` (psycopg, Django's cursor: DB-API `format`).
    Percent,
    /// `?, ?, ...` (SQLite drivers, JDBC: DB-API `qmark`).
    Question,
    /// `%(p1)s, %(p2)s, ...` (psycopg with a dict: DB-API `pyformat`).
    Pyformat,
    /// `:p1, :p2, ...` (SQLAlchemy `text()`, sqlite3 with a dict: DB-API `named`).
    Named,
}

impl Placeholders {
    /// The placeholder of parameter `n` (counted from 1).
    pub fn mark(self, n: usize) -> String {
        match self {
            Placeholders::Dollar => format!("${n}"),
            Placeholders::Percent => "%s".to_string(),
            Placeholders::Question => "?".to_string(),
            Placeholders::Pyformat => format!("%(p{n})s"),
            Placeholders::Named => format!(":p{n}"),
        }
    }

    /// Whether parameters are passed by name (`p1`, `p2`, ...) rather than by position.
    pub fn is_named(self) -> bool {
        matches!(self, Placeholders::Pyformat | Placeholders::Named)
    }
}

impl FromStr for Placeholders {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dollar" | "$" | "numeric" => Ok(Placeholders::Dollar),
            "percent" | "%s" | "format" => Ok(Placeholders::Percent),
            "question" | "?" | "qmark" => Ok(Placeholders::Question),
            "pyformat" | "%(name)s" => Ok(Placeholders::Pyformat),
            "named" | ":name" => Ok(Placeholders::Named),
            other => Err(Error::config(
                "placeholders",
                format!(
                    "unknown style {other:?}; use dollar, percent, question, pyformat or named"
                ),
            )),
        }
    }
}

/// Most messages one host INSERT statement ([`Store::insert_batch_statement`])
/// carries: 10 parameters each, well under PostgreSQL's 65535 and SQLite's
/// 32766 parameters per statement. Bindings split larger batches.
pub const HOST_BATCH_MAX: usize = 1000;

/// The outbox INSERT of `rows` messages in `style`, for host drivers:
/// one multi-row `VALUES` list, 10 parameters per row in column order.
/// `casts[i]` lists the types the placeholder of column `i` is cast to,
/// innermost first, written `CAST(... AS type)`: the `::type` shorthand
/// would clash with `:name` placeholders (SQLAlchemy `text()`).
pub(crate) fn host_insert_sql(
    prefix: &str,
    rows: usize,
    style: Placeholders,
    casts: &[&[&str]; 10],
) -> String {
    let mut sql = format!(
        "INSERT INTO {prefix}outbox (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at) VALUES "
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, types) in casts.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            let mut value = style.mark(r * 10 + c + 1);
            for ty in *types {
                value = format!("CAST({value} AS {ty})");
            }
            sql.push_str(&value);
        }
        sql.push(')');
    }
    sql
}

/// The parameters of [`host_insert_sql`]'s statement for `messages` (with
/// their `partitions`), 10 per row in column order: the id, headers and
/// text columns as text, the partition as an integer, the payload as bytes,
/// and the two timestamps as `timestamp` encodes them for the dialect.
pub(crate) fn host_insert_params(
    messages: &[Message],
    partitions: &[u32],
    timestamp: impl Fn(&DateTime<Utc>) -> crate::value::Value,
) -> Vec<crate::value::Value> {
    use crate::value::Value;
    let mut params = Vec::with_capacity(messages.len() * 10);
    for (m, partition) in messages.iter().zip(partitions) {
        params.extend([
            Value::Text(m.id.to_string()),
            Value::Text(m.topic.clone()),
            m.key.clone().into(),
            Value::Int((*partition).into()),
            Value::Text(m.event_type.clone()),
            Value::Bytes(m.payload.clone()),
            Value::Text(m.content_type.clone()),
            Value::Text(headers_json(m)),
            timestamp(&m.created_at),
            timestamp(&m.available_at),
        ]);
    }
    params
}

/// The INSERT statement of outbox rows and its parameters, so that a
/// host-language driver can write the rows inside its own transaction (the
/// producer side of the host-transaction protocol; see
/// `docs/architecture.md`, "Host transactions").
///
/// Ten parameters per message, in order: `id`, `topic`, `key` (or null),
/// `partition` (integer), `type`, `payload` (bytes), `content_type`,
/// `headers` (JSON text), `created_at`, `available_at`. Only text, integers,
/// bytes and null are passed, types every driver binds natively:
///
/// - PostgreSQL: the id, the headers and the timestamps (RFC 3339) are text
///   and the SQL casts them (`CAST(CAST($1 AS text) AS uuid)`, the same for
///   `jsonb` and `timestamptz`; every other parameter is cast to its
///   column's type), so a driver that infers parameter types from the
///   statement (asyncpg) asks for text, integers and bytes, and one that
///   sends them untyped (psycopg) or typed (sqlx, JDBC) works alike.
/// - SQLite: the id and headers are text, the timestamps integer
///   microseconds since the Unix epoch; no casts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InsertStatement {
    /// The SQL text.
    pub sql: String,
    /// The parameters, in placeholder order.
    pub params: Vec<crate::value::Value>,
    /// The parameter names (`p1`, `p2`, ...) for a named placeholder style,
    /// in the order of `params`; empty for positional styles.
    pub names: Vec<String>,
    /// The id of the (first) message the statement writes.
    pub message_id: Uuid,
    /// The ids of every message the statement writes, in order.
    pub message_ids: Vec<Uuid>,
    /// The wake-up to run in the same transaction after the INSERT: on
    /// PostgreSQL a `NOTIFY` naming the rows' partitions, delivered to the
    /// relays of every process when the transaction commits. `None` on
    /// SQLite, where relays of other processes poll.
    pub wake: Option<String>,
}

/// Where a claimed outbox row stands; its message travels beside it in
/// the claim.
#[derive(Clone, Copy, Debug)]
pub struct OutboxRow {
    /// Insertion order, monotonic.
    pub seq: i64,
    /// Partition (hash of the key mod the partition count).
    pub partition: u32,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// A message that failed too often, kept with its last error.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The message.
    pub message: Message,
    /// `relay` or `consumer:<group>`: who gave up on it.
    pub origin: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// When it was dead-lettered.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub failed_at: DateTime<Utc>,
}

/// Which dead letters an admin operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterFilter {
    /// Every dead letter.
    All,
    /// The dead letters of these message ids.
    Ids(Vec<Uuid>),
}

/// Which dead letters [`Store::search_dead_letters`] returns: those that
/// meet every condition that is set (the default matches every one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Exactly this topic.
    pub topic: Option<String>,
    /// Exactly this message key.
    pub key: Option<String>,
    /// Text the last error contains, ignoring case (ASCII letters only on SQLite).
    pub error_contains: Option<String>,
    /// Dead-lettered at or after this time.
    pub failed_after: Option<DateTime<Utc>>,
    /// Dead-lettered before this time.
    pub failed_before: Option<DateTime<Utc>>,
}

/// The stored position of one consumer group member on one source, with
/// how far behind the end of the log it is for sources of the database
/// transport's log.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerPosition {
    /// The consumer group.
    pub group: String,
    /// The source the position is for: `log:<topic>:<member>/<size>` for
    /// the database transport's log.
    pub source: String,
    /// The topic of a log source; `None` for other sources.
    pub topic: Option<String>,
    /// The position: the last log position the member has processed.
    pub position: i64,
    /// When the position was last stored.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// The topic's last log position (`None` when the topic has no entry
    /// left in the log, or for sources that are not the log).
    pub head: Option<i64>,
    /// Entries of the topic in the log after the position. A member of a
    /// group of several processes only the keys that hash to it, so this
    /// counts its peers' entries too.
    pub lag: Option<i64>,
}

impl ConsumerPosition {
    /// The topic of a position source `log:<topic>:<member>/<size>`.
    pub(crate) fn log_topic(source: &str) -> Option<&str> {
        let rest = source.strip_prefix("log:")?;
        let (topic, member) = rest.rsplit_once(':')?;
        let (m, n) = member.split_once('/')?;
        (!topic.is_empty() && m.parse::<u32>().is_ok() && n.parse::<u32>().is_ok()).then_some(topic)
    }
}

/// Backlog of one topic.
#[derive(Clone, Debug, Serialize)]
pub struct TopicBacklog {
    /// Topic name.
    pub topic: String,
    /// Undelivered messages.
    pub pending: i64,
    /// Age of the oldest undelivered message.
    pub oldest_age_seconds: f64,
    /// Undelivered messages that have failed at least once.
    pub retrying: i64,
    /// Whether a running relay serves the topic: one without routes, or one
    /// whose routes match it. Rows of a topic no running relay serves stay
    /// pending.
    pub served: bool,
}

/// Sets [`TopicBacklog::served`] from the topics of the live relays (`None`
/// for a relay that serves every topic).
pub(crate) fn mark_served(topics: &mut [TopicBacklog], relays: &[Option<String>]) {
    let every = relays.iter().any(Option::is_none);
    let lanes: Vec<crate::route::Topics> = relays
        .iter()
        .flatten()
        .filter_map(|t| crate::route::Topics::from_json(t))
        .collect();
    for backlog in topics {
        backlog.served = every || lanes.iter().any(|l| l.matches(&backlog.topic));
    }
}

/// Who holds how many partitions.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseOwner {
    /// Relay instance id.
    pub owner: String,
    /// Partitions held.
    pub partitions: i64,
    /// When the soonest of its leases expires unless renewed.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub expires_at: DateTime<Utc>,
}

/// A key the relay dead-lettered a message of: relays that park keys
/// (`RelayConfig::park_keys`, the default) claim none of its later messages
/// until that dead letter is retried or purged.
#[derive(Clone, Debug, Serialize)]
pub struct ParkedKey {
    /// The dead-lettered message's topic.
    pub topic: String,
    /// The message key.
    pub key: String,
    /// Its partition (a key is parked within its partition).
    pub partition: u32,
    /// When the message was dead-lettered (the earliest, if several were).
    #[serde(with = "crate::message::micros_rfc3339")]
    pub since: DateTime<Utc>,
    /// The id of that dead letter's message: what to retry or purge.
    pub dead_letter_id: Uuid,
}

/// How many parked keys [`Status::parked_keys`] lists at most.
pub const PARKED_KEYS_SHOWN: u32 = 100;

/// What `relaybox status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Backlog per topic.
    pub topics: Vec<TopicBacklog>,
    /// Dead letters in total.
    pub dead_letters: i64,
    /// Keys parked behind a dead letter of the relay, longest parked first,
    /// at most [`PARKED_KEYS_SHOWN`] of them.
    pub parked_keys: Vec<ParkedKey>,
    /// Parked keys in total.
    pub parked_keys_total: i64,
    /// Partition count.
    pub partitions: u32,
    /// Current lease owners.
    pub lease_owners: Vec<LeaseOwner>,
    /// Live relay instances (heartbeat not expired).
    pub live_relays: i64,
}

/// A message read from the log table of the database transport.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Position in the log (global, increasing in relay order).
    pub position: i64,
    /// The message.
    pub message: Message,
}

/// The share of a relay's partitions one of its batch loops works on:
/// those with `partition % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Slice {
    pub fn contains(&self, partition: u32) -> bool {
        partition % self.count.max(1) == self.index
    }
}

/// A batch claimed by a relay, holding what keeps other relays off it.
pub(crate) struct Claim {
    /// The claimed rows, in claim order.
    pub rows: Vec<OutboxRow>,
    /// Their messages, in the same order: handed to the sink as they are.
    pub messages: Vec<Message>,
    pub(crate) hold: ClaimHold,
}

/// Decodes claimed rows into their bookkeeping and, beside it, their messages.
pub(crate) fn split_claimed<R>(
    rows: &[R],
    decode: impl Fn(&R) -> Result<(OutboxRow, Message)>,
) -> Result<(Vec<OutboxRow>, Vec<Message>)> {
    let mut places = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let (place, message) = decode(row)?;
        places.push(place);
        messages.push(message);
    }
    Ok((places, messages))
}

pub(crate) enum ClaimHold {
    /// PostgreSQL: the transaction holding the row locks and the lease share
    /// locks, and each claimed row's address (`ctid`), in claim order.
    Postgres {
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        addresses: Vec<String>,
    },
    /// SQLite: nothing is locked; completion re-checks the leases.
    Sqlite,
}

/// What became of each message of a claimed batch.
#[derive(Default, Debug)]
pub(crate) struct Completion {
    pub delivered: Vec<Uuid>,
    /// (id, error, retry at)
    pub retry: Vec<(Uuid, String, DateTime<Utc>)>,
    /// (id, error)
    pub dead: Vec<(Uuid, String)>,
}

/// A relay instance's standing with the store, through which it keeps its
/// leases.
///
/// On PostgreSQL, a connection of its own (outside the pool) that holds the
/// instance's *presence lock*, a session-level advisory lock keyed by the
/// table prefix and the instance id, for as long as the relay runs; the
/// lease statements run on it. PostgreSQL releases a session's advisory
/// locks as soon as the session ends (the process died, the socket closed),
/// so another relay that can take an instance's presence lock knows that
/// instance is gone and frees its leases at once instead of waiting for
/// them to expire. A failed statement drops the connection, and with it the
/// lock; the next lease tick connects and takes it again.
///
/// On SQLite, nothing: leases are kept through the pool and a dead relay's
/// leases are taken over once they expire.
pub(crate) struct LeaseSession {
    owner: String,
    conn: Option<PgConnection>,
}

impl LeaseSession {
    /// The presence connection; an error when it is not connected.
    fn pg(&mut self) -> Result<&mut PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::internal("the relay's presence connection is not open"))
    }

    /// Closes the presence connection, which lets the presence lock go.
    pub(crate) async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }

    /// Passes `result` on; after a failure, drops the connection (and so
    /// the presence lock and any lock taken on it) to start afresh.
    fn settle<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// What a relay sees of the leases at one look (see [`Store::lease_view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseView {
    /// Live relay instances (heartbeat not expired, session not gone), in
    /// byte order of their ids.
    pub live: Vec<String>,
    /// Instances that looked live but whose session is gone (PostgreSQL):
    /// their leases were freed and they no longer count as live.
    pub gone: Vec<String>,
    /// The partitions this relay holds an unexpired lease on, ascending.
    pub mine: Vec<u32>,
    /// Partitions nobody holds (free, or their lease expired).
    pub free: u32,
}

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
    /// Connects with default options. URLs: `postgres://user:pass@host/db`,
    /// `sqlite://path/to/file.db` (created if missing) or `sqlite::memory:`.
    ///
    /// PostgreSQL TLS comes from the URL as in libpq: `sslmode`
    /// (`disable`, `prefer` (the default), `require`, `verify-ca`,
    /// `verify-full`), `sslrootcert` (the CA file; it adds to the system's
    /// trusted CAs), `sslcert` and `sslkey` (a client certificate), or the
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` environment
    /// variables. A TLS failure is an [`Error::Database`] naming the cause
    /// (an unknown CA, a certificate for another host name, a server
    /// without TLS).
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    /// Connects with `options`. Connection errors never include the password.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store> {
        options.validate()?;
        let url = DatabaseUrl::new(url);
        let dialect = dialect_of(&url)?;
        let wake = Wake::default();
        let shutdown = CancellationToken::new();
        let pool = match dialect {
            Dialect::Postgres => {
                tls::check_url(&url, "")?;
                let connect = PgConnectOptions::from_str(url.expose()).map_err(|_| {
                    Error::config("url", format!("cannot parse PostgreSQL URL {url}"))
                })?;
                let pool = PgPoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(max_connections(&options, 10)?)
                    .min_connections(options.min_connections)
                    .acquire_timeout(options.connect_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| connect_error(e, &url))?;
                Pool::Postgres(pool, Arc::new(PgSql::new(&options.table_prefix)))
            }
            Dialect::Sqlite => {
                let connect = sqlite_options(&url)?;
                let pool = SqlitePoolOptions::new()
                    .test_before_acquire(false)
                    .after_connect(wake_on_sqlite_commit(&wake, &options.table_prefix))
                    .max_connections(max_connections(&options, 4)?)
                    .min_connections(options.min_connections)
                    .acquire_timeout(options.connect_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| connect_error(e, &url))?;
                Pool::Sqlite(pool, Arc::new(SqliteSql::new(&options.table_prefix)))
            }
        };
        if let Pool::Postgres(pg, _) = &pool {
            wake.attach_postgres(pg, &options.table_prefix, &shutdown);
        }
        tracing::debug!(url = %url, %dialect, "relaybox store connected");
        Ok(Store {
            scoped: None,
            inner: Arc::new(StoreInner {
                url,
                pool,
                limits: Limits {
                    max_payload_bytes: options.max_payload_bytes,
                },
                options,
                partitions: OnceCell::new(),
                wake,
                closed: AtomicBool::new(false),
                shutdown,
            }),
        })
    }

    /// This store as seen by a relay that serves `topics` only (`None`: every
    /// topic): the same pool, with lease statements on the lane of `topics`
    /// and claims of rows of those topics only (see [`crate::route`]).
    ///
    /// With `park_keys` off, the claims take no notice of the relay's dead
    /// letters (see `RelayConfig::park_keys`); the store's own statements park keys.
    pub(crate) fn for_relay(
        &self,
        topics: Option<&crate::route::Topics>,
        park_keys: bool,
    ) -> Store {
        let prefix = &self.inner.options.table_prefix;
        let scope = match topics {
            None if park_keys => return self.clone(),
            None => scope::LeaseScope::every_topic(prefix),
            Some(topics) => scope::LeaseScope::lane(prefix, topics),
        }
        .parking(prefix, park_keys);
        let pool = match &self.inner.pool {
            Pool::Postgres(pool, _) => {
                Pool::Postgres(pool.clone(), Arc::new(PgSql::scoped(prefix, &scope)))
            }
            Pool::Sqlite(pool, _) => {
                Pool::Sqlite(pool.clone(), Arc::new(SqliteSql::scoped(prefix, &scope)))
            }
        };
        Store {
            inner: self.inner.clone(),
            scoped: Some(Arc::new(pool)),
        }
    }

    /// The live relay instances and the topic patterns of each (`None` for
    /// one that serves every topic).
    pub(crate) async fn live_topics(&self) -> Result<Vec<(String, Option<crate::route::Topics>)>> {
        let rows = match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::live_topics(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::live_topics(pool, sql).await,
        }?;
        Ok(rows
            .into_iter()
            .map(|(owner, topics)| {
                let topics = topics.and_then(|t| crate::route::Topics::from_json(&t));
                (owner, topics)
            })
            .collect())
    }

    /// Creates the lease rows of this store's lane (see
    /// [`for_topics`](Store::for_topics)) when missing; nothing otherwise.
    pub(crate) async fn seed_lane(&self) -> Result<()> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::seed_lane(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::seed_lane(pool, sql).await,
        }
    }

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
        let n = match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::partition_count(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::partition_count(pool, sql).await,
        }?;
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

    /// Writes `message` to the outbox through `conn`: your own sqlx transaction
    /// (`&mut *tx`) or connection, so the event commits with your data.
    /// The message is validated first; an invalid one writes nothing.
    ///
    /// A message with an idempotency key already taken on its topic writes
    /// nothing; the id returned is then the id of the message that took it.
    pub async fn enqueue<C: OutboxConnection>(&self, conn: C, message: Message) -> Result<Uuid> {
        let ids = self
            .enqueue_batch(conn, std::slice::from_ref(&message))
            .await?;
        Ok(ids[0])
    }

    /// Writes many messages in one statement; all are validated before any is written.
    pub async fn enqueue_batch<C: OutboxConnection>(
        &self,
        conn: C,
        messages: &[Message],
    ) -> Result<Vec<Uuid>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let messages = crate::telemetry::stamp(messages);
        self.validate_messages(&messages)?;
        let written = conn.insert_outbox(self, &messages).await?;
        self.outbox_changed_in(&written.partitions);
        Ok(written.ids)
    }

    /// The INSERT statement and parameters that write `message` to the outbox,
    /// for host-language drivers (psycopg, asyncpg, SQLAlchemy, node-postgres,
    /// Ecto). Validates first. See [`InsertStatement`] for the parameter types.
    pub async fn insert_statement(
        &self,
        message: &Message,
        style: Placeholders,
    ) -> Result<InsertStatement> {
        self.insert_batch_statement(std::slice::from_ref(message), style)
            .await
    }

    /// One INSERT statement writing all of `messages` (at most
    /// [`HOST_BATCH_MAX`]), for host-language drivers. Every message is
    /// validated first; an invalid one, an empty batch or a larger one is
    /// an error and no statement is made.
    pub async fn insert_batch_statement(
        &self,
        messages: &[Message],
        style: Placeholders,
    ) -> Result<InsertStatement> {
        if messages.iter().any(|m| m.idempotency_key.is_some()) {
            return Err(Error::InvalidMessage {
                field: "idempotency_key",
                reason: "idempotency keys are settled by relaybox's own enqueue (Store::enqueue, \
                         Transaction::enqueue), not by a statement run through another driver"
                    .into(),
            });
        }
        if messages.is_empty() || messages.len() > HOST_BATCH_MAX {
            return Err(Error::InvalidValue {
                reason: format!(
                    "a host INSERT statement carries 1 to {HOST_BATCH_MAX} messages, not {}",
                    messages.len()
                ),
            });
        }
        let partitions = self.prepare(messages).await?;
        let (sql, params) = match self.pool()? {
            Pool::Postgres(_, sql) => sql.host_insert(messages, &partitions, style),
            Pool::Sqlite(_, sql) => sql.host_insert(messages, &partitions, style),
        };
        let names = if style.is_named() {
            (1..=params.len()).map(|n| format!("p{n}")).collect()
        } else {
            Vec::new()
        };
        let wake = self.wake_statement().map(|notify| {
            let mut parts = partitions.clone();
            parts.sort_unstable();
            parts.dedup();
            let list: Vec<String> = parts.iter().map(u32::to_string).collect();
            // Digits and commas: safe to inline, and no placeholder in any style.
            format!("{notify}, '{}'", list.join(","))
        });
        Ok(InsertStatement {
            sql,
            params,
            names,
            message_id: messages[0].id,
            message_ids: messages.iter().map(|m| m.id).collect(),
            wake,
        })
    }

    /// [`insert_batch_statement`](Store::insert_batch_statement) for any
    /// number of messages: one statement per [`HOST_BATCH_MAX`] messages,
    /// to run in order in one transaction. Every message is validated
    /// before any statement is made; no messages, no statements.
    pub async fn insert_batch_statements(
        &self,
        messages: &[Message],
        style: Placeholders,
    ) -> Result<Vec<InsertStatement>> {
        self.validate_messages(messages)?;
        let mut statements = Vec::with_capacity(messages.len().div_ceil(HOST_BATCH_MAX));
        for chunk in messages.chunks(HOST_BATCH_MAX) {
            statements.push(self.insert_batch_statement(chunk, style).await?);
        }
        Ok(statements)
    }

    /// Begins an owned transaction for your business writes and enqueues.
    pub async fn begin(&self) -> Result<crate::Transaction> {
        crate::transaction::Transaction::begin(self.clone()).await
    }

    /// Per-topic backlog, dead letters and lease owners.
    pub async fn status(&self) -> Result<Status> {
        let partitions = self.partitions().await?;
        let mut status = match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::status(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::status(pool, sql).await,
        }?;
        status.partitions = partitions;
        Ok(status)
    }

    /// Lists up to `limit` dead letters, oldest failure first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::dead_letters(pool, sql, limit).await,
            Pool::Sqlite(pool, sql) => sqlite::dead_letters(pool, sql, limit).await,
        }
    }

    /// Lists up to `limit` dead letters that match `query`, most recent
    /// failure first.
    pub async fn search_dead_letters(
        &self,
        query: &DeadLetterQuery,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::search_dead_letters(pool, sql, query, limit).await
            }
            Pool::Sqlite(pool, sql) => sqlite::search_dead_letters(pool, sql, query, limit).await,
        }
    }

    /// How many rows were ever inserted into the outbox: the high-water mark
    /// of its `seq` column, which deleting rows does not lower (0 before the
    /// first insert; on PostgreSQL, inserts rolled back count too, as they
    /// use up sequence values). Two readings a moment apart give the
    /// enqueue rate.
    pub async fn outbox_high_water(&self) -> Result<i64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::outbox_high_water(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::outbox_high_water(pool, sql).await,
        }
    }

    /// The stored positions of every consumer group, by group and source,
    /// with the lag of those on the database transport's log.
    pub async fn consumer_positions(&self) -> Result<Vec<ConsumerPosition>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::consumer_positions(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::consumer_positions(pool, sql).await,
        }
    }

    /// Moves dead letters back into the outbox (same id, attempts reset) so the
    /// relay delivers them again. Returns how many messages went back.
    pub async fn retry_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let n = match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::retry_dead_letters(pool, sql, filter).await,
            Pool::Sqlite(pool, sql) => sqlite::retry_dead_letters(pool, sql, filter).await,
        }?;
        self.inner.wake.outbox_changed();
        Ok(n)
    }

    /// Deletes dead letters for good. Returns how many were deleted.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::purge_dead_letters(pool, sql, filter).await,
            Pool::Sqlite(pool, sql) => sqlite::purge_dead_letters(pool, sql, filter).await,
        }
    }

    /// Deletes inbox rows processed longer ago than `older_than`.
    pub async fn purge_inbox(&self, older_than: Duration) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::purge_inbox(pool, sql, older_than).await,
            Pool::Sqlite(pool, sql) => sqlite::purge_inbox(pool, sql, older_than).await,
        }
    }

    /// Marks the producers' idempotency keys whose message has left the
    /// outbox (delivered or dead-lettered) as released, then deletes those
    /// released longer ago than `older_than`; a key whose message still
    /// waits is kept. Returns how many were deleted. Relays run this every
    /// minute with their `idempotency_window`, so a key is kept for that
    /// window after its message's delivery (to within that minute).
    pub async fn purge_idempotency_keys(&self, older_than: Duration) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::purge_idempotency_keys(pool, sql, older_than).await
            }
            Pool::Sqlite(pool, sql) => sqlite::purge_idempotency_keys(pool, sql, older_than).await,
        }
    }

    /// Deletes up to `limit` rows of the database transport's log appended
    /// longer ago than `older_than`, oldest first; with `keep_unread`, only
    /// rows that every consumer group member that has read the topic has
    /// passed (a topic no group has read keeps its rows). Returns how many
    /// were deleted. Relays run this with their `log_retention`.
    pub async fn purge_log(
        &self,
        older_than: Duration,
        keep_unread: bool,
        limit: u32,
    ) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::purge_log(pool, sql, older_than, keep_unread, limit).await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::purge_log(pool, sql, older_than, keep_unread, limit).await
            }
        }
    }

    /// Deletes up to `limit` dead letters that failed longer ago than
    /// `older_than`, oldest first. Returns how many were deleted. Relays run
    /// this with their `dead_letter_retention`.
    pub async fn purge_old_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::purge_old_dead_letters(pool, sql, older_than, limit).await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::purge_old_dead_letters(pool, sql, older_than, limit).await
            }
        }
    }

    /// Deletes outbox rows delivered longer ago than `older_than` (kept when a relay has a retention).
    pub async fn purge_sent(&self, older_than: Duration) -> Result<u64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::purge_sent(pool, sql, older_than).await,
            Pool::Sqlite(pool, sql) => sqlite::purge_sent(pool, sql, older_than).await,
        }
    }

    /// The stored position of a consumer group on a source.
    pub async fn position(&self, group: &str, source: &str) -> Result<Option<i64>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::position(pool, sql, group, source).await,
            Pool::Sqlite(pool, sql) => sqlite::position(pool, sql, group, source).await,
        }
    }

    /// Stores the position of a consumer group on a source (also to rewind it).
    pub async fn set_position(&self, group: &str, source: &str, position: i64) -> Result<()> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::set_position(pool, sql, group, source, position).await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::set_position(pool, sql, group, source, position).await
            }
        }
    }

    /// Appends messages to the log table in the given order, as one transaction,
    /// serialised with other appenders so positions grow in commit order.
    pub async fn append_log(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let n = self.partitions().await?;
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::append_log(pool, sql, messages, n).await,
            Pool::Sqlite(pool, sql) => sqlite::append_log(pool, sql, messages, n).await,
        }?;
        self.inner.wake.log_changed();
        Ok(())
    }

    /// Reads up to `limit` log entries of `topic` after `after`, in position order.
    pub async fn read_log(&self, topic: &str, after: i64, limit: u32) -> Result<Vec<LogEntry>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::read_log(pool, sql, topic, after, limit).await,
            Pool::Sqlite(pool, sql) => sqlite::read_log(pool, sql, topic, after, limit).await,
        }
    }

    /// Counts undelivered outbox rows.
    pub async fn pending_count(&self) -> Result<i64> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::pending_count(pool, sql).await,
            Pool::Sqlite(pool, sql) => sqlite::pending_count(pool, sql).await,
        }
    }

    // ---- relay side ----

    /// A lease session for the relay instance `owner`; nothing is opened
    /// until [`hold_presence`](Store::hold_presence).
    pub(crate) fn lease_session(&self, owner: &str) -> LeaseSession {
        LeaseSession {
            owner: owner.to_string(),
            conn: None,
        }
    }

    /// Makes sure `session` holds its presence lock (PostgreSQL): connects
    /// and takes the lock when it has no connection. False when another
    /// session holds the lock: a relay freeing the leases of this instance
    /// (it looked gone), or another relay running with the same
    /// `instance_id`. Always true on SQLite.
    pub(crate) async fn hold_presence(&self, session: &mut LeaseSession) -> Result<bool> {
        let pool = match self.pool() {
            Ok(pool) => pool,
            Err(e) => {
                // A closed store: let the presence lock go, so that other
                // relays take this one's partitions without waiting.
                session.conn = None;
                return Err(e);
            }
        };
        match pool {
            Pool::Postgres(pool, sql) => {
                if session.conn.is_some() {
                    return Ok(true);
                }
                let timeout = self.inner.options.connect_timeout;
                let mut conn = postgres::presence_connection(pool, &session.owner, timeout).await?;
                if postgres::take_presence(&mut conn, sql, &session.owner).await? {
                    session.conn = Some(conn);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Pool::Sqlite(..) => Ok(true),
        }
    }

    /// One look at the leases: the live instances, this relay's leases and
    /// how many partitions are free. On PostgreSQL it also tries the
    /// presence lock of every other live instance: an instance whose lock
    /// it can take has no session any more, so its leases are freed at once
    /// and its heartbeat expired (listed in `gone`), then the lock is let
    /// go. Otherwise read-only, one statement: a relay looks often and
    /// refreshes its leases only when a look says something changed.
    pub(crate) async fn lease_view(&self, session: &mut LeaseSession) -> Result<LeaseView> {
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let owner = session.owner.clone();
                let result = postgres::lease_view(session.pg()?, sql, &owner).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::lease_view(pool, sql, &session.owner).await,
        }
    }

    /// Records the relay as live until `ttl` from now; returns every live
    /// instance, itself included, in byte order of their ids.
    pub(crate) async fn heartbeat(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let owner = session.owner.clone();
        let mut live = match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::heartbeat(session.pg()?, sql, &owner, ttl).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::heartbeat(pool, sql, &owner, ttl).await,
        }?;
        live.sort_unstable();
        Ok(live)
    }

    /// Extends the leases the relay still owns to `ttl` from now; returns
    /// their partitions.
    pub(crate) async fn renew_leases(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
    ) -> Result<Vec<u32>> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::renew_leases(session.pg()?, sql, &owner, ttl).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::renew_leases(pool, sql, &owner, ttl).await,
        }
    }

    /// Takes up to `max` free or expired partitions for `ttl`; returns them.
    pub(crate) async fn acquire_leases(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
        max: u32,
    ) -> Result<Vec<u32>> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::acquire_leases(session.pg()?, sql, &owner, ttl, max).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::acquire_leases(pool, sql, &owner, ttl, max).await,
        }
    }

    /// Releases `partitions` so that other relays can take them at once.
    pub(crate) async fn release_leases(
        &self,
        session: &mut LeaseSession,
        partitions: &[u32],
    ) -> Result<()> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result =
                    postgres::release_leases(session.pg()?, sql, &owner, Some(partitions)).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::release_leases(pool, sql, &owner, Some(partitions)).await
            }
        }
    }

    /// Releases every lease of `owner` and removes it from the live
    /// instances, through the pool (the relay's presence connection may be
    /// the reason it stops).
    pub(crate) async fn leave(&self, owner: &str) -> Result<()> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                let mut conn = pool.acquire().await?;
                postgres::release_leases(&mut conn, sql, owner, None).await?;
                postgres::remove_instance(&mut conn, sql, owner).await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::release_leases(pool, sql, owner, None).await?;
                sqlite::remove_instance(pool, sql, owner).await
            }
        }
    }

    /// Makes the rows of `ids` that wait for a retry (`attempts > 0`,
    /// `available_at` still ahead) due now, among the partitions `owner`
    /// holds; returns how many. Rows delayed by their producer
    /// (`available_at` set at enqueue, never attempted) are not touched.
    /// Order per key is kept: a row made due is claimed before the later
    /// rows of its key, which wait behind it.
    pub(crate) async fn retry_now(&self, owner: &str, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::retry_now(pool, sql, owner, ids).await,
            Pool::Sqlite(pool, sql) => sqlite::retry_now(pool, sql, owner, ids).await,
        }
    }

    pub(crate) async fn claim(&self, owner: &str, slice: Slice, limit: u32) -> Result<Claim> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => postgres::claim(pool, sql, owner, slice, limit).await,
            Pool::Sqlite(pool, sql) => sqlite::claim(pool, sql, owner, slice, limit).await,
        }
    }

    /// Whether `other` is this very store (same pool), so that one
    /// transaction can span what both do.
    pub(crate) fn same_store(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Claims a batch and moves it into this store's own log in one
    /// transaction (PostgreSQL), returning how many moved per topic (no
    /// entry for a topic with none) and, with `traced`, the moved messages'
    /// topic, id and trace context headers; `None` where the dialect has no
    /// such path.
    pub(crate) async fn move_to_log(
        &self,
        owner: &str,
        slice: Slice,
        limit: u32,
        keep_sent: bool,
        traced: bool,
    ) -> Result<Option<(Vec<(String, u64)>, Vec<Message>)>> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                let moved =
                    postgres::move_to_log(pool, sql, owner, slice, limit, keep_sent, traced)
                        .await?;
                if !moved.0.is_empty() {
                    self.inner.wake.log_changed();
                }
                Ok(Some(moved))
            }
            Pool::Sqlite(..) => Ok(None),
        }
    }

    pub(crate) async fn complete(
        &self,
        owner: &str,
        claim: Claim,
        done: Completion,
        keep_sent: bool,
    ) -> Result<()> {
        match (self.pool()?, claim.hold) {
            (Pool::Postgres(_, sql), ClaimHold::Postgres { tx, addresses }) => {
                postgres::complete(tx, addresses, &claim.messages, sql, done, keep_sent).await
            }
            (Pool::Sqlite(pool, sql), ClaimHold::Sqlite) => {
                sqlite::complete(
                    pool,
                    sql,
                    owner,
                    &claim.rows,
                    &claim.messages,
                    done,
                    keep_sent,
                )
                .await
            }
            _ => Err(Error::internal("claim of another dialect")),
        }
    }

    // ---- consumer side ----

    pub(crate) async fn dead_letter_consumed(
        &self,
        group: &str,
        message: &Message,
        attempts: u32,
        error: &str,
    ) -> Result<()> {
        let partition = Store::place(std::slice::from_ref(message), self.partitions().await?)[0];
        let origin = format!("consumer:{group}");
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                postgres::insert_dead_letter(
                    pool, sql, message, partition, &origin, attempts, error,
                )
                .await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::insert_dead_letter(pool, sql, message, partition, &origin, attempts, error)
                    .await
            }
        }
    }
}

/// How a dialect takes one producer's idempotency key in the caller's
/// transaction.
#[async_trait::async_trait]
pub(crate) trait KeyTaker: Send {
    /// Takes `key` on `topic` for message `id`: `None` when it is taken now
    /// (write the message), else the id of the message that holds it.
    async fn take_key(&mut self, topic: &str, key: &str, id: Uuid) -> Result<Option<Uuid>>;
}

/// Takes the idempotency keys of `messages`: per message, `None` to write it
/// (no key, or a key taken now) or the id of the message that took its key
/// before (an earlier enqueue, or an earlier message of the batch). `None`
/// for the whole batch when no message has a key (nothing is run).
pub(crate) async fn take_idempotency_keys(
    taker: &mut impl KeyTaker,
    messages: &[Message],
) -> Result<Option<Vec<Option<Uuid>>>> {
    if messages.iter().all(|m| m.idempotency_key.is_none()) {
        return Ok(None);
    }
    let mut taken: Vec<Option<Uuid>> = Vec::with_capacity(messages.len());
    for (m, earlier) in messages.iter().zip(earlier_with_same_key(messages)) {
        let holder = match (m.idempotency_key.as_deref(), earlier) {
            (None, _) => None,
            (Some(_), Some(j)) => Some(taken[j].unwrap_or(messages[j].id)),
            (Some(key), None) => taker.take_key(&m.topic, key, m.id).await?,
        };
        taken.push(holder);
    }
    Ok(Some(taken))
}

/// Per message of a batch, the index of an earlier message of the batch with
/// the same topic and idempotency key (`None`: the first, or no key).
fn earlier_with_same_key(messages: &[Message]) -> Vec<Option<usize>> {
    let mut first: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::new();
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let key = m.idempotency_key.as_deref()?;
            match first.entry((m.topic.as_str(), key)) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    None
                }
            }
        })
        .collect()
}

/// What writing a batch did: the partitions of the rows written, and per
/// message the id enqueue returns (a message whose idempotency key was taken
/// returns the id of the message that took it, and is not written).
#[doc(hidden)]
#[derive(Debug)]
pub struct Written {
    /// Partitions of the rows written, in batch order.
    pub partitions: Vec<u32>,
    /// One id per message of the batch.
    pub ids: Vec<Uuid>,
}

/// The rows to write for `messages` and what enqueue reports, given how
/// their idempotency keys were settled (`taken`: per message, the id an
/// earlier enqueue wrote under its key, or `None` to write it; no `taken`:
/// no message has a key) and the outbox's partition count.
fn to_write(
    messages: &[Message],
    taken: Option<Vec<Option<Uuid>>>,
    partitions: u32,
) -> (std::borrow::Cow<'_, [Message]>, Written) {
    let Some(taken) = taken else {
        let written = Written {
            partitions: Store::place(messages, partitions),
            ids: messages.iter().map(|m| m.id).collect(),
        };
        return (std::borrow::Cow::Borrowed(messages), written);
    };
    let fresh: Vec<Message> = messages
        .iter()
        .zip(&taken)
        .filter(|(_, t)| t.is_none())
        .map(|(m, _)| m.clone())
        .collect();
    let ids = messages
        .iter()
        .zip(taken)
        .map(|(m, t)| t.unwrap_or(m.id))
        .collect();
    let written = Written {
        partitions: Store::place(&fresh, partitions),
        ids,
    };
    (std::borrow::Cow::Owned(fresh), written)
}

/// A connection that relaybox can write outbox rows through: `&mut PgConnection`
/// or `&mut SqliteConnection`, which is what `&mut *tx` gives for an sqlx
/// transaction, pooled connection or plain connection.
#[async_trait::async_trait]
pub trait OutboxConnection: Send {
    /// Inserts validated messages with their partitions in one statement,
    /// after settling their idempotency keys; see [`Written`].
    #[doc(hidden)]
    async fn insert_outbox(self, store: &Store, messages: &[Message]) -> Result<Written>;
}

#[async_trait::async_trait]
impl OutboxConnection for &mut PgConnection {
    async fn insert_outbox(self, store: &Store, messages: &[Message]) -> Result<Written> {
        match store.pool()? {
            Pool::Postgres(_, sql) => {
                let n = match store.cached_partitions() {
                    Some(n) => n,
                    None => {
                        store.cache_partitions(postgres::partition_count(&mut *self, sql).await?)?
                    }
                };
                let mut keys = postgres::PgKeys {
                    conn: &mut *self,
                    sql,
                };
                let taken = take_idempotency_keys(&mut keys, messages).await?;
                let (rows, written) = to_write(messages, taken, n);
                if !rows.is_empty() {
                    postgres::insert_outbox(self, sql, &rows, &written.partitions).await?;
                }
                Ok(written)
            }
            Pool::Sqlite(..) => Err(Error::config(
                "connection",
                "a PostgreSQL connection was given to a SQLite store",
            )),
        }
    }
}

#[async_trait::async_trait]
impl OutboxConnection for &mut SqliteConnection {
    async fn insert_outbox(self, store: &Store, messages: &[Message]) -> Result<Written> {
        match store.pool()? {
            Pool::Sqlite(_, sql) => {
                let n = match store.cached_partitions() {
                    Some(n) => n,
                    None => {
                        store.cache_partitions(sqlite::partition_count(&mut *self, sql).await?)?
                    }
                };
                let mut keys = sqlite::SqliteKeys {
                    conn: &mut *self,
                    sql,
                };
                let taken = take_idempotency_keys(&mut keys, messages).await?;
                let (rows, written) = to_write(messages, taken, n);
                if !rows.is_empty() {
                    sqlite::insert_outbox(self, sql, &rows, &written.partitions).await?;
                }
                Ok(written)
            }
            Pool::Postgres(..) => Err(Error::config(
                "connection",
                "a SQLite connection was given to a PostgreSQL store",
            )),
        }
    }
}

type AfterConnect = Box<
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
fn wake_on_sqlite_commit(wake: &Wake, prefix: &str) -> AfterConnect {
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

fn dialect_of(url: &DatabaseUrl) -> Result<Dialect> {
    let u = url.expose();
    if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        Ok(Dialect::Postgres)
    } else if u.starts_with("sqlite:") {
        Ok(Dialect::Sqlite)
    } else {
        Err(Error::config(
            "url",
            format!("unsupported database URL {url}; use postgres://... or sqlite://..."),
        ))
    }
}

fn sqlite_options(url: &DatabaseUrl) -> Result<SqliteConnectOptions> {
    let raw = url.expose();
    let in_memory = raw == "sqlite::memory:" || raw == "sqlite://:memory:";
    let options = if in_memory {
        // One shared in-memory database for every pooled connection of this store.
        SqliteConnectOptions::from_str(&format!(
            "sqlite:file:relaybox-{}?mode=memory&cache=shared",
            Uuid::now_v7().simple()
        ))
    } else {
        SqliteConnectOptions::from_str(raw)
    }
    .map_err(|_| Error::config("url", format!("cannot parse SQLite URL {url}")))?;
    let options = options
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    Ok(if in_memory {
        options
    } else {
        options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    })
}

fn connect_error(err: sqlx::Error, url: &DatabaseUrl) -> Error {
    if let Some(tls) = tls::pg_tls_error(&err, url) {
        return tls;
    }
    match Error::from(err) {
        Error::Database {
            message,
            sql_code,
            retryable,
        } => Error::Database {
            message: format!("cannot connect to {url}: {message}"),
            sql_code,
            retryable,
        },
        other => other,
    }
}

/// Seconds as f64, for interval arithmetic in SQL.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn parse_headers(text: &str) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| Error::InvalidValue {
        reason: format!("headers column is not a JSON object of strings: {e}"),
    })
}

pub(crate) fn headers_json(m: &Message) -> String {
    serde_json::to_string(&m.headers).expect("string maps serialise")
}

/// The statement that records one consumed message in the inbox, in the
/// placeholder style a host driver asked for: a host-mode consumer
/// ([`crate::consumer_host`]) hands it to the binding, which runs it first in
/// the host's transaction. One row inserted: the message is new; none (it
/// ends in `ON CONFLICT DO NOTHING`): the group processed it already.
///
/// Parameters, all types every driver binds natively: on PostgreSQL the
/// group and the message id as text (the SQL casts the id to `uuid`); on
/// SQLite the group, the message id (text) and the time (integer
/// microseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboxStatement {
    /// The SQL text.
    pub sql: String,
    /// The parameters, in placeholder order.
    pub params: Vec<crate::value::Value>,
    /// The parameter names (`p1`, `p2`, ...) for a named placeholder style,
    /// in the order of `params`; empty for positional styles.
    pub names: Vec<String>,
}

impl Store {
    /// The inbox INSERT of `message_id` for consumer `group`, in `style`
    /// (see [`InboxStatement`]).
    pub fn inbox_statement(
        &self,
        group: &str,
        message_id: Uuid,
        style: Placeholders,
    ) -> Result<InboxStatement> {
        let (sql, params) = match self.pool()? {
            Pool::Postgres(_, sql) => postgres::inbox_statement(sql, group, message_id, style),
            Pool::Sqlite(_, sql) => sqlite::inbox_statement(sql, group, message_id, style),
        };
        let names = if style.is_named() {
            (1..=params.len()).map(|n| format!("p{n}")).collect()
        } else {
            Vec::new()
        };
        Ok(InboxStatement { sql, params, names })
    }

    /// One inbox INSERT of several messages for consumer `group`, in
    /// `style`, that returns the id (as text) of each message it inserted:
    /// an id it does not return was processed by the group before (or
    /// appears earlier in `message_ids`). Parameters as
    /// [`Store::inbox_statement`]'s, repeated per message.
    pub fn inbox_run_statement(
        &self,
        group: &str,
        message_ids: &[Uuid],
        style: Placeholders,
    ) -> Result<InboxStatement> {
        if message_ids.is_empty() {
            return Err(Error::config(
                "message_ids",
                "must name at least one message",
            ));
        }
        let (sql, params) = match self.pool()? {
            Pool::Postgres(_, sql) => postgres::inbox_run_statement(sql, group, message_ids, style),
            Pool::Sqlite(_, sql) => sqlite::inbox_run_statement(sql, group, message_ids, style),
        };
        let names = if style.is_named() {
            (1..=params.len()).map(|n| format!("p{n}")).collect()
        } else {
            Vec::new()
        };
        Ok(InboxStatement { sql, params, names })
    }
}
