//! Partition leases: a relay that dies mid-batch (dropped, or its process
//! killed with SIGKILL) is taken over once its leases expire, nothing is lost,
//! and the consumer's inbox absorbs the redelivered messages. A graceful
//! shutdown hands partitions over at once.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use relaybox::store::LogEntry;
use relaybox::{Message, Relay, RelayConfig, Store, StoreOptions};
use uuid::Uuid;

dialect_tests!(
    dropped_relay_is_taken_over_after_its_leases_expire,
    graceful_shutdown_hands_partitions_over_at_once,
);

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
            lease_ttl: Duration::from_secs(2),
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
    wait_in_log(&db.store, topic, &all, WAIT).await;
    wait_until_drained(&db.store, WAIT, None).await;
    let owners = db.store.status().await.unwrap().lease_owners;
    assert!(
        owners.iter().all(|o| o.owner != child_owner),
        "the dead child's leases expired: {owners:?}"
    );
    relay.shutdown().await.unwrap();
    let log = read_all_log(&db.store, topic).await;
    assert_first_batch_redelivered(&log, &all, 50);
    consume_and_check_once(&db, topic, &all, &log).await;
    db.cleanup().await;
}
