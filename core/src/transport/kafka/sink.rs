//! [`KafkaSink`]: publishes relay batches with an idempotent producer and
//! reports each message's delivery.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::oneshot;

use super::codec::headers_of;
use super::config::{config_error, KafkaConfig};
use super::kafka_error;
use super::producer::{Record, Report, ReportingProducer};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::{Acks, Sink};

/// A [`Sink`] that produces to Kafka.
///
/// The producer is idempotent (`enable.idempotence=true`, `acks=all`), so
/// retries inside librdkafka neither duplicate nor reorder records of a
/// partition, and it never gives a record up on its own
/// (`message.timeout.ms=0`), so the records of a partition are written in
/// the order they were handed over, without gaps. A report that takes longer
/// than `delivery_timeout` fails the attempt; when the relay retries it while
/// the record is still queued in the producer (the broker is down), the sink
/// waits for that record's report instead of queueing a second copy.
/// A whole batch is handed to librdkafka before any report is awaited, so it
/// travels in a few pipelined requests. A topic that does not exist is an
/// error naming it, unless `create_topics` is set, in which case it is
/// created through the admin API.
#[derive(Clone)]
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: ReportingProducer,
    known_topics: Mutex<HashSet<String>>,
}

/// What became of handing one message to librdkafka.
enum Handed {
    /// Queued (now or by an earlier attempt): its report comes here.
    Queued(oneshot::Receiver<Report>),
    /// Refused at once.
    Failed(Error),
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
            // No local give-up: a record that timed out in librdkafka's queue
            // leaves a gap that later records of its partition (so of its key)
            // fill before its retry. How long the relay waits is
            // `delivery_timeout`, applied to the reports below.
            ("message.timeout.ms", "0".to_string()),
            ("allow.auto.create.topics", "false".to_string()),
        ];
        let producer =
            ReportingProducer::new(&config.client_config(&defaults, &config.producer_properties))
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

    /// Hands `m` to librdkafka, or, when an earlier attempt's record is still
    /// queued there, waits for that one's report instead. A full queue is
    /// waited out.
    async fn hand_over(&self, m: &Message) -> Handed {
        let mut record = Record::with_opaque_to(&m.topic, Box::new(m.id))
            .payload(&m.payload)
            .headers(headers_of(m))
            .timestamp(m.created_at.timestamp_millis());
        if let Some(key) = &m.key {
            record = record.key(key.as_str());
        }
        match self.inner.producer.hand_over(record).await {
            Ok(report) => Handed::Queued(report),
            Err(e) => Handed::Failed(kafka_error(e, Some(m.id))),
        }
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
            let handed = match topic_errors.iter().find(|(t, _)| *t == m.topic) {
                Some((_, e)) => Handed::Failed(with_id(e, m)),
                None => self.hand_over(m).await,
            };
            pending.push((m.id, handed));
        }
        let timeout = self.inner.config.delivery_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        Box::pin(async move {
            // One timer for the whole batch: once it has fired, every record
            // not reported yet fails, while those already reported still count.
            let expired = tokio::time::sleep_until(deadline);
            tokio::pin!(expired);
            let mut results = Vec::with_capacity(pending.len());
            for (id, handed) in pending {
                let unreported = |message: String| Error::Transport {
                    transport: "kafka".into(),
                    message,
                    retryable: true,
                    message_id: Some(id),
                };
                results.push(match handed {
                    Handed::Failed(e) => Err(e),
                    Handed::Queued(mut report) => match tokio::select! {
                        biased;
                        report = &mut report => Some(report),
                        _ = &mut expired => None,
                    } {
                        Some(Ok(Ok(()))) => Ok(()),
                        Some(Ok(Err(e))) => Err(kafka_error(e, Some(id))),
                        Some(Err(_)) => Err(unreported(
                            "the producer dropped the delivery report".into(),
                        )),
                        None => Err(unreported(format!(
                            "no delivery report within {timeout:?} (the record stays queued in the producer)"
                        ))),
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
