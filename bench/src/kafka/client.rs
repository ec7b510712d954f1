//! The Kafka clients of section 8: its messages, the producer settings
//! `KafkaSink` uses, records as the sink sends them, and the broker's admin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use relaybox::message::micros_rfc3339;
use relaybox::transport::kafka::{
    KafkaConfig, HEADER_CONTENT_TYPE, HEADER_CREATED_AT, HEADER_ID, HEADER_TYPE,
};
use relaybox::Message;

use crate::kafka::{KAFKA_KEYS, PARTITIONS, PAYLOAD_BYTES};

/// The `i`th message of this section: exactly 256 bytes of JSON
/// (`order_id` = `i`), key `customer-<i % KAFKA_KEYS>`, type `OrderPlaced`.
/// The third-party reader (bench/check_topic.py) relies on this shape.
pub(crate) fn kafka_message(topic: &str, i: usize) -> Message {
    let key = format!("customer-{:04}", i % KAFKA_KEYS);
    let body = |pad: usize| {
        serde_json::json!({
            "order_id": i,
            "customer": key,
            "amount_cents": (i * 7919) % 100_000,
            "currency": "EUR",
            "sku": format!("SKU-{:05}", i % 50_000),
            "qty": 1 + i % 5,
            "pad": "x".repeat(pad),
        })
    };
    let bare = serde_json::to_vec(&body(0)).expect("JSON").len();
    let value = body(PAYLOAD_BYTES.saturating_sub(bare));
    Message::json(topic, &value)
        .expect("a JSON payload")
        .with_key(key)
        .with_type("OrderPlaced")
}

/// The librdkafka settings `KafkaSink::new` uses with a default
/// `KafkaConfig` (core/src/transport/kafka/sink.rs); kept in step by hand.
pub(crate) fn sink_settings(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "0")
        .set("allow.auto.create.topics", "false");
    for (k, v) in extra_producer_properties() {
        c.set(k, v);
    }
    c
}

/// Producer properties from `RELAYBOX_BENCH_KAFKA_PROPS` (`k=v,k=v`),
/// applied to the ceiling's producer and the relay's `KafkaSink` alike.
pub(crate) fn extra_producer_properties() -> Vec<(String, String)> {
    std::env::var("RELAYBOX_BENCH_KAFKA_PROPS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The relay's Kafka settings: `create_topics`, `PARTITIONS` partitions.
pub(crate) fn kafka_config(bootstrap: &str) -> KafkaConfig {
    let mut config = KafkaConfig {
        create_topics: true,
        topic_partitions: PARTITIONS,
        ..KafkaConfig::new(bootstrap)
    };
    config
        .producer_properties
        .extend(extra_producer_properties());
    config
}

/// The record headers `KafkaSink` sends (codec.rs `headers_of`).
pub(crate) fn record_headers(m: &Message) -> OwnedHeaders {
    let id = m.id.to_string();
    let created = micros_rfc3339::format(&m.created_at);
    let mut h = OwnedHeaders::new_with_capacity(4 + m.headers.len());
    for (key, value) in [
        (HEADER_ID, id.as_str()),
        (HEADER_TYPE, m.event_type.as_str()),
        (HEADER_CONTENT_TYPE, m.content_type.as_str()),
        (HEADER_CREATED_AT, created.as_str()),
    ] {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    for (k, v) in &m.headers {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_str()),
        });
    }
    h
}

/// The record `KafkaSink` builds for `m`, sent to `topic`.
pub(crate) fn record<'a>(topic: &'a str, m: &'a Message) -> FutureRecord<'a, str, [u8]> {
    let mut r = FutureRecord::<str, [u8]>::to(topic)
        .payload(&m.payload)
        .headers(record_headers(m))
        .timestamp(m.created_at.timestamp_millis());
    if let Some(key) = &m.key {
        r = r.key(key.as_str());
    }
    r
}

pub(crate) async fn delivered(d: DeliveryFuture) -> Result<()> {
    match d.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => bail!("a delivery failed: {e}"),
        Err(_) => bail!("the producer dropped a delivery report"),
    }
}

/// Admin and metadata access to the broker.
pub(crate) struct Broker {
    pub(crate) bootstrap: String,
    pub(crate) admin: AdminClient<DefaultClientContext>,
    /// A producer used for metadata and watermarks only. A `BaseProducer`
    /// starts no polling thread, so it costs nothing while the idle CPU is
    /// measured.
    pub(crate) meta: Arc<BaseProducer>,
}

impl Broker {
    pub(crate) fn connect(bootstrap: &str) -> Result<Broker> {
        Ok(Broker {
            bootstrap: bootstrap.to_string(),
            admin: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .context("creating a Kafka admin client")?,
            meta: Arc::new(
                sink_settings(bootstrap)
                    .create()
                    .context("creating a Kafka producer")?,
            ),
        })
    }

    /// "N broker(s): id@host:port ...".
    pub(crate) async fn describe(&self) -> Result<String> {
        let meta = self.meta.clone();
        let md = tokio::task::spawn_blocking(move || {
            meta.client().fetch_metadata(None, Duration::from_secs(10))
        })
        .await?
        .context("fetching Kafka metadata: is the broker up?")?;
        let brokers: Vec<String> = md
            .brokers()
            .iter()
            .map(|b| format!("id {} at {}:{}", b.id(), b.host(), b.port()))
            .collect();
        Ok(format!(
            "{} broker(s): {}",
            brokers.len(),
            brokers.join(", ")
        ))
    }

    /// Creates `topic` with `partitions` partitions (replication 1).
    pub(crate) async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in self.admin.create_topics([&new], &options).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("could not create topic {name}: {code}"),
            }
        }
        Ok(())
    }

    /// Waits until `topic` has `partitions` partitions, each with a leader.
    pub(crate) async fn wait_ready(&self, topic: &str, partitions: i32) -> Result<()> {
        let since = Instant::now();
        loop {
            let meta = self.meta.clone();
            let name = topic.to_string();
            let md = tokio::task::spawn_blocking(move || {
                meta.client()
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
            })
            .await??;
            let ready = md.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.leader() >= 0)
            });
            if ready {
                return Ok(());
            }
            ensure!(
                since.elapsed() < Duration::from_secs(30),
                "topic {topic} has no leaders after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `topic` with [`PARTITIONS`] partitions and a producer with
    /// `KafkaSink`'s settings, connected and knowing the topic's leaders, so
    /// that a clock started afterwards times producing alone.
    pub(crate) async fn fresh_topic_producer(&self, topic: &str) -> Result<FutureProducer> {
        self.create_topic(topic, PARTITIONS).await?;
        self.wait_ready(topic, PARTITIONS).await?;
        let producer: FutureProducer = sink_settings(&self.bootstrap).create()?;
        let warm = producer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            warm.client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
        })
        .await??;
        Ok(producer)
    }

    /// Records in `topic` (of `partitions` partitions): the sum of its
    /// partitions' high - low watermarks.
    pub(crate) async fn records(&self, topic: &str, partitions: i32) -> Result<i64> {
        let meta = self.meta.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for p in 0..partitions {
                let (low, high) =
                    meta.client()
                        .fetch_watermarks(&name, p, Duration::from_secs(10))?;
                total += high - low;
            }
            Ok::<i64, KafkaError>(total)
        })
        .await?
        .map_err(Into::into)
    }
}
