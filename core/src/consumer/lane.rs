//! A consumer lane: its deliveries processed each key in order, several in
//! one shared transaction when they are waiting together, and a message
//! whose handler failed parked with its key until its retry.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::attempt::{Attempt, Then};
use super::waiting::{Parked, Waiting};
use super::worker::{sleep_until_some, Interrupted, Worker, MAX_RUN};
use crate::backoff::backoff;
use crate::source::{AckToken, Delivery};

impl Worker {
    /// Processes the deliveries of one lane, each key in order, until its
    /// queue is closed and empty or shutdown interrupts a wait. A message
    /// whose handler failed waits for its retry with the later deliveries of
    /// its key behind it, while the lane goes on with its other keys.
    pub(super) async fn lane(
        self: Arc<Self>,
        mut queue: mpsc::UnboundedReceiver<Delivery>,
        settled: mpsc::UnboundedSender<AckToken>,
    ) {
        let mut waiting = Waiting::default();
        loop {
            while let Some(parked) = waiting.take_due(Instant::now()) {
                if self
                    .retry_parked(parked, &mut waiting, &settled)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let due = waiting.next_due();
            let first = tokio::select! {
                biased;
                received = queue.recv() => match received {
                    Some(first) => first,
                    // The queue closes on shutdown only: waiting keys stay
                    // unacknowledged and are delivered again after a restart.
                    None => return,
                },
                _ = sleep_until_some(due), if due.is_some() => continue,
            };
            let mut run = Vec::new();
            run.extend(waiting.hold(first));
            while run.len() < MAX_RUN {
                match queue.try_recv() {
                    Ok(d) => run.extend(waiting.hold(d)),
                    Err(_) => break,
                }
            }
            if self.process_run(run, &mut waiting, &settled).await.is_err() {
                return;
            }
        }
    }

    /// Tries the first message of a waiting key again; once it is settled,
    /// the deliveries held behind it go on as a run.
    async fn retry_parked(
        &self,
        parked: Parked,
        waiting: &mut Waiting,
        settled: &mpsc::UnboundedSender<AckToken>,
    ) -> std::result::Result<(), Interrupted> {
        let Parked {
            head,
            failures,
            behind,
            ..
        } = parked;
        match self.process(&head, None, failures).await? {
            Outcome::Settled => {
                let _ = settled.send(head.ack);
                self.process_run(behind.into(), waiting, settled).await
            }
            Outcome::RetryAfter { delay, failures } => {
                waiting.park(head, failures, Instant::now() + delay);
                for d in behind {
                    let kept = waiting.hold(d);
                    debug_assert!(kept.is_none(), "a delivery of a waiting key");
                }
                Ok(())
            }
        }
    }

    /// Settles `delivery` or parks its key for a retry, by `outcome`.
    fn settle_or_park(
        delivery: &Delivery,
        outcome: Outcome,
        waiting: &mut Waiting,
        settled: &mpsc::UnboundedSender<AckToken>,
    ) {
        match outcome {
            Outcome::Settled => {
                let _ = settled.send(delivery.ack);
            }
            Outcome::RetryAfter { delay, failures } => {
                waiting.park(delivery.clone(), failures, Instant::now() + delay);
            }
        }
    }

    /// Processes consecutive deliveries of one lane, reporting each as it
    /// settles: several at a time in one transaction, one savepoint each
    /// (host mode: up to `batch_size` in one call to the host, which runs
    /// them in a transaction of its own); a message whose handler fails goes
    /// on alone (retries, dead letters), after the messages before it when
    /// its failure rolled them back too (host mode), and when the shared
    /// transaction itself fails, its messages are processed again one at a
    /// time. A message that is to be retried parks its key in `waiting`, and
    /// the run's later deliveries of that key go behind it.
    async fn process_run(
        &self,
        run: Vec<Delivery>,
        waiting: &mut Waiting,
        settled: &mpsc::UnboundedSender<AckToken>,
    ) -> std::result::Result<(), Interrupted> {
        let mut rest: VecDeque<Delivery> = run.into();
        // After a key is parked, its later deliveries in the run go behind it.
        let hold_rest = |rest: &mut VecDeque<Delivery>, waiting: &mut Waiting| {
            let kept: VecDeque<Delivery> = rest.drain(..).filter_map(|d| waiting.hold(d)).collect();
            *rest = kept;
        };
        while let Some(first) = rest.pop_front() {
            if rest.is_empty() {
                let outcome = self.process(&first, None, 0).await?;
                Self::settle_or_park(&first, outcome, waiting, settled);
                continue;
            }
            rest.push_front(first);
            let shared = self.attempt_shared(rest.make_contiguous()).await;
            for d in rest.drain(..shared.committed) {
                let _ = settled.send(d.ack);
            }
            let (one_by_one, failed) = match shared.then {
                Then::Continue => continue,
                Then::Retry(failed) => (0, Some(failed)),
                Then::RetryAfter(n, failed) => (n, Some(failed)),
                Then::OneByOne(n, error) => {
                    tracing::debug!(target: "relaybox::consumer", messages = n, error = %error, "relaybox consumer transaction failed; processing its messages one at a time");
                    (n, None)
                }
            };
            for _ in 0..one_by_one {
                let Some(d) = rest.pop_front() else { break };
                match waiting.hold(d) {
                    Some(d) => {
                        let outcome = self.process(&d, None, 0).await?;
                        Self::settle_or_park(&d, outcome, waiting, settled);
                    }
                    None => continue,
                }
            }
            if let Some(failed) = failed {
                if let Some(d) = rest.pop_front() {
                    // When a message before it parked its key, it goes
                    // behind: this attempt counts for nothing, it is retried
                    // in turn.
                    if let Some(d) = waiting.hold(d) {
                        let outcome = self.process(&d, Some(failed), 0).await?;
                        Self::settle_or_park(&d, outcome, waiting, settled);
                    }
                }
            }
            hold_rest(&mut rest, waiting);
        }
        Ok(())
    }

    /// Attempts one message in transactions of its own, `failures` attempts
    /// having failed before, until it is committed, skipped or dead-lettered,
    /// or its handler failed and it is to be tried again later. `first` is
    /// the outcome of an attempt already made. Failures of the database (not
    /// of the handler) are retried here, counting no attempt.
    async fn process(
        &self,
        delivery: &Delivery,
        mut first: Option<Attempt>,
        mut failures: u32,
    ) -> std::result::Result<Outcome, Interrupted> {
        let message = &delivery.message;
        let group = &self.config.group;
        let mut infra_streak = 0u32;
        loop {
            let attempt = match first.take() {
                Some(attempt) => Ok(attempt),
                None => self.attempt(message, failures + 1).await,
            };
            match attempt {
                Ok(Attempt::Done) => {
                    self.counters.processed.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Settled);
                }
                Ok(Attempt::Duplicate) => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Settled);
                }
                Ok(Attempt::Rejected(error)) => {
                    failures += 1;
                    tracing::warn!(target: "relaybox::consumer", id = %message.id, group = %group, error = %error, "relaybox message rejected by its handler; dead-lettered");
                    self.dead_letter(delivery, failures, &error).await?;
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Settled);
                }
                Ok(Attempt::HandlerFailed(error)) => {
                    failures += 1;
                    if failures > self.config.max_retries {
                        tracing::warn!(target: "relaybox::consumer", id = %message.id, group = %group, attempts = failures, error = %error, "relaybox message dead-lettered by consumer");
                        self.dead_letter(delivery, failures, &error).await?;
                        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        return Ok(Outcome::Settled);
                    }
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff(
                        failures,
                        self.config.retry_delay,
                        self.config.retry_delay_max,
                    );
                    tracing::debug!(target: "relaybox::consumer", id = %message.id, attempts = failures, ?delay, error = %error, "relaybox handler failed; will retry");
                    return Ok(Outcome::RetryAfter { delay, failures });
                }
                Err(e) => {
                    // The database failed, not the handler: retry without counting an attempt.
                    infra_streak += 1;
                    tracing::warn!(target: "relaybox::consumer", id = %message.id, error = %e, "relaybox consumer transaction failed; retrying");
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
}

/// What became of a message after [`Worker::process`].
enum Outcome {
    /// Committed, skipped as a duplicate, or dead-lettered.
    Settled,
    /// Its handler failed `failures` times: try again after `delay`.
    RetryAfter { delay: Duration, failures: u32 },
}
