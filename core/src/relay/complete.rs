//! Completing a batch: recording what the sink acknowledged, scheduling
//! retries, dead-lettering what failed too often or was refused for good,
//! and retrying at once the rows of a transport outage that ended.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::batch::InFlight;
use super::worker::Worker;
use super::LOG_TARGET;
use crate::backoff::backoff;
use crate::error::{Error, Result};
use crate::message::{now_micros, Message};
use crate::store::Completion;
use crate::telemetry::Published;

/// Whether `e` says the transport can never take message `id`: a transport
/// error that is not retryable and names that message (larger than the
/// producer may send, more attributes than the service accepts, a stream
/// version conflict). Retrying cannot help, so it is dead-lettered at once.
fn refused_for_good(e: &Error, id: uuid::Uuid) -> bool {
    matches!(e, Error::Transport { retryable: false, message_id: Some(m), .. } if *m == id)
}

/// What became of a completed batch.
pub(super) struct Completed {
    pub(super) failed_keys: HashSet<String>,
    /// The batch was as large as a claim may be: more rows may be waiting.
    pub(super) full: bool,
    pub(super) delivered: usize,
    pub(super) dead: usize,
    pub(super) soonest_retry: Option<Duration>,
}

impl Worker {
    /// Records what became of a batch: deletes (or marks) the delivered rows,
    /// schedules retries, dead-letters what failed too often.
    pub(super) async fn complete_batch(
        &self,
        batch: InFlight,
        results: Vec<Result<()>>,
    ) -> Result<Completed> {
        let InFlight {
            claim,
            limit,
            held_keys,
            spans,
            ..
        } = batch;
        let span = |message: &Message, attempt: u32, outcome: Published<'_>| {
            if let Some(spans) = &spans {
                spans.record(message, attempt, outcome);
            }
        };
        let full = claim.rows.len() >= limit as usize;
        let now = now_micros();
        let mut done = Completion::default();
        let mut failed_keys: HashSet<String> = HashSet::new();
        let mut soonest_retry: Option<Duration> = None;
        // Rows scheduled for a retry after a retryable transport error.
        let mut transport_failed: Vec<uuid::Uuid> = Vec::new();
        let mut any_failed = false;
        // With a transactional sink: the delivered rows, to leave the
        // relay's sets of published ids once they are recorded.
        let transactional = self.sink.transactional().is_some();
        let mut sent: Vec<(u32, uuid::Uuid)> = Vec::new();
        // Acknowledged by the sink but held behind an earlier failure of
        // their key: told to the sink, which may not publish them again.
        let mut unrecorded: Vec<&Message> = Vec::new();
        for ((row, message), result) in claim.rows.iter().zip(&claim.messages).zip(results) {
            let key = message.key.as_deref();
            let behind = key.is_some_and(|k| failed_keys.contains(k) || held_keys.contains(k));
            match result {
                // Held behind an earlier failure of its key (in this batch or an
                // earlier one): not delivered even if the sink took it, and not an
                // attempt of its own; it waits in the outbox behind that message.
                Ok(()) if behind => unrecorded.push(message),
                _ if behind => {}
                Ok(()) => {
                    span(message, row.attempts + 1, Published::Delivered);
                    done.delivered.push(message.id);
                    if transactional {
                        sent.push((row.partition, message.id));
                    }
                }
                Err(e) => {
                    any_failed = true;
                    if let Some(k) = key {
                        failed_keys.insert(k.to_string());
                    }
                    let attempts = row.attempts + 1;
                    let error = e.to_string();
                    if refused_for_good(&e, message.id) {
                        tracing::warn!(target: LOG_TARGET, id = %message.id, attempts, error = %error, "relaybox message dead-lettered without retries: the transport refused it permanently");
                        span(message, attempts, Published::DeadLettered(&error));
                        done.dead.push((message.id, error));
                    } else if attempts >= self.config.max_attempts {
                        tracing::warn!(target: LOG_TARGET, id = %message.id, attempts, error = %error, "relaybox message dead-lettered");
                        span(message, attempts, Published::DeadLettered(&error));
                        done.dead.push((message.id, error));
                    } else {
                        span(message, attempts, Published::Failed(&error));
                        let delay = backoff(
                            attempts,
                            self.config.backoff_initial,
                            self.config.backoff_max,
                        );
                        tracing::debug!(target: LOG_TARGET, id = %message.id, attempts, ?delay, error = %error, "relaybox delivery failed; will retry");
                        soonest_retry = Some(soonest_retry.map_or(delay, |d| d.min(delay)));
                        let at = now
                            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                        if matches!(e, Error::Transport { .. }) && e.retryable() {
                            transport_failed.push(message.id);
                        }
                        done.retry.push((message.id, error, at));
                    }
                }
            }
        }
        let (delivered, retried, dead) = (done.delivered.len(), done.retry.len(), done.dead.len());
        let settled: Vec<uuid::Uuid> = done
            .delivered
            .iter()
            .copied()
            .chain(done.dead.iter().map(|(id, _)| *id))
            .collect();
        if !unrecorded.is_empty() {
            tracing::debug!(target: LOG_TARGET, count = unrecorded.len(), "relaybox acknowledged messages held behind an earlier failure of their key; they go again after it");
            self.sink.unrecorded(&unrecorded);
        }
        let tally = crate::metrics::BatchTally::new(&claim.messages, &done);
        self.store
            .complete(&self.owner, claim, done, self.config.retention.is_some())
            .await?;
        self.published.recorded(&sent);
        tally.record();
        let due_now = self.recovery.lock().expect("recovery lock").note(
            &settled,
            &transport_failed,
            delivered,
            any_failed,
        );
        let c = &self.counters;
        c.delivered.fetch_add(delivered as u64, Ordering::Relaxed);
        c.retried.fetch_add(retried as u64, Ordering::Relaxed);
        c.dead_lettered.fetch_add(dead as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        self.retry_now(&due_now).await;
        // A key failed in this batch holds back its later messages in batches
        // still in flight; a key held here was already failed by an earlier batch.
        failed_keys.extend(held_keys);
        Ok(Completed {
            failed_keys,
            full,
            delivered,
            dead,
            soonest_retry,
        })
    }

    /// Makes the rows `ids`, which failed while the transport was down, due
    /// now, and has every batch loop claim: the transport delivers again.
    /// If this fails, they wait out their backoff.
    async fn retry_now(&self, ids: &[uuid::Uuid]) {
        if ids.is_empty() {
            return;
        }
        match self.store.retry_now(&self.owner, ids).await {
            Ok(rows) => {
                tracing::info!(target: LOG_TARGET, owner = %self.owner, rows, "relaybox transport delivers again: rows that failed during the outage are retried now");
                self.nudge.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, owner = %self.owner, error = %e, "relaybox could not retry the rows that failed during the outage now; they wait for their retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_permanent_error_naming_the_message_refuses_it_for_good() {
        let id = uuid::Uuid::now_v7();
        let transport = |retryable, message_id| Error::Transport {
            transport: "t".into(),
            message: "m".into(),
            retryable,
            message_id,
        };
        assert!(refused_for_good(&transport(false, Some(id)), id));
        assert!(!refused_for_good(&transport(true, Some(id)), id));
        assert!(!refused_for_good(&transport(false, None), id));
        assert!(!refused_for_good(
            &transport(false, Some(uuid::Uuid::now_v7())),
            id
        ));
        assert!(!refused_for_good(&Error::internal("x"), id));
    }
}
