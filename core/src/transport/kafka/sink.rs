//! [`KafkaSink`]: publishes relay batches with an idempotent producer and
//! reports each message's delivery.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::oneshot;

use super::codec::{
    headers_of, ENVELOPE, HEADER_CONTENT_TYPE, HEADER_CREATED_AT, HEADER_ID, HEADER_TYPE,
};
use super::config::{config_error, KafkaConfig};
use super::kafka_error;
use super::producer::{Record, Report, ReportingProducer};
use super::transactions::Transactions;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::{Acks, Sink};
use crate::transport::cloudevents::{CloudEvents, KAFKA_PREFIX};

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
///
/// A message that librdkafka refuses at hand-over (larger than the
/// producer's `message.max.bytes`, say) holds back its key as one the broker
/// refuses does: the key's later messages, in its batch and in the batches
/// handed over while its batch is in flight, are not handed over but fail
/// as held back, so none of them reaches Kafka before it. A refusal that no
/// retry can change (the size) is not retryable, and the relay dead-letters
/// the message at once. A record larger than its topic's
/// `max.message.bytes` (read from the broker when the sink first meets the
/// topic) is refused the same way before it is handed over: the broker
/// would refuse the whole record batch it travels in, the innocent records
/// beside it included.
#[derive(Clone)]
pub struct KafkaSink {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: KafkaConfig,
    pub(super) producer: ReportingProducer,
    pub(super) known_topics: Mutex<HashSet<String>>,
    /// Each known topic's `max.message.bytes`, when the broker told it and
    /// the producer does not compress (a compressed batch may be smaller
    /// than its records).
    pub(super) topic_limits: Mutex<HashMap<String, usize>>,
    /// Keys whose message was refused at hand-over, with the number of
    /// batches in flight that refused one: their later messages are held back.
    pub(super) held_keys: Mutex<HashMap<String, usize>>,
    /// The transactional producers, one per adopted outbox partition.
    pub(super) transactions: Transactions,
}

impl Inner {
    /// `e` with the client's last error of its own added when it is recent
    /// and `e` is a retryable transport error that does not say it already:
    /// a delivery timeout then says why the broker was not reached.
    pub(super) fn explained(&self, e: Error) -> Error {
        match e {
            Error::Transport {
                transport,
                message,
                retryable: true,
                message_id,
            } => {
                let message = match self.producer.client().context().recent_error() {
                    Some(reason) if !message.contains(&reason) => {
                        format!("{message} (the Kafka client's last error: {reason})")
                    }
                    _ => message,
                };
                Error::Transport {
                    transport,
                    message,
                    retryable: true,
                    message_id,
                }
            }
            other => other,
        }
    }

    /// Each known topic's record limit, as of now.
    pub(super) fn topic_limits(&self) -> HashMap<String, usize> {
        self.topic_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn held_keys(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent whatever panicked while holding it.
        self.held_keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The keys a batch holds back until its acknowledgements are in (or given up).
struct KeyHold {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl KeyHold {
    fn new(inner: &Arc<Inner>, keys: HashSet<String>) -> KeyHold {
        let keys: Vec<String> = keys.into_iter().collect();
        let mut held = inner.held_keys();
        for k in &keys {
            *held.entry(k.clone()).or_insert(0) += 1;
        }
        KeyHold {
            inner: inner.clone(),
            keys,
        }
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        let mut held = self.inner.held_keys();
        for k in &self.keys {
            if let Some(n) = held.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    held.remove(k);
                }
            }
        }
    }
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
        let producer = ReportingProducer::new(
            &config.client_config(&producer_defaults(), &config.producer_properties),
        )
        .map_err(config_error)?;
        Ok(KafkaSink {
            inner: Arc::new(Inner {
                config,
                producer,
                known_topics: Mutex::new(HashSet::new()),
                topic_limits: Mutex::new(HashMap::new()),
                held_keys: Mutex::new(HashMap::new()),
                transactions: Transactions::default(),
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
        if self.topic_partitions(topic).await?.is_none() {
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
        if !compresses(&self.inner.config) {
            if let Some(limit) = topic_record_limit(&self.inner.config, topic).await {
                self.inner
                    .topic_limits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(topic.to_string(), limit);
            }
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
        let record = record_of(m, &self.inner.config.cloudevents);
        match self.inner.producer.hand_over(record).await {
            Ok(report) => Handed::Queued(report),
            Err(e) => Handed::Failed(refused_by_client(e, m, &self.inner.config)),
        }
    }

    /// The partitions of `topic`, or `None` when it does not exist.
    pub(super) async fn topic_partitions(&self, topic: &str) -> Result<Option<u32>> {
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
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .filter(|n| *n > 0))
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

/// The producer settings relaybox sets, before the user's properties.
pub(super) fn producer_defaults() -> Vec<(&'static str, String)> {
    vec![
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
    ]
}

/// The record of message `m`: key, payload untouched, envelope in headers,
/// the creation time as timestamp, the message id as delivery opaque.
pub(super) fn record_of<'a>(m: &'a Message, ce: &CloudEvents) -> Record<'a> {
    let mut record = Record::with_opaque_to(&m.topic, Box::new(m.id))
        .payload(&m.payload)
        .headers(headers_of(m, ce))
        .timestamp(m.created_at.timestamp_millis());
    if let Some(key) = &m.key {
        record = record.key(key.as_str());
    }
    record
}

/// Creates `topic` with the configured `topic_partitions` and
/// `topic_replication` (see [`create_topic_with`]).
pub(crate) async fn create_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    create_topic_with(config, topic, config.topic_partitions, &[]).await
}

/// Creates `topic` with `partitions` partitions, `topic_replication` and
/// the topic settings `settings`; a topic that exists already is fine.
/// Errors are retryable: the settings or the broker can be fixed while the
/// relay retries; it is not the messages' fault.
pub(crate) async fn create_topic_with(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config(&[], &config.producer_properties)
        .create()
        .map_err(config_error)?;
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(config.topic_replication),
    );
    for (name, value) in settings {
        new = new.set(name, value);
    }
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
                    retryable: true,
                    message_id: None,
                });
            }
        }
    }
    tracing::info!(topic, partitions, "relaybox created Kafka topic");
    Ok(())
}

/// How long [`KafkaSink::check`] waits for the cluster's metadata.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    /// A metadata request to the cluster, answered within
    /// [`CHECK_TIMEOUT`].
    async fn check(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.producer.client().fetch_metadata(None, CHECK_TIMEOUT)
        })
        .await
        .map_err(|e| Error::internal(format!("metadata task failed: {e}")))?
        .map(|_| ())
        .map_err(|e| self.inner.explained(kafka_error(e, None)))
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        self.send(batch).await.await
    }

    /// Remembers the records as delivered, as one whose report came after
    /// its attempt gave up: librdkafka keeps a partition's records in order,
    /// so they are in Kafka behind the earlier message of their key, and the
    /// relay's next attempt of each takes that delivery instead of producing
    /// a second copy. When a record of the key was refused in its delivery
    /// report lately, the later ones may be in Kafka ahead of its retry:
    /// those are produced again, to land after it (a compacted topic keeps
    /// the key's latest message).
    fn unrecorded(&self, messages: &[&Message]) {
        self.inner.producer.client().context().remember_delivered(
            messages
                .iter()
                .map(|m| (m.id, m.key.as_deref().map(str::as_bytes))),
        );
    }

    fn transactional(&self) -> Option<&dyn crate::sink::TransactionalSink> {
        self.inner
            .config
            .transactional_id
            .is_some()
            .then_some(self as &dyn crate::sink::TransactionalSink)
    }

    /// Hands every record to librdkafka in batch order and returns at once;
    /// the acknowledgements are the delivery reports, awaited by the relay
    /// while it claims and hands over the next batches. librdkafka keeps the
    /// records of a partition in the order they were handed over, so a key's
    /// records stay in order across batches.
    async fn send(&self, batch: &[Message]) -> Acks {
        let acks = self.hand_over_batch(batch).await;
        let inner = self.inner.clone();
        Box::pin(async move {
            acks.await
                .into_iter()
                .map(|r| r.map_err(|e| inner.explained(e)))
                .collect()
        })
    }
}

impl KafkaSink {
    /// Hands every record to librdkafka in batch order and returns at once
    /// (see [`Sink::send`]).
    async fn hand_over_batch(&self, batch: &[Message]) -> Acks {
        let mut topic_errors: Vec<(String, Error)> = Vec::new();
        let topics: HashSet<&str> = batch.iter().map(|m| m.topic.as_str()).collect();
        for topic in topics {
            if let Err(e) = self.ensure_topic(topic).await {
                topic_errors.push((topic.to_string(), e));
            }
        }
        // Keys held back by batches in flight, and those this batch holds.
        let held: HashSet<String> = self.inner.held_keys().keys().cloned().collect();
        let limits = self.inner.topic_limits();
        let mut refused: HashSet<String> = HashSet::new();
        let mut pending = Vec::with_capacity(batch.len());
        let ce = &self.inner.config.cloudevents;
        for m in batch {
            let handed = match (topic_errors.iter().find(|(t, _)| *t == m.topic), &m.key) {
                (_, Some(k)) if refused.contains(k) || held.contains(k) => {
                    Handed::Failed(held_back(m, k))
                }
                (Some((_, e)), _) => Handed::Failed(with_id(e, m)),
                (None, _) => match over_topic_limit(&limits, m, ce) {
                    Some(e) => Handed::Failed(e),
                    None => self.hand_over(m).await,
                },
            };
            if let (Handed::Failed(_), Some(k)) = (&handed, &m.key) {
                refused.insert(k.clone());
            }
            pending.push((m.id, handed));
        }
        let hold = (!refused.is_empty()).then(|| KeyHold::new(&self.inner, refused));
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
                    Handed::Queued(mut report) => {
                        let received = match tokio::select! {
                            biased;
                            report = &mut report => Some(report),
                            _ = &mut expired => None,
                        } {
                            Some(received) => Some(received),
                            // The report may be sent right now, after the
                            // timer won: closing first, a report sent before
                            // still counts, and one sent after is remembered
                            // by the producer for the retry (not produced again).
                            None => {
                                report.close();
                                report.try_recv().ok().map(Ok)
                            }
                        };
                        match received {
                            Some(Ok(Ok(()))) => Ok(()),
                            Some(Ok(Err(e))) => Err(refused_by_broker(e, id)),
                            Some(Err(_)) => Err(unreported(
                                "the producer dropped the delivery report".into(),
                            )),
                            None => Err(unreported(format!(
                                "no delivery report within {timeout:?} (the record stays queued in the producer)"
                            ))),
                        }
                    }
                });
            }
            drop(hold);
            results
        })
    }
}

/// The error of a message not handed over because an earlier message of its
/// key was refused (in its batch or one still in flight).
fn held_back(m: &Message, key: &str) -> Error {
    Error::Transport {
        transport: "kafka".into(),
        message: format!(
            "held back behind an earlier message of key {key:?} that was not handed over; \
             sent after it"
        ),
        retryable: true,
        message_id: Some(m.id),
    }
}

/// librdkafka's refusal of `m` at hand-over, saying that the client refused
/// it, not the broker. A record larger than the producer may send can never
/// be sent with these settings: not retryable.
pub(super) fn refused_by_client(e: KafkaError, m: &Message, config: &KafkaConfig) -> Error {
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
        let limit = config
            .producer_properties
            .get("message.max.bytes")
            .or_else(|| config.properties.get("message.max.bytes"))
            .map_or("1000000", String::as_str);
        return Error::Transport {
            transport: "kafka".into(),
            message: format!(
                "the Kafka client refused the record before sending it: with its key and \
                 headers, the payload of {} bytes exceeds the producer's message.max.bytes \
                 ({limit} bytes), so it can never be sent with these settings (raise \
                 message.max.bytes in producer_properties, and the broker's and topic's \
                 limits, to send records this large)",
                m.payload.len()
            ),
            retryable: false,
            message_id: Some(m.id),
        };
    }
    prefixed(
        kafka_error(e, Some(m.id)),
        "the Kafka client refused the record before sending it",
    )
}

/// A failed delivery report: the broker (or the client after handing the
/// record over) refused the record. The broker's size refusal concerns the
/// record batch the record travelled in, not necessarily the record: it is
/// retryable (a record that alone is over the topic's known limit is
/// refused before hand-over instead).
pub(super) fn refused_by_broker(e: KafkaError, id: uuid::Uuid) -> Error {
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
        return Error::Transport {
            transport: "kafka".into(),
            message: format!(
                "the broker refused the record batch this record travelled in as larger than \
                 the topic's max.message.bytes (or the broker's message.max.bytes); it is retried \
                 (keep the producer's batch.size and message.max.bytes at most the topic's \
                 limit): {e}"
            ),
            retryable: true,
            message_id: Some(id),
        };
    }
    prefixed(kafka_error(e, Some(id)), "the delivery report failed")
}

/// The error of a record that its topic's known `max.message.bytes`
/// (in `limits`) refuses, if it does.
pub(super) fn over_topic_limit(
    limits: &HashMap<String, usize>,
    m: &Message,
    ce: &CloudEvents,
) -> Option<Error> {
    let limit = *limits.get(&m.topic)?;
    (least_batch_size(m, ce) > limit).then(|| larger_than_topic_limit(m, limit, ce))
}

/// The error of a record larger than its topic's `max.message.bytes`.
fn larger_than_topic_limit(m: &Message, limit: usize, ce: &CloudEvents) -> Error {
    Error::Transport {
        transport: "kafka".into(),
        message: format!(
            "the broker refuses records over the topic's max.message.bytes ({limit} bytes), and \
             this one is at least {} bytes with its key and headers (payload {} bytes), so it can \
             never be sent to topic {:?}; it was not handed over (raise the topic's \
             max.message.bytes to send records this large)",
            least_batch_size(m, ce),
            m.payload.len(),
            m.topic
        ),
        retryable: false,
        message_id: Some(m.id),
    }
}

/// The least size of a Kafka record batch (format v2, uncompressed) that
/// holds `m` alone: the batch header, the record's key, value and headers,
/// and one byte for each of its length fields (varints take at least one).
fn least_batch_size(m: &Message, ce: &CloudEvents) -> usize {
    const BATCH_HEADER: usize = 61;
    // Length, attributes, timestamp delta, offset delta, key length, value
    // length and header count.
    const RECORD_FIELDS: usize = 7;
    // The envelope headers' names and values (the id a UUID, the timestamp
    // at least "YYYY-MM-DDTHH:MM:SSZ"), each with two length bytes.
    let envelope = HEADER_ID.len()
        + 36
        + HEADER_TYPE.len()
        + m.event_type.len()
        + HEADER_CONTENT_TYPE.len()
        + m.content_type.len()
        + HEADER_CREATED_AT.len()
        + 20
        + 4 * 2;
    let ce_headers = ce
        .attributes(m)
        .map(|a| {
            a.named(KAFKA_PREFIX)
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
        })
        .unwrap_or(0);
    let user: usize = m
        .headers
        .iter()
        .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()) && !ce.writes(k, KAFKA_PREFIX))
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    BATCH_HEADER
        + RECORD_FIELDS
        + m.key.as_ref().map_or(0, String::len)
        + m.payload.len()
        + envelope
        + ce_headers
        + user
}

/// Whether the producer compresses record batches (`compression.type` or
/// its alias `compression.codec` set to anything but `none`).
fn compresses(config: &KafkaConfig) -> bool {
    ["compression.type", "compression.codec"]
        .iter()
        .any(|name| {
            config
                .producer_properties
                .get(*name)
                .or_else(|| config.properties.get(*name))
                .is_some_and(|v| v != "none")
        })
}

/// The topic's `max.message.bytes` as the broker reports it (the topic's
/// own setting or the broker's default), or `None` when it cannot be read
/// (no permission to describe the topic, say): then the broker's refusal
/// is the only check.
async fn topic_record_limit(config: &KafkaConfig, topic: &str) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config(&[], &config.producer_properties)
        .create()
        .ok()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let results = match admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
    {
        Ok(results) => results,
        Err(e) => {
            tracing::debug!(topic, error = %e, "relaybox cannot read the Kafka topic's max.message.bytes");
            return None;
        }
    };
    results
        .into_iter()
        .flatten()
        .find_map(|r| r.get("max.message.bytes")?.value.as_deref()?.parse().ok())
}

/// `e` with `context` before its message.
fn prefixed(e: Error, context: &str) -> Error {
    match e {
        Error::Transport {
            transport,
            message,
            retryable,
            message_id,
        } => Error::Transport {
            transport,
            message: format!("{context}: {message}"),
            retryable,
            message_id,
        },
        other => other,
    }
}

pub(super) fn with_id(e: &Error, m: &Message) -> Error {
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
