//! The relay: moves committed outbox rows to a [`Sink`] in order per key,
//! sharing partitions with other relays through leases, retrying failures with
//! backoff and dead-lettering what keeps failing.
//!
//! Modules: `config` (settings), `stats` (counters), `worker` (the relay's
//! task), `lease` (the lease loop and fair shares), `batch` (the batch
//! loop), `send` (handing a batch to the sink), `exactly_once` (publishing
//! through a transactional sink), `complete` (recording what
//! became of a batch), `recovery` (retrying at once after a transport
//! outage), `purge` (background purges). Their log records keep the target
//! [`LOG_TARGET`] (`relaybox::relay`): the logger name the bindings show
//! (`relaybox.relay`) is the same for all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::store::Store;

mod batch;
mod complete;
mod config;
mod exactly_once;
mod lease;
mod purge;
mod recovery;
mod send;
mod stats;
mod worker;

pub use config::RelayConfig;
use recovery::Recovery;
use stats::Counters;
pub use stats::RelayStats;
use worker::Worker;

/// The target of every log record of the relay's modules.
const LOG_TARGET: &str = "relaybox::relay";

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
            published: Default::default(),
        };
        let task = crate::runtime::current()?.spawn(worker.run());
        match &topics {
            Some(topics) => {
                tracing::info!(target: LOG_TARGET, owner = %owner, topics = %topics, "relaybox relay started")
            }
            None => tracing::info!(target: LOG_TARGET, owner = %owner, "relaybox relay started"),
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
