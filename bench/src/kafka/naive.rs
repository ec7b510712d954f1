//! Section 8's naive poller: one row produced and awaited per round trip.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rdkafka::util::Timeout;
use relaybox::Message;
use sqlx::Row;

use crate::context::Bench;
use crate::kafka::client::{kafka_message, record, Broker};
use crate::kafka::DELIVERY_TIMEOUT;
use crate::naive::poll_one_row_at_a_time;

/// A hand-rolled poller ([`poll_one_row_at_a_time`]): SELECT one row,
/// produce it and await its delivery, mark it sent; sleeps 1 s when the
/// table is empty. Returns the rows delivered and the time taken.
pub(crate) async fn naive_to_kafka(
    b: &Bench,
    broker: &Broker,
    topic: &str,
) -> Result<(usize, Duration)> {
    let n = b.sizes.naive_rows;
    b.backlog_in_order(n, topic, kafka_message).await?;
    let producer = broker.fresh_topic_producer(topic).await?;
    let columns = "id, topic, key, type, payload, content_type, headers::text AS headers, created_at, available_at";
    poll_one_row_at_a_time(b, columns, async |_conn, row| {
        let headers: BTreeMap<String, String> =
            serde_json::from_str(row.try_get::<&str, _>("headers")?)?;
        let m = Message {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            key: row.try_get("key")?,
            event_type: row.try_get("type")?,
            payload: row.try_get("payload")?,
            content_type: row.try_get("content_type")?,
            headers,
            created_at: row.try_get("created_at")?,
            available_at: row.try_get("available_at")?,
            idempotency_key: None,
        };
        producer
            .send(record(topic, &m), Timeout::After(DELIVERY_TIMEOUT))
            .await
            .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
        Ok(m.id)
    })
    .await
}
