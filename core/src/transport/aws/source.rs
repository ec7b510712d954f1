//! [`SqsSource`]: reads an SQS queue (on its own, or subscribed to an SNS
//! topic) with long polling, deletes what the consumer processed, and sends
//! messages that exhausted their retries to the dead-letter queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::OnceCell;

use super::codec::{decode, encode_dead_letter, Received};
use super::config::{Connection, SnsConfig, SqsConfig};
use super::registry::{self, registry_key};
use super::sink::sqs_attribute;
use super::{
    aws_failure, create_queue, is_fifo, queue_arn, topic_name_of_arn, Failure, QueueUrls, TopicArns,
};
use crate::error::{Error, Result};
use crate::source::{AckToken, Delivery, Source};

/// Where an [`SqsSource`] reads from.
#[derive(Clone, Debug)]
pub enum SqsSourceConfig {
    /// The queue `<group>-<topic>` subscribed to the SNS topic (see
    /// [`source_queue_name`]).
    Sns {
        /// Connection and creation settings.
        config: SnsConfig,
        /// The relaybox topic (the SNS topic name, unless `topic_arn` is set).
        topic: String,
        /// The consumer group: one queue per group.
        group: String,
    },
    /// The queue named by the topic.
    Sqs {
        /// Connection and creation settings.
        config: SqsConfig,
        /// The relaybox topic, which is the queue name.
        topic: String,
    },
}

/// The SQS queue a consumer group of an SNS topic reads: `<group>-<topic>`,
/// every character outside `A-Za-z0-9_-` replaced by `_`, with `.fifo`
/// kept at the end for FIFO topics. Its dead-letter queue is the same name
/// with `-dlq` before any `.fifo`.
pub fn source_queue_name(topic: &str, group: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    match topic.strip_suffix(".fifo") {
        Some(base) => format!("{}-{}.fifo", clean(group), clean(base)),
        None => format!("{}-{}", clean(group), clean(topic)),
    }
}

/// The dead-letter queue of queue `name`.
fn dead_letter_queue_name(name: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dlq.fifo"),
        None => format!("{name}-dlq"),
    }
}

fn check_queue_name(name: &str, field: &str) -> Result<()> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if name.len() > 80
        || base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::config(
            field,
            format!(
                "queue name {name:?} is not a valid SQS queue name (1-80 characters of \
                 A-Za-z0-9_-, optionally ending in .fifo; its dead-letter queue adds 4)"
            ),
        ));
    }
    Ok(())
}

/// The queues in use, once set up.
#[derive(Clone, Debug)]
pub(super) struct Queues {
    url: String,
    dead_letter_url: Option<String>,
}

/// A [`Source`] reading one SQS queue.
///
/// `fetch` long-polls (ReceiveMessage with the consumer's wait in whole
/// seconds, up to 20 s; a short poll for waits under a second)
/// with the configured visibility timeout. Deliveries are laned by key (the
/// `relaybox-key` attribute, else the FIFO `MessageGroupId`). Each
/// delivery's offset is a sequence number of this source on partition 0;
/// acknowledging an offset deletes (DeleteMessageBatch) every received
/// message up to it. A message not deleted becomes visible again after the
/// visibility timeout and is delivered again; the inbox skips it. A message
/// that exhausts its retries is sent to the dead-letter queue with the error
/// in the `relaybox-error` attribute and deleted; the queue's redrive policy
/// (`max_receive_count`) moves messages of a consumer that keeps crashing.
///
/// With `create_queues`, the queue, its dead-letter queue and (for SNS) the
/// subscription with raw message delivery are created on the first fetch,
/// and again whenever the queue is found missing.
pub struct SqsSource {
    config: SqsSourceConfig,
    conn: Connection,
    queue: String,
    /// Its key in the registry of sources that create their queues.
    key: String,
    client: OnceCell<(aws_sdk_sqs::Client, aws_sdk_sns::Client)>,
    queues: tokio::sync::Mutex<Option<Queues>>,
    topics: TopicArns,
    lookup: QueueUrls,
    receipts: Mutex<BTreeMap<i64, String>>,
    next_seq: AtomicI64,
}

impl std::fmt::Debug for SqsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSource")
            .field("config", &self.config)
            .field("queue", &self.queue)
            .finish()
    }
}

impl SqsSource {
    /// Validates the settings; queues are set up on the first fetch.
    pub fn new(config: SqsSourceConfig) -> Result<Arc<Self>> {
        let (conn, queue) = match &config {
            SqsSourceConfig::Sns {
                config,
                topic,
                group,
            } => {
                let mut c = config.clone();
                c.fill_defaults();
                c.validate()?;
                crate::validate::check_topic(topic)?;
                if group.is_empty() {
                    return Err(Error::config("group", "must not be empty"));
                }
                let queue = source_queue_name(topic, group);
                check_queue_name(&queue, "group")?;
                (c.connection(), queue)
            }
            SqsSourceConfig::Sqs { config, topic } => {
                let mut c = config.clone();
                c.fill_defaults();
                c.validate()?;
                crate::validate::check_topic(topic)?;
                check_queue_name(topic, "topic")?;
                (c.connection(), topic.clone())
            }
        };
        check_queue_name(&dead_letter_queue_name(&queue), "topic")?;
        let key = match &config {
            SqsSourceConfig::Sns { config, topic, .. } => registry_key(
                "sns",
                config.endpoint_url.as_deref(),
                config
                    .topic_arn
                    .as_deref()
                    .map(topic_name_of_arn)
                    .unwrap_or(topic),
            ),
            SqsSourceConfig::Sqs { config, topic } => {
                registry_key("sqs", config.endpoint_url.as_deref(), topic)
            }
        };
        let source = Arc::new(SqsSource {
            config,
            conn,
            queue,
            key: key.clone(),
            client: OnceCell::new(),
            queues: tokio::sync::Mutex::new(None),
            topics: TopicArns::default(),
            lookup: QueueUrls::default(),
            receipts: Mutex::new(BTreeMap::new()),
            next_seq: AtomicI64::new(1),
        });
        if source.create_queues() {
            registry::register(key, &source);
        }
        Ok(source)
    }

    /// Sets the queues up now (creating them, their dead-letter queue and
    /// the subscription with `create_queues`, else looking them up) instead
    /// of on the first fetch: do it before publishing, since SNS delivers a
    /// message only to the subscriptions its topic has when it is published.
    pub async fn prepare(&self) -> Result<()> {
        self.queues().await.map(|_| ())
    }

    /// The SQS queue this source reads.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Its dead-letter queue.
    pub fn dead_letter_queue_name(&self) -> String {
        dead_letter_queue_name(&self.queue)
    }

    fn transport(&self) -> &'static str {
        match self.config {
            SqsSourceConfig::Sns { .. } => "sns",
            SqsSourceConfig::Sqs { .. } => "sqs",
        }
    }

    fn topic(&self) -> &str {
        match &self.config {
            SqsSourceConfig::Sns { topic, .. } | SqsSourceConfig::Sqs { topic, .. } => topic,
        }
    }

    fn create_queues(&self) -> bool {
        match &self.config {
            SqsSourceConfig::Sns { config, .. } => config.create_queues,
            SqsSourceConfig::Sqs { config, .. } => config.create_queues,
        }
    }

    async fn clients(&self) -> Result<&(aws_sdk_sqs::Client, aws_sdk_sns::Client)> {
        self.client
            .get_or_try_init(|| async {
                let sdk = self.conn.sdk_config().await?;
                Ok::<_, Error>((
                    aws_sdk_sqs::Client::new(&sdk),
                    aws_sdk_sns::Client::new(&sdk),
                ))
            })
            .await
    }

    /// The queues, set up when not yet (or no longer) known.
    pub(super) async fn queues(&self) -> Result<Queues> {
        let mut guard = self.queues.lock().await;
        if let Some(q) = guard.as_ref() {
            return Ok(q.clone());
        }
        let q = self.set_up().await.map_err(Error::from)?;
        *guard = Some(q.clone());
        Ok(q)
    }

    pub(super) async fn forget_queues(&self) {
        *self.queues.lock().await = None;
        self.lookup.forget(&self.queue);
        self.lookup.forget(&self.dead_letter_queue_name());
        self.topics.forget(self.topic());
    }

    async fn set_up(&self) -> Result<Queues, Failure> {
        let _counted = registry::SettingUp::begin(&self.key);
        self.set_up_uncounted().await
    }

    async fn set_up_uncounted(&self) -> Result<Queues, Failure> {
        let t = self.transport();
        let (sqs, sns) = self.clients().await.map_err(|error| Failure {
            error,
            missing: false,
        })?;
        let dlq_name = self.dead_letter_queue_name();
        let prefixed = |name: &str| match &self.config {
            SqsSourceConfig::Sqs { config, .. } => config.prefixed_url(name),
            SqsSourceConfig::Sns { .. } => None,
        };
        if !self.create_queues() {
            let url = self
                .lookup
                .get(sqs, t, &self.queue, prefixed(&self.queue), false)
                .await?;
            let dead_letter_url = match self
                .lookup
                .get(sqs, t, &dlq_name, prefixed(&dlq_name), false)
                .await
            {
                Ok(u) => Some(u),
                Err(f) if !f.error.retryable() || f.missing => None,
                Err(f) => return Err(f),
            };
            return Ok(Queues {
                url,
                dead_letter_url,
            });
        }
        let dlq_url = create_queue(sqs, t, &dlq_name).await?;
        let dlq_arn = queue_arn(sqs, t, &dlq_url).await?;
        let url = create_queue(sqs, t, &self.queue).await?;
        let arn = queue_arn(sqs, t, &url).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": self.conn.max_receive_count.to_string(),
        })
        .to_string();
        let mut attrs = sqs
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                self.conn.visibility_timeout.as_secs().to_string(),
            );
        let mut topic_arn = None;
        if let SqsSourceConfig::Sns { config, topic, .. } = &self.config {
            let tarn = match &config.topic_arn {
                Some(a) => {
                    if config.create_topics {
                        self.topics.get(sns, topic_name_of_arn(a), true).await?;
                    }
                    a.clone()
                }
                None => self.topics.get(sns, topic, config.create_topics).await?,
            };
            let policy = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": tarn}}
                }]
            })
            .to_string();
            attrs = attrs.attributes(QueueAttributeName::Policy, policy);
            topic_arn = Some(tarn);
        }
        attrs
            .send()
            .await
            .map_err(|e| aws_failure(t, &format!("configuring queue {:?}", self.queue), e, None))?;
        if let Some(tarn) = topic_arn {
            sns.subscribe()
                .topic_arn(&tarn)
                .protocol("sqs")
                .endpoint(&arn)
                .attributes("RawMessageDelivery", "true")
                .return_subscription_arn(true)
                .send()
                .await
                .map_err(|e| {
                    aws_failure(
                        t,
                        &format!("subscribing queue {:?} to {tarn}", self.queue),
                        e,
                        None,
                    )
                })?;
        }
        tracing::debug!(queue = %self.queue, "relaybox SQS queue ready");
        Ok(Queues {
            url,
            dead_letter_url: Some(dlq_url),
        })
    }

    async fn receive(
        &self,
        queues: &Queues,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, Failure> {
        let (sqs, _) = self.clients().await.map_err(|error| Failure {
            error,
            missing: false,
        })?;
        let wait_secs = wait.as_secs().min(20) as i32;
        let out = sqs
            .receive_message()
            .queue_url(&queues.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait_secs)
            .visibility_timeout(self.conn.visibility_timeout.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| {
                aws_failure(
                    self.transport(),
                    &format!("receiving from queue {:?}", self.queue),
                    e,
                    None,
                )
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    fn delivery(&self, m: aws_sdk_sqs::types::Message) -> Option<Delivery> {
        let receipt = m.receipt_handle?;
        let system = m.attributes.unwrap_or_default();
        let attributes = m
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
            .collect();
        let message = decode(Received {
            queue: &self.queue,
            topic: self.topic(),
            message_id: m.message_id.as_deref(),
            body: m.body.unwrap_or_default(),
            attributes,
            group_id: system
                .get(&MessageSystemAttributeName::MessageGroupId)
                .cloned(),
            sent_timestamp_ms: system
                .get(&MessageSystemAttributeName::SentTimestamp)
                .and_then(|s| s.parse().ok()),
        });
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.receipts.lock().unwrap().insert(seq, receipt);
        Some(Delivery {
            lane: u64::from(crate::partition::routing_hash(
                message.key.as_deref(),
                &message.id,
            )),
            message,
            ack: AckToken {
                partition: 0,
                offset: seq,
            },
        })
    }

    /// Deletes the messages of `receipts` (sequence → receipt handle);
    /// returns the sequences settled (deleted, or whose receipt SQS no
    /// longer accepts because the message was received again meanwhile).
    async fn delete(&self, url: &str, receipts: &[(i64, String)]) -> Result<Vec<i64>> {
        let (sqs, _) = self.clients().await?;
        let mut settled = Vec::new();
        for chunk in receipts.chunks(10) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .map(|(seq, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(seq.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| Error::internal(e.to_string()))
                })
                .collect::<Result<_>>()?;
            let out = sqs
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let f = aws_failure(
                        self.transport(),
                        &format!("deleting from queue {:?}", self.queue),
                        e,
                        None,
                    );
                    if f.missing {
                        // The queue is gone, and its messages with it: nothing
                        // is left to delete.
                        settled.extend(chunk.iter().map(|(seq, _)| *seq));
                        continue;
                    }
                    return Err(f.error);
                }
            };
            for f in &out.failed {
                tracing::debug!(queue = %self.queue, code = %f.code, "relaybox could not delete an SQS message; it will be delivered again");
            }
            settled.extend(chunk.iter().map(|(seq, _)| *seq));
        }
        Ok(settled)
    }
}

#[async_trait::async_trait]
impl Source for SqsSource {
    fn name(&self) -> &str {
        self.transport()
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let queues = self.queues().await?;
        let messages = match self.receive(&queues, max, wait).await {
            Ok(m) => m,
            Err(f) if f.missing && self.create_queues() => {
                tracing::info!(queue = %self.queue, "relaybox SQS queue missing; creating it again");
                self.forget_queues().await;
                let queues = self.queues().await?;
                self.receive(&queues, max, wait).await?
            }
            Err(f) => {
                if f.missing {
                    self.forget_queues().await;
                }
                return Err(f.error);
            }
        };
        if messages.is_empty() && wait < Duration::from_secs(1) {
            // A short poll (waits under a second cannot long-poll) that found
            // nothing: wait here instead.
            tokio::time::sleep(wait).await;
        }
        Ok(messages
            .into_iter()
            .filter_map(|m| self.delivery(m))
            .collect())
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        let Some(upto) = acks.iter().map(|a| a.offset).max() else {
            return Ok(());
        };
        let due: Vec<(i64, String)> = self
            .receipts
            .lock()
            .unwrap()
            .range(..=upto)
            .map(|(s, h)| (*s, h.clone()))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let queues = self.queues().await?;
        let settled = self.delete(&queues.url, &due).await?;
        let mut receipts = self.receipts.lock().unwrap();
        for s in settled {
            receipts.remove(&s);
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<bool> {
        let queues = self.queues().await?;
        let Some(dlq) = queues.dead_letter_url.clone() else {
            return Ok(false);
        };
        let (sqs, _) = self.clients().await?;
        let m = &delivery.message;
        let enc = encode_dead_letter(m, error, self.transport());
        let attributes = enc
            .attributes
            .iter()
            .map(|(k, v)| Ok((k.clone(), sqs_attribute(v)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut req = sqs
            .send_message()
            .queue_url(&dlq)
            .message_body(enc.body)
            .set_message_attributes(Some(attributes));
        if is_fifo(&dlq) {
            req = req
                .message_group_id(m.key.clone().unwrap_or_else(|| m.id.to_string()))
                .message_deduplication_id(m.id.to_string());
        }
        req.send().await.map_err(|e| {
            let f = aws_failure(
                self.transport(),
                &format!(
                    "dead-lettering to queue {:?}",
                    self.dead_letter_queue_name()
                ),
                e,
                Some(m.id),
            );
            if f.missing {
                // Set up again on the next call, which the consumer retries.
                if let Ok(mut q) = self.queues.try_lock() {
                    *q = None;
                }
            }
            f.error
        })?;
        let receipt = self
            .receipts
            .lock()
            .unwrap()
            .get(&delivery.ack.offset)
            .cloned();
        if let Some(handle) = receipt {
            match self
                .delete(&queues.url, &[(delivery.ack.offset, handle)])
                .await
            {
                Ok(settled) => {
                    let mut receipts = self.receipts.lock().unwrap();
                    for s in settled {
                        receipts.remove(&s);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relaybox could not delete a dead-lettered SQS message yet; its acknowledgement will")
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::sink::Sink;
    use crate::transport::aws::{SnsConfig, SnsSink};

    /// The moto endpoint of the SNS/SQS tests; fails loudly without it.
    fn endpoint() -> String {
        std::env::var("RELAYBOX_AWS_ENDPOINT_URL")
            .expect("RELAYBOX_AWS_ENDPOINT_URL (moto: eval \"$(dev/services env)\")")
    }

    /// A source that found its queue missing sets itself up again: it creates
    /// the topic, then subscribes. An SNS sink of the same process that
    /// publishes meanwhile waits for the subscription instead of publishing
    /// to a topic that has none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sns_sink_waits_for_a_source_setting_itself_up() {
        let config = SnsConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(endpoint()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            create_topics: true,
            create_queues: true,
            visibility_timeout: Duration::from_secs(30),
            ..SnsConfig::default()
        };
        let topic = format!("setting-up-{}", uuid::Uuid::now_v7().simple());
        let source = SqsSource::new(SqsSourceConfig::Sns {
            config: config.clone(),
            topic: topic.clone(),
            group: "g".into(),
        })
        .expect("source");
        let queues = source.queues().await.expect("queue and subscription");
        let sink = Arc::new(SnsSink::new(config).expect("sink"));
        let results = sink
            .publish(&[Message::new(&topic, b"before".to_vec())])
            .await;
        assert!(results[0].is_ok(), "{results:?}");

        // The endpoint loses its state; the source finds its queue missing and
        // is half-way through setting itself up: the topic exists again, with
        // no subscription yet.
        let (sqs, sns) = source.clients().await.expect("clients");
        let arn = || async {
            sns.create_topic()
                .name(&topic)
                .send()
                .await
                .expect("create_topic")
                .topic_arn
                .expect("topic arn")
        };
        sns.delete_topic()
            .topic_arn(arn().await)
            .send()
            .await
            .expect("delete_topic");
        sqs.delete_queue()
            .queue_url(&queues.url)
            .send()
            .await
            .expect("delete_queue");
        source.forget_queues().await;
        let mut setting_up = source.queues.lock().await;
        arn().await;

        let after = Message::new(&topic, b"after".to_vec());
        let after_id = after.id;
        let publishing = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.publish(&[after]).await })
        };
        // Long enough for a sink that does not wait to have published.
        tokio::time::sleep(Duration::from_millis(500)).await;
        *setting_up = Some(
            source
                .set_up()
                .await
                .map_err(|f| f.error)
                .expect("set up again"),
        );
        drop(setting_up);
        let results = publishing.await.expect("publish task");
        assert!(results[0].is_ok(), "{results:?}");

        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(
                source
                    .fetch(10, Duration::from_secs(1))
                    .await
                    .expect("fetch")
                    .into_iter()
                    .map(|d| d.message.id),
            );
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(
            got,
            vec![after_id],
            "the message published during the set-up reached the new queue"
        );
    }

    #[test]
    fn queue_names() {
        assert_eq!(source_queue_name("orders", "billing"), "billing-orders");
        assert_eq!(source_queue_name("a.b", "g.1"), "g_1-a_b");
        assert_eq!(source_queue_name("orders.fifo", "g"), "g-orders.fifo");
        assert_eq!(dead_letter_queue_name("g-orders.fifo"), "g-orders-dlq.fifo");
        assert_eq!(dead_letter_queue_name("g-orders"), "g-orders-dlq");
        assert!(check_queue_name(&"x".repeat(81), "topic").is_err());
    }
}
