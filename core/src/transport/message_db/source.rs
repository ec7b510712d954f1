//! [`MessageDbSource`]: reads a category with Message DB's
//! `get_category_messages`, as one member of a consumer group, with its
//! position kept in relaybox's positions table.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::postgres::PgPool;
use sqlx::Row as _;
use tokio::sync::Mutex;

use super::config::MessageDbConfig;
use super::mapping::{check_category, incoming, lane_of, Incoming};
use super::sink::transport_error;
use crate::error::{Error, Result};
use crate::redact::DatabaseUrl;
use crate::source::{AckToken, Delivery, Source};
use crate::store::Store;

/// The cursor and stored position of a category reader, shared by the
/// Message DB and EventoDB sources: positions are global positions, stored
/// under `<prefix>:<category>:<member>/<size>` for the consumer group.
pub(crate) struct Positions {
    store: Store,
    group: String,
    key: String,
    /// The global position of the last message handed out (None before the
    /// stored position is read; -1 when nothing was ever processed).
    cursor: Mutex<Option<i64>>,
    /// The position last stored; writes take turns and only go forward.
    stored: Mutex<Option<i64>>,
}

impl Positions {
    pub(crate) fn new(
        store: Store,
        prefix: &str,
        category: &str,
        group: &str,
        member: u32,
        size: u32,
    ) -> Result<Self> {
        if group.is_empty() || group.len() > 200 {
            return Err(Error::config("group", "must be 1 to 200 characters"));
        }
        Ok(Positions {
            store,
            group: group.to_string(),
            key: format!("{prefix}:{category}:{member}/{size}"),
            cursor: Mutex::new(None),
            stored: Mutex::new(None),
        })
    }

    /// The stored position (None before the first acknowledgement).
    pub(crate) async fn stored(&self) -> Result<Option<i64>> {
        self.store.position(&self.group, &self.key).await
    }

    /// The cursor, read from the stored position on first use.
    pub(crate) async fn cursor(&self) -> Result<tokio::sync::MutexGuard<'_, Option<i64>>> {
        let mut cursor = self.cursor.lock().await;
        if cursor.is_none() {
            let stored = self.stored().await?;
            *self.stored.lock().await = stored;
            *cursor = Some(stored.unwrap_or(-1));
        }
        Ok(cursor)
    }

    /// Stores the highest acknowledged position, unless a later one is stored.
    pub(crate) async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        let Some(max) = acks.iter().map(|a| a.offset).max() else {
            return Ok(());
        };
        let mut stored = self.stored.lock().await;
        if stored.is_none_or(|s| max > s) {
            self.store.set_position(&self.group, &self.key, max).await?;
            *stored = Some(max);
        }
        Ok(())
    }
}

/// A [`Source`] reading one Message DB category.
///
/// Reads `get_category_messages(category, position, batch_size, correlation,
/// member, size)` from just after the stored position, so members of a
/// group split the category by stream (`@hash_64(cardinal_id) mod size`),
/// each stream in order; deliveries are laned by stream. The acknowledgement
/// offset is the global position, stored in the relaybox store's positions
/// table under `message_db:<category>:<member>/<size>` for the consumer
/// group, so it survives restarts. Dead letters go to the relaybox
/// `dead_letters` table (Message DB has no dead-letter stream of its own).
pub struct MessageDbSource {
    config: MessageDbConfig,
    url: DatabaseUrl,
    category: String,
    pool: PgPool,
    positions: Positions,
}

impl std::fmt::Debug for MessageDbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDbSource")
            .field("url", &self.url)
            .field("category", &self.category)
            .field("config", &self.config)
            .finish()
    }
}

impl MessageDbSource {
    /// Reads `category` (a relaybox topic) as consumer group `group`, with
    /// positions in `store`. Call inside a tokio runtime.
    pub fn new(
        config: MessageDbConfig,
        store: &Store,
        category: &str,
        group: &str,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        check_category(category)?;
        let url = config.url_for(store)?;
        let pool = config.pool(&url)?;
        let positions = Positions::new(
            store.clone(),
            "message_db",
            category,
            group,
            config.consumer_group_member,
            config.consumer_group_size,
        )?;
        Ok(Arc::new(MessageDbSource {
            config,
            url,
            category: category.to_string(),
            pool,
            positions,
        }))
    }

    /// The global position stored for this member (None before its first acknowledgement).
    pub async fn stored_position(&self) -> Result<Option<i64>> {
        self.positions.stored().await
    }

    async fn read(&self, from: i64, max: usize) -> Result<Vec<Delivery>> {
        let (member, size) = match self.config.consumer_group_size {
            1 => (None, None),
            size => (
                Some(i64::from(self.config.consumer_group_member)),
                Some(i64::from(size)),
            ),
        };
        let rows = sqlx::query(
            "SELECT id, stream_name, type, global_position, data, metadata, time \
             FROM message_store.get_category_messages($1, $2, $3, $4, $5, $6)",
        )
        .bind(&self.category)
        .bind(from)
        .bind(max.max(1) as i64)
        .bind(self.config.correlation.as_deref())
        .bind(member)
        .bind(size)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| transport_error(e.into(), None))?;
        rows.iter().map(delivery_of).collect()
    }
}

/// One row of `get_category_messages` as a delivery laned by its stream.
fn delivery_of(row: &sqlx::postgres::PgRow) -> Result<Delivery> {
    let id: String = row.try_get("id")?;
    let stream_name: String = row.try_get("stream_name")?;
    let global_position: i64 = row.try_get("global_position")?;
    let data: Option<String> = row.try_get("data")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let time: NaiveDateTime = row.try_get("time")?;
    let parse =
        |s: Option<String>| s.map_or(Ok(serde_json::Value::Null), |s| serde_json::from_str(&s));
    let lane = lane_of(&stream_name);
    let message = incoming(Incoming {
        id: id.parse().map_err(|e| Error::InvalidValue {
            reason: format!("Message DB message id {id:?}: {e}"),
        })?,
        message_type: row.try_get("type")?,
        data: parse(data).map_err(|e| Error::InvalidValue {
            reason: format!("data of message {id}: {e}"),
        })?,
        metadata: parse(metadata).unwrap_or(serde_json::Value::Null),
        time: time.and_utc(),
        stream_name,
    });
    Ok(Delivery {
        lane,
        ack: AckToken {
            partition: 0,
            offset: global_position,
        },
        message,
    })
}

#[async_trait::async_trait]
impl Source for MessageDbSource {
    fn name(&self) -> &str {
        "message_db"
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut cursor = self.positions.cursor().await?;
        loop {
            let after = cursor.unwrap_or(-1);
            let out = self.read(after + 1, max).await?;
            if let Some(last) = out.last() {
                *cursor = Some(last.ack.offset);
                return Ok(out);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep_until(deadline.min(now + self.config.poll_interval)).await;
        }
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        self.positions.ack(acks).await
    }
}
