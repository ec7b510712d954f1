//! Enqueueing through the caller's own connection: settling producers'
//! idempotency keys, choosing the rows to write and the [`OutboxConnection`]
//! that writes them.

use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use super::{postgres, sqlite, Pool, Store};
use crate::error::{Error, Result};
use crate::message::Message;

impl Store {
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
