//! Partition leases: relays started together share the partitions fairly
//! within a second or two; a relay that dies mid-batch (dropped, or its
//! process killed with SIGKILL) is taken over (on PostgreSQL as soon as its
//! session is gone, on SQLite once its leases expire), nothing is lost, and
//! the consumer's inbox absorbs the redelivered messages. A graceful
//! shutdown hands partitions over at once.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use relaybox::sqlx;
use relaybox::store::LogEntry;
use relaybox::{Message, Relay, RelayConfig, Store, StoreOptions};
use tokio::time::Instant;
use uuid::Uuid;

dialect_tests!(
    dropped_relay_is_taken_over_after_its_leases_expire,
    graceful_shutdown_hands_partitions_over_at_once,
    three_relays_started_together_reach_the_fair_share,
);

/// How soon relays started together must share the partitions fairly: well
/// under the default lease's renewal period (`lease_ttl / 3`, 5 s).
const FAIR_SHARE_WITHIN: Duration = Duration::from_secs(3);

/// How soon a dead relay's partitions must be held by the others on
/// PostgreSQL: well under the default lease (15 s).
const TAKEOVER_WITHIN: Duration = Duration::from_secs(5);

/// Env var that turns `child_relay_process` into a real relay process: the
/// table prefix to relay.
const CHILD_ENV: &str = "RELAYBOX_CHILD_RELAY";

/// One batch loop, so exactly one batch is in flight when the relay dies.
fn crash_config(instance: String) -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        concurrency: 1,
        lease_ttl: Duration::from_secs(1),
        publish_timeout: Some(Duration::from_millis(900)),
        instance_id: Some(instance),
        ..relay_config()
    }
}

/// Consumes `topic` and checks each of `all` was handled exactly once, the
/// inbox skipping the `log.len() - all.len()` redelivered copies.
async fn consume_and_check_once(db: &TestDb, topic: &str, all: &[Message], log: &[LogEntry]) {
    let recorder = Recorder::new(db).arc();
    let consumer = start_consumer(&db.store, topic, "after-crash", recorder.clone());
    wait_for("every log entry consumed", WAIT, async || {
        let s = consumer.stats();
        if s.processed + s.duplicates >= log.len() as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}, log has {}", log.len()))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    assert_handled_once(db, &[&recorder], &ids).await;
    let stats = consumer.stats();
    assert_eq!(stats.processed, all.len() as u64, "{stats:?}");
    assert_eq!(
        stats.duplicates,
        (log.len() - all.len()) as u64,
        "every redelivered copy is skipped by the inbox: {stats:?}"
    );
}

/// Asserts the first `first_batch` log entries (the crashed relay's batch)
/// were delivered again by its successor, and that nothing else was.
fn assert_first_batch_redelivered(log: &[LogEntry], all: &[Message], first_batch: usize) {
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for e in log {
        *copies.entry(e.message.id).or_default() += 1;
    }
    assert_eq!(copies.len(), all.len(), "distinct ids in the log");
    for e in &log[..first_batch] {
        assert!(
            copies[&e.message.id] >= 2,
            "{} was appended by the crashed relay but not redelivered",
            e.message.id
        );
    }
    assert_eq!(
        log.len(),
        all.len() + first_batch,
        "only the crashed batch is delivered twice"
    );
    assert_order_per_key(log, all);
}

async fn dropped_relay_is_taken_over_after_its_leases_expire(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "crash";
    let all = messages(topic, 200, 20);
    db.enqueue_committed(&all).await;

    let sink = StallingSink::new(&db.store, false);
    let doomed = Relay::start(
        db.store.clone(),
        sink.clone(),
        crash_config(format!("{}doomed", db.prefix)),
    )
    .unwrap();
    wait_for("the first batch appended, sink stalled", WAIT, async || {
        if sink.stalled() {
            Ok(())
        } else {
            Err(format!("{:?}", doomed.stats()))
        }
    })
    .await;
    let stats = doomed.stats();
    assert_eq!(
        (stats.batches, stats.delivered),
        (0, 0),
        "the relay is mid-batch: appended but not completed"
    );
    drop(doomed); // aborts like a crash: no completion, leases not released

    assert_eq!(db.count("log").await, 50, "the stalled batch was appended");
    assert_eq!(
        db.store.pending_count().await.unwrap(),
        200,
        "the crashed relay recorded nothing as delivered"
    );

    // A successor (its own store handle, as another process would have).
    let store2 = db.open_store().await;
    let successor = start_db_relay(&store2, crash_config(format!("{}successor", db.prefix)));
    wait_in_log(&db.store, topic, &all, WAIT).await;
    wait_until_drained(&db.store, WAIT, None).await;
    let log = read_all_log(&db.store, topic).await;
    assert!(
        successor.stats().delivered >= 200,
        "{:?}",
        successor.stats()
    );
    successor.shutdown().await.unwrap();
    assert_first_batch_redelivered(&log, &all, 50);
    consume_and_check_once(&db, topic, &all, &log).await;
    db.cleanup().await;
}

async fn graceful_shutdown_hands_partitions_over_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "handover";
    let config = RelayConfig {
        // Long enough that waiting for expiry would time the test out.
        lease_ttl: Duration::from_secs(60),
        poll_interval: Duration::from_millis(50),
        ..relay_config()
    };
    let first = start_db_relay(
        &db.store,
        RelayConfig {
            instance_id: Some(format!("{}first", db.prefix)),
            ..config.clone()
        },
    );
    wait_for("the first relay holding all partitions", WAIT, async || {
        let owners = db
            .store
            .status()
            .await
            .map_err(|e| e.to_string())?
            .lease_owners;
        match owners.as_slice() {
            [o] if o.owner == first.owner() && o.partitions == 16 => Ok(()),
            _ => Err(format!("{owners:?}")),
        }
    })
    .await;
    let before = messages(topic, 20, 4);
    db.enqueue_committed(&before).await;
    wait_in_log(&db.store, topic, &before, WAIT).await;

    first.shutdown().await.unwrap();
    assert!(!first.is_running());
    let status = db.store.status().await.unwrap();
    assert!(
        status.lease_owners.is_empty(),
        "shutdown releases the leases: {:?}",
        status.lease_owners
    );
    assert_eq!(status.live_relays, 0, "shutdown deregisters the instance");

    let second = start_db_relay(
        &db.store,
        RelayConfig {
            instance_id: Some(format!("{}second", db.prefix)),
            ..config
        },
    );
    let after = messages(topic, 20, 4);
    db.enqueue_committed(&after).await;
    let log = wait_in_log(&db.store, topic, &after, WAIT).await;
    let status = db.store.status().await.unwrap();
    assert_eq!(status.lease_owners.len(), 1, "{:?}", status.lease_owners);
    assert_eq!(status.lease_owners[0].owner, second.owner());
    second.shutdown().await.unwrap();
    let mut all = before;
    all.extend(after);
    assert_eq!(log.len(), all.len());
    assert_order_per_key(&log, &all);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Sharing the partitions with the default lease (15 s).

/// Relay settings with the default lease, so that waiting for a lease
/// renewal (every 5 s) or an expiry (15 s) would show.
fn default_lease_config(db: &TestDb, name: &str) -> RelayConfig {
    RelayConfig {
        lease_ttl: RelayConfig::default().lease_ttl,
        instance_id: Some(format!("{}{name}", db.prefix)),
        ..relay_config()
    }
}

/// Starts `n` relays on stores of their own, as separate processes would.
async fn start_relays(db: &TestDb, n: usize) -> Vec<Relay> {
    let mut relays = Vec::new();
    for i in 0..n {
        let store = db.open_store().await;
        relays.push(start_db_relay(
            &store,
            default_lease_config(db, &format!("relay-{i}")),
        ));
    }
    relays
}

/// Partitions per owner, as the lease table says (unexpired leases only).
async fn lease_table(db: &TestDb) -> Result<BTreeMap<String, i64>, String> {
    let status = db.store.status().await.map_err(|e| e.to_string())?;
    Ok(status
        .lease_owners
        .into_iter()
        .map(|o| (o.owner, o.partitions))
        .collect())
}

/// Waits up to `within` until `relays` hold all 16 partitions between them,
/// each one as many as `fair` accepts, both by the lease table and by the
/// relays' own counts.
async fn wait_shared(db: &TestDb, relays: &[&Relay], within: Duration, fair: impl Fn(i64) -> bool) {
    wait_for("the relays sharing all 16 partitions", within, async || {
        let table = lease_table(db).await?;
        let own: Vec<i64> = relays
            .iter()
            .map(|r| r.stats().partitions_held as i64)
            .collect();
        let in_table: Vec<i64> = relays
            .iter()
            .map(|r| table.get(r.owner()).copied().unwrap_or(0))
            .collect();
        let shared = table.len() == relays.len()
            && in_table.iter().sum::<i64>() == 16
            && in_table.iter().all(|n| fair(*n))
            && own.iter().all(|n| fair(*n));
        if shared {
            Ok(())
        } else {
            Err(format!("lease table {table:?}, relays' own counts {own:?}"))
        }
    })
    .await;
}

async fn three_relays_started_together_reach_the_fair_share(backend: Backend) {
    let db = TestDb::new(backend).await;
    let relays = start_relays(&db, 3).await;
    let all: Vec<&Relay> = relays.iter().collect();
    // 16 partitions over 3 relays: 6, 5 and 5.
    wait_shared(&db, &all, FAIR_SHARE_WITHIN, |n| (5..=6).contains(&n)).await;

    // Every relay delivers its share.
    let topic = "shared";
    let msgs = messages(topic, 96, 48);
    db.enqueue_committed(&msgs).await;
    let log = wait_in_log(&db.store, topic, &msgs, WAIT).await;
    assert_eq!(log.len(), msgs.len(), "each message once");
    assert_order_per_key(&log, &msgs);
    for r in &relays {
        assert!(r.stats().delivered > 0, "{}: {:?}", r.owner(), r.stats());
    }
    for r in &relays {
        r.shutdown().await.unwrap();
    }
    db.cleanup().await;
}

/// A dropped relay (its task aborted, as a crash would) leaves its leases
/// unexpired for up to 15 s, but its session with PostgreSQL ends at once:
/// the other relays take its partitions over and deliver their messages
/// well before the leases would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_relays_partitions_move_before_its_leases_expire() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut relays = start_relays(&db, 3).await;
    let all: Vec<&Relay> = relays.iter().collect();
    wait_shared(&db, &all, WAIT, |n| n > 0).await;

    let doomed = relays.pop().unwrap();
    let doomed_owner = doomed.owner().to_string();
    let doomed_held = doomed.stats().partitions_held;
    assert!(doomed_held > 0, "{:?}", doomed.stats());
    drop(doomed);
    let dropped_at = Instant::now();

    let survivors: Vec<&Relay> = relays.iter().collect();
    wait_shared(&db, &survivors, TAKEOVER_WITHIN, |n| n == 8).await;
    let table = lease_table(&db).await.unwrap();
    assert!(!table.contains_key(&doomed_owner), "{table:?}");
    let status = db.store.status().await.unwrap();
    assert_eq!(status.live_relays, 2, "the dropped relay no longer counts");

    // Messages of every partition are delivered, the dropped relay's included,
    // long before its leases would have expired.
    let topic = "after-drop";
    let msgs = messages(topic, 96, 48);
    db.enqueue_committed(&msgs).await;
    let deadline = RelayConfig::default()
        .lease_ttl
        .saturating_sub(dropped_at.elapsed());
    let log = wait_in_log(&db.store, topic, &msgs, deadline).await;
    assert_eq!(log.len(), msgs.len(), "each message once");
    assert_order_per_key(&log, &msgs);
    for r in &relays {
        r.shutdown().await.unwrap();
    }
    db.cleanup().await;
}

/// The backend pids of the presence connection of relay `owner`, which names
/// itself `relaybox <owner>` in `pg_stat_activity`.
async fn presence_pids(db: &TestDb, owner: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'relaybox ' || $1::text",
    )
    .bind(owner)
    .fetch_all(db.store.pg_pool().unwrap())
    .await
    .expect("pg_stat_activity")
}

/// A relay whose presence connection is cut (the relay itself runs on) is
/// taken for gone: another relay frees and takes its partitions, while the
/// leases keep the two apart, so every message is still delivered once and
/// in order per key. The relay connects again, takes its presence lock
/// back, and the two share the partitions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_whose_presence_connection_is_cut_rejoins() {
    let db = TestDb::new(Backend::Postgres).await;
    let relays = start_relays(&db, 2).await;
    let both: Vec<&Relay> = relays.iter().collect();
    wait_shared(&db, &both, WAIT, |n| n == 8).await;
    let topic = "cut";
    let before = messages(topic, 96, 48);
    db.enqueue_committed(&before).await;

    let cut = relays[0].owner();
    let pids = presence_pids(&db, cut).await;
    assert_eq!(pids.len(), 1, "one presence connection per relay: {pids:?}");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pids[0])
        .fetch_one(db.store.pg_pool().unwrap())
        .await
        .unwrap();
    assert!(terminated);
    let after = messages(topic, 96, 48);
    db.enqueue_committed(&after).await;

    wait_for(
        "the relay back with a new presence connection",
        WAIT,
        async || {
            let now = presence_pids(&db, cut).await;
            if now.len() == 1 && now != pids {
                Ok(())
            } else {
                Err(format!("presence pids {now:?}, before {pids:?}"))
            }
        },
    )
    .await;
    wait_shared(&db, &both, WAIT, |n| n == 8).await;
    let mut all = before;
    all.extend(after);
    let log = wait_in_log(&db.store, topic, &all, WAIT).await;
    assert_eq!(log.len(), all.len(), "each message once");
    assert_order_per_key(&log, &all);
    assert!(relays.iter().all(Relay::is_running));
    for r in &relays {
        r.shutdown().await.unwrap();
    }
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// A relay process killed with SIGKILL (PostgreSQL).

/// Kills the child process if the test fails before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: `killed_relay_process_is_taken_over` runs this
/// binary again with only this function and `RELAYBOX_CHILD_RELAY=<prefix>`,
/// making it a relay process that appends one batch, stalls, and waits to be
/// killed. Without the variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of killed_relay_process_is_taken_over"]
async fn child_relay_process() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let options = StoreOptions {
        table_prefix: prefix.clone(),
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&pg_url(), options).await.unwrap();
    let sink = StallingSink::new(&store, true);
    let _relay = Relay::start(
        store.clone(),
        sink,
        RelayConfig {
            batch_size: 50,
            // The default lease: its expiry is not what hands the partitions over.
            lease_ttl: RelayConfig::default().lease_ttl,
            publish_timeout: Some(Duration::from_millis(1900)),
            max_attempts: 1000,
            instance_id: Some(format!("{prefix}child")),
            ..relay_config()
        },
    )
    .unwrap();
    // Runs until killed; ends by itself if the parent never does.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_process_is_taken_over() {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "sigkill";
    let all = messages(topic, 200, 20);
    db.enqueue_committed(&all).await;

    let exe = std::env::current_exe().expect("test binary path");
    let child = Command::new(exe)
        .args([
            "--exact",
            "child_relay_process",
            "--nocapture",
            "--include-ignored",
        ])
        .env(CHILD_ENV, &db.prefix)
        .env(PG_ENV, pg_url())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the child relay process");
    let mut child = ChildGuard(child);
    let child_owner = format!("{}child", db.prefix);
    wait_for(
        "the child relay holding leases, mid-batch",
        WAIT,
        async || {
            let owners = db
                .store
                .status()
                .await
                .map_err(|e| e.to_string())?
                .lease_owners;
            let logged = db.count("log").await;
            if owners.iter().any(|o| o.owner == child_owner) && logged > 0 {
                Ok(())
            } else {
                Err(format!(
                    "lease owners {owners:?}, {logged} log rows, child exit status {:?}",
                    child.0.try_wait()
                ))
            }
        },
    )
    .await;
    let killed_at = Instant::now();
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "child ended by SIGKILL: {status:?}"
    );

    assert_eq!(db.count("log").await, 50, "the child appended one batch");
    assert_eq!(
        db.store.pending_count().await.unwrap(),
        200,
        "the killed relay recorded nothing as delivered"
    );

    let relay = start_db_relay(&db.store, crash_config(format!("{}parent", db.prefix)));
    // The child's leases would last up to 15 s more, but its session with
    // PostgreSQL ended with the process: the new relay takes every partition
    // well before that.
    wait_for(
        "the killed relay's partitions taken over",
        TAKEOVER_WITHIN.saturating_sub(killed_at.elapsed()),
        async || {
            let table = lease_table(&db).await?;
            if table.get(relay.owner()) == Some(&16) {
                Ok(())
            } else {
                Err(format!("lease table {table:?}, relay {:?}", relay.stats()))
            }
        },
    )
    .await;
    wait_in_log(&db.store, topic, &all, WAIT).await;
    wait_until_drained(&db.store, WAIT, None).await;
    let owners = db.store.status().await.unwrap().lease_owners;
    assert!(
        owners.iter().all(|o| o.owner != child_owner),
        "the dead child holds no lease: {owners:?}"
    );
    relay.shutdown().await.unwrap();
    let log = read_all_log(&db.store, topic).await;
    assert_first_batch_redelivered(&log, &all, 50);
    consume_and_check_once(&db, topic, &all, &log).await;
    db.cleanup().await;
}
