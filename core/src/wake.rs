//! Wake-ups on commit, without polling when idle.
//!
//! In-process: change counters that relays and log readers follow, bumped
//! after relaybox's own commits (and, on SQLite, by a commit hook on every
//! pooled connection). Across processes on PostgreSQL: a listener turns
//! `NOTIFY <prefix>outbox` / `<prefix>log` into the same bumps, and an
//! announcer sends those NOTIFYs after commits, coalesced and from its own
//! short transaction: notifying inside the writer's transaction would make
//! every writer's commit queue on PostgreSQL's cluster-wide notify lock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Change counters that waiters follow with [`watch::Receiver::changed`]:
/// no wake-up is lost, however busy the waiter was when it happened.
pub(crate) struct Wake {
    outbox: watch::Sender<u64>,
    log: watch::Sender<u64>,
    postgres: OnceLock<PgWake>,
}

/// The cross-process half, on PostgreSQL.
struct PgWake {
    pool: PgPool,
    channels: [String; 2],
    shutdown: CancellationToken,
    listener: Once,
    announcer: Arc<Announcer>,
    announcer_started: Once,
}

/// What is waiting to be announced; at most one announcement runs at a time.
#[derive(Default)]
struct Announcer {
    outbox: AtomicBool,
    log: AtomicBool,
    signal: Notify,
    /// Backend pid of the announcing connection: the listener ignores these
    /// notifications, since this process already woke its own waiters.
    backend_pid: AtomicU32,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            outbox: watch::channel(0).0,
            log: watch::channel(0).0,
            postgres: OnceLock::new(),
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

impl Wake {
    /// Enables NOTIFY-based wake-ups across processes for a PostgreSQL store.
    pub(crate) fn attach_postgres(
        &self,
        pool: &PgPool,
        prefix: &str,
        shutdown: &CancellationToken,
    ) {
        let _ = self.postgres.set(PgWake {
            pool: pool.clone(),
            channels: [format!("{prefix}outbox"), format!("{prefix}log")],
            shutdown: shutdown.clone(),
            listener: Once::new(),
            announcer: Arc::new(Announcer::default()),
            announcer_started: Once::new(),
        });
    }

    /// Outbox rows were committed: wake this process's relays, and others'.
    pub(crate) fn outbox_changed(&self) {
        bump(&self.outbox);
        self.announce(|a| &a.outbox);
    }

    /// Log entries were committed: wake this process's readers, and others'.
    pub(crate) fn log_changed(&self) {
        bump(&self.log);
        self.announce(|a| &a.log);
    }

    /// A sender for wake-ups raised outside this type (SQLite commit hooks).
    pub(crate) fn outbox_sender(&self) -> watch::Sender<u64> {
        self.outbox.clone()
    }

    /// Follows outbox changes (starting the listener on PostgreSQL).
    pub(crate) fn outbox(&self) -> watch::Receiver<u64> {
        self.ensure_listener();
        self.outbox.subscribe()
    }

    /// Follows log changes (starting the listener on PostgreSQL).
    pub(crate) fn log(&self) -> watch::Receiver<u64> {
        self.ensure_listener();
        self.log.subscribe()
    }

    fn announce(&self, flag: fn(&Announcer) -> &AtomicBool) {
        let Some(pg) = self.postgres.get() else {
            return;
        };
        flag(&pg.announcer).store(true, Ordering::Release);
        // Outside a runtime there is nothing to run it on; the next call from inside one does.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        pg.announcer_started.call_once(|| {
            let task = announce(pg.pool.clone(), pg.channels.clone(), pg.announcer.clone());
            spawn_until(&runtime, &pg.shutdown, task);
        });
        pg.announcer.signal.notify_one();
    }

    fn ensure_listener(&self) {
        let Some(pg) = self.postgres.get() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        pg.listener.call_once(|| {
            let task = listen(
                pg.pool.clone(),
                pg.channels.clone(),
                self.outbox.clone(),
                self.log.clone(),
                pg.announcer.clone(),
            );
            spawn_until(&runtime, &pg.shutdown, task);
        });
    }
}

/// Runs `task` on `runtime` until it ends or the store shuts down.
fn spawn_until(
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.clone();
    runtime.spawn(async move {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {}
            _ = task => {}
        }
    });
}

/// Sends the pending NOTIFYs, one short transaction at a time on a
/// connection of its own, until the store closes.
async fn announce(pool: PgPool, channels: [String; 2], announcer: Arc<Announcer>) {
    let mut conn: Option<PgConnection> = None;
    loop {
        announcer.signal.notified().await;
        let outbox = announcer.outbox.swap(false, Ordering::AcqRel);
        let log = announcer.log.swap(false, Ordering::AcqRel);
        if !(outbox || log) {
            continue;
        }
        // One round trip: the whole transaction travels as one simple query.
        // Channel names are the validated table prefix plus a fixed word: safe to inline.
        let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = off;");
        for (pending, channel) in [(outbox, &channels[0]), (log, &channels[1])] {
            if pending {
                sql.push_str(&format!(" NOTIFY {channel};"));
            }
        }
        sql.push_str(" COMMIT");
        let sent = async {
            if conn.is_none() {
                let mut c = PgConnection::connect_with(&pool.connect_options()).await?;
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut c)
                    .await?;
                announcer.backend_pid.store(pid as u32, Ordering::Release);
                conn = Some(c);
            }
            let c = conn.as_mut().expect("connected above");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *c).await?;
            Ok::<_, sqlx::Error>(())
        };
        // A failed query may leave its transaction open: the connection is
        // dropped and the next announcement opens a fresh one.
        if let Err(e) = sent.await {
            tracing::debug!(error = %crate::Error::from(e), "relaybox NOTIFY failed; other processes rely on polling");
            conn = None;
        }
    }
}

async fn listen(
    pool: PgPool,
    channels: [String; 2],
    outbox: watch::Sender<u64>,
    log: watch::Sender<u64>,
    announcer: Arc<Announcer>,
) {
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
                Ok(n) if n.process_id() == announcer.backend_pid.load(Ordering::Acquire) => {}
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
