//! Handing a batch to the sink: the acknowledgements, bounded by the publish
//! timeout, with a panicking or short-answering sink counted as failed.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::time::Instant;

use super::worker::Worker;
use crate::error::Error;
use crate::message::Message;
use crate::sink::Acks;

impl Worker {
    /// Hands `messages` to the sink; the acknowledgements resolve within the
    /// publish timeout (counted from now). A panicking or short-answering
    /// sink counts as failed.
    pub(super) async fn send(&self, messages: &[Message]) -> Acks {
        let sink = self.sink.name().to_string();
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.id).collect();
        let failed = move |message: String| {
            ids.iter()
                .map(|id| {
                    Err(Error::Transport {
                        transport: sink.clone(),
                        message: message.clone(),
                        retryable: true,
                        message_id: Some(*id),
                    })
                })
                .collect::<Vec<_>>()
        };
        let timeout = self.config.effective_publish_timeout();
        let started = Instant::now();
        let deadline = started + timeout;
        let n = messages.len();
        let sent = AssertUnwindSafe(self.sink.send(messages)).catch_unwind();
        let acks = match tokio::time::timeout_at(deadline, sent).await {
            Err(_) => {
                return Box::pin(std::future::ready(failed(format!(
                    "no acknowledgement within {timeout:?}"
                ))))
            }
            Ok(Err(panic)) => {
                return Box::pin(std::future::ready(failed(
                    Error::from_panic(panic).to_string(),
                )))
            }
            Ok(Ok(acks)) => acks,
        };
        let transport = self.sink.name().to_string();
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, AssertUnwindSafe(acks).catch_unwind()).await {
                Err(_) => failed(format!("no acknowledgement within {timeout:?}")),
                Ok(Err(panic)) => failed(Error::from_panic(panic).to_string()),
                Ok(Ok(results)) if results.len() != n => failed(format!(
                    "sink returned {} results for {n} messages",
                    results.len(),
                )),
                Ok(Ok(results)) => {
                    crate::metrics::published(&transport, started.elapsed());
                    results
                }
            }
        })
    }
}
