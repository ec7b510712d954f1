//! [`SnsSink`] and [`SqsSink`]: publish relay batches with PublishBatch /
//! SendMessageBatch (10 messages a call) and report each message's result.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use tokio::sync::OnceCell;

use super::codec::{encode, Encoded};
use super::config::{SnsConfig, SqsConfig};
use super::source::{registry_key, set_up_sources_again, set_ups, sources_set_up};
use super::{
    aws_failure, is_fifo, topic_name_of_arn, transport_error, Failure, QueueUrls, TopicArns,
};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;
use crate::transport::cloudevents::CloudEvents;

/// Entries of one PublishBatch / SendMessageBatch call.
const BATCH: usize = 10;

/// Calls in flight at once for one batch.
const LANES: usize = 10;

/// Publishes `batch` and returns a result per message. Messages are spread
/// over [`LANES`] lanes by key (keyless ones by position); the lanes send
/// concurrently, each in batch order, up to 10 consecutive messages for the
/// same destination per `send` call, so a key's messages go out in order. A
/// message whose key already failed in this batch is not sent. With `ce` on
/// each message carries its CloudEvents attributes.
async fn publish_chunks<F, Fut>(
    transport: &str,
    ce: &CloudEvents,
    batch: &[Message],
    dest_of: impl Fn(&Message) -> String,
    send: F,
) -> Vec<Result<()>>
where
    F: Fn(String, Vec<(usize, Encoded)>) -> Fut,
    Fut: Future<Output = Vec<(usize, Result<()>)>>,
{
    let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); LANES];
    for (i, m) in batch.iter().enumerate() {
        let lane = match &m.key {
            Some(k) => crate::partition::routing_hash(Some(k), &m.id) as usize % LANES,
            None => i % LANES,
        };
        lanes[lane].push(i);
    }
    let run_lane = |indices: Vec<usize>| {
        let dest_of = &dest_of;
        let send = &send;
        async move {
            let mut out: Vec<(usize, Result<()>)> = Vec::new();
            let mut failed_keys: HashSet<String> = HashSet::new();
            let mut pos = 0;
            while pos < indices.len() {
                let dest = dest_of(&batch[indices[pos]]);
                let mut items: Vec<(usize, Encoded)> = Vec::new();
                while pos < indices.len() && items.len() < BATCH {
                    let i = indices[pos];
                    let m = &batch[i];
                    if dest_of(m) != dest {
                        break;
                    }
                    pos += 1;
                    if let Some(k) = m.key.as_ref().filter(|k| failed_keys.contains(*k)) {
                        out.push((
                            i,
                            Err(transport_error(
                                transport,
                                format!("not sent: an earlier message with key {k:?} failed"),
                                true,
                                Some(m.id),
                            )),
                        ));
                        continue;
                    }
                    match encode(m, transport, ce) {
                        Ok(e) => items.push((i, e)),
                        Err(e) => {
                            if let Some(k) = &m.key {
                                failed_keys.insert(k.clone());
                            }
                            out.push((i, Err(e)));
                        }
                    }
                }
                if items.is_empty() {
                    continue;
                }
                for (i, r) in send(dest, items).await {
                    if r.is_err() {
                        if let Some(k) = &batch[i].key {
                            failed_keys.insert(k.clone());
                        }
                    }
                    out.push((i, r));
                }
            }
            out
        }
    };
    let lane_results =
        futures::future::join_all(lanes.into_iter().filter(|l| !l.is_empty()).map(run_lane)).await;
    for (i, r) in lane_results.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(transport_error(
                    transport,
                    "no result reported for the message",
                    true,
                    Some(batch[i].id),
                ))
            })
        })
        .collect()
}

/// Per-entry results of a batch call: `failed` maps entry ids (the batch
/// index) to the error text; entries neither failed nor listed as successful
/// are failures too.
fn entry_results(
    transport: &str,
    batch_ids: &[(usize, uuid::Uuid)],
    ok: &HashSet<String>,
    failed: &HashMap<String, (String, bool)>,
) -> Vec<(usize, Result<()>)> {
    batch_ids
        .iter()
        .map(|(idx, id)| {
            let key = idx.to_string();
            let r = if let Some((msg, sender_fault)) = failed.get(&key) {
                Err(transport_error(
                    transport,
                    msg.clone(),
                    !sender_fault,
                    Some(*id),
                ))
            } else if ok.contains(&key) {
                Ok(())
            } else {
                Err(transport_error(
                    transport,
                    "the batch response did not mention the message",
                    true,
                    Some(*id),
                ))
            };
            (*idx, r)
        })
        .collect()
}

/// The same error for every entry of a chunk.
fn all_failed(items: &[(usize, uuid::Uuid)], e: &Error) -> Vec<(usize, Result<()>)> {
    items
        .iter()
        .map(|(idx, id)| {
            let err = match e {
                Error::Transport {
                    transport,
                    message,
                    retryable,
                    ..
                } => Error::Transport {
                    transport: transport.clone(),
                    message: message.clone(),
                    retryable: *retryable,
                    message_id: Some(*id),
                },
                other => Error::internal(other.to_string()),
            };
            (*idx, Err(err))
        })
        .collect()
}

// ---- SNS ---------------------------------------------------------------------

/// A [`Sink`] that publishes to SNS topics.
///
/// The topic is `topic_arn` when configured, else the one named by the
/// message's topic (created when `create_topics`). A message counts as
/// delivered once SNS accepted it. Messages go out 10 per
/// PublishBatch call; a topic found missing is created again (with
/// `create_topics`) and the call repeated once.
pub struct SnsSink {
    config: SnsConfig,
    client: OnceCell<aws_sdk_sns::Client>,
    topics: TopicArns,
    /// Publishes to known topics share it; resolving or creating a topic
    /// (again) and setting up its sources takes it alone. A topic created
    /// again has no subscriptions until its sources are set up, and a
    /// publish of another chunk landing in between would reach nobody.
    gate: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for SnsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsSink")
            .field("config", &self.config)
            .finish()
    }
}

impl SnsSink {
    /// Validates the settings; the client connects on the first publish.
    pub fn new(mut config: SnsConfig) -> Result<Self> {
        config.fill_defaults();
        config.validate()?;
        Ok(SnsSink {
            config,
            client: OnceCell::new(),
            topics: TopicArns::default(),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// The settings this sink was created with.
    pub fn config(&self) -> &SnsConfig {
        &self.config
    }

    async fn client(&self) -> Result<&aws_sdk_sns::Client> {
        self.client
            .get_or_try_init(|| async {
                let sdk = self.config.connection().sdk_config().await?;
                Ok::<_, Error>(aws_sdk_sns::Client::new(&sdk))
            })
            .await
    }

    /// The ARN a message goes to (its destination key is the topic name or
    /// the configured ARN). Creates the topic (with `create_topics`) only
    /// when `may_create`.
    async fn arn(
        &self,
        client: &aws_sdk_sns::Client,
        dest: &str,
        may_create: bool,
    ) -> Result<String, Failure> {
        let create = may_create && self.config.create_topics;
        if self.config.topic_arn.as_deref() == Some(dest) {
            if create {
                self.topics
                    .get(client, topic_name_of_arn(dest), true)
                    .await?;
            }
            return Ok(dest.to_string());
        }
        self.topics.get(client, dest, create).await
    }

    async fn send_chunk(
        &self,
        dest: String,
        items: Vec<(usize, Encoded)>,
        batch: &[Message],
    ) -> Vec<(usize, Result<()>)> {
        let ids: Vec<(usize, uuid::Uuid)> = items.iter().map(|(i, _)| (*i, batch[*i].id)).collect();
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return all_failed(&ids, &e),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let configured = self.config.topic_arn.as_deref() == Some(dest.as_str());
            let named = if configured {
                topic_name_of_arn(&dest)
            } else {
                dest.as_str()
            };
            // A configured ARN without `create_topics` needs no lookup.
            let fixed = configured && !self.config.create_topics;
            let settled = |t: &TopicArns| (fixed || t.knows(named)) && !t.is_lost(named);
            // Held until this attempt is done: shared for a known topic whose
            // sources are set up, alone otherwise.
            let (_shared, alone) = loop {
                if !settled(&self.topics) {
                    break (None, Some(self.gate.write().await));
                }
                let shared = self.gate.read().await;
                if settled(&self.topics) {
                    break (Some(shared), None);
                }
            };
            let arn = match self.arn(client, &dest, alone.is_some()).await {
                Ok(a) => a,
                // Forgotten by another chunk meanwhile: resolve it alone.
                Err(f) if f.missing && alone.is_none() => {
                    attempt -= 1;
                    continue;
                }
                Err(f) => return all_failed(&ids, &f.error),
            };
            let name = topic_name_of_arn(&arn);
            let key = registry_key("sns", self.config.endpoint_url.as_deref(), name);
            // A topic created again has no subscriptions, and a source of this
            // process that is setting itself up creates the topic before it
            // subscribes: what is published before its sources have
            // subscribed would reach nobody, so the chunk waits for them.
            let lost = self.topics.is_lost(name);
            let ready = if lost {
                set_up_sources_again(&key).await
            } else {
                sources_set_up(&key).await
            };
            if let Err(e) = ready {
                // Retryable whatever the source's error: the messages are
                // fine, and the relay tries again after its backoff.
                let e = transport_error(
                    "sns",
                    format!(
                        "a source of this process could not subscribe to topic {name:?} yet: {e}"
                    ),
                    true,
                    None,
                );
                return all_failed(&ids, &e);
            }
            if lost {
                self.topics.found_again(name);
            }
            let (began, ended) = set_ups(&key);
            if began != ended {
                // A source is setting itself up right now (it began after
                // the check above): this attempt would race its subscription.
                let e = transport_error(
                    "sns",
                    format!("a source of this process is subscribing to topic {name:?} again"),
                    true,
                    None,
                );
                return all_failed(&ids, &e);
            }
            let fifo = is_fifo(&arn);
            let mut entries = Vec::with_capacity(items.len());
            for (idx, enc) in &items {
                let m = &batch[*idx];
                let mut b = aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                    .id(idx.to_string())
                    .message(enc.body.clone());
                for (k, v) in &enc.attributes {
                    let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v.clone())
                        .build();
                    match value {
                        Ok(value) => b = b.message_attributes(k.clone(), value),
                        Err(e) => return all_failed(&ids, &Error::internal(e.to_string())),
                    }
                }
                if fifo {
                    b = b
                        .message_group_id(m.key.clone().unwrap_or_else(|| m.id.to_string()))
                        .message_deduplication_id(m.id.to_string());
                }
                match b.build() {
                    Ok(e) => entries.push(e),
                    Err(e) => return all_failed(&ids, &Error::internal(e.to_string())),
                }
            }
            let out = client
                .publish_batch()
                .topic_arn(&arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await;
            match out {
                // A source set itself up while this was published: the
                // messages may have reached the topic before its
                // subscription did, so they go again (the inbox drops a
                // second copy).
                Ok(_) if set_ups(&key).0 != began => {
                    let e = transport_error(
                        "sns",
                        format!(
                            "a source of this process subscribed to topic {name:?} again while \
                             the batch was published: publishing it again"
                        ),
                        true,
                        None,
                    );
                    return all_failed(&ids, &e);
                }
                Ok(out) => {
                    let ok: HashSet<String> = out
                        .successful
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|e| e.id)
                        .collect();
                    let failed: HashMap<String, (String, bool)> = out
                        .failed
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| {
                            let text = format!(
                                "SNS refused the message for {arn}: {} {}",
                                e.code,
                                e.message.unwrap_or_default()
                            );
                            (e.id, (text, e.sender_fault))
                        })
                        .collect();
                    return entry_results("sns", &ids, &ok, &failed);
                }
                Err(e) => {
                    let f = aws_failure("sns", &format!("publishing to {arn}"), e, None);
                    if f.missing {
                        // Lost first: a chunk that finds the ARN forgotten
                        // must also find the topic lost.
                        self.topics.mark_lost(topic_name_of_arn(&arn));
                        self.topics.forget(topic_name_of_arn(&arn));
                        self.topics.forget(&dest);
                        if self.config.create_topics && attempt == 1 {
                            tracing::info!(topic = %arn, "relaybox SNS topic missing; creating it again");
                            continue;
                        }
                    }
                    return all_failed(&ids, &f.error);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for SnsSink {
    fn name(&self) -> &str {
        "sns"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        let fixed = self.config.topic_arn.clone();
        publish_chunks(
            "sns",
            &self.config.cloudevents,
            batch,
            |m| fixed.clone().unwrap_or_else(|| m.topic.clone()),
            |dest, items| self.send_chunk(dest, items, batch),
        )
        .await
    }
}

// ---- SQS ---------------------------------------------------------------------

/// A [`Sink`] that sends to SQS queues: a message goes to the queue named by
/// its topic (`<queue_url_prefix>/<topic>` when a prefix is configured;
/// created when `create_queues`). A message counts as delivered once SQS
/// accepted it. Messages go out 10 per SendMessageBatch
/// call; a queue found missing is created again (with `create_queues`) and
/// the call repeated once.
pub struct SqsSink {
    config: SqsConfig,
    client: OnceCell<aws_sdk_sqs::Client>,
    queues: QueueUrls,
}

impl std::fmt::Debug for SqsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSink")
            .field("config", &self.config)
            .finish()
    }
}

impl SqsSink {
    /// Validates the settings; the client connects on the first publish.
    pub fn new(mut config: SqsConfig) -> Result<Self> {
        config.fill_defaults();
        config.validate()?;
        Ok(SqsSink {
            config,
            client: OnceCell::new(),
            queues: QueueUrls::default(),
        })
    }

    /// The settings this sink was created with.
    pub fn config(&self) -> &SqsConfig {
        &self.config
    }

    async fn client(&self) -> Result<&aws_sdk_sqs::Client> {
        self.client
            .get_or_try_init(|| async {
                let sdk = self.config.connection().sdk_config().await?;
                Ok::<_, Error>(aws_sdk_sqs::Client::new(&sdk))
            })
            .await
    }

    async fn send_chunk(
        &self,
        queue: String,
        items: Vec<(usize, Encoded)>,
        batch: &[Message],
    ) -> Vec<(usize, Result<()>)> {
        let ids: Vec<(usize, uuid::Uuid)> = items.iter().map(|(i, _)| (*i, batch[*i].id)).collect();
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return all_failed(&ids, &e),
        };
        let fifo = is_fifo(&queue);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = match self
                .queues
                .get(
                    client,
                    "sqs",
                    &queue,
                    self.config.prefixed_url(&queue),
                    self.config.create_queues,
                )
                .await
            {
                Ok(u) => u,
                Err(f) => return all_failed(&ids, &f.error),
            };
            if attempt > 1 {
                // The queue itself keeps what is sent to it, so sending need
                // not wait for its sources; they retry their set-up themselves.
                let key = registry_key("sqs", self.config.endpoint_url.as_deref(), &queue);
                let _ = set_up_sources_again(&key).await;
            }
            let mut entries = Vec::with_capacity(items.len());
            for (idx, enc) in &items {
                let m = &batch[*idx];
                let mut b = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(idx.to_string())
                    .message_body(enc.body.clone());
                for (k, v) in &enc.attributes {
                    match sqs_attribute(v) {
                        Ok(value) => b = b.message_attributes(k.clone(), value),
                        Err(e) => return all_failed(&ids, &e),
                    }
                }
                if fifo {
                    b = b
                        .message_group_id(m.key.clone().unwrap_or_else(|| m.id.to_string()))
                        .message_deduplication_id(m.id.to_string());
                }
                match b.build() {
                    Ok(e) => entries.push(e),
                    Err(e) => return all_failed(&ids, &Error::internal(e.to_string())),
                }
            }
            let out = client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await;
            match out {
                Ok(out) => {
                    let ok: HashSet<String> = out.successful.into_iter().map(|e| e.id).collect();
                    let failed: HashMap<String, (String, bool)> = out
                        .failed
                        .into_iter()
                        .map(|e| {
                            let text = format!(
                                "SQS refused the message for queue {queue:?}: {} {}",
                                e.code,
                                e.message.unwrap_or_default()
                            );
                            (e.id, (text, e.sender_fault))
                        })
                        .collect();
                    return entry_results("sqs", &ids, &ok, &failed);
                }
                Err(e) => {
                    let f = aws_failure("sqs", &format!("sending to queue {queue:?}"), e, None);
                    if f.missing {
                        self.queues.forget(&queue);
                        if self.config.create_queues && attempt == 1 {
                            tracing::info!(queue = %queue, "relaybox SQS queue missing; creating it again");
                            continue;
                        }
                    }
                    return all_failed(&ids, &f.error);
                }
            }
        }
    }
}

/// A String message attribute for SQS.
pub(crate) fn sqs_attribute(value: &str) -> Result<aws_sdk_sqs::types::MessageAttributeValue> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| Error::internal(e.to_string()))
}

#[async_trait::async_trait]
impl Sink for SqsSink {
    fn name(&self) -> &str {
        "sqs"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        publish_chunks(
            "sqs",
            &self.config.cloudevents,
            batch,
            |m| m.topic.clone(),
            |queue, items| self.send_chunk(queue, items, batch),
        )
        .await
    }
}
