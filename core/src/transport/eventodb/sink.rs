//! [`EventoDbSink`]: writes each message with `stream.write`.

use std::collections::HashSet;

use serde_json::json;

use super::client::{Client, NAME};
use super::config::EventoDbConfig;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;
use crate::transport::message_db::mapping::outgoing;

/// A [`Sink`] writing to an EventoDB server.
///
/// Each message becomes `["stream.write", "<topic>-<key>", {type, data,
/// metadata}, {id, expectedVersion}]` (the stream mapping and metadata of
/// the Message DB transport); `Ok` means the server answered with its
/// position. `STREAM_VERSION_CONFLICT`, a non-JSON payload or a topic with
/// `-` are permanent errors; connection failures, timeouts and server
/// errors are retryable.
#[derive(Debug)]
pub struct EventoDbSink {
    config: EventoDbConfig,
    client: Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl EventoDbSink {
    /// Writes to the server of `config`.
    pub fn new(config: EventoDbConfig) -> Result<Self> {
        config.validate()?;
        let client = Client::new(&config)?;
        Ok(EventoDbSink { config, client })
    }

    async fn write(&self, m: &Message) -> Result<()> {
        let out = outgoing(NAME, m, &self.config.expected_version_header)?;
        let mut options = json!({ "id": m.id.to_string() });
        if let Some(v) = out.expected_version {
            options["expectedVersion"] = json!(v);
        }
        let result = self
            .client
            .call(
                "stream.write",
                vec![
                    json!(out.stream_name),
                    json!({"type": out.message_type, "data": out.data, "metadata": out.metadata}),
                    options,
                ],
                Some(m.id),
            )
            .await?;
        if result.get("globalPosition").is_none() {
            return Err(Error::Transport {
                transport: NAME.into(),
                message: format!("stream.write: unexpected answer {result}"),
                retryable: true,
                message_id: Some(m.id),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for EventoDbSink {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for m in batch {
            if let Some(k) = m.key.as_deref().filter(|k| failed_keys.contains(k)) {
                results.push(Err(Error::Transport {
                    transport: NAME.into(),
                    message: format!("held behind an earlier failed message of key {k:?}"),
                    retryable: true,
                    message_id: Some(m.id),
                }));
                continue;
            }
            let result = self.write(m).await;
            if result.is_err() {
                if let Some(k) = m.key.as_deref() {
                    failed_keys.insert(k);
                }
            }
            results.push(result);
        }
        results
    }
}
