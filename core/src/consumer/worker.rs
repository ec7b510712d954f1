//! The consumer's task: fetches from the source while the lanes work, hands
//! each delivery to its lane, and acknowledges the settled prefix of every
//! partition.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ack::AckTracker;
use super::config::{ConsumerConfig, Counters};
use super::Handling;
use crate::backoff::backoff;
use crate::error::Result;
use crate::source::{AckToken, Delivery, Source};
use crate::store::Store;

pub(super) struct Worker {
    pub(super) store: Store,
    pub(super) source: Arc<dyn Source>,
    pub(super) handling: Handling,
    pub(super) config: ConsumerConfig,
    pub(super) cancel: CancellationToken,
    pub(super) counters: Arc<Counters>,
}

/// Why a lane stopped before its deliveries were done: shutdown during a wait.
pub(super) struct Interrupted;

/// Batches fetched but not yet settled: the next batch is fetched while the
/// lanes work on the one before.
const BATCHES_IN_FLIGHT: usize = 2;

/// Shortest time between two acknowledgements while running; completions in
/// between are acknowledged together (shutdown acknowledges at once).
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Consecutive deliveries a lane takes from its queue at a time; they share
/// transactions.
pub(super) const MAX_RUN: usize = 100;

/// A shared transaction takes no more messages after this long, so that the
/// locks its handlers took (on SQLite: the database's write lock) are not
/// held for long.
pub(super) const SHARED_FOR: Duration = Duration::from_millis(100);

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Sleeps until `at`; pending forever when there is no time.
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls an optional future; pending forever when there is none.
async fn poll_some<T>(f: &mut Option<Pending<T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Worker {
    pub(super) async fn run(self: Arc<Self>) {
        self.clone().consume().await;
        if let Err(e) = self.source.close().await {
            tracing::warn!(target: "relaybox::consumer", source = self.source.name(), error = %e, "relaybox source did not close cleanly");
        }
    }

    /// Fetches while lanes work, hands each delivery to its lane, and
    /// acknowledges the settled prefix of every partition. On shutdown: stops
    /// fetching, lets the lanes finish what they hold (a lane waiting to retry
    /// stops at once), acknowledges what is settled, and returns.
    async fn consume(self: Arc<Self>) {
        let batch = self.config.batch_size as usize;
        let limit = batch * BATCHES_IN_FLIGHT;
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<AckToken>();
        // Dropping the set (also when this task is aborted) aborts the lanes.
        let mut lane_tasks: JoinSet<()> = JoinSet::new();
        let mut lanes: HashMap<u64, mpsc::UnboundedSender<Delivery>> = HashMap::new();
        let mut tracker = AckTracker::default();
        let mut in_flight = 0usize;
        let mut stopping = false;

        let mut fetching: Option<Pending<Result<Vec<Delivery>>>> = None;
        let mut fetch_errors = 0u32;
        let mut fetch_pause = Duration::ZERO;

        let mut acking: Option<Pending<Result<()>>> = None;
        let mut acking_tokens: Vec<AckToken> = Vec::new();
        let mut ack_errors = 0u32;
        let mut ack_pause = Duration::ZERO;
        let mut next_ack = Instant::now();

        let mut purging: Option<Pending<Result<u64>>> = None;
        let mut next_purge = Instant::now();

        loop {
            let now = Instant::now();
            if !stopping && purging.is_none() && now >= next_purge {
                let store = self.store.clone();
                let retention = self.config.inbox_retention;
                purging = Some(Box::pin(async move { store.purge_inbox(retention).await }));
                next_purge = now + Duration::from_secs(3600);
            }
            if !stopping && fetching.is_none() && in_flight + batch <= limit {
                let source = self.source.clone();
                let wait = self.config.poll_interval;
                let pause = std::mem::take(&mut fetch_pause);
                fetching = Some(Box::pin(async move {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    source.fetch(batch, wait).await
                }));
            }
            let ackable = if acking.is_none() {
                tracker.ackable()
            } else {
                Vec::new()
            };
            // Something to acknowledge, but not yet: wake when it is due.
            let mut ack_wait = !ackable.is_empty();
            if !ackable.is_empty() && (stopping || now >= next_ack) {
                ack_wait = false;
                let source = self.source.clone();
                let pause = std::mem::take(&mut ack_pause);
                let tokens = ackable.clone();
                acking_tokens = ackable;
                acking = Some(Box::pin(async move {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    source.ack(&tokens).await
                }));
            }
            // Done when the lanes have ended and what they settled is acknowledged
            // (a lane's settlements are received before its end: `biased` below).
            if stopping && lane_tasks.is_empty() && acking.is_none() {
                break;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if !stopping => {
                    stopping = true;
                    // Fetched deliveries never handed to a lane are simply not acknowledged.
                    fetching = None;
                    purging = None;
                    // Lanes finish their queues, then end.
                    lanes.clear();
                }
                Some(token) = settled_rx.recv() => {
                    tracker.settle(token);
                    in_flight = in_flight.saturating_sub(1);
                }
                Some(joined) = lane_tasks.join_next(), if !lane_tasks.is_empty() => {
                    if let Err(e) = joined {
                        if e.is_panic() {
                            tracing::error!(target: "relaybox::consumer", error = %e, "relaybox consumer lane failed; stopping the consumer");
                            self.cancel.cancel();
                        }
                    }
                }
                fetched = poll_some(&mut fetching), if fetching.is_some() => {
                    fetching = None;
                    match fetched {
                        Ok(deliveries) => {
                            fetch_errors = 0;
                            for d in deliveries {
                                tracker.add(d.ack);
                                in_flight += 1;
                                let lane = d.lane % u64::from(self.config.concurrency);
                                let queue = lanes.entry(lane).or_insert_with(|| {
                                    let (tx, rx) = mpsc::unbounded_channel();
                                    lane_tasks.spawn(self.clone().lane(rx, settled_tx.clone()));
                                    tx
                                });
                                // A lane only ends on shutdown, after which nothing is dispatched.
                                let _ = queue.send(d);
                            }
                        }
                        Err(e) => {
                            fetch_errors += 1;
                            fetch_pause = backoff(fetch_errors, Duration::from_millis(100), Duration::from_secs(5));
                            tracing::warn!(target: "relaybox::consumer", source = self.source.name(), error = %e, "relaybox fetch failed; pausing {fetch_pause:?}");
                        }
                    }
                }
                acked = poll_some(&mut acking), if acking.is_some() => {
                    acking = None;
                    match acked {
                        Ok(()) => {
                            ack_errors = 0;
                            tracker.acked(&acking_tokens);
                            next_ack = Instant::now() + ACK_INTERVAL;
                        }
                        Err(e) => {
                            // The deliveries are processed; only their record is missing.
                            ack_errors += 1;
                            tracing::warn!(target: "relaybox::consumer", source = self.source.name(), error = %e, "relaybox ack failed; retrying");
                            if stopping && ack_errors > 3 && lane_tasks.is_empty() {
                                break;
                            }
                            ack_pause = backoff(ack_errors, Duration::from_millis(100), Duration::from_secs(5));
                        }
                    }
                }
                purged = poll_some(&mut purging), if purging.is_some() => {
                    purging = None;
                    match purged {
                        Ok(n) if n > 0 => tracing::debug!(target: "relaybox::consumer", rows = n, "relaybox inbox purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(target: "relaybox::consumer", error = %e, "relaybox inbox purge failed"),
                    }
                }
                _ = tokio::time::sleep_until(next_ack), if ack_wait => {}
            }
        }
    }
}
