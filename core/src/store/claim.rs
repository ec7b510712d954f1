//! The relay's batches: claiming rows of its slice of the held partitions,
//! completing them (delivered, retried, dead-lettered), moving them into the
//! store's own log, and making rows of an ended outage due at once.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{postgres, sqlite, OutboxRow, Pool, Store};
use crate::error::{Error, Result};
use crate::message::Message;

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

impl Store {
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
        on_dialect!(self, retry_now(owner, ids))
    }

    /// Those of `ids` whose rows are still in the outbox, not sent: for a
    /// relay taking a partition over, the messages an earlier holder
    /// published whose rows it did not get to record.
    pub(crate) async fn unsent(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        on_dialect!(self, unsent(ids))
    }

    pub(crate) async fn claim(&self, owner: &str, slice: Slice, limit: u32) -> Result<Claim> {
        on_dialect!(self, claim(owner, slice, limit))
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
}
