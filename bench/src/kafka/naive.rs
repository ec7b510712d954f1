//! Section 8's naive poller: one row produced and awaited per round trip.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use relaybox::Message;
use sqlx::{AssertSqlSafe, Row};

use crate::context::Bench;
use crate::kafka::client::{kafka_message, record, sink_settings, Broker};
use crate::kafka::{DELIVERY_TIMEOUT, PARTITIONS};

/// A hand-rolled poller: SELECT one row, produce it and await its
/// delivery, mark it sent; sleeps 1 s when the table is empty. Returns the
/// rows delivered and the time taken.
pub(crate) async fn naive_to_kafka(
    b: &Bench,
    broker: &Broker,
    topic: &str,
) -> Result<(usize, Duration)> {
    let (n, limit) = (b.sizes.naive_rows, b.sizes.naive_max);
    b.backlog_in_order(n, topic, kafka_message).await?;
    broker.create_topic(topic, PARTITIONS).await?;
    broker.wait_ready(topic, PARTITIONS).await?;
    let producer: FutureProducer = sink_settings(&broker.bootstrap).create()?;
    let warm = producer.clone();
    let name = topic.to_string();
    tokio::task::spawn_blocking(move || {
        warm.client()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
    })
    .await??;
    let outbox = b.table("outbox");
    let select = format!(
        "SELECT id, topic, key, type, payload, content_type, headers::text AS headers, created_at, available_at \
         FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
    );
    let mark = format!("UPDATE {outbox} SET sent_at = now() WHERE id = $1");
    let mut conn = b.pool.acquire().await?;
    let started = Instant::now();
    let mut done = 0usize;
    while done < n && started.elapsed() < limit {
        let row = sqlx::query(AssertSqlSafe(select.as_str()))
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            // The hand-rolled poller's idle wait; never reached while the backlog lasts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
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
        sqlx::query(AssertSqlSafe(mark.as_str()))
            .bind(m.id)
            .execute(&mut *conn)
            .await?;
        done += 1;
    }
    Ok((done, started.elapsed()))
}
