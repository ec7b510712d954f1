//! Wake-ups on commit, without polling when idle.
//!
//! In-process: change counters that relays and log readers follow, bumped
//! after relaybox's own commits (and, on SQLite, by a commit hook on every
//! pooled connection). Across processes on PostgreSQL: a listener turns
//! `NOTIFY <prefix>outbox` / `<prefix>log` into the same bumps, and an
//! announcer sends those NOTIFYs after commits, coalesced and from its own
//! short transaction: notifying inside the writer's transaction would make
//! every writer's commit queue on PostgreSQL's cluster-wide notify lock.
//!
//! Outbox wake-ups also say which partitions received rows
//! ([`OutboxMarks`]), so that a relay loop woken by a commit of another
//! loop's partitions does not claim for nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Change counters that waiters follow with [`watch::Receiver::changed`]:
/// no wake-up is lost, however busy the waiter was when it happened.
pub(crate) struct Wake {
    outbox: OutboxWaker,
    log: watch::Sender<u64>,
    postgres: OnceLock<PgWake>,
}

/// Which partitions received outbox rows: a change counter per partition,
/// and one for changes whose partitions are not known (a NOTIFY without a
/// payload, a SQLite commit hook, [`Store::wake_relays`](crate::Store::wake_relays)).
/// A relay loop sums the counters of its partitions ([`OutboxMarks::stamp`])
/// and claims after a wake-up only when the sum moved since its last claim.
/// Counters only grow, so a sum that did not move means no change.
///
/// Marks are written before the wake-up they go with, so a loop that sees a
/// wake-up also sees its marks.
#[derive(Default)]
pub(crate) struct OutboxMarks {
    unknown: AtomicU64,
    /// One counter per partition, once the store knows its partition count.
    partitions: OnceLock<Box<[AtomicU64]>>,
}

impl OutboxMarks {
    /// Sizes the per-partition counters; the count of a store never changes.
    pub(crate) fn size(&self, partitions: u32) {
        self.partitions
            .get_or_init(|| (0..partitions).map(|_| AtomicU64::new(0)).collect());
    }

    fn mark(&self, partitions: &[u32]) {
        match self.partitions.get() {
            Some(counters) if partitions.iter().all(|p| (*p as usize) < counters.len()) => {
                for p in partitions {
                    counters[*p as usize].fetch_add(1, Ordering::Release);
                }
            }
            _ => self.mark_unknown(),
        }
    }

    fn mark_unknown(&self) {
        self.unknown.fetch_add(1, Ordering::Release);
    }

    /// A sum that moves whenever rows of one of `partitions` (or of unknown
    /// partitions) are marked.
    pub(crate) fn stamp(&self, partitions: impl IntoIterator<Item = u32>) -> u64 {
        let mut sum = self.unknown.load(Ordering::Acquire);
        if let Some(counters) = self.partitions.get() {
            for p in partitions {
                if let Some(c) = counters.get(p as usize) {
                    sum = sum.wrapping_add(c.load(Ordering::Acquire));
                }
            }
        }
        sum
    }
}

/// Wakes this process's relays for committed outbox rows: marks their
/// partitions, then bumps the change counter the relays follow (in this
/// order, see [`OutboxMarks`]). Also handed to the listener and to SQLite
/// commit hooks.
#[derive(Clone, Default)]
pub(crate) struct OutboxWaker {
    tx: watch::Sender<u64>,
    marks: Arc<OutboxMarks>,
}

impl OutboxWaker {
    /// For rows of unknown partitions: every loop looks.
    pub(crate) fn wake(&self) {
        self.marks.mark_unknown();
        bump(&self.tx);
    }

    /// For rows of `partitions`: the loops working on them look.
    fn wake_in(&self, partitions: &[u32]) {
        self.marks.mark(partitions);
        bump(&self.tx);
    }
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
    /// The partitions of the outbox rows behind `outbox`.
    outbox_partitions: Mutex<PendingPartitions>,
    log: AtomicBool,
    signal: Notify,
    /// Backend pid of the announcing connection: the listener ignores these
    /// notifications, since this process already woke its own waiters.
    backend_pid: AtomicU32,
}

/// Outbox partitions waiting to be announced.
#[derive(Default)]
struct PendingPartitions {
    /// Some change's partitions are not known: the NOTIFY carries none.
    unknown: bool,
    partitions: BTreeSet<u32>,
}

impl PendingPartitions {
    /// The NOTIFY payload: the partitions as `3,7,12`, or empty when unknown
    /// or too long for a payload (PostgreSQL takes up to 8000 bytes).
    fn payload(&self) -> String {
        if self.unknown {
            return String::new();
        }
        let list = self
            .partitions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if list.len() > 7000 {
            String::new()
        } else {
            list
        }
    }
}

/// Reads a NOTIFY payload back into partitions; None when it names none
/// (empty, or not a list of partitions).
fn parse_partitions(payload: &str) -> Option<Vec<u32>> {
    if payload.is_empty() {
        return None;
    }
    payload.split(',').map(|p| p.parse().ok()).collect()
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            outbox: OutboxWaker::default(),
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

    /// Outbox rows of unknown partitions were committed: wake this
    /// process's relays, and others'.
    pub(crate) fn outbox_changed(&self) {
        self.outbox.wake();
        self.note_partitions(|p| p.unknown = true);
        self.announce(|a| &a.outbox);
    }

    /// Outbox rows of `partitions` were committed: wake the relays of this
    /// process that work on them, and those of other processes.
    pub(crate) fn outbox_changed_in(&self, partitions: &[u32]) {
        self.outbox.wake_in(partitions);
        self.note_partitions(|p| p.partitions.extend(partitions));
        self.announce(|a| &a.outbox);
    }

    /// Records what the next announcement says, when there are other processes to tell.
    fn note_partitions(&self, note: impl FnOnce(&mut PendingPartitions)) {
        if let Some(pg) = self.postgres.get() {
            note(&mut pg.announcer.outbox_partitions.lock().expect("not poisoned"));
        }
    }

    /// Which partitions received outbox rows.
    pub(crate) fn outbox_marks(&self) -> &OutboxMarks {
        &self.outbox.marks
    }

    /// Log entries were committed: wake this process's readers, and others'.
    pub(crate) fn log_changed(&self) {
        bump(&self.log);
        self.announce(|a| &a.log);
    }

    /// A waker for wake-ups raised outside this type (SQLite commit hooks).
    pub(crate) fn outbox_waker(&self) -> OutboxWaker {
        self.outbox.clone()
    }

    /// Follows outbox changes (starting the listener on PostgreSQL).
    pub(crate) fn outbox(&self) -> watch::Receiver<u64> {
        self.ensure_listener();
        self.outbox.tx.subscribe()
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
        // A writer notes its partitions before it raises the flag, and the
        // partitions are taken after the flag is lowered: whatever a lowered
        // flag stood for is in this announcement. A raised flag with nothing
        // noted was announced by the previous one.
        let log = announcer.log.swap(false, Ordering::AcqRel);
        let outbox = announcer.outbox.swap(false, Ordering::AcqRel);
        let partitions =
            std::mem::take(&mut *announcer.outbox_partitions.lock().expect("not poisoned"));
        let outbox = outbox && (partitions.unknown || !partitions.partitions.is_empty());
        if !(outbox || log) {
            continue;
        }
        // One round trip: the whole transaction travels as one simple query.
        // Channel names are the validated table prefix plus a fixed word, and
        // the payload is digits and commas: safe to inline.
        let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = off;");
        if outbox {
            let payload = partitions.payload();
            if payload.is_empty() {
                sql.push_str(&format!(" NOTIFY {};", channels[0]));
            } else {
                sql.push_str(&format!(" NOTIFY {}, '{payload}';", channels[0]));
            }
        }
        if log {
            sql.push_str(&format!(" NOTIFY {};", channels[1]));
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
    outbox: OutboxWaker,
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
        outbox.wake();
        bump(&log);
        loop {
            match listener.recv().await {
                Ok(n) if n.process_id() == announcer.backend_pid.load(Ordering::Acquire) => {}
                Ok(n) if n.channel() == channels[0] => match parse_partitions(n.payload()) {
                    Some(partitions) => outbox.wake_in(&partitions),
                    None => outbox.wake(),
                },
                Ok(_) => bump(&log),
                Err(e) => {
                    tracing::debug!(error = %crate::Error::from(e), "relaybox LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_moves_only_for_its_partitions_or_unknown_ones() {
        let marks = OutboxMarks::default();
        // Before the partition count is known, every mark is "unknown".
        let before = marks.stamp([1, 3]);
        marks.mark(&[2]);
        assert_ne!(marks.stamp([1, 3]), before);
        marks.size(4);
        let mine = marks.stamp([1, 3]);
        marks.mark(&[0, 2]);
        assert_eq!(marks.stamp([1, 3]), mine, "other partitions' rows");
        marks.mark(&[3]);
        let moved = marks.stamp([1, 3]);
        assert_ne!(moved, mine);
        marks.mark_unknown();
        assert_ne!(marks.stamp([1, 3]), moved, "rows of unknown partitions");
        // A partition beyond the count cannot be placed: it counts as unknown.
        let now = marks.stamp([1]);
        marks.mark(&[9]);
        assert_ne!(marks.stamp([1]), now);
    }

    #[test]
    fn notify_payloads_name_the_partitions_or_none() {
        let mut pending = PendingPartitions::default();
        pending.partitions.extend([12, 3, 7, 3]);
        assert_eq!(pending.payload(), "3,7,12");
        assert_eq!(parse_partitions("3,7,12"), Some(vec![3, 7, 12]));
        pending.unknown = true;
        assert_eq!(pending.payload(), "");
        let long = PendingPartitions {
            unknown: false,
            partitions: (0..4096).collect(),
        };
        assert_eq!(long.payload(), "", "longer than a NOTIFY payload may be");
        assert_eq!(parse_partitions(""), None);
        assert_eq!(parse_partitions("3,x"), None);
        assert_eq!(parse_partitions("-1"), None);
    }
}
