//! [`KafkaSource`]: a consumer-group member whose offsets are stored only
//! after the handler's transaction committed, with a dead-letter topic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};

use super::codec::{headers_of, message_from_record, HEADER_ERROR};
use super::config::{config_error, KafkaConfig};
use super::kafka_error;
use super::producer::{Record, ReportingProducer};
use super::sink::create_topic;
use crate::error::{Error, Result};
use crate::source::{AckToken, Delivery, Source};
use crate::validate::check_topic;

/// Settings of a [`KafkaSource`].
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// Connection settings.
    pub kafka: KafkaConfig,
    /// Topic to consume.
    pub topic: String,
    /// Kafka consumer group (`group.id`).
    pub group: String,
    /// Where messages go after `max_retries` (default `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// Where a group without committed offsets starts: the earliest record
    /// (default) or only new ones.
    pub start_from_beginning: bool,
}

impl KafkaSourceConfig {
    /// Consumes `topic` as group `group`.
    pub fn new(kafka: KafkaConfig, topic: impl Into<String>, group: impl Into<String>) -> Self {
        KafkaSourceConfig {
            kafka,
            topic: topic.into(),
            group: group.into(),
            dead_letter_topic: None,
            start_from_beginning: true,
        }
    }

    /// The dead-letter topic in force.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }
}

/// A [`Source`] reading one Kafka topic as a member of a consumer group.
///
/// Deliveries are laned by key, so different keys (of one partition or of
/// several) are processed concurrently and each key in order. Acknowledged offsets are stored
/// and committed by librdkafka (also when partitions are revoked in a
/// rebalance, and on close); nothing is committed before the consumer's
/// transaction for it committed. A message that exhausts its retries is
/// produced to the dead-letter topic with the error in the `relaybox-error`
/// header, and the partition moves on.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: StreamConsumer,
    /// Produces to the dead-letter topic.
    producer: ReportingProducer,
    errors: Mutex<NotedErrors>,
}

/// How often a [`KafkaSource`] logs the consumer errors it skips.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The consumer's default `session.timeout.ms`: how long the group waits for
/// a member that stopped heartbeating before giving its partitions to others.
/// `consumer_properties` may set it (within the broker's
/// `group.min.session.timeout.ms`, 6 s by default, and
/// `group.max.session.timeout.ms`), or set `group.instance.id` for static
/// membership, with which a member restarted under the same id takes its
/// partitions back at once.
const SESSION_TIMEOUT_MS: u32 = 10_000;

/// The consumer's default `heartbeat.interval.ms`: a third of the session timeout.
const HEARTBEAT_INTERVAL_MS: u32 = 3_000;

/// The consumer errors skipped since the last one logged.
#[derive(Default)]
struct NotedErrors {
    count: u64,
    logged: Option<std::time::Instant>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("config", &self.config)
            .finish()
    }
}

impl KafkaSource {
    /// Joins the group and subscribes to the topic. Call inside a tokio runtime.
    pub fn new(config: KafkaSourceConfig) -> Result<Arc<Self>> {
        config.kafka.validate()?;
        check_topic(&config.topic)?;
        check_topic(&config.dead_letter_topic()).map_err(|e| {
            Error::config(
                "dead_letter_topic",
                format!("{e} (a topic name of at most 245 characters leaves room for `.dlq`)"),
            )
        })?;
        if config.group.is_empty() {
            return Err(Error::config("group", "must not be empty"));
        }
        let reset = if config.start_from_beginning {
            "earliest"
        } else {
            "latest"
        };
        let consumer_defaults = [
            ("group.id", config.group.clone()),
            ("enable.auto.commit", "true".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            ("auto.commit.interval.ms", "1000".to_string()),
            ("auto.offset.reset", reset.to_string()),
            ("allow.auto.create.topics", "false".to_string()),
            // A consumer that died without leaving the group (SIGKILL, a lost
            // host) holds its partitions until the broker misses its
            // heartbeats for this long: 10 s instead of Kafka's 45 s, so a
            // restarted or surviving member takes them over sooner. Heartbeats
            // come from librdkafka's own thread, not from the handler, so a
            // slow handler does not count against it.
            ("session.timeout.ms", SESSION_TIMEOUT_MS.to_string()),
            ("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string()),
        ];
        let consumer: StreamConsumer = config
            .kafka
            .client_config(&consumer_defaults, &config.kafka.consumer_properties)
            .create()
            .map_err(config_error)?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| kafka_error(e, None))?;
        let producer_defaults = [
            ("enable.idempotence", "true".to_string()),
            ("acks", "all".to_string()),
            (
                "message.timeout.ms",
                config.kafka.delivery_timeout.as_millis().to_string(),
            ),
        ];
        let producer = ReportingProducer::new(
            &config
                .kafka
                .client_config(&producer_defaults, &config.kafka.producer_properties),
        )
        .map_err(config_error)?;
        Ok(Arc::new(KafkaSource {
            config,
            consumer,
            producer,
            errors: Mutex::new(NotedErrors::default()),
        }))
    }

    /// The settings this source was created with.
    pub fn config(&self) -> &KafkaSourceConfig {
        &self.config
    }

    /// Notes a consumer error librdkafka recovers from (logged at most every
    /// [`ERROR_LOG_INTERVAL`], with the number seen since); a fatal one is
    /// returned.
    fn transient(&self, error: KafkaError) -> Result<()> {
        if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
            return Err(kafka_error(error, None));
        }
        let mut noted = self.errors.lock().expect("error log state");
        noted.count += 1;
        if noted
            .logged
            .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL)
        {
            tracing::warn!(
                topic = %self.config.topic,
                errors = noted.count,
                error = %kafka_error(error, None),
                "relaybox Kafka consumer error; librdkafka retries by itself"
            );
            noted.count = 0;
            noted.logged = Some(std::time::Instant::now());
        }
        Ok(())
    }

    fn delivery(&self, record: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
        use rdkafka::message::Message as _;
        let message = message_from_record(record);
        Delivery {
            // A key's records sit in one partition, in order; laning by key lets
            // the keys of one partition run concurrently and still in order.
            lane: u64::from(crate::partition::routing_hash(
                message.key.as_deref(),
                &message.id,
            )),
            message,
            ack: AckToken {
                partition: record.partition(),
                offset: record.offset(),
            },
        }
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        "kafka"
    }

    /// Waits up to `wait` for a first record, then takes what is already
    /// buffered, up to `max`.
    ///
    /// librdkafka reports broker trouble (a broker down, a topic not yet
    /// known) as consumer errors and recovers from it by itself; such errors
    /// sit in the consumer's queue in front of the records fetched after
    /// them. They are noted here and skipped, never returned, so that a
    /// backlog of them (one per reconnect attempt during an outage) cannot
    /// hold back the records behind it. Only a fatal error is returned.
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => return Ok(out),
                Ok(Ok(record)) => {
                    out.push(self.delivery(&record));
                    break;
                }
                Ok(Err(e)) => self.transient(e)?,
            }
        }
        // Take what is already buffered, without waiting for more (`recv` is
        // cancellation safe: a record it has not returned stays queued).
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(record)) => out.push(self.delivery(&record)),
                Some(Err(e)) => self.transient(e)?,
                None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for a in acks {
            let n = next.entry(a.partition).or_insert(a.offset + 1);
            *n = (*n).max(a.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(offset))
                .map_err(|e| kafka_error(e, None))?;
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile: its new owner gets the messages again
            // and the inbox skips them.
            tracing::debug!(error = %e, "relaybox could not store Kafka offsets");
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<bool> {
        let topic = self.config.dead_letter_topic();
        create_topic(&self.config.kafka, &topic).await?;
        let m = &delivery.message;
        let partition = delivery.ack.partition.to_string();
        let offset = delivery.ack.offset.to_string();
        let mut headers: OwnedHeaders = headers_of(m, &self.config.kafka.cloudevents);
        for (key, value) in [
            (HEADER_ERROR, error),
            ("relaybox-original-topic", m.topic.as_str()),
            ("relaybox-original-partition", partition.as_str()),
            ("relaybox-original-offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = Record::with_opaque_to(&topic, Box::new(m.id))
            .payload(&m.payload)
            .headers(headers);
        if let Some(key) = &m.key {
            record = record.key(key.as_str());
        }
        // librdkafka gives the record up after `delivery_timeout`
        // (`message.timeout.ms`) and reports that; the timer here bounds a
        // queue that stays full as long.
        let timeout = self.config.kafka.delivery_timeout;
        let reported = tokio::time::timeout(timeout, async {
            let report = self.producer.hand_over(record).await?;
            report.await.unwrap_or_else(|_| Err(KafkaError::Canceled))
        })
        .await;
        match reported {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(kafka_error(e, Some(m.id))),
            Err(_) => {
                return Err(Error::Transport {
                    transport: "kafka".into(),
                    message: format!(
                        "no delivery report from dead-letter topic {topic:?} within {timeout:?}"
                    ),
                    retryable: true,
                    message_id: Some(m.id),
                })
            }
        }
        Ok(true)
    }

    async fn close(&self) -> Result<()> {
        // Commit what was acknowledged before leaving the group.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::NoOffset) =>
            {
                Ok(())
            }
            Err(e) => Err(kafka_error(e, None)),
        }
    }
}
