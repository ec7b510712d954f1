//! [`KafkaSink`]: publishes relay batches with an idempotent producer and
//! reports each message's delivery.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::codec::headers_of;
use super::config::{config_error, KafkaConfig};
use super::kafka_error;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::{Acks, Sink};

/// A [`Sink`] that produces to Kafka.
///
/// The producer is idempotent (`enable.idempotence=true`, `acks=all`), so
/// retries inside librdkafka neither duplicate nor reorder records of a
/// partition. A whole batch is handed to librdkafka before any
/// acknowledgement is awaited, so it travels in a few pipelined requests.
/// A topic that does not exist is an error naming it, unless
/// `create_topics` is set, in which case it is created through the admin API.
#[derive(Clone)]
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    known_topics: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl KafkaSink {
    /// Creates the producer. Connection problems surface on the first publish.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let defaults = [
            ("enable.idempotence", "true".to_string()),
            ("acks", "all".to_string()),
            // The relay hands over a whole batch at once; lingering would only add latency.
            ("linger.ms", "0".to_string()),
            ("batch.num.messages", "10000".to_string()),
            (
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            ),
            ("allow.auto.create.topics", "false".to_string()),
        ];
        let producer: FutureProducer = config
            .client_config(&defaults, &config.producer_properties)
            .create()
            .map_err(config_error)?;
        Ok(KafkaSink {
            inner: Arc::new(Inner {
                config,
                producer,
                known_topics: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The settings this sink was created with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Makes sure `topic` exists: checks the broker's metadata, creating the
    /// topic when `create_topics` is set. Errors name the topic.
    pub async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self
            .inner
            .known_topics
            .lock()
            .expect("topic cache")
            .contains(topic)
        {
            return Ok(());
        }
        if !self.topic_exists(topic).await? {
            if !self.inner.config.create_topics {
                return Err(Error::Transport {
                    transport: "kafka".into(),
                    message: format!(
                        "topic {topic:?} does not exist (create it, or set create_topics)"
                    ),
                    retryable: true,
                    message_id: None,
                });
            }
            create_topic(&self.inner.config, topic).await?;
        }
        self.inner
            .known_topics
            .lock()
            .expect("topic cache")
            .insert(topic.to_string());
        Ok(())
    }

    async fn topic_exists(&self, topic: &str) -> Result<bool> {
        let inner = self.inner.clone();
        let name = topic.to_string();
        let metadata = tokio::task::spawn_blocking(move || {
            inner
                .producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
        })
        .await
        .map_err(|e| Error::internal(format!("metadata task failed: {e}")))?
        .map_err(|e| kafka_error(e, None))?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Waits until every record handed to librdkafka is delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.producer.flush(timeout))
            .await
            .map_err(|e| Error::internal(format!("flush task failed: {e}")))?
            .map_err(|e| kafka_error(e, None))
    }
}

/// Creates `topic` with the configured partitions and replication; an
/// existing topic is fine.
pub(crate) async fn create_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config(&[], &config.producer_properties)
        .create()
        .map_err(config_error)?;
    let new = NewTopic::new(
        topic,
        config.topic_partitions,
        TopicReplication::Fixed(config.topic_replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| kafka_error(e, None))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Transport {
                    transport: "kafka".into(),
                    message: format!("could not create topic {name:?}: {code}"),
                    retryable: false,
                    message_id: None,
                })
            }
        }
    }
    tracing::info!(topic, "relaybox created Kafka topic");
    Ok(())
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        self.send(batch).await.await
    }

    /// Hands every record to librdkafka in batch order and returns at once;
    /// the acknowledgements are the delivery reports, awaited by the relay
    /// while it claims and hands over the next batches. librdkafka keeps the
    /// records of a partition in the order they were handed over, so a key's
    /// records stay in order across batches.
    async fn send(&self, batch: &[Message]) -> Acks {
        let mut topic_errors: Vec<(String, Error)> = Vec::new();
        let topics: HashSet<&str> = batch.iter().map(|m| m.topic.as_str()).collect();
        for topic in topics {
            if let Err(e) = self.ensure_topic(topic).await {
                topic_errors.push((topic.to_string(), e));
            }
        }
        let mut pending = Vec::with_capacity(batch.len());
        for m in batch {
            if let Some((_, e)) = topic_errors.iter().find(|(t, _)| *t == m.topic) {
                pending.push((m.id, Err(with_id(e, m))));
                continue;
            }
            let mut record = FutureRecord::<str, [u8]>::to(&m.topic)
                .payload(&m.payload)
                .headers(headers_of(m))
                .timestamp(m.created_at.timestamp_millis());
            if let Some(key) = &m.key {
                record = record.key(key.as_str());
            }
            loop {
                match self.inner.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((m.id, Ok(delivery)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        pending.push((m.id, Err(kafka_error(e, Some(m.id)))));
                        break;
                    }
                }
            }
        }
        Box::pin(async move {
            let mut results = Vec::with_capacity(pending.len());
            for (id, p) in pending {
                results.push(match p {
                    Err(e) => Err(e),
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(kafka_error(e, Some(id))),
                        Err(_) => Err(Error::Transport {
                            transport: "kafka".into(),
                            message: "the producer dropped the delivery report".into(),
                            retryable: true,
                            message_id: Some(id),
                        }),
                    },
                });
            }
            results
        })
    }
}

fn with_id(e: &Error, m: &Message) -> Error {
    match e {
        Error::Transport {
            transport,
            message,
            retryable,
            ..
        } => Error::Transport {
            transport: transport.clone(),
            message: message.clone(),
            retryable: *retryable,
            message_id: Some(m.id),
        },
        other => Error::Transport {
            transport: "kafka".into(),
            message: other.to_string(),
            retryable: other.retryable(),
            message_id: Some(m.id),
        },
    }
}
