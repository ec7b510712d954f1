//! [`EventoDbSource`]: reads a category with `category.get`, as one member
//! of a consumer group, with its position in relaybox's positions table.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use super::client::{Client, NAME};
use super::config::EventoDbConfig;
use crate::error::{Error, Result};
use crate::source::{AckToken, Delivery, Source};
use crate::store::Store;
use crate::transport::message_db::mapping::{check_category, incoming, lane_of, Incoming};
use crate::transport::message_db::Positions;

/// The largest `batchSize` the server accepts for `category.get`.
const MAX_BATCH: usize = 10_000;

/// A [`Source`] reading one EventoDB category.
///
/// Calls `["category.get", category, {position, batchSize, consumerGroup:
/// {member, size}}]` from just after the stored global position, so the
/// members of a group split the category by stream, each stream in order;
/// deliveries are laned by stream. The acknowledgement offset is the global
/// position, stored in the relaybox store's positions table under
/// `eventodb:<category>:<member>/<size>` for the consumer group. Dead letters
/// go to the relaybox `dead_letters` table. A token the server refuses is
/// [`Error::InvalidConfig`] of `eventodb.token`.
#[derive(Debug)]
pub struct EventoDbSource {
    config: EventoDbConfig,
    category: String,
    client: Client,
    positions: Positions,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Positions")
    }
}

impl EventoDbSource {
    /// Reads `category` (a relaybox topic) as consumer group `group`, with
    /// positions in `store`.
    pub fn new(
        config: EventoDbConfig,
        store: &Store,
        category: &str,
        group: &str,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        check_category(category)?;
        let client = Client::new(&config)?;
        let positions = Positions::new(
            store.clone(),
            NAME,
            category,
            group,
            config.consumer_group_member,
            config.consumer_group_size,
        )?;
        Ok(Arc::new(EventoDbSource {
            config,
            category: category.to_string(),
            client,
            positions,
        }))
    }

    /// The global position stored for this member (None before its first acknowledgement).
    pub async fn stored_position(&self) -> Result<Option<i64>> {
        self.positions.stored().await
    }

    async fn read(&self, from: i64, max: usize) -> Result<Vec<Delivery>> {
        let mut options = json!({"position": from, "batchSize": max.clamp(1, MAX_BATCH)});
        if self.config.consumer_group_size > 1 {
            options["consumerGroup"] = json!({
                "member": self.config.consumer_group_member,
                "size": self.config.consumer_group_size,
            });
        }
        if let Some(c) = &self.config.correlation {
            options["correlation"] = json!(c);
        }
        let result = self
            .client
            .call("category.get", vec![json!(self.category), options], None)
            .await?;
        let Json::Array(rows) = result else {
            return Err(bad_answer(&result));
        };
        rows.iter().map(delivery_of).collect()
    }
}

fn bad_answer(value: &Json) -> Error {
    Error::Transport {
        transport: NAME.into(),
        message: format!("category.get: unexpected answer {value}"),
        retryable: false,
        message_id: None,
    }
}

/// `[id, streamName, type, position, globalPosition, data, metadata, time]`
/// as a delivery laned by its stream.
fn delivery_of(row: &Json) -> Result<Delivery> {
    let field = |i: usize| row.get(i).ok_or_else(|| bad_answer(row));
    let id = field(0)?
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_answer(row))?;
    let stream_name = field(1)?
        .as_str()
        .ok_or_else(|| bad_answer(row))?
        .to_string();
    let message_type = field(2)?.as_str().unwrap_or_default().to_string();
    let global_position = field(4)?.as_i64().ok_or_else(|| bad_answer(row))?;
    let time = row
        .get(7)
        .and_then(Json::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let lane = lane_of(&stream_name);
    let message = incoming(Incoming {
        id,
        stream_name,
        message_type,
        data: field(5)?.clone(),
        metadata: row.get(6).cloned().unwrap_or(Json::Null),
        time,
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
impl Source for EventoDbSource {
    fn name(&self) -> &str {
        NAME
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
