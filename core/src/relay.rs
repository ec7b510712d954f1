//! The relay: moves committed outbox rows to a [`Sink`] in order per key,
//! sharing partitions with other relays through leases, retrying failures with
//! backoff and dead-lettering what keeps failing.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::batch_sizer::BatchSizer;
use crate::error::{Error, Result};
use crate::message::{now_micros, Message};
use crate::sink::{Acks, Sink};
use crate::store::{Claim, Completion, LeaseSession, Slice, Store};
use crate::telemetry::Published;

/// Relay settings. Every field has a default; [`validate`](RelayConfig::validate) rejects nonsense.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The largest batch, in rows (default 5000). Each batch loop starts
    /// with batches of 100 rows (or this, when smaller), doubles them while
    /// claims come back full and batches are acknowledged within a second
    /// (or half the publish timeout, when shorter), and halves them when a
    /// claim comes back less than half full or a batch is slower: small
    /// batches while rows trickle in, large ones while a backlog drains.
    pub batch_size: u32,
    /// Fallback poll when no wake-up arrives (default 1 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// How long a partition lease lasts without renewal (default 15 s); leases
    /// are renewed every third of it. On SQLite a dead relay's partitions are
    /// taken over once its leases expire, after at most this long; on
    /// PostgreSQL as soon as its session with the database is gone.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub lease_ttl: Duration,
    /// Attempts before a message moves to dead letters (default 10). A
    /// message the transport refuses for good (a transport error that is not
    /// retryable and names it) is dead-lettered at its first attempt.
    pub max_attempts: u32,
    /// First retry delay (default 500 ms); doubles per attempt, with jitter.
    /// Rows that failed while the transport was down are retried at once
    /// (once) when it delivers again.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub backoff_initial: Duration,
    /// Longest retry delay (default 5 min).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub backoff_max: Duration,
    /// Longest wait for the sink's acknowledgements of a batch; must be shorter
    /// than `lease_ttl` (default: 10 s or half the lease, whichever is shorter).
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub publish_timeout: Option<Duration>,
    /// Keep delivered rows (with `sent_at`) this long instead of deleting them.
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub retention: Option<Duration>,
    /// Delete rows of the database transport's log appended longer ago than
    /// this (default: kept for ever); see `log_keep_unread`.
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub log_retention: Option<Duration>,
    /// With `log_retention`, keep the rows that a consumer group member that
    /// has read the topic has not passed yet, and the rows of topics no group
    /// has read (default true).
    pub log_keep_unread: bool,
    /// Delete dead letters that failed longer ago than this (default: kept
    /// for ever).
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub dead_letter_retention: Option<Duration>,
    /// How long producers' idempotency keys are kept after their message
    /// has left the outbox (default 24 h, measured to within a minute); an
    /// enqueue with the same key after that writes a new message.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub idempotency_window: Duration,
    /// Instance id shown in leases and `relaybox status` (default: host-pid-random).
    pub instance_id: Option<String>,
    /// Batch loops run at once, each over its share of the held partitions
    /// (partition mod `concurrency`), so that one loop's database work
    /// overlaps another's wait for the broker (default 2).
    pub concurrency: u32,
    /// Batches each batch loop may have handed to the sink and still be
    /// waiting for the acknowledgements of (default 2): the next batch is
    /// claimed and handed over while earlier ones are acknowledged, as long
    /// as the batches in flight hold fewer than 256 rows together (a claim
    /// behind them steps over every row they keep locked, so a backlog goes
    /// one batch at a time). Takes effect with sinks that
    /// hand over before acknowledging (Kafka) and on PostgreSQL; each batch
    /// in flight holds a pooled connection.
    pub batches_in_flight: u32,
    /// How often the relay samples the backlog per topic for its metrics
    /// (`relaybox_backlog_messages` and the like, docs/metrics.md): one
    /// `relaybox status` query (default 5 s; 0 turns sampling off).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub metrics_interval: Duration,
    /// Park a key after the relay dead-letters one of its messages (default
    /// true): the relay claims none of the key's later messages (same
    /// partition and key) until that dead letter is retried, which puts it
    /// back ahead of them, or purged, so order per key holds. Other keys,
    /// and messages without a key, flow. `false`: the key's later messages
    /// go on without it. Dead letters of consumers never park a key.
    pub park_keys: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 5_000,
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            max_attempts: 10,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            publish_timeout: None,
            retention: None,
            log_retention: None,
            log_keep_unread: true,
            dead_letter_retention: None,
            idempotency_window: Duration::from_secs(86_400),
            instance_id: None,
            concurrency: 2,
            batches_in_flight: 2,
            metrics_interval: Duration::from_secs(5),
            park_keys: true,
        }
    }
}

impl RelayConfig {
    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10000"));
        }
        if self.idempotency_window < Duration::from_secs(1) {
            return Err(Error::config("idempotency_window", "must be at least 1 s"));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config("poll_interval", "must be at least 1 ms"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(Error::config("lease_ttl", "must be at least 100 ms"));
        }
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(Error::config(
                "backoff_initial",
                "must be positive and at most backoff_max",
            ));
        }
        let timeout = self.effective_publish_timeout();
        if timeout.is_zero() || timeout >= self.lease_ttl {
            return Err(Error::config(
                "publish_timeout",
                "must be positive and shorter than lease_ttl",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::config("concurrency", "must be between 1 and 64"));
        }
        if !(1..=16).contains(&self.batches_in_flight) {
            return Err(Error::config(
                "batches_in_flight",
                "must be between 1 and 16",
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty() || id.len() > 200 {
                return Err(Error::config("instance_id", "must be 1 to 200 characters"));
            }
        }
        Ok(())
    }

    /// The publish timeout in force: the configured one, or the default.
    pub fn effective_publish_timeout(&self) -> Duration {
        self.publish_timeout
            .unwrap_or_else(|| Duration::from_secs(10).min(self.lease_ttl / 2))
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: RelayConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("relay config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

/// Counters of a running relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages the sink acknowledged.
    pub delivered: u64,
    /// Failed attempts that were scheduled for retry.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
    /// Batches published.
    pub batches: u64,
    /// Claims run against the outbox, those that found nothing included
    /// (each is a database transaction). A steady trickle costs about one
    /// claim per batch: a loop claims when rows of its own partitions were
    /// committed, after a full batch, at a retry and at `poll_interval`.
    pub claims: u64,
    /// Partitions held right now.
    pub partitions_held: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    claims: AtomicU64,
    partitions_held: AtomicU64,
    leases: crate::health::LeaseHealth,
}

/// A running relay. Stop it with [`shutdown`](Relay::shutdown), which finishes
/// the batches in flight and hands its partitions over at once. Dropping it
/// instead stops it abruptly, as a crash would: another relay takes its
/// partitions over (on PostgreSQL once its presence connection is closed,
/// within about a second; on SQLite once its leases expire, after
/// `lease_ttl`); nothing is lost.
pub struct Relay {
    owner: String,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// What [`health`](Relay::health) checks; let go at shutdown, so that
    /// the store and the sink live no longer than the relay's work.
    checked: Mutex<Option<(Store, Arc<dyn Sink>)>>,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("owner", &self.owner).finish()
    }
}

impl Relay {
    /// Validates `config` and starts relaying on the current tokio runtime.
    ///
    /// A sink that serves some topics only ([`Sink::topics`], e.g. a
    /// [`RoutedSink`](crate::RoutedSink)) makes the relay claim rows of
    /// those topics only, sharing partitions with the relays that serve the
    /// same topics (see [`crate::route`]).
    pub fn start(store: Store, sink: Arc<dyn Sink>, config: RelayConfig) -> Result<Relay> {
        config.validate()?;
        store.check_open()?;
        let topics = sink.topics().map(|t| t.lane());
        let store = store.for_relay(sink.topics(), config.park_keys);
        let owner = config
            .instance_id
            .clone()
            .unwrap_or_else(default_instance_id);
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let lease_ttl = config.lease_ttl;
        crate::metrics::describe();
        let worker = Worker {
            store: store.clone(),
            sink: sink.clone(),
            config,
            owner: owner.clone(),
            cancel: cancel.clone(),
            counters: counters.clone(),
            held: watch::channel(Vec::new()).0,
            recovery: Mutex::new(Recovery::default()),
            nudge: watch::channel(0).0,
        };
        let task = crate::runtime::current()?.spawn(worker.run());
        match &topics {
            Some(topics) => {
                tracing::info!(owner = %owner, topics = %topics, "relaybox relay started")
            }
            None => tracing::info!(owner = %owner, "relaybox relay started"),
        }
        Ok(Relay {
            owner,
            cancel,
            task: Mutex::new(Some(task)),
            counters,
            checked: Mutex::new(Some((store, sink))),
            lease_ttl,
        })
    }

    /// Whether the relay is ready to relay: its task running, the database
    /// reachable, its leases tended (see [`Health`](crate::health::Health))
    /// and its transport connected (the sink's [`check`](Sink::check)).
    /// Each check is bounded by [`HEALTH_CHECK_TIMEOUT`].
    pub async fn health(&self) -> crate::health::Health {
        use crate::health::{ping, within, Health};
        let running = self.is_running();
        let checked = self.checked.lock().expect("relay lock").clone();
        let (true, Some((store, sink))) = (running, checked) else {
            return Health {
                running: false,
                database: false,
                leases: false,
                partitions_held: 0,
                transport: false,
                problems: vec!["relay: not running".to_string()],
            };
        };
        let mut problems = Vec::new();
        let timeout = HEALTH_CHECK_TIMEOUT;
        let transport = sink.name().to_string();
        let (database, checked) = tokio::join!(
            within(timeout, "SELECT 1", ping(&store)),
            within(timeout, "the transport check", sink.check()),
        );
        if let Err(e) = &database {
            problems.push(format!("database: {e}"));
        }
        let held = self.counters.partitions_held.load(Ordering::Relaxed);
        let lease_problem = self.counters.leases.problem(held, self.lease_ttl);
        problems.extend(lease_problem.clone());
        if let Err(e) = &checked {
            problems.push(format!("transport {transport}: {e}"));
        }
        Health {
            running,
            database: database.is_ok(),
            leases: lease_problem.is_none(),
            partitions_held: held,
            transport: checked.is_ok(),
            problems,
        }
    }

    /// This relay's instance id, as shown in the lease table.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Current counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.counters;
        RelayStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            claims: c.claims.load(Ordering::Relaxed),
            partitions_held: c.partitions_held.load(Ordering::Relaxed),
        }
    }

    /// Finishes the batches in flight, releases the leases and stops. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        self.cancel.cancel();
        let task = self.task.lock().expect("relay task lock").take();
        if let Some(task) = task {
            task.await
                .map_err(|e| Error::internal(format!("relay task failed: {e}")))?;
        }
        self.checked.lock().expect("relay lock").take();
        Ok(())
    }

    /// Whether the relay is still running.
    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .expect("relay task lock")
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// The longest [`Relay::health`] waits for the database and for the
/// transport.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}

struct Worker {
    store: Store,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    owner: String,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    /// The partitions this relay holds, as of the last lease refresh.
    held: watch::Sender<Vec<u32>>,
    /// The transport's failures and recovery, shared by the batch loops.
    recovery: Mutex<Recovery>,
    /// Bumped when rows were made due at once (the transport recovered):
    /// every batch loop claims.
    nudge: watch::Sender<u64>,
}

/// What the relay knows of its transport's health, to retry at once the rows
/// that failed during an outage when the transport delivers again, instead
/// of letting them sit out their backoff while they hold back their keys.
#[derive(Default)]
struct Recovery {
    /// A batch failed with retryable transport errors and nothing of it was
    /// delivered, and no batch was delivered whole since: the transport
    /// looks down.
    down: bool,
    /// Rows scheduled for a retry after a retryable transport error, since
    /// the last recovery.
    waiting: HashSet<uuid::Uuid>,
    /// Rows made due early once already. A row that fails again after that
    /// waits out its backoff: in a partial outage (some topics or broker
    /// partitions failing while others work), batches that go through must
    /// not make the failing rows burn their attempts at the pace of the
    /// traffic.
    retried_early: HashSet<uuid::Uuid>,
}

/// Rows remembered as retried early, at most; beyond, the memory is cleared
/// (those rows may then be retried early once more).
const RETRIED_EARLY_KEPT: usize = 100_000;

impl Recovery {
    /// Records a completed batch: the rows it `settled` (delivered or
    /// dead-lettered), those it scheduled for a retry after a retryable
    /// transport error (`transport_failed`), how many it `delivered` and
    /// whether any of its messages `failed`. Returns the rows to make due
    /// now: when a batch is delivered whole while the transport looked
    /// down, those that failed since the last recovery and were not retried
    /// early before.
    fn note(
        &mut self,
        settled: &[uuid::Uuid],
        transport_failed: &[uuid::Uuid],
        delivered: usize,
        failed: bool,
    ) -> Vec<uuid::Uuid> {
        for id in settled {
            self.waiting.remove(id);
            self.retried_early.remove(id);
        }
        for id in transport_failed {
            if !self.retried_early.contains(id) {
                self.waiting.insert(*id);
            }
        }
        if delivered == 0 && !transport_failed.is_empty() {
            self.down = true;
        }
        if !(self.down && delivered > 0 && !failed) {
            return Vec::new();
        }
        self.down = false;
        if self.retried_early.len() + self.waiting.len() > RETRIED_EARLY_KEPT {
            self.retried_early.clear();
        }
        let due: Vec<uuid::Uuid> = self.waiting.drain().collect();
        self.retried_early.extend(due.iter().copied());
        due
    }
}

/// Whether `e` says the transport can never take message `id`: a transport
/// error that is not retryable and names that message (larger than the
/// producer may send, more attributes than the service accepts, a stream
/// version conflict). Retrying cannot help, so it is dead-lettered at once.
fn refused_for_good(e: &Error, id: uuid::Uuid) -> bool {
    matches!(e, Error::Transport { retryable: false, message_id: Some(m), .. } if *m == id)
}

/// The number of partitions relay `me` should hold: `total` shared among
/// the `live` relays (sorted, the same list for every relay), the first
/// `total % live` of them holding one more than the others, so that the
/// shares add up to `total` exactly.
fn fair_share(total: u32, live: &[String], me: &str) -> usize {
    let n = live.len().max(1) as u32;
    let rank = live.iter().position(|o| o == me).unwrap_or(live.len()) as u32;
    (total / n + u32::from(rank < total % n)) as usize
}

/// How often the lease loop looks at the leases (at most; never less often
/// than `lease_ttl / 3`): one read-only statement, after which it refreshes
/// (heartbeat, renew, give or take) only if the live relays changed, it is
/// not at its fair share while it could be, or it is time to renew.
const LEASE_LOOK: Duration = Duration::from_millis(500);

/// The lease loop's memory between looks.
struct LeaseTending {
    /// The live relays at the last refresh.
    live: Vec<String>,
    /// When the leases are due for renewal.
    renew_at: Instant,
    /// Looks in a row at which the presence lock was refused.
    refused: u32,
}

/// A batch handed to the sink, waiting for its acknowledgements.
struct InFlight {
    claim: Claim,
    /// The claim's limit: a claim that filled it may have more behind it.
    limit: u32,
    /// When the batch was handed to the sink.
    handed_at: Instant,
    acks: Acks,
    /// Keys that failed in batches completed after this one was claimed:
    /// this batch's messages of those keys are not recorded as delivered.
    held_keys: HashSet<String>,
    /// The batch's `publish` spans, when spans are recorded.
    spans: Option<crate::telemetry::PublishSpans>,
}

/// What became of a completed batch.
struct Completed {
    failed_keys: HashSet<String>,
    /// The batch was as large as a claim may be: more rows may be waiting.
    full: bool,
    delivered: usize,
    dead: usize,
    soonest_retry: Option<Duration>,
}

impl Worker {
    /// Keeps the leases and runs `concurrency` batch loops until shutdown,
    /// then hands the partitions over.
    async fn run(self) {
        let mut session = self.store.lease_session(&self.owner);
        let loops = (0..self.config.concurrency).map(|i| {
            self.batch_loop(Slice {
                index: i,
                count: self.config.concurrency,
            })
        });
        let sampler = async {
            let every = self.config.metrics_interval;
            if !every.is_zero() {
                let cancel = self.cancel.clone();
                crate::metrics::sample_backlog(self.store.clone(), every, cancel).await;
            }
        };
        tokio::join!(
            self.lease_loop(&mut session),
            futures::future::join_all(loops),
            sampler
        );
        if let Err(e) = self.store.leave(&self.owner).await {
            tracing::warn!(owner = %self.owner, error = %e, "relaybox relay could not release its leases");
        }
        let held = self.counters.partitions_held.swap(0, Ordering::Relaxed);
        crate::metrics::leases_changed(held as usize, 0);
        // Only now: with the presence lock let go earlier, another relay
        // could free this one's leases while its last batches complete.
        session.close().await;
        tracing::info!(owner = %self.owner, "relaybox relay stopped");
    }

    /// Looks at the leases every [`LEASE_LOOK`] (or `lease_ttl / 3` if
    /// shorter), refreshes them when needed, and purges retained rows.
    async fn lease_loop(&self, session: &mut LeaseSession) {
        let renew_every = self.config.lease_ttl / 3;
        let look_every = renew_every.min(LEASE_LOOK);
        let mut tending = LeaseTending {
            live: Vec::new(),
            renew_at: Instant::now(),
            refused: 0,
        };
        let mut next_purge = Instant::now();
        // A lane's lease rows are made by its first relay (see `Store::seed_lane`).
        let mut seeded = false;
        let mut mix_checked = false;
        while !self.cancel.is_cancelled() {
            if !seeded {
                match self.store.seed_lane().await {
                    Ok(()) => seeded = true,
                    Err(e) => {
                        tracing::warn!(owner = %self.owner, error = %e, "relaybox relay could not create the leases of its topics")
                    }
                }
            }
            let next_look = match self.tend_leases(session, &mut tending).await {
                Ok(()) => {
                    if !mix_checked {
                        mix_checked = self.warn_of_other_lanes().await;
                    }
                    Instant::now() + look_every
                }
                Err(e) => {
                    self.counters
                        .leases
                        .failed(format!("lease refresh failed: {e}"));
                    tracing::warn!(owner = %self.owner, error = %e, "relaybox lease refresh failed");
                    Instant::now() + renew_every.min(Duration::from_secs(1))
                }
            };
            if Instant::now() >= next_purge {
                if let Some(retention) = self.config.retention {
                    if let Err(e) = self.store.purge_sent(retention).await {
                        tracing::warn!(error = %e, "relaybox purge of sent rows failed");
                    }
                }
                let window = self.config.idempotency_window;
                if let Err(e) = self.store.purge_idempotency_keys(window).await {
                    tracing::warn!(error = %e, "relaybox purge of idempotency keys failed");
                }
                if let Some(retention) = self.config.log_retention {
                    let keep_unread = self.config.log_keep_unread;
                    purge_in_batches("log", || {
                        self.store.purge_log(retention, keep_unread, PURGE_BATCH)
                    })
                    .await;
                }
                if let Some(retention) = self.config.dead_letter_retention {
                    purge_in_batches("dead letters", || {
                        self.store.purge_old_dead_letters(retention, PURGE_BATCH)
                    })
                    .await;
                }
                next_purge = Instant::now() + Duration::from_secs(60).min(window);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next_look) => {}
            }
        }
    }

    /// One lease tick: makes sure the presence lock is held (PostgreSQL),
    /// looks at the leases (freeing those of relays found gone), and
    /// refreshes them if the look calls for it.
    async fn tend_leases(
        &self,
        session: &mut LeaseSession,
        tending: &mut LeaseTending,
    ) -> Result<()> {
        if !self.store.hold_presence(session).await? {
            // Without its presence lock the relay looks gone to the others,
            // who may free its leases at any look: it renews and takes none
            // until it holds the lock again. Its claims stay fenced by the
            // leases either way.
            // Refused once, it may be a relay that took this one for gone
            // and is freeing its leases; still refused a second later,
            // another session holds it for good.
            tending.refused += 1;
            self.counters
                .leases
                .failed("another session holds the relay's presence lock".into());
            if tending.refused == 3 {
                tracing::warn!(owner = %self.owner, "relaybox relay cannot take its presence lock: another session holds it (another relay with the same instance_id?); it renews and takes no leases until it can");
            }
            return Ok(());
        }
        tending.refused = 0;
        let view = self.store.lease_view(session).await?;
        self.counters.leases.looked(view.free);
        if !view.gone.is_empty() {
            tracing::info!(owner = %self.owner, gone = ?view.gone, "relaybox relay instances gone (their database sessions ended): their partitions are free");
        }
        let total = self.store.partitions().await?;
        let held = self.held.borrow().clone();
        let target = fair_share(total, &view.live, &self.owner);
        let refresh = Instant::now() >= tending.renew_at
            || !view.gone.is_empty()
            || view.live != tending.live
            || view.mine != held
            || held.len() > target
            || (held.len() < target && view.free > 0);
        if refresh {
            tending.live = self.refresh_leases(session).await?;
            tending.renew_at = Instant::now() + self.config.lease_ttl / 3;
        }
        Ok(())
    }

    /// Warns when relays that serve every topic run beside relays that
    /// serve some topics only: the former also claim the latter's topics,
    /// so those topics' messages may go to either transport. Returns
    /// whether the look was made.
    async fn warn_of_other_lanes(&self) -> bool {
        let Ok(live) = self.store.live_topics().await else {
            return false;
        };
        let routed = self.sink.topics().is_some();
        let others: Vec<&str> = live
            .iter()
            .filter(|(owner, topics)| *owner != self.owner && topics.is_some() != routed)
            .map(|(owner, _)| owner.as_str())
            .collect();
        if !others.is_empty() {
            if routed {
                tracing::warn!(owner = %self.owner, others = ?others, "relaybox relays that serve every topic run beside this relay, which serves some topics only: they also take its topics; give every relay on this outbox routes");
            } else {
                tracing::warn!(owner = %self.owner, others = ?others, "relaybox relays with routes run beside this relay, which serves every topic: it also takes their topics; give every relay on this outbox routes");
            }
        }
        true
    }

    /// How many batches a loop may have in flight: pipelining needs a claim
    /// that keeps its rows locked (PostgreSQL); SQLite claims lock nothing.
    fn depth(&self) -> usize {
        match self.store.dialect() {
            crate::schema::Dialect::Postgres => self.config.batches_in_flight as usize,
            crate::schema::Dialect::Sqlite => 1,
        }
    }

    /// Claims, publishes and completes batches of the held partitions in
    /// `slice`, with up to `batches_in_flight` batches handed to the sink
    /// and awaiting acknowledgement; batches are completed in claim order.
    async fn batch_loop(&self, slice: Slice) {
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
            let room = in_flight.is_empty()
                || (in_flight.len() < depth
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
                        error_streak += 1;
                        let pause = backoff(
                            error_streak,
                            Duration::from_millis(100),
                            Duration::from_secs(5),
                        );
                        tracing::warn!(owner = %self.owner, error = %e, "relaybox relay batch failed; pausing {pause:?}");
                        look = false;
                        timer = Some(Instant::now() + pause);
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
                            error_streak += 1;
                            let pause = backoff(
                                error_streak,
                                Duration::from_millis(100),
                                Duration::from_secs(5),
                            );
                            tracing::warn!(owner = %self.owner, error = %e, "relaybox relay batch failed; pausing {pause:?}");
                            look = false;
                            timer = Some(Instant::now() + pause);
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

    /// Heartbeat, renew, then take or give partitions towards the fair
    /// share; returns the live relays.
    async fn refresh_leases(&self, session: &mut LeaseSession) -> Result<Vec<String>> {
        let ttl = self.config.lease_ttl;
        let live = self.store.heartbeat(session, ttl).await?;
        let total = self.store.partitions().await?;
        let target = fair_share(total, &live, &self.owner);
        let mut held = self.store.renew_leases(session, ttl).await?;
        held.sort_unstable();
        if held.len() > target {
            let give: Vec<u32> = held.split_off(target);
            self.store.release_leases(session, &give).await?;
        } else if held.len() < target {
            let got = self
                .store
                .acquire_leases(session, ttl, (target - held.len()) as u32)
                .await?;
            held.extend(got);
            held.sort_unstable();
        }
        let before = self
            .counters
            .partitions_held
            .swap(held.len() as u64, Ordering::Relaxed);
        crate::metrics::leases_changed(before as usize, held.len());
        self.held.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
        Ok(live)
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
        let claim = self.store.claim(&self.owner, slice, limit).await?;
        if claim.rows.is_empty() {
            return Ok(Started::Nothing);
        }
        let rows = claim.rows.len();
        crate::metrics::batch_claimed(claim.rows.len());
        let spans = crate::telemetry::PublishSpans::start(self.sink.name(), claim.rows.len());
        let acks = self.send(&claim.messages).await;
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

    /// Records what became of a batch: deletes (or marks) the delivered rows,
    /// schedules retries, dead-letters what failed too often.
    async fn complete_batch(&self, batch: InFlight, results: Vec<Result<()>>) -> Result<Completed> {
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
        for ((row, message), result) in claim.rows.iter().zip(&claim.messages).zip(results) {
            let key = message.key.as_deref();
            let behind = key.is_some_and(|k| failed_keys.contains(k) || held_keys.contains(k));
            match result {
                // Held behind an earlier failure of its key (in this batch or an
                // earlier one): not delivered even if the sink took it, and not an
                // attempt of its own; it waits in the outbox behind that message.
                _ if behind => {}
                Ok(()) => {
                    span(message, row.attempts + 1, Published::Delivered);
                    done.delivered.push(message.id);
                }
                Err(e) => {
                    any_failed = true;
                    if let Some(k) = key {
                        failed_keys.insert(k.to_string());
                    }
                    let attempts = row.attempts + 1;
                    let error = e.to_string();
                    if refused_for_good(&e, message.id) {
                        tracing::warn!(id = %message.id, attempts, error = %error, "relaybox message dead-lettered without retries: the transport refused it permanently");
                        span(message, attempts, Published::DeadLettered(&error));
                        done.dead.push((message.id, error));
                    } else if attempts >= self.config.max_attempts {
                        tracing::warn!(id = %message.id, attempts, error = %error, "relaybox message dead-lettered");
                        span(message, attempts, Published::DeadLettered(&error));
                        done.dead.push((message.id, error));
                    } else {
                        span(message, attempts, Published::Failed(&error));
                        let delay = backoff(
                            attempts,
                            self.config.backoff_initial,
                            self.config.backoff_max,
                        );
                        tracing::debug!(id = %message.id, attempts, ?delay, error = %error, "relaybox delivery failed; will retry");
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
        let tally = crate::metrics::BatchTally::new(&claim.messages, &done);
        self.store
            .complete(&self.owner, claim, done, self.config.retention.is_some())
            .await?;
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
                tracing::info!(owner = %self.owner, rows, "relaybox transport delivers again: rows that failed during the outage are retried now");
                self.nudge.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(e) => {
                tracing::warn!(owner = %self.owner, error = %e, "relaybox could not retry the rows that failed during the outage now; they wait for their retry")
            }
        }
    }

    /// Hands `messages` to the sink; the acknowledgements resolve within the
    /// publish timeout (counted from now). A panicking or short-answering
    /// sink counts as failed.
    async fn send(&self, messages: &[Message]) -> Acks {
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

/// Rows deleted per statement by the relay's background purges.
const PURGE_BATCH: u32 = 1_000;

/// Statements per purge tick: a larger backlog is deleted over later ticks,
/// so one tick never holds the database for long.
const PURGE_BATCHES_PER_TICK: u32 = 10;

/// Runs `purge` (deleting at most [`PURGE_BATCH`] rows) until it deletes
/// fewer, at most [`PURGE_BATCHES_PER_TICK`] times; a failure is logged.
async fn purge_in_batches<F, Fut>(what: &str, purge: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    for _ in 0..PURGE_BATCHES_PER_TICK {
        match purge().await {
            Ok(n) if n < u64::from(PURGE_BATCH) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "relaybox purge of {what} failed");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_nonsense() {
        let bad = |f: fn(&mut RelayConfig)| {
            let mut c = RelayConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(
            matches!(bad(|c| c.batch_size = 0), Error::InvalidConfig { field, .. } if field == "batch_size")
        );
        assert!(
            matches!(bad(|c| c.max_attempts = 0), Error::InvalidConfig { field, .. } if field == "max_attempts")
        );
        assert!(
            matches!(bad(|c| c.publish_timeout = Some(c.lease_ttl)), Error::InvalidConfig { field, .. } if field == "publish_timeout")
        );
        assert!(RelayConfig::default().validate().is_ok());
    }

    #[test]
    fn fair_shares_add_up_to_every_partition() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let shares: Vec<usize> = live.iter().map(|o| fair_share(16, &live, o)).collect();
        assert_eq!(shares, [6, 5, 5]);
        assert_eq!(fair_share(16, &live[..1], "a"), 16);
        assert_eq!(fair_share(2, &live, "c"), 0);
        // Not yet among the live relays: the smaller share.
        assert_eq!(fair_share(16, &live, "d"), 5);
    }

    #[test]
    fn recovery_retries_the_rows_of_an_outage_once() {
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
        let mut r = Recovery::default();
        // A batch that failed whole: the transport looks down.
        assert!(r.note(&[], &ids[..2], 0, true).is_empty());
        // A batch with failures does not end the outage.
        assert!(r.note(&[ids[3]], &ids[2..3], 1, true).is_empty());
        // A batch delivered whole does: the rows that failed are due now.
        let mut due = r.note(&[], &[], 1, false);
        due.sort();
        assert_eq!(due, ids[..3].to_vec());
        // They fail again in a new outage: not retried early a second time.
        assert!(r.note(&[], &ids[..1], 0, true).is_empty());
        assert!(r.note(&[], &[], 1, false).is_empty());
        // A delivered row is forgotten.
        r.note(&ids[..1], &[], 1, false);
        assert!(r.retried_early.len() == 2 && r.waiting.is_empty());
    }

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

    #[test]
    fn config_from_json() {
        let c = RelayConfig::from_json(
            serde_json::json!({"batch_size": 10, "poll_interval": "250ms", "lease_ttl": 5000}),
        )
        .unwrap();
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert!(RelayConfig::from_json(serde_json::json!({"batch_sise": 10})).is_err());
        assert!(RelayConfig::from_json(serde_json::json!({"batch_size": 0})).is_err());
    }
}
