//! Reading rows alike on both dialects: [`Stored`] names how each dialect
//! stores timestamps, ids and small integers, and the functions here decode
//! messages, dead letters, log entries, lease owners, parked keys and the
//! status from either dialect's rows.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::columns::parse_headers;
use super::rows::mark_served;
use super::{ConsumerPosition, DeadLetter, LeaseOwner, LogEntry, ParkedKey, Status, TopicBacklog};
use crate::error::{Error, Result};
use crate::message::{from_unix_micros, Message};

/// A row of either dialect, read column by column.
pub(super) trait Stored {
    /// A text column.
    fn text(&self, column: &str) -> Result<String>;
    /// A text column that may be null.
    fn text_or_null(&self, column: &str) -> Result<Option<String>>;
    /// A 64-bit integer column.
    fn int(&self, column: &str) -> Result<i64>;
    /// A byte column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
    /// A small count or partition (`integer` on PostgreSQL, SQLite's integer).
    fn small(&self, column: &str) -> Result<u32>;
    /// A timestamp (`timestamptz` on PostgreSQL, microseconds since the Unix
    /// epoch on SQLite).
    fn time(&self, column: &str) -> Result<DateTime<Utc>>;
    /// A message id (`uuid` on PostgreSQL, text on SQLite).
    fn id(&self, column: &str) -> Result<Uuid>;
}

/// The column reads both dialects' rows do the same way.
macro_rules! plain_columns {
    () => {
        fn text(&self, column: &str) -> Result<String> {
            Ok(self.try_get(column)?)
        }

        fn text_or_null(&self, column: &str) -> Result<Option<String>> {
            Ok(self.try_get(column)?)
        }

        fn int(&self, column: &str) -> Result<i64> {
            Ok(self.try_get(column)?)
        }

        fn bytes(&self, column: &str) -> Result<Vec<u8>> {
            Ok(self.try_get(column)?)
        }
    };
}

impl Stored for PgRow {
    plain_columns!();

    fn small(&self, column: &str) -> Result<u32> {
        Ok(self.try_get::<i32, _>(column)? as u32)
    }

    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        Ok(self.try_get(column)?)
    }

    fn id(&self, column: &str) -> Result<Uuid> {
        Ok(self.try_get(column)?)
    }
}

impl Stored for SqliteRow {
    plain_columns!();

    fn small(&self, column: &str) -> Result<u32> {
        Ok(self.try_get::<i64, _>(column)? as u32)
    }

    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        Ok(from_unix_micros(self.try_get(column)?))
    }

    fn id(&self, column: &str) -> Result<Uuid> {
        parse_id(self.try_get(column)?)
    }
}

/// A message id stored as text.
pub(super) fn parse_id(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| Error::InvalidValue {
        reason: format!("id column holds {text:?}, not a UUID: {e}"),
    })
}

/// The message of an outbox, log or dead-letter row.
pub(super) fn message_from_row(row: &impl Stored) -> Result<Message> {
    Ok(Message {
        id: row.id("id")?,
        topic: row.text("topic")?,
        key: row.text_or_null("key")?,
        event_type: row.text("type")?,
        payload: row.bytes("payload")?,
        content_type: row.text("content_type")?,
        headers: parse_headers(&row.text("headers")?)?,
        created_at: row.time("created_at")?,
        available_at: row.time("available_at")?,
        idempotency_key: None,
    })
}

/// A dead letter from a row of the dead-letter table.
pub(super) fn dead_letter_from_row(row: &impl Stored) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(row)?,
        origin: row.text("origin")?,
        attempts: row.small("attempts")?,
        last_error: row.text("last_error")?,
        failed_at: row.time("failed_at")?,
    })
}

/// A log entry from a row of the log table.
pub(super) fn log_entry_from_row(row: &impl Stored) -> Result<LogEntry> {
    Ok(LogEntry {
        position: row.int("position")?,
        message: message_from_row(row)?,
    })
}

/// One topic's backlog from a row of the backlog query, its oldest row
/// `oldest_age_seconds` old.
pub(super) fn backlog_from_row(row: &impl Stored, oldest_age_seconds: f64) -> Result<TopicBacklog> {
    Ok(TopicBacklog {
        topic: row.text("topic")?,
        pending: row.int("pending")?,
        oldest_age_seconds,
        retrying: row.int("retrying")?,
        served: false,
    })
}

/// A lease owner from a row of the owners query.
pub(super) fn lease_owner_from_row(row: &impl Stored) -> Result<LeaseOwner> {
    Ok(LeaseOwner {
        owner: row.text("owner")?,
        partitions: row.int("n")?,
        expires_at: row.time("expires_at")?,
    })
}

/// What the status queries read, decoded by [`status_of`].
pub(super) struct StatusParts<R> {
    /// Backlog per topic, `served` not set yet.
    pub topics: Vec<TopicBacklog>,
    /// Dead letters in total.
    pub dead_letters: i64,
    /// Current lease owners.
    pub lease_owners: Vec<LeaseOwner>,
    /// Live relay instances.
    pub live_relays: i64,
    /// The topics of each live relay (`None`: every topic).
    pub served: Vec<Option<String>>,
    /// Rows of the parked-keys query, each with the total.
    pub parked: Vec<R>,
}

/// The status from its parts: which topics a live relay serves, and the
/// parked keys with their total. The partition count is set by the caller.
pub(super) fn status_of<R: Stored>(parts: StatusParts<R>) -> Result<Status> {
    let StatusParts {
        mut topics,
        dead_letters,
        lease_owners,
        live_relays,
        served,
        parked,
    } = parts;
    mark_served(&mut topics, &served);
    let parked_keys_total = match parked.first() {
        Some(r) => r.int("total")?,
        None => 0,
    };
    let parked_keys = parked
        .iter()
        .map(|r| {
            Ok(ParkedKey {
                topic: r.text("topic")?,
                key: r.text("key")?,
                partition: r.small("partition")?,
                since: r.time("failed_at")?,
                dead_letter_id: r.id("id")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Status {
        topics,
        dead_letters,
        parked_keys,
        parked_keys_total,
        partitions: 0,
        lease_owners,
        live_relays,
    })
}

/// The consumer positions from the rows of the positions table (group,
/// source, position, time stored), in their order; for each log source,
/// `head_and_lag(topic, position)` reads the topic's last log position and
/// how many of its entries lie after the position.
pub(super) async fn positions_from_rows<R, F, Fut>(
    rows: &[R],
    head_and_lag: F,
) -> Result<Vec<ConsumerPosition>>
where
    R: Stored,
    F: Fn(String, i64) -> Fut,
    Fut: std::future::Future<Output = Result<(Option<i64>, i64)>>,
{
    let mut positions = Vec::with_capacity(rows.len());
    for row in rows {
        let source = row.text("source")?;
        let position = row.int("position")?;
        let topic = ConsumerPosition::log_topic(&source).map(str::to_string);
        let (head, lag) = match &topic {
            Some(topic) => {
                let (head, lag) = head_and_lag(topic.clone(), position).await?;
                (head, Some(lag))
            }
            None => (None, None),
        };
        positions.push(ConsumerPosition {
            group: row.text("consumer_group")?,
            source,
            topic,
            position,
            updated_at: row.time("updated_at")?,
            head,
            lag,
        });
    }
    Ok(positions)
}
