//! One attempt at a message, or at consecutive messages of a lane in one
//! shared transaction (one savepoint each), in relaybox's transaction or the
//! host's; and writing a dead letter.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;

use super::handler::{Handler, Rejected};
use super::worker::{Interrupted, Worker, SHARED_FOR};
use super::Handling;
use crate::backoff::backoff;
use crate::consumer_host::RunResult;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::source::Delivery;
use crate::transaction::Transaction;

impl Worker {
    /// Handles the first messages of `run` in order in one transaction, each
    /// after the first inside its own savepoint (inbox row + handler writes),
    /// and commits. Stops at the first message whose handler fails, after
    /// rolling back to its savepoint (the messages before it are committed),
    /// and takes no more messages after `SHARED_FOR`.
    pub(super) async fn attempt_shared(&self, run: &[Delivery]) -> Shared {
        let one_by_one = |n: usize, error: Error| Shared {
            committed: 0,
            then: Then::OneByOne(n.max(1), error),
        };
        let handler = match &self.handling {
            Handling::Owned(handler) => handler,
            Handling::Host(host) => return self.attempt_host_run(host, run).await,
        };
        let tx = match self.store.begin().await {
            Ok(tx) => tx,
            Err(e) => return one_by_one(1, e),
        };
        let started = Instant::now();
        let (mut done, mut duplicates) = (0usize, 0u64);
        let mut failed = None;
        for (i, delivery) in run.iter().enumerate() {
            let message = &delivery.message;
            // The first message needs no savepoint: the whole transaction is its own.
            if i > 0 && started.elapsed() >= SHARED_FOR {
                break;
            }
            let recorded = if i == 0 {
                tx.inbox_insert(&self.config.group, message.id).await
            } else {
                tx.message_savepoint_inbox_insert(i > 1, &self.config.group, message.id)
                    .await
            };
            match recorded {
                Ok(true) => {}
                Ok(false) => {
                    duplicates += 1;
                    done += 1;
                    continue;
                }
                Err(e) => return one_by_one(i + 1, e),
            }
            let outcome = self.run_handler(handler.as_ref(), message, &tx, 1).await;
            if tx.is_finished().await {
                // The handler committed or rolled back the shared transaction:
                // which of the messages before it took effect is unknown.
                return one_by_one(
                    i + 1,
                    Error::internal(
                        "the handler committed or rolled back the consumer's transaction itself",
                    ),
                );
            }
            let failure = match outcome {
                // The handler ignored a failed statement: PostgreSQL aborted the
                // transaction, so its writes cannot commit.
                None if tx.is_aborted() => Some(Attempt::HandlerFailed(
                    "commit failed: a statement of the handler failed, so PostgreSQL aborted its transaction".into(),
                )),
                other => other,
            };
            if let Some(failure) = failure {
                if i == 0 {
                    // Nothing else is in the transaction yet.
                    let _ = tx.rollback().await;
                    return Shared {
                        committed: 0,
                        then: Then::Retry(failure),
                    };
                }
                if let Err(e) = tx.rollback_to_message_savepoint().await {
                    return one_by_one(i + 1, e);
                }
                failed = Some(failure);
                break;
            }
            done += 1;
        }
        if let Err(e) = tx.commit().await {
            // Deferred constraints fail only here, for no message in particular.
            return one_by_one(done + usize::from(failed.is_some()), e);
        }
        self.counters
            .processed
            .fetch_add(done as u64 - duplicates, Ordering::Relaxed);
        self.counters
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        Shared {
            committed: done,
            then: failed.map_or(Then::Continue, Then::Retry),
        }
    }

    /// Hands the first messages of `run` (at most `batch_size`) to the host
    /// in one call: it commits them in one transaction of its own, or rolls
    /// all of them back, naming the message whose handler failed when one
    /// did.
    async fn attempt_host_run(
        &self,
        host: &crate::consumer_host::HostMode,
        run: &[Delivery],
    ) -> Shared {
        let run = &run[..run.len().min(self.config.batch_size as usize)];
        match host.attempt_run(&self.store, &self.config.group, run).await {
            RunResult::Settled {
                settled,
                duplicates,
                then,
            } => {
                self.counters
                    .processed
                    .fetch_add((settled - duplicates) as u64, Ordering::Relaxed);
                self.counters
                    .duplicates
                    .fetch_add(duplicates as u64, Ordering::Relaxed);
                Shared {
                    committed: settled,
                    then: then.map_or(Then::Continue, Then::Retry),
                }
            }
            RunResult::RolledBackAt(index, attempt) => Shared {
                committed: 0,
                then: Then::RetryAfter(index, attempt),
            },
            RunResult::OneByOne(error) => Shared {
                committed: 0,
                then: Then::OneByOne(run.len(), error),
            },
        }
    }

    /// Runs the handler (attempt number `attempt`, from 1), inside the
    /// message's `process` span when spans are recorded: None when it
    /// succeeded, else the failed attempt (a panic is a failure).
    async fn run_handler(
        &self,
        handler: &dyn Handler,
        message: &Message,
        tx: &Transaction,
        attempt: u32,
    ) -> Option<Attempt> {
        let handled = AssertUnwindSafe(handler.handle(message.clone(), tx.clone())).catch_unwind();
        let span = crate::telemetry::process_span(
            message,
            self.source.name(),
            &self.config.group,
            attempt,
        );
        let outcome = match &span {
            Some(cx) => {
                use opentelemetry::context::FutureExt as _;
                handled.with_context(cx.clone()).await
            }
            None => handled.await,
        };
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(match e.downcast::<Rejected>() {
                Ok(rejected) => Attempt::Rejected(rejected.reason),
                Err(e) => Attempt::HandlerFailed(e.to_string()),
            }),
            Err(panic) => Some(Attempt::HandlerFailed(Error::from_panic(panic).to_string())),
        };
        if let Some(cx) = span {
            let (error, dead) = match &failure {
                None => (None, false),
                Some(Attempt::Rejected(e)) => (Some(e.as_str()), true),
                Some(Attempt::HandlerFailed(e)) => {
                    (Some(e.as_str()), attempt > self.config.max_retries)
                }
                Some(_) => (None, false),
            };
            crate::telemetry::end_process(&cx, error, dead);
        }
        failure
    }

    pub(super) async fn pause(&self, delay: Duration) -> std::result::Result<(), Interrupted> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    pub(super) async fn attempt(&self, message: &Message, number: u32) -> Result<Attempt> {
        let handler = match &self.handling {
            Handling::Owned(handler) => handler.as_ref(),
            Handling::Host(host) => {
                return host.attempt(&self.store, &self.config.group, message).await
            }
        };
        let tx = self.store.begin().await?;
        if !tx.inbox_insert(&self.config.group, message.id).await? {
            tx.rollback().await?;
            return Ok(Attempt::Duplicate);
        }
        let Some(failure) = self.run_handler(handler, message, &tx, number).await else {
            return match tx.commit().await {
                Ok(()) => Ok(Attempt::Done),
                // The handler finished the transaction itself: it committed or rolled back.
                Err(Error::Closed { .. }) => Ok(Attempt::HandlerFailed(
                    "the handler committed or rolled back the consumer's transaction itself".into(),
                )),
                // Deterministic failures at COMMIT (deferred constraints, an
                // aborted transaction) are the handler's: count them.
                Err(e) if !e.retryable() => {
                    Ok(Attempt::HandlerFailed(format!("commit failed: {e}")))
                }
                Err(e) => Err(e),
            };
        };
        match tx.rollback().await {
            Ok(()) | Err(Error::Closed { .. }) => Ok(failure),
            Err(e) => Err(e),
        }
    }

    /// To the source's dead-letter destination when it has one, else the table.
    pub(super) async fn dead_letter(
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
                    tracing::warn!(target: "relaybox::consumer", id = %message.id, error = %e, "relaybox source cannot dead-letter; using the dead_letters table");
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
                    tracing::warn!(target: "relaybox::consumer", id = %message.id, error = %e, "relaybox could not write a dead letter; retrying");
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

/// How one attempt at a message ended.
pub(crate) enum Attempt {
    /// Committed with its inbox row.
    Done,
    /// The inbox had it: skipped.
    Duplicate,
    /// Retry (or dead-letter when out of retries), with the error.
    HandlerFailed(String),
    /// Dead-letter at once, with the reason.
    Rejected(String),
}

/// What a shared transaction achieved for the first messages of a run.
pub(super) struct Shared {
    /// How many messages from the start of the run are settled (committed or duplicates).
    pub(super) committed: usize,
    pub(super) then: Then,
}

/// What follows a shared transaction.
pub(super) enum Then {
    /// Go on with the rest of the run.
    Continue,
    /// The next message failed this first attempt (rolled back to its savepoint).
    Retry(Attempt),
    /// The transaction rolled back because the message at this index
    /// failed this first attempt: process the messages before it one at a
    /// time, then it.
    RetryAfter(usize, Attempt),
    /// The transaction failed, so none of it took effect for sure: process
    /// this many messages one at a time.
    OneByOne(usize, Error),
}
