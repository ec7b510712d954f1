//! The idempotent consumer: for each delivery, one database transaction (or
//! one savepoint of a transaction shared by consecutive deliveries of a lane)
//! holds the inbox row and the handler's own writes; duplicates are
//! acknowledged and skipped; failures retry with backoff, then go to dead
//! letters. In host mode ([`crate::consumer_host`]) the transaction is the
//! host application's instead; everything else is the same.
//!
//! Modules: `handler` (the API user code implements), `config` (settings
//! and counters), `worker` (fetching and acknowledging), `ack` (which
//! offsets are settled), `lane` (each key in order, shared transactions),
//! `waiting` (keys parked for a retry), `attempt` (one attempt, dead
//! letters). Their log records keep the target `relaybox::consumer`: the
//! logger name the bindings show (`relaybox.consumer`) is the same for all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::source::Source;
use crate::store::Store;

mod ack;
mod attempt;
mod config;
mod handler;
mod lane;
mod waiting;
mod worker;

pub(crate) use attempt::Attempt;
use config::Counters;
pub use config::{ConsumerConfig, ConsumerStats};
pub use handler::{handler_fn, Handler, HandlerFn, Rejected};
use worker::Worker;

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
