//! The relay against a held-open transaction (PostgreSQL): while another
//! session keeps a `REPEATABLE READ` transaction open (its snapshot pins the
//! xmin horizon, so no dead outbox row can be vacuumed) and a producer keeps
//! enqueueing, a relay drains a backlog plus everything the producer wrote:
//! each message once, in order per key, nothing left pending. Pinned twice:
//! with a read-only snapshot (no xid) and with the held transaction holding
//! an xid.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use relaybox::{Message, RelayConfig, Store};

/// Messages of the backlog enqueued before the relay starts.
const BACKLOG: usize = 5_000;
/// Distinct keys of every message (backlog and producer alike).
const KEYS: usize = 20;
/// Messages the producer writes at least, all while the transaction is held.
const PRODUCED_AT_LEAST: usize = 200;
/// The producer's pause between its one-message transactions.
const PRODUCER_PAUSE: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_completes_while_a_snapshot_is_held() {
    drain_while_held(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_completes_while_a_transaction_with_an_xid_is_held() {
    drain_while_held(true).await;
}

/// The `i`th message the producer writes: key `key-<i mod KEYS>`, payload `p<i>`.
fn produced(topic: &str, i: usize) -> Message {
    Message::new(topic, format!("p{i}").into_bytes())
        .with_key(format!("key-{}", i % KEYS))
        .with_type("TestEvent")
}

/// Enqueues one message per committed transaction, pausing between them,
/// until `stop` is set; returns what it enqueued, in order.
async fn produce_until(store: Store, topic: &'static str, stop: Arc<AtomicBool>) -> Vec<Message> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let m = produced(topic, out.len());
        let tx = store.begin().await.expect("begin");
        tx.enqueue(m.clone()).await.expect("enqueue");
        tx.commit().await.expect("commit");
        out.push(m);
        tokio::time::sleep(PRODUCER_PAUSE).await;
    }
    out
}

/// Opens the held transaction on a connection of its own: `REPEATABLE READ`,
/// its snapshot taken by a read of another table, and with `xid` an
/// assigned transaction id. Returns the connection and its backend pid.
async fn hold_transaction(db: &TestDb, xid: bool) -> (PgConnection, i32) {
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("backend pid");
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut conn)
        .await
        .expect("begin");
    let orders: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        db.t("orders")
    )))
    .fetch_one(&mut conn)
    .await
    .expect("the read that takes the snapshot");
    assert_eq!(orders, 0);
    if xid {
        let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut conn)
            .await
            .expect("assign an xid");
    }
    (conn, pid)
}

/// `(backend_xmin is set, backend_xid is set)` of the session `pid`.
async fn held_state(db: &TestDb, pid: i32) -> (bool, bool) {
    sqlx::query_as(
        "SELECT backend_xmin IS NOT NULL, backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(pid)
    .fetch_one(db.store.pg_pool().unwrap())
    .await
    .expect("pg_stat_activity")
}

async fn drain_while_held(xid: bool) {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "held";
    let backlog = messages(topic, BACKLOG, KEYS);
    for chunk in backlog.chunks(1000) {
        db.enqueue_committed(chunk).await;
    }
    let (mut held, pid) = hold_transaction(&db, xid).await;
    assert_eq!(
        held_state(&db, pid).await,
        (true, xid),
        "the held session has a snapshot (and an xid only when asked)"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(db.open_store().await, topic, stop.clone()));
    let relay = start_db_relay(
        &db.store,
        RelayConfig {
            instance_id: Some(format!("{}held", db.prefix)),
            ..relay_config()
        },
    );

    // The backlog goes out while the producer keeps writing.
    wait_in_log(&db.store, topic, &backlog, Duration::from_secs(120)).await;
    wait_for("the producer's messages in the log", WAIT, async || {
        let logged = read_all_log(&db.store, topic).await.len();
        if logged >= BACKLOG + PRODUCED_AT_LEAST {
            Ok(())
        } else {
            Err(format!("{logged} messages in the log"))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let produced = producer.await.expect("producer task");
    assert!(produced.len() >= PRODUCED_AT_LEAST, "{}", produced.len());

    let all: Vec<Message> = backlog.iter().chain(produced.iter()).cloned().collect();
    let log = wait_in_log(&db.store, topic, &all, Duration::from_secs(120)).await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.expect("relay shutdown");
    let stats = relay.stats();

    assert_eq!(log.len(), all.len(), "each message exactly once in the log");
    assert_order_per_key(&log, &all);
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");

    // The transaction was held through the whole drain; it commits now.
    assert_eq!(
        held_state(&db, pid).await,
        (true, xid),
        "the transaction stayed open through the drain"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut held)
        .await
        .expect("commit the held transaction");
    held.close().await.expect("close");
    db.cleanup().await;
}
