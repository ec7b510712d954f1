//! The idempotent consumer: for each delivery, one database transaction (or
//! one savepoint of a transaction shared by consecutive deliveries of a lane)
//! holds the inbox row and the handler's own writes; duplicates are
//! acknowledged and skipped; failures retry with backoff, then go to dead
//! letters. In host mode ([`crate::consumer_host`]) the transaction is the
//! host application's instead; everything else is the same.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::consumer_host::RunResult;
use crate::error::{BoxError, Error, Result};
use crate::message::Message;
use crate::source::{AckToken, Delivery, Source};
use crate::store::Store;
use crate::transaction::Transaction;

mod waiting;
use waiting::{Parked, Waiting};

/// User code run once per message. The transaction holds the inbox row: write
/// through it and your writes commit atomically with "processed". Do not
/// commit or roll it back yourself.
///
/// Consecutive messages of a lane may share one transaction, each inside a
/// savepoint of its own: a failing message is rolled back to its savepoint
/// alone, and the row locks a handler takes are held until the shared
/// transaction commits.
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
    /// Deliveries fetched at a time (default 100). The next batch is fetched
    /// while lanes work, so up to twice this many are in flight.
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

/// A running consumer. [`shutdown`](Consumer::shutdown) stops fetching,
/// finishes the deliveries in flight (a message waiting to be retried stays
/// unprocessed) and acknowledges what is done; dropping stops abruptly
/// (unacknowledged deliveries come again and the inbox skips what was
/// already processed).
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
        Consumer::spawn(store, source, Handling::Owned(handler), config)
    }

    /// Starts the worker shared by both modes (see [`Handling`]).
    pub(crate) fn spawn(
        store: Store,
        source: Arc<dyn Source>,
        handling: Handling,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        config.validate()?;
        store.check_open()?;
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let worker = Arc::new(Worker {
            store,
            source,
            handling,
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

    /// Finishes and acknowledges the deliveries in flight, then stops. Idempotent.
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

/// Whose transaction holds a message's inbox row and handler writes: the
/// one seam between the two consumer modes; fetching, lanes, retries, dead
/// letters and acknowledgements are the same.
#[derive(Clone)]
pub(crate) enum Handling {
    /// relaybox's own transaction, handed to a [`Handler`].
    Owned(Arc<dyn Handler>),
    /// The host's transaction: see [`crate::consumer_host`]. Consecutive
    /// messages of a lane go to the host as one run.
    Host(crate::consumer_host::HostMode),
}

struct Worker {
    store: Store,
    source: Arc<dyn Source>,
    handling: Handling,
    config: ConsumerConfig,
    cancel: CancellationToken,
    counters: Arc<Counters>,
}

/// Why a lane stopped before its deliveries were done: shutdown during a wait.
struct Interrupted;

/// Batches fetched but not yet settled: the next batch is fetched while the
/// lanes work on the one before.
const BATCHES_IN_FLIGHT: usize = 2;

/// Shortest time between two acknowledgements while running; completions in
/// between are acknowledged together (shutdown acknowledges at once).
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Consecutive deliveries a lane takes from its queue at a time; they share
/// transactions.
const MAX_RUN: usize = 100;

/// A shared transaction takes no more messages after this long, so that the
/// locks its handlers took (on SQLite: the database's write lock) are not
/// held for long.
const SHARED_FOR: Duration = Duration::from_millis(100);

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Sleeps until `at`; pending forever when there is no time.
async fn sleep_until_some(at: Option<Instant>) {
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

/// Which deliveries are settled (processed, skipped or dead-lettered), per
/// partition, and so which offsets may be acknowledged: an offset only when
/// every delivery of its partition at or before it is settled.
#[derive(Default)]
struct AckTracker {
    partitions: HashMap<i32, PartitionTrack>,
}

#[derive(Default)]
struct PartitionTrack {
    /// Offsets handed to lanes and not yet passed by the settled prefix, with
    /// how many of their deliveries are unsettled (a redelivery after a
    /// rebalance can bring an offset twice).
    open: BTreeMap<i64, u32>,
    /// Highest offset whose partition is settled up to it.
    settled_to: Option<i64>,
    /// Highest offset acknowledged to the source.
    acked_to: Option<i64>,
}

impl AckTracker {
    fn add(&mut self, ack: AckToken) {
        let track = self.partitions.entry(ack.partition).or_default();
        *track.open.entry(ack.offset).or_default() += 1;
    }

    fn settle(&mut self, ack: AckToken) {
        let Some(track) = self.partitions.get_mut(&ack.partition) else {
            return;
        };
        if let Some(n) = track.open.get_mut(&ack.offset) {
            *n = n.saturating_sub(1);
        }
        while let Some(entry) = track.open.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            track.settled_to = Some(track.settled_to.map_or(offset, |s| s.max(offset)));
        }
    }

    /// The tokens that would acknowledge more than is acknowledged already.
    fn ackable(&self) -> Vec<AckToken> {
        self.partitions
            .iter()
            .filter_map(|(&partition, t)| match (t.settled_to, t.acked_to) {
                (Some(s), Some(a)) if s <= a => None,
                (Some(offset), _) => Some(AckToken { partition, offset }),
                (None, _) => None,
            })
            .collect()
    }

    fn acked(&mut self, tokens: &[AckToken]) {
        for token in tokens {
            if let Some(t) = self.partitions.get_mut(&token.partition) {
                t.acked_to = Some(t.acked_to.map_or(token.offset, |a| a.max(token.offset)));
            }
        }
    }
}

impl Worker {
    async fn run(self: Arc<Self>) {
        self.clone().consume().await;
        if let Err(e) = self.source.close().await {
            tracing::warn!(source = self.source.name(), error = %e, "relaybox source did not close cleanly");
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
                            tracing::error!(error = %e, "relaybox consumer lane failed; stopping the consumer");
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
                            tracing::warn!(source = self.source.name(), error = %e, "relaybox fetch failed; pausing {fetch_pause:?}");
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
                            tracing::warn!(source = self.source.name(), error = %e, "relaybox ack failed; retrying");
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
                        Ok(n) if n > 0 => tracing::debug!(rows = n, "relaybox inbox purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "relaybox inbox purge failed"),
                    }
                }
                _ = tokio::time::sleep_until(next_ack), if ack_wait => {}
            }
        }
    }

    /// Processes the deliveries of one lane, each key in order, until its
    /// queue is closed and empty or shutdown interrupts a wait. A message
    /// whose handler failed waits for its retry with the later deliveries of
    /// its key behind it, while the lane goes on with its other keys.
    async fn lane(
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
                    tracing::debug!(messages = n, error = %error, "relaybox consumer transaction failed; processing its messages one at a time");
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
                    match waiting.hold(d) {
                        Some(d) => {
                            let outcome = self.process(&d, Some(failed), 0).await?;
                            Self::settle_or_park(&d, outcome, waiting, settled);
                        }
                        // Its key was parked by a message before it: this
                        // attempt counts for nothing, it is retried in turn.
                        None => {}
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
                    tracing::warn!(id = %message.id, group = %group, error = %error, "relaybox message rejected by its handler; dead-lettered");
                    self.dead_letter(delivery, failures, &error).await?;
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Settled);
                }
                Ok(Attempt::HandlerFailed(error)) => {
                    failures += 1;
                    if failures > self.config.max_retries {
                        tracing::warn!(id = %message.id, group = %group, attempts = failures, error = %error, "relaybox message dead-lettered by consumer");
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
                    tracing::debug!(id = %message.id, attempts = failures, ?delay, error = %error, "relaybox handler failed; will retry");
                    return Ok(Outcome::RetryAfter { delay, failures });
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

    /// Handles the first messages of `run` in order in one transaction, each
    /// after the first inside its own savepoint (inbox row + handler writes),
    /// and commits. Stops at the first message whose handler fails, after
    /// rolling back to its savepoint (the messages before it are committed),
    /// and takes no more messages after `SHARED_FOR`.
    async fn attempt_shared(&self, run: &[Delivery]) -> Shared {
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
            if i > 0 {
                if started.elapsed() >= SHARED_FOR {
                    break;
                }
                if let Err(e) = tx.message_savepoint(i > 1).await {
                    return one_by_one(i, e);
                }
            }
            match tx.inbox_insert(&self.config.group, message.id).await {
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

    async fn pause(&self, delay: Duration) -> std::result::Result<(), Interrupted> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    async fn attempt(&self, message: &Message, number: u32) -> Result<Attempt> {
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

/// What became of a message after [`Worker::process`].
enum Outcome {
    /// Committed, skipped as a duplicate, or dead-lettered.
    Settled,
    /// Its handler failed `failures` times: try again after `delay`.
    RetryAfter { delay: Duration, failures: u32 },
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
struct Shared {
    /// How many messages from the start of the run are settled (committed or duplicates).
    committed: usize,
    then: Then,
}

/// What follows a shared transaction.
enum Then {
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
