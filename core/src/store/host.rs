//! Statements for host-language drivers: the outbox INSERT
//! ([`InsertStatement`]) and the inbox INSERT ([`InboxStatement`]) in the
//! placeholder style a driver takes ([`Placeholders`]), so that rows are
//! written inside the host application's own transaction.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::columns::headers_json;
use super::{postgres, sqlite, Pool, Store};
use crate::error::{Error, Result};
use crate::message::Message;

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

    /// The names of `count` parameters (`p1`, `p2`, ...) in a named style;
    /// none in a positional one.
    fn names(self, count: usize) -> Vec<String> {
        if self.is_named() {
            (1..=count).map(|n| format!("p{n}")).collect()
        } else {
            Vec::new()
        }
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
        let names = style.names(params.len());
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
        let names = style.names(params.len());
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
        let names = style.names(params.len());
        Ok(InboxStatement { sql, params, names })
    }
}
