//! Exactly-once publishing: [`KafkaSink`] as a [`TransactionalSink`].
//!
//! Each outbox partition the relay adopts gets a transactional producer of
//! its own, `transactional.id = {transactional_id}-{partition}`. Creating
//! it (`init_transactions`) fences every earlier producer of that id: a
//! relay that lost the partition can no longer commit, and a transaction it
//! left open is aborted (or finished, if it was committing) before the new
//! producer goes on.
//!
//! A batch of the partition is one Kafka transaction: its records, and one
//! record in the published topic (`offsets_topic`), in the partition of
//! the outbox partition's number, keyed by it, whose value lists the ids
//! published for the partition whose rows may still be in the outbox. The
//! two commit together or not at all. Adopting the partition reads the last
//! committed record of that topic partition back (`read_committed`): no
//! other producer writes there, and after `init_transactions` none of its
//! transactions is still open, so the last committed record is final.
//!
//! The record's value: one version byte (1), then each id's 16 bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use uuid::Uuid;

use super::config::{config_error, KafkaConfig};
use super::kafka_error;
use super::producer::{Record, Report, ReportingProducer};
use super::sink::{
    create_topic_with, over_topic_limit, producer_defaults, record_of, refused_by_broker,
    refused_by_client, KafkaSink,
};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::TransactionalSink;

/// The published record's format version.
const RECORD_VERSION: u8 = 1;

/// How long `init_transactions`, a commit and an abort may take.
const TRANSACTION_CALL: Duration = Duration::from_secs(30);

/// librdkafka's transaction timeout: the broker aborts a transaction left
/// open longer (a relay that died mid-batch). Records in a transaction
/// cannot outlive it, so it is also their `message.timeout.ms`.
const TRANSACTION_TIMEOUT_MS: &str = "60000";

/// The transactional producers, one per adopted outbox partition, and the
/// published topic's partition count once checked.
#[derive(Default)]
pub(super) struct Transactions {
    producers: Mutex<HashMap<u32, Arc<ReportingProducer>>>,
    topic_checked: tokio::sync::Mutex<Option<u32>>,
}

impl Transactions {
    fn producers(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<ReportingProducer>>> {
        // The map stays consistent whatever panicked while holding it.
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A transport error of the transactions API (always retryable: a
/// transaction that failed publishes nothing).
fn transaction_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport {
        transport: "kafka".into(),
        message: format!("{context}: {e}"),
        retryable: true,
        message_id: None,
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| Error::internal(format!("{what} task failed: {e}")))?
        .map_err(|e| transaction_error(what, e))
}

impl KafkaSink {
    fn published_topic(&self) -> Result<String> {
        self.inner
            .config
            .published_topic()
            .ok_or_else(|| Error::internal("exactly-once publishing is off"))
    }

    /// Makes sure the published topic exists with at least `partitions`
    /// partitions (creating it, compacted, when missing).
    async fn check_published_topic(&self, partitions: u32) -> Result<()> {
        let mut checked = self.inner.transactions.topic_checked.lock().await;
        if checked.is_some_and(|n| n >= partitions) {
            return Ok(());
        }
        let topic = self.published_topic()?;
        let found = match self.topic_partitions(&topic).await? {
            Some(n) => n,
            None => {
                let compacted = [("cleanup.policy", "compact")];
                create_topic_with(&self.inner.config, &topic, partitions as i32, &compacted)
                    .await?;
                partitions
            }
        };
        if found < partitions {
            return Err(transaction_error(
                "exactly-once publishing",
                format!(
                    "topic {topic:?} has {found} partitions and the outbox {partitions}: it needs \
                     one per outbox partition (add partitions to it, or name another \
                     offsets_topic)"
                ),
            ));
        }
        *checked = Some(found);
        Ok(())
    }

    /// A new transactional producer for `partition`, its transactions
    /// initialised (fencing the earlier producers of its id).
    async fn transactional_producer(&self, partition: u32) -> Result<Arc<ReportingProducer>> {
        let config = &self.inner.config;
        let id = config
            .transactional_id
            .as_ref()
            .ok_or_else(|| Error::internal("exactly-once publishing is off"))?;
        let mut client = config.client_config(&producer_defaults(), &config.producer_properties);
        client
            .set("transactional.id", format!("{id}-{partition}"))
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS);
        let producer = Arc::new(ReportingProducer::new(&client).map_err(config_error)?);
        let init = producer.clone();
        blocking(
            "initialising the partition's Kafka transactions",
            move || init.transactions().init_transactions(TRANSACTION_CALL),
        )
        .await?;
        Ok(producer)
    }

    /// Aborts `partition`'s open transaction and forgets its producer.
    async fn abort(&self, partition: u32, producer: Arc<ReportingProducer>) {
        self.release(partition);
        let aborted = blocking("aborting the Kafka transaction", move || {
            producer.transactions().abort_transaction(TRANSACTION_CALL)
        })
        .await;
        if let Err(e) = aborted {
            // Its producer is dropped: the next one's initialisation aborts
            // the transaction, and the broker does after its timeout.
            tracing::debug!(partition, error = %e, "relaybox could not abort a Kafka transaction");
        }
    }
}

#[async_trait::async_trait]
impl TransactionalSink for KafkaSink {
    async fn adopt(&self, partition: u32, partitions: u32) -> Result<Vec<Uuid>> {
        self.release(partition);
        self.check_published_topic(partitions).await?;
        let producer = self.transactional_producer(partition).await?;
        let config = self.inner.config.clone();
        let topic = self.published_topic()?;
        let value = blocking("reading the partition's last published record", move || {
            last_record(&config, &topic, partition)
        })
        .await?;
        let ids = match value {
            Some(value) => decode(&value).map_err(|e| {
                transaction_error(
                    "reading the partition's last published record",
                    format!("outbox partition {partition}: {e}"),
                )
            })?,
            None => Vec::new(),
        };
        self.inner
            .transactions
            .producers()
            .insert(partition, producer);
        Ok(ids)
    }

    async fn publish_partition(
        &self,
        partition: u32,
        batch: &[Message],
        published: &[Uuid],
    ) -> Vec<Result<()>> {
        let all_failed = |e: &Error| {
            batch
                .iter()
                .map(|m| Err(super::sink::with_id(e, m)))
                .collect::<Vec<_>>()
        };
        let Some(producer) = self.inner.transactions.producers().get(&partition).cloned() else {
            return all_failed(&transaction_error(
                "exactly-once publishing",
                format!("outbox partition {partition} was not taken over"),
            ));
        };
        let mut topics: Vec<&str> = batch.iter().map(|m| m.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            if let Err(e) = self.ensure_topic(topic).await {
                return all_failed(&e);
            }
        }
        let published_topic = match self.published_topic() {
            Ok(t) => t,
            Err(e) => return all_failed(&e),
        };
        if let Err(e) = producer.transactions().begin_transaction() {
            self.release(partition);
            return all_failed(&transaction_error("beginning a Kafka transaction", e));
        }
        let failure = self
            .produce_all(&producer, batch, partition, published, &published_topic)
            .await;
        if let Some((culprit, error)) = failure {
            self.abort(partition, producer).await;
            return aborted(batch, culprit, error);
        }
        let committing = producer.clone();
        let committed = blocking("committing the Kafka transaction", move || {
            committing
                .transactions()
                .commit_transaction(TRANSACTION_CALL)
        })
        .await;
        match committed {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                // Committed or not, the next holder's record says which.
                self.abort(partition, producer).await;
                all_failed(&self.inner.explained(e))
            }
        }
    }

    fn release(&self, partition: u32) {
        let dropped = self.inner.transactions.producers().remove(&partition);
        if let Some(producer) = dropped {
            // Dropping a producer flushes and joins threads: not on an
            // async thread.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn_blocking(move || drop(producer));
            }
        }
    }
}

impl KafkaSink {
    /// Hands over the batch's records and the published record, and waits
    /// for their reports; returns the first failure (the index of the
    /// message it concerns, if any, and the error).
    async fn produce_all(
        &self,
        producer: &ReportingProducer,
        batch: &[Message],
        partition: u32,
        published: &[Uuid],
        published_topic: &str,
    ) -> Option<(Option<usize>, Error)> {
        let ce = &self.inner.config.cloudevents;
        let limits = self.inner.topic_limits();
        let mut reports: Vec<(Option<usize>, tokio::sync::oneshot::Receiver<Report>)> =
            Vec::with_capacity(batch.len() + 1);
        for (i, m) in batch.iter().enumerate() {
            if let Some(e) = over_topic_limit(&limits, m, ce) {
                return Some((Some(i), e));
            }
            match producer.hand_over(record_of(m, ce)).await {
                Ok(report) => reports.push((Some(i), report)),
                Err(e) => return Some((Some(i), refused_by_client(e, m, &self.inner.config))),
            }
        }
        let key = partition.to_string();
        let value = encode(published);
        let record: Record<'_> = Record::with_opaque_to(published_topic, Box::new(Uuid::now_v7()))
            .partition(partition as i32)
            .key(key.as_str())
            .payload(value.as_slice());
        match producer.hand_over(record).await {
            Ok(report) => reports.push((None, report)),
            Err(e) => {
                return Some((
                    None,
                    transaction_error("producing the published record", kafka_error(e, None)),
                ))
            }
        }
        let timeout = self.inner.config.delivery_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        for (index, report) in reports {
            let id = index.map(|i| batch[i].id);
            let failed = match tokio::time::timeout_at(deadline, report).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(e))) => match id {
                    Some(id) => refused_by_broker(e, id),
                    None => transaction_error("producing the published record", e),
                },
                Ok(Err(_)) => transaction_error(
                    "producing the transaction's records",
                    "the producer dropped a delivery report",
                ),
                Err(_) => transaction_error(
                    "producing the transaction's records",
                    format!("no delivery report within {timeout:?}"),
                ),
            };
            return Some((index, self.inner.explained(failed)));
        }
        None
    }
}

/// The results of a batch whose transaction was aborted because of
/// `error`, about message `culprit` if it names one: that message gets the
/// error itself (so a permanent refusal dead-letters it), the others a
/// retryable error saying why they were not published.
fn aborted(batch: &[Message], culprit: Option<usize>, error: Error) -> Vec<Result<()>> {
    let reason = error.to_string();
    let culprit_id = culprit.map(|i| batch[i].id);
    let mut error = Some(error);
    batch
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if Some(i) == culprit {
                return Err(super::sink::with_id(&error.take().expect("one culprit"), m));
            }
            Err(Error::Transport {
                transport: "kafka".into(),
                message: match culprit_id {
                    Some(c) => format!(
                        "not published: the Kafka transaction was aborted because message {c} \
                         failed: {reason}"
                    ),
                    None => format!("not published: the Kafka transaction was aborted: {reason}"),
                },
                retryable: true,
                message_id: Some(m.id),
            })
        })
        .collect()
}

/// The settings of the reader of the published topic: committed records
/// only, end of partition reported.
fn reader_config(config: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut c = config.client_config(&[], &config.consumer_properties);
    c.set("group.id", "relaybox-published-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    c
}

/// The client context of the published topic's reader: end of partition
/// is how the reader knows it read through, not an error to log.
struct Reader;

impl rdkafka::ClientContext for Reader {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Reader {}

/// The value of the last committed record of outbox partition `partition`
/// in `topic` (reading backwards from the end in growing steps), or `None`.
fn last_record(
    config: &KafkaConfig,
    topic: &str,
    partition: u32,
) -> std::result::Result<Option<Vec<u8>>, KafkaError> {
    let consumer: BaseConsumer<Reader> = reader_config(config).create_with_context(Reader)?;
    let kp = partition as i32;
    let key = partition.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (low, high) = watermarks(&consumer, topic, kp, deadline)?;
    // Each transaction ends with a marker, and aborted ones leave records
    // a committed reader skips: look back 16 offsets, then further.
    let mut back = 16i64;
    loop {
        let start = high.saturating_sub(back).max(low);
        if start >= high {
            return Ok(None);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, kp, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let mut last = None;
        loop {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::error::RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(record)) => {
                    if record.key() == Some(key.as_bytes()) {
                        last = Some(record.payload().unwrap_or_default().to_vec());
                    }
                    if record.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        if last.is_some() || start == low {
            return Ok(last);
        }
        back = back.saturating_mul(8);
    }
}

/// The partition's low and high watermarks. A topic created a moment ago
/// may have no leader yet: that is waited out until `deadline`.
fn watermarks(
    consumer: &BaseConsumer<Reader>,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> std::result::Result<(i64, i64), KafkaError> {
    use rdkafka::error::RDKafkaErrorCode::{
        LeaderNotAvailable, NotLeaderForPartition, UnknownTopicOrPartition,
    };
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(LeaderNotAvailable | NotLeaderForPartition | UnknownTopicOrPartition)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn encode(ids: &[Uuid]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + ids.len() * 16);
    value.push(RECORD_VERSION);
    for id in ids {
        value.extend_from_slice(id.as_bytes());
    }
    value
}

fn decode(value: &[u8]) -> std::result::Result<Vec<Uuid>, String> {
    match value.split_first() {
        Some((&RECORD_VERSION, ids)) if ids.len() % 16 == 0 => Ok(ids
            .chunks_exact(16)
            .map(|c| Uuid::from_slice(c).expect("16 bytes"))
            .collect()),
        Some((&RECORD_VERSION, _)) => {
            Err("the record's length is not a whole number of ids".into())
        }
        Some((version, _)) => Err(format!("record format {version} is not known")),
        None => Err("the record is empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_records_round_trip() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        assert_eq!(decode(&encode(&ids)).unwrap(), ids);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<Uuid>::new());
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0]).unwrap_err().contains("format 2"));
        assert!(decode(&[1, 0, 0]).is_err());
    }
}
