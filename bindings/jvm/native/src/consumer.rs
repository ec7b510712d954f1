//! `Consumer`: the idempotent consumer calling a JVM handler for each
//! message with the consumer's transaction, so the handler's writes commit
//! with the inbox row. A `MessageHandler` runs on a blocking thread of the
//! core's runtime; a `SuspendMessageHandler` is awaited as a Kotlin coroutine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures::FutureExt;
use relaybox::{BoxError, ConsumerConfig, Error};

use crate::bridge::{blocking, guard, run};
use crate::convert::{parse_json, Message};
use crate::error::RelayboxError;
use crate::outbox::Outbox;
use crate::relay::{count, parse_transport, stop_on_drop};
use crate::transaction::Transaction;

/// Handles one message. Runs on a thread of its own, so it may block: use
/// the `...Blocking` calls of `tx`. Returning normally marks the message
/// processed (the writes made through `tx` commit with it); throwing rolls
/// them back and retries the message with backoff, up to `max_retries`, then
/// dead-letters it. Throw `RelayboxException.Rejected` to dead-letter it at
/// once. Never commit or roll back `tx` yourself.
#[uniffi::export(callback_interface)]
pub trait MessageHandler: Send + Sync {
    /// Handles `message` inside the consumer's transaction `tx`.
    fn handle(&self, message: Message, tx: Arc<Transaction>) -> Result<(), RelayboxError>;
}

/// Handles one message as a Kotlin `suspend` function, on a coroutine of
/// `Dispatchers.Default`: use the suspending calls of `tx` and never block.
/// Returning, throwing and `RelayboxException.Rejected` mean what they mean
/// for `MessageHandler`.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait SuspendMessageHandler: Send + Sync {
    /// Handles `message` inside the consumer's transaction `tx`.
    async fn handle(&self, message: Message, tx: Arc<Transaction>) -> Result<(), RelayboxError>;
}

/// Adapts a blocking JVM handler to the core's `Handler`.
struct ForeignHandler(Arc<dyn MessageHandler>);

/// Adapts a suspending JVM handler to the core's `Handler`.
struct ForeignSuspendHandler(Arc<dyn SuspendMessageHandler>);

fn handler_error(err: RelayboxError) -> BoxError {
    match err {
        RelayboxError::Rejected { reason, .. } => Box::new(relaybox::Rejected::new(reason)),
        other => other.to_string().into(),
    }
}

#[async_trait::async_trait]
impl relaybox::Handler for ForeignHandler {
    async fn handle(
        &self,
        message: relaybox::Message,
        tx: relaybox::Transaction,
    ) -> Result<(), BoxError> {
        let handler = self.0.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| {
                handler.handle(message.into(), Transaction::managed(tx))
            }))
            .unwrap_or_else(|panic| Err(Error::from_panic(panic).into()))
        })
        .await
        .map_err(|e| -> BoxError { format!("the handler did not finish: {e}").into() })?;
        outcome.map_err(handler_error)
    }
}

#[async_trait::async_trait]
impl relaybox::Handler for ForeignSuspendHandler {
    async fn handle(
        &self,
        message: relaybox::Message,
        tx: relaybox::Transaction,
    ) -> Result<(), BoxError> {
        AssertUnwindSafe(self.0.handle(message.into(), Transaction::managed(tx)))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::from_panic(panic).into()))
            .map_err(handler_error)
    }
}

/// Counters of a consumer since it started.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ConsumerStats {
    /// Messages handled and committed.
    pub processed: i64,
    /// Redeliveries skipped because the inbox already had them.
    pub duplicates: i64,
    /// Failed attempts that were retried.
    pub retried: i64,
    /// Messages sent to dead letters.
    pub dead_lettered: i64,
}

/// A running consumer.
#[derive(uniffi::Object)]
pub struct Consumer {
    consumer: Arc<relaybox::Consumer>,
}

#[uniffi::export]
impl Consumer {
    /// Starts consuming `topic` from the transport (`database` or
    /// `{"kafka": {...}}` as JSON) with the consumer settings (a JSON object
    /// with at least `group`), calling `handler` for each message.
    #[uniffi::constructor]
    pub fn start(
        outbox: Arc<Outbox>,
        transport_json: String,
        topic: String,
        config_json: String,
        handler: Box<dyn MessageHandler>,
    ) -> Result<Arc<Self>, RelayboxError> {
        let handler = Arc::new(ForeignHandler(Arc::from(handler)));
        start(&outbox, &transport_json, &topic, &config_json, handler)
    }

    /// `start` with a Kotlin `suspend` handler.
    #[uniffi::constructor]
    pub fn start_suspending(
        outbox: Arc<Outbox>,
        transport_json: String,
        topic: String,
        config_json: String,
        handler: Arc<dyn SuspendMessageHandler>,
    ) -> Result<Arc<Self>, RelayboxError> {
        let handler = Arc::new(ForeignSuspendHandler(handler));
        start(&outbox, &transport_json, &topic, &config_json, handler)
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.consumer.is_running()
    }

    /// Counters since start.
    pub fn stats(&self) -> ConsumerStats {
        let s = self.consumer.stats();
        ConsumerStats {
            processed: count(s.processed),
            duplicates: count(s.duplicates),
            retried: count(s.retried),
            dead_lettered: count(s.dead_lettered),
        }
    }

    /// Finishes and acknowledges the messages in flight, then stops.
    pub async fn stop(&self) -> Result<(), RelayboxError> {
        let consumer = self.consumer.clone();
        run(async move { consumer.shutdown().await }).await
    }

    /// `stop`, blocking the calling thread.
    pub fn stop_blocking(&self) -> Result<(), RelayboxError> {
        blocking(self.consumer.shutdown())
    }
}

fn start(
    outbox: &Outbox,
    transport_json: &str,
    topic: &str,
    config_json: &str,
    handler: Arc<dyn relaybox::Handler>,
) -> Result<Arc<Consumer>, RelayboxError> {
    guard(|| {
        let transport = parse_transport(transport_json)?;
        let config = ConsumerConfig::from_json(parse_json("consumer config", config_json)?)?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let source = transport.source(&outbox.store, topic, &config.group)?;
        let consumer = relaybox::Consumer::start(outbox.store.clone(), source, handler, config)?;
        Ok(Consumer::wrap(consumer))
    })
}

impl Consumer {
    /// The JVM object of a started core consumer.
    pub(crate) fn wrap(consumer: relaybox::Consumer) -> Arc<Self> {
        Arc::new(Consumer {
            consumer: Arc::new(consumer),
        })
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let consumer = self.consumer.clone();
        stop_on_drop(async move {
            let _ = consumer.shutdown().await;
        });
    }
}
