//! [`SqsSink`]: sends relay batches to SQS queues with SendMessageBatch.

use super::{all_failed, entry_results, publish_chunks};
use std::collections::{HashMap, HashSet};

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;
use crate::transport::aws::codec::Encoded;
use crate::transport::aws::config::SqsConfig;
use crate::transport::aws::registry::{registry_key, set_up_sources_again};
use crate::transport::aws::{aws_failure, is_fifo, QueueUrls};
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
                            tracing::info!(target: "relaybox::transport::aws::sink", queue = %queue, "relaybox SQS queue missing; creating it again");
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
