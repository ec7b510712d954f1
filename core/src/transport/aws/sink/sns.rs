//! [`SnsSink`]: publishes relay batches to SNS topics with PublishBatch.

use super::{all_failed, entry_results, publish_chunks};
use std::collections::{HashMap, HashSet};

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;
use crate::transport::aws::codec::Encoded;
use crate::transport::aws::config::SnsConfig;
use crate::transport::aws::registry::{
    registry_key, set_up_sources_again, set_ups, sources_set_up,
};
use crate::transport::aws::{
    aws_failure, is_fifo, topic_name_of_arn, transport_error, Failure, TopicArns,
};
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
                            tracing::info!(target: "relaybox::transport::aws::sink", topic = %arn, "relaybox SNS topic missing; creating it again");
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
