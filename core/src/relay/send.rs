//! Handing a batch to the sink (or its transactional side): the
//! acknowledgements, bounded by the publish timeout, with a panicking or
//! short-answering sink counted as failed.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::time::Instant;

use super::worker::Worker;
use crate::error::Error;
use crate::message::Message;
use crate::sink::{Acks, TransactionalSink};
use crate::store::OutboxRow;

impl Worker {
    /// Hands `messages` to the sink; the acknowledgements resolve within the
    /// publish timeout (counted from now). A panicking or short-answering
    /// sink counts as failed.
    pub(super) async fn send(&self, messages: &[Message]) -> Acks {
        self.bounded(messages, self.sink.send(messages)).await
    }

    /// Publishes `messages` (the claimed `rows`) through the sink's
    /// transactional side, within the same bounds as [`send`](Self::send).
    /// A publish abandoned at the timeout leaves its partitions to be
    /// adopted again.
    pub(super) async fn send_transactional(
        &self,
        sink: &dyn TransactionalSink,
        rows: &[OutboxRow],
        messages: &[Message],
    ) -> Acks {
        #[allow(clippy::async_yields_async)]
        let published = async {
            let results = self.publish_in_transactions(sink, rows, messages).await;
            Box::pin(std::future::ready(results)) as Acks
        };
        self.bounded(messages, published).await
    }

    /// Waits for `sent` (the hand-over of `messages`) and its
    /// acknowledgements within the publish timeout, counting a panic, a
    /// timeout or a short answer as failed.
    #[allow(clippy::async_yields_async)]
    async fn bounded(&self, messages: &[Message], sent: impl Future<Output = Acks>) -> Acks {
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
        let sent = AssertUnwindSafe(sent).catch_unwind();
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
