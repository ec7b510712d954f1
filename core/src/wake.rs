//! Wake-ups on commit: an in-process signal bumped by same-process writers,
//! fed on PostgreSQL by LISTEN/NOTIFY so writes of other processes (and of
//! host-language drivers) wake the relay and the log readers too.

use std::sync::Once;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Change counters that waiters follow with [`watch::Receiver::changed`]:
/// no wake-up is lost, however busy the waiter was when it happened.
pub(crate) struct Wake {
    outbox: watch::Sender<u64>,
    log: watch::Sender<u64>,
    listener: Once,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            outbox: watch::channel(0).0,
            log: watch::channel(0).0,
            listener: Once::new(),
        }
    }
}

impl Wake {
    pub(crate) fn outbox_changed(&self) {
        self.outbox.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn log_changed(&self) {
        self.log.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A sender for wake-ups raised outside this type (SQLite commit hooks).
    pub(crate) fn outbox_sender(&self) -> watch::Sender<u64> {
        self.outbox.clone()
    }

    pub(crate) fn outbox(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    pub(crate) fn log(&self) -> watch::Receiver<u64> {
        self.log.subscribe()
    }

    /// Starts, once per store, the task that turns NOTIFYs into wake-ups.
    pub(crate) fn ensure_listener(
        &self,
        pool: &PgPool,
        prefix: &str,
        shutdown: &CancellationToken,
    ) {
        // Outside a runtime there is nothing to run it on; a later call from inside one starts it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.listener.call_once(|| {
            let (outbox, log) = (self.outbox.clone(), self.log.clone());
            let pool = pool.clone();
            let channels = [format!("{prefix}outbox"), format!("{prefix}log")];
            let shutdown = shutdown.clone();
            runtime.spawn(async move {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {}
                    _ = listen(pool, channels, outbox, log) => {}
                }
            });
        });
    }
}

async fn listen(
    pool: PgPool,
    channels: [String; 2],
    outbox: watch::Sender<u64>,
    log: watch::Sender<u64>,
) {
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %crate::Error::from(e), "relaybox LISTEN connection failed; relying on polling");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all(channels.iter().map(String::as_str))
            .await
        {
            tracing::warn!(error = %crate::Error::from(e), "relaybox LISTEN failed; relying on polling");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // Anything may have been missed while (re)connecting.
        bump(&outbox);
        bump(&log);
        loop {
            match listener.recv().await {
                Ok(n) if n.channel() == channels[0] => bump(&outbox),
                Ok(_) => bump(&log),
                Err(e) => {
                    tracing::debug!(error = %crate::Error::from(e), "relaybox LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
