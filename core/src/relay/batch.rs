//! The batch loop: claims batches of its slice of the held partitions,
//! hands them to the sink with up to `batches_in_flight` awaiting
//! acknowledgement, and completes them in claim order; it wakes on new
//! rows, lease changes, retries and the poll interval.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::worker::Worker;
use super::LOG_TARGET;
use crate::backoff::backoff;
use crate::batch_sizer::BatchSizer;
use crate::error::{Error, Result};
use crate::sink::Acks;
use crate::store::{Claim, Slice};

/// A batch handed to the sink, waiting for its acknowledgements.
pub(super) struct InFlight {
    pub(super) claim: Claim,
    /// The claim's limit: a claim that filled it may have more behind it.
    pub(super) limit: u32,
    /// When the batch was handed to the sink.
    pub(super) handed_at: Instant,
    pub(super) acks: Acks,
    /// Keys that failed in batches completed after this one was claimed:
    /// this batch's messages of those keys are not recorded as delivered.
    pub(super) held_keys: HashSet<String>,
    /// The batch's `publish` spans, when spans are recorded.
    pub(super) spans: Option<crate::telemetry::PublishSpans>,
}

impl Worker {
    /// How many batches a loop may have in flight: pipelining needs a claim
    /// that keeps its rows locked (PostgreSQL); SQLite claims lock nothing.
    /// A transactional sink publishes one batch per partition at a time:
    /// its record of a partition must name every message not recorded yet.
    fn depth(&self) -> usize {
        if self.sink.transactional().is_some() {
            return 1;
        }
        match self.store.dialect() {
            crate::schema::Dialect::Postgres => self.config.batches_in_flight as usize,
            crate::schema::Dialect::Sqlite => 1,
        }
    }

    /// Claims, publishes and completes batches of the held partitions in
    /// `slice`, with up to `batches_in_flight` batches handed to the sink
    /// and awaiting acknowledgement; batches are completed in claim order.
    pub(super) async fn batch_loop(&self, slice: Slice) {
        let depth = self.depth();
        let mut wake = self.store.subscribe_outbox();
        let mut held = self.held.subscribe();
        let mut nudged = self.nudge.subscribe();
        let mut error_streak = 0u32;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // Whether to try a claim now.
        let mut look = true;
        // A retry or error pause: look again then, unless woken before.
        let mut timer: Option<Instant> = None;
        // After a wake-up that found nothing (rows enqueued in a transaction
        // that had not committed yet), look again shortly, then rest.
        let mut rechecks = RECHECKS.iter();
        let mut recheck_at: Option<Instant> = None;
        // Set when a completed batch held keys back: no claim until the
        // batches in flight are completed too. A batch claimed meanwhile
        // could hold later rows of such a key while earlier ones are still
        // locked by a batch in flight; waiting lets the next claim see every
        // failure recorded, so the claim keeps the key's order by itself and
        // holding keys back does not pass from batch to batch for ever.
        let mut settling = false;
        // The stamp of this loop's partitions (`Store::outbox_stamp`) at its
        // last claim: after a wake-up or a batch that was not full, the loop
        // claims again only when rows of its partitions were committed since.
        let stamp = |held: &watch::Receiver<Vec<u32>>| {
            self.store
                .outbox_stamp(held.borrow().iter().copied().filter(|p| slice.contains(*p)))
        };
        let mut seen: Option<u64> = None;
        let mut sizer = BatchSizer::new(
            self.config.batch_size,
            self.config.effective_publish_timeout() / 2,
        );
        loop {
            let cancelled = self.cancel.is_cancelled();
            if cancelled && in_flight.is_empty() {
                break;
            }
            if settling && in_flight.is_empty() {
                // Held-back rows are due at once.
                settling = false;
                look = true;
            }
            let mine = held.borrow_and_update().iter().any(|p| slice.contains(*p));
            // A batch whose acknowledgements are in is completed before the
            // next claim. A sink that publishes within `send` has written the
            // batch already: were a later batch of its keys claimed before
            // its failures are recorded, that batch could reach the broker
            // ahead of the failed messages.
            let front_acked =
                in_flight
                    .front_mut()
                    .is_some_and(|b| match (&mut b.acks).now_or_never() {
                        Some(results) => {
                            b.acks = Box::pin(std::future::ready(results));
                            true
                        }
                        None => false,
                    });
            let room = in_flight.is_empty()
                || (!front_acked
                    && in_flight.len() < depth
                    && in_flight.iter().map(|b| b.claim.rows.len()).sum::<usize>()
                        < PIPELINED_ROWS);
            if look && !cancelled && mine && !settling && room {
                wake.borrow_and_update();
                seen = Some(stamp(&held));
                let limit = sizer.limit();
                match self.start_batch(slice, limit, &mut in_flight).await {
                    Ok(Started::Worked { rows }) => {
                        sizer.claimed(limit, rows);
                        let full = rows >= limit as usize;
                        error_streak = 0;
                        rechecks = RECHECKS.iter();
                        recheck_at = None;
                        timer = None;
                        look = full || seen != Some(stamp(&held));
                        continue;
                    }
                    Ok(Started::Nothing) => {
                        sizer.claimed(limit, 0);
                        error_streak = 0;
                        look = false;
                    }
                    Err(e) => {
                        look = false;
                        timer = Some(self.pause_after(&mut error_streak, &e));
                    }
                }
            }
            let now = Instant::now();
            let mut deadline = now + self.config.poll_interval;
            if recheck_at.is_some_and(|at| at <= now) {
                recheck_at = rechecks.next().map(|d| now + *d);
            }
            if timer.is_some_and(|at| at <= now) {
                timer = None;
                look = true;
                continue;
            }
            for at in [timer, recheck_at].into_iter().flatten() {
                deadline = deadline.min(at);
            }
            let front = in_flight.front_mut().map(|b| &mut b.acks);
            let has_front = front.is_some();
            let acks = async move {
                match front {
                    Some(acks) => acks.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                results = acks, if has_front => {
                    let batch = in_flight.pop_front().expect("a batch in flight");
                    sizer.published(batch.handed_at.elapsed());
                    match self.complete_batch(batch, results).await {
                        Ok(done) => {
                            error_streak = 0;
                            if !done.failed_keys.is_empty() {
                                settling = true;
                            }
                            for b in in_flight.iter_mut() {
                                b.held_keys.extend(done.failed_keys.iter().cloned());
                            }
                            // Failed messages are due again at their retry.
                            if let Some(d) = done.soonest_retry {
                                let at = Instant::now() + d;
                                timer = Some(timer.map_or(at, |t| t.min(at)));
                            }
                            // A full batch may have more behind it; otherwise
                            // only rows committed since the last claim can be
                            // waiting. When everything failed, the retry
                            // timer (or a wake-up) says when to look.
                            if (done.delivered > 0 || done.dead > 0)
                                && (done.full || seen != Some(stamp(&held)))
                            {
                                look = true;
                            }
                        }
                        Err(e) => {
                            // Whatever is still in flight may hold later messages of the
                            // keys of the batch that could not be recorded: give it all up
                            // (its rows are published again).
                            in_flight.clear();
                            look = false;
                            timer = Some(self.pause_after(&mut error_streak, &e));
                        }
                    }
                }
                _ = self.cancel.cancelled(), if !cancelled => {}
                _ = held.changed() => look = true,
                // Rows were made due at once: the transport recovered.
                _ = nudged.changed() => look = true,
                // A wake-up for other loops' partitions leaves the stamp as it was.
                _ = wake.changed() => {
                    if seen != Some(stamp(&held)) {
                        look = true;
                        rechecks = RECHECKS.iter();
                        recheck_at = rechecks.next().map(|d| Instant::now() + *d);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => look = true,
            }
        }
    }

    /// Counts a failed batch in `error_streak` and logs it; returns when to
    /// look again, after a pause that grows with the streak.
    fn pause_after(&self, error_streak: &mut u32, e: &Error) -> Instant {
        *error_streak += 1;
        let pause = backoff(
            *error_streak,
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        tracing::warn!(target: LOG_TARGET, owner = %self.owner, error = %e, "relaybox relay batch failed; pausing {pause:?}");
        Instant::now() + pause
    }

    /// Claims a batch and hands it to the sink, adding it to `in_flight`
    /// (or, for the relay's own database log, moves it there outright).
    async fn start_batch(
        &self,
        slice: Slice,
        limit: u32,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<Started> {
        self.counters.claims.fetch_add(1, Ordering::Relaxed);
        if self
            .sink
            .log_store()
            .is_some_and(|s| s.same_store(&self.store))
        {
            let keep = self.config.retention.is_some();
            let batch = limit;
            let started = Instant::now();
            let spans = crate::telemetry::PublishSpans::start(self.sink.name(), batch as usize);
            if let Some((moved, traced)) = self
                .store
                .move_to_log(&self.owner, slice, batch, keep, spans.is_some())
                .await?
            {
                if let Some(spans) = spans.map(|s| s.with_batch(traced.len())) {
                    for message in &traced {
                        spans.record(message, 1, crate::telemetry::Published::Delivered);
                    }
                }
                let tally = crate::metrics::BatchTally::moved(moved);
                let moved = tally.delivered();
                if moved == 0 {
                    return Ok(Started::Nothing);
                }
                crate::metrics::batch_claimed(moved as usize);
                crate::metrics::published(self.sink.name(), started.elapsed());
                tally.record();
                self.counters.delivered.fetch_add(moved, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                return Ok(Started::Worked {
                    rows: moved as usize,
                });
            }
        }
        if let Some(sink) = self.sink.transactional() {
            self.adopt_held(sink, slice).await;
        }
        let claim = self.store.claim(&self.owner, slice, limit).await?;
        if claim.rows.is_empty() {
            return Ok(Started::Nothing);
        }
        let rows = claim.rows.len();
        crate::metrics::batch_claimed(claim.rows.len());
        let spans = crate::telemetry::PublishSpans::start(self.sink.name(), claim.rows.len());
        let acks = match self.sink.transactional() {
            Some(sink) => {
                self.send_transactional(sink, &claim.rows, &claim.messages)
                    .await
            }
            None => self.send(&claim.messages).await,
        };
        in_flight.push_back(InFlight {
            claim,
            limit,
            handed_at: Instant::now(),
            acks,
            held_keys: HashSet::new(),
            spans,
        });
        Ok(Started::Worked { rows })
    }
}

/// Rows the batches in flight of a loop may hold for it to claim another
/// batch meanwhile. A claim steps over every row those batches keep locked,
/// which costs PostgreSQL about as much as claiming the row: a backlog is
/// relayed one batch at a time per loop (batches in flight would double the
/// database's work per message), while the small batches of a steady
/// trickle are pipelined.
const PIPELINED_ROWS: usize = 256;

/// Delays of the extra looks after a wake-up that found nothing to claim.
const RECHECKS: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

enum Started {
    /// A batch of `rows` was moved, or handed to the sink; when it filled
    /// the claim's limit, more rows may be waiting behind it.
    Worked { rows: usize },
    /// Nothing to claim until a wake-up, the poll interval or a retry.
    Nothing,
}
