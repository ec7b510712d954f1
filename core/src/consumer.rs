//! The idempotent consumer: for each delivery, one database transaction holds
//! the inbox row and the handler's own writes; duplicates are acknowledged
//! and skipped; failures retry with backoff, then go to dead letters.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::error::{BoxError, Error, Result};
use crate::message::Message;
use crate::source::{Delivery, Source};
use crate::store::Store;
use crate::transaction::Transaction;

/// User code run once per message. The transaction holds the inbox row: write
/// through it and your writes commit atomically with "processed".
///
/// Return `Err` to retry (with backoff, up to `max_retries`), after which the
/// message goes to dead letters; return a boxed [`Rejected`] to dead-letter it
/// at once. A panic counts as an error.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, message: Message, tx: Transaction) -> std::result::Result<(), BoxError>;
}

/// A handler error that sends the message to dead letters at once, without
/// retries: return it (boxed) when the message itself can never be handled,
/// e.g. it fails schema validation. `reason` is recorded as the dead letter's
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    /// Why the message cannot be handled.
    pub reason: String,
}

impl Rejected {
    /// A rejection for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Rejected {
            reason: reason.into(),
        }
    }
}

/// A [`Handler`] made from an async closure.
pub struct HandlerFn<F>(F);

/// Wraps `f(message, tx) -> impl Future<Output = Result<(), BoxError>>` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Message, Transaction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    HandlerFn(f)
}

#[async_trait::async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Message, Transaction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    async fn handle(&self, message: Message, tx: Transaction) -> std::result::Result<(), BoxError> {
        (self.0)(message, tx).await
    }
}

/// Consumer settings. Every field but `group` has a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group: the inbox deduplicates per group.
    pub group: String,
    /// Deliveries fetched per batch (default 100).
    pub batch_size: u32,
    /// Lanes processed concurrently; each lane is in order (default 8).
    pub concurrency: u32,
    /// Retries after the first failure before dead-lettering (default 3).
    pub max_retries: u32,
    /// First retry delay (default 200 ms), doubling, with jitter.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub retry_delay: Duration,
    /// Longest retry delay (default 30 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub retry_delay_max: Duration,
    /// Longest wait for new deliveries before checking for shutdown (default 1 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// How long inbox rows are kept, i.e. the deduplication window (default 7 days).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub inbox_retention: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            batch_size: 100,
            concurrency: 8,
            max_retries: 3,
            retry_delay: Duration::from_millis(200),
            retry_delay_max: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            inbox_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

impl ConsumerConfig {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            ..ConsumerConfig::default()
        }
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.group.is_empty() || self.group.len() > 200 {
            return Err(Error::config("group", "must be 1 to 200 characters"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10000"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(Error::config("concurrency", "must be between 1 and 1024"));
        }
        if self.retry_delay.is_zero() || self.retry_delay > self.retry_delay_max {
            return Err(Error::config(
                "retry_delay",
                "must be positive and at most retry_delay_max",
            ));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config("poll_interval", "must be at least 1 ms"));
        }
        if self.inbox_retention < Duration::from_secs(1) {
            return Err(Error::config("inbox_retention", "must be at least 1 s"));
        }
        Ok(())
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: ConsumerConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("consumer config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

/// Counters of a running consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages whose handler succeeded and committed.
    pub processed: u64,
    /// Deliveries skipped because the inbox had them.
    pub duplicates: u64,
    /// Handler failures that were retried.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// A running consumer. [`shutdown`](Consumer::shutdown) finishes the batch in
/// flight and acknowledges it; dropping stops abruptly (unacknowledged
/// deliveries come again and the inbox skips what was already processed).
pub struct Consumer {
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl Consumer {
    /// Validates `config` and starts consuming on the current tokio runtime.
    pub fn start(
        store: Store,
        source: Arc<dyn Source>,
        handler: Arc<dyn Handler>,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        config.validate()?;
        store.check_open()?;
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let worker = Arc::new(Worker {
            store,
            source,
            handler,
            config,
            cancel: cancel.clone(),
            counters: counters.clone(),
        });
        let task = crate::runtime::current()?.spawn(worker.run());
        Ok(Consumer {
            cancel,
            task: Mutex::new(Some(task)),
            counters,
        })
    }

    /// Current counters.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            processed: c.processed.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Finishes and acknowledges the batch in flight, then stops. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        self.cancel.cancel();
        let task = self.task.lock().expect("consumer task lock").take();
        if let Some(task) = task {
            task.await
                .map_err(|e| Error::internal(format!("consumer task failed: {e}")))?;
        }
        Ok(())
    }

    /// Whether the consumer is still running.
    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .expect("consumer task lock")
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

struct Worker {
    store: Store,
    source: Arc<dyn Source>,
    handler: Arc<dyn Handler>,
    config: ConsumerConfig,
    cancel: CancellationToken,
    counters: Arc<Counters>,
}

/// Why processing of a batch stopped before it was complete.
struct Interrupted;

impl Worker {
    async fn run(self: Arc<Self>) {
        self.consume().await;
        if let Err(e) = self.source.close().await {
            tracing::warn!(source = self.source.name(), error = %e, "relaybox source did not close cleanly");
        }
    }

    async fn consume(&self) {
        let mut next_purge = Instant::now();
        let mut error_streak = 0u32;
        while !self.cancel.is_cancelled() {
            if Instant::now() >= next_purge {
                match self.store.purge_inbox(self.config.inbox_retention).await {
                    Ok(n) if n > 0 => tracing::debug!(rows = n, "relaybox inbox purged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "relaybox inbox purge failed"),
                }
                next_purge = Instant::now() + Duration::from_secs(3600);
            }
            let batch = tokio::select! {
                _ = self.cancel.cancelled() => break,
                b = self.source.fetch(self.config.batch_size as usize, self.config.poll_interval) => b,
            };
            let batch = match batch {
                Ok(b) => {
                    error_streak = 0;
                    b
                }
                Err(e) => {
                    error_streak += 1;
                    let pause = backoff(
                        error_streak,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    tracing::warn!(source = self.source.name(), error = %e, "relaybox fetch failed; pausing {pause:?}");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            if self.process_batch(&batch).await.is_err() {
                break;
            }
            let acks: Vec<_> = batch.iter().map(|d| d.ack).collect();
            // Acknowledging is retried: the batch is processed, only its record is missing.
            let mut attempt = 0;
            while let Err(e) = self.source.ack(&acks).await {
                attempt += 1;
                tracing::warn!(source = self.source.name(), error = %e, "relaybox ack failed; retrying");
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ))
                .await;
                if self.cancel.is_cancelled() && attempt > 3 {
                    break;
                }
            }
        }
    }

    /// Processes lanes concurrently, each lane in order. Stops early only on shutdown
    /// during a retry wait, in which case nothing of the batch is acknowledged.
    async fn process_batch(&self, batch: &[Delivery]) -> std::result::Result<(), Interrupted> {
        let lanes = u64::from(self.config.concurrency);
        let mut by_lane: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
        for d in batch {
            by_lane.entry(d.lane % lanes).or_default().push(d);
        }
        let lane_runs = by_lane.into_values().map(|deliveries| async move {
            for d in deliveries {
                self.process(d).await?;
            }
            Ok::<(), Interrupted>(())
        });
        futures::future::join_all(lane_runs)
            .await
            .into_iter()
            .collect()
    }

    async fn process(&self, delivery: &Delivery) -> std::result::Result<(), Interrupted> {
        let message = &delivery.message;
        let group = &self.config.group;
        let mut failures = 0u32;
        let mut infra_streak = 0u32;
        loop {
            match self.attempt(message).await {
                Ok(Attempt::Done) => {
                    self.counters.processed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Attempt::Duplicate) => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Attempt::Rejected(error)) => {
                    failures += 1;
                    tracing::warn!(id = %message.id, group = %group, error = %error, "relaybox message rejected by its handler; dead-lettered");
                    self.dead_letter(delivery, failures, &error).await?;
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Attempt::HandlerFailed(error)) => {
                    failures += 1;
                    if failures > self.config.max_retries {
                        tracing::warn!(id = %message.id, group = %group, attempts = failures, error = %error, "relaybox message dead-lettered by consumer");
                        self.dead_letter(delivery, failures, &error).await?;
                        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff(
                        failures,
                        self.config.retry_delay,
                        self.config.retry_delay_max,
                    );
                    tracing::debug!(id = %message.id, attempts = failures, ?delay, error = %error, "relaybox handler failed; will retry");
                    self.pause(delay).await?;
                }
                Err(e) => {
                    // The database failed, not the handler: retry without counting an attempt.
                    infra_streak += 1;
                    tracing::warn!(id = %message.id, error = %e, "relaybox consumer transaction failed; retrying");
                    self.pause(backoff(
                        infra_streak,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    ))
                    .await?;
                }
            }
        }
    }

    async fn pause(&self, delay: Duration) -> std::result::Result<(), Interrupted> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    async fn attempt(&self, message: &Message) -> Result<Attempt> {
        let tx = self.store.begin().await?;
        if !tx.inbox_insert(&self.config.group, message.id).await? {
            tx.rollback().await?;
            return Ok(Attempt::Duplicate);
        }
        let outcome = AssertUnwindSafe(self.handler.handle(message.clone(), tx.clone()))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => {
                return match tx.commit().await {
                    Ok(()) => Ok(Attempt::Done),
                    // The handler finished the transaction itself: it committed or rolled back.
                    Err(Error::Closed { .. }) => Ok(Attempt::HandlerFailed(
                        "the handler committed or rolled back the consumer's transaction itself"
                            .into(),
                    )),
                    // Deterministic failures at COMMIT (deferred constraints, an
                    // aborted transaction) are the handler's: count them.
                    Err(e) if !e.retryable() => {
                        Ok(Attempt::HandlerFailed(format!("commit failed: {e}")))
                    }
                    Err(e) => Err(e),
                };
            }
            Ok(Err(e)) => match e.downcast::<Rejected>() {
                Ok(rejected) => Err(rejected.reason),
                Err(e) => Ok(e.to_string()),
            },
            Err(panic) => Ok(Error::from_panic(panic).to_string()),
        };
        match (tx.rollback().await, error) {
            (Ok(()) | Err(Error::Closed { .. }), Ok(failed)) => Ok(Attempt::HandlerFailed(failed)),
            (Ok(()) | Err(Error::Closed { .. }), Err(rejected)) => Ok(Attempt::Rejected(rejected)),
            (Err(e), _) => Err(e),
        }
    }

    /// To the source's dead-letter destination when it has one, else the table.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        attempts: u32,
        error: &str,
    ) -> std::result::Result<(), Interrupted> {
        let message = &delivery.message;
        let mut streak = 0;
        loop {
            let written = match self.source.dead_letter(delivery, error).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    self.store
                        .dead_letter_consumed(&self.config.group, message, attempts, error)
                        .await
                }
                // The source's destination refuses it for good: keep it in the table instead.
                Err(e) if !e.retryable() => {
                    tracing::warn!(id = %message.id, error = %e, "relaybox source cannot dead-letter; using the dead_letters table");
                    self.store
                        .dead_letter_consumed(&self.config.group, message, attempts, error)
                        .await
                }
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => return Ok(()),
                Err(e) => {
                    streak += 1;
                    tracing::warn!(id = %message.id, error = %e, "relaybox could not write a dead letter; retrying");
                    self.pause(backoff(
                        streak,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    ))
                    .await?;
                }
            }
        }
    }
}

enum Attempt {
    Done,
    Duplicate,
    HandlerFailed(String),
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(
            ConsumerConfig::default().validate().is_err(),
            "a group is required"
        );
        assert!(ConsumerConfig::new("g").validate().is_ok());
        let c = ConsumerConfig::from_json(
            serde_json::json!({"group": "g", "max_retries": 5, "retry_delay": "1s"}),
        )
        .unwrap();
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.retry_delay, Duration::from_secs(1));
        assert!(
            ConsumerConfig::from_json(serde_json::json!({"group": "g", "batch_size": 0})).is_err()
        );
    }
}
