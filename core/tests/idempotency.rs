//! Producers' idempotency keys, on PostgreSQL and SQLite: a second enqueue
//! with a key already taken on its topic writes nothing and returns the
//! first message's id, in the same transaction, a later one, a batch, and
//! (PostgreSQL) a concurrent transaction; a rolled-back key is free again;
//! the relay's window deletes delivered keys only; a host driver's statement
//! refuses keys it could not settle.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

use relaybox::{DatabaseSink, Error, Message, Placeholders, Relay, RelayConfig};

fn keyed(topic: &str, key: &str, n: u32) -> Message {
    Message::new(topic, format!("{{\"n\":{n}}}").into_bytes()).with_idempotency_key(key)
}

dialect_tests!(
    a_taken_key_writes_nothing_and_returns_the_first_id,
    a_rolled_back_key_is_free_again,
    the_window_deletes_delivered_keys_only,
);

async fn a_taken_key_writes_nothing_and_returns_the_first_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = keyed("orders", "order-1-placed", 1);
    let tx = db.store.begin().await.unwrap();
    assert_eq!(tx.enqueue(first.clone()).await.unwrap(), first.id);
    // The same transaction, then a later one: the first id, no second row.
    assert_eq!(
        tx.enqueue(keyed("orders", "order-1-placed", 2))
            .await
            .unwrap(),
        first.id
    );
    tx.commit().await.unwrap();
    let tx = db.store.begin().await.unwrap();
    assert_eq!(
        tx.enqueue(keyed("orders", "order-1-placed", 3))
            .await
            .unwrap(),
        first.id
    );
    // A batch: a taken key, a key twice, another topic with the same key,
    // and a message without a key.
    let batch = vec![
        keyed("orders", "order-1-placed", 4),
        keyed("orders", "order-2-placed", 5),
        keyed("orders", "order-2-placed", 6),
        keyed("invoices", "order-1-placed", 7),
        Message::new("orders", b"{}".to_vec()),
    ];
    let ids = tx.enqueue_batch(&batch).await.unwrap();
    assert_eq!(
        ids,
        vec![first.id, batch[1].id, batch[1].id, batch[3].id, batch[4].id]
    );
    tx.commit().await.unwrap();
    assert_eq!(db.count("outbox").await, 4);
    assert_eq!(db.count("idempotency_keys").await, 3);
    // The store's own enqueue on a plain connection behaves the same.
    let again = keyed("orders", "order-2-placed", 8);
    let id = match backend {
        Backend::Postgres => {
            let mut conn = db.store.pg_pool().unwrap().acquire().await.unwrap();
            db.store.enqueue(&mut *conn, again).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = db.store.sqlite_pool().unwrap().acquire().await.unwrap();
            db.store.enqueue(&mut *conn, again).await.unwrap()
        }
    };
    assert_eq!(id, batch[1].id);
    assert_eq!(db.count("outbox").await, 4);
    // An empty key is refused, and nothing is written.
    let tx = db.store.begin().await.unwrap();
    let err = tx.enqueue(keyed("orders", "", 9)).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMessage { field, .. } if *field == "idempotency_key"),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    // A host driver's statement cannot return the first id: refused.
    let err = db
        .store
        .insert_statement(&keyed("orders", "k", 10), Placeholders::Dollar)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMessage { field, .. } if *field == "idempotency_key"),
        "{err:?}"
    );
    assert_eq!(db.count("outbox").await, 4);
    db.cleanup().await;
}

async fn a_rolled_back_key_is_free_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let tx = db.store.begin().await.unwrap();
    let rolled_back = keyed("orders", "k", 1);
    tx.enqueue(rolled_back.clone()).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = db.store.begin().await.unwrap();
    let kept = keyed("orders", "k", 2);
    assert_eq!(tx.enqueue(kept.clone()).await.unwrap(), kept.id);
    tx.commit().await.unwrap();
    assert_eq!(db.count("outbox").await, 1);
    db.cleanup().await;
}

async fn the_window_deletes_delivered_keys_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let delivered = keyed("orders", "delivered", 1);
    let waiting = keyed("later", "waiting", 2).delayed_by(Duration::from_secs(3600));
    db.enqueue_committed(&[delivered.clone(), waiting.clone()])
        .await;
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(DatabaseSink::new(db.store.clone())),
        RelayConfig {
            poll_interval: Duration::from_millis(20),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    wait_for(
        "the first message delivered",
        Duration::from_secs(20),
        async || {
            let delivered = relay.stats().delivered;
            if delivered >= 1 {
                Ok(())
            } else {
                Err(format!("{delivered} delivered"))
            }
        },
    )
    .await;
    relay.shutdown().await.unwrap();
    // Released less than the window ago (the delivered one) or not at all
    // (the waiting one): kept.
    assert_eq!(
        db.store
            .purge_idempotency_keys(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    // With a zero window the released one goes, the waiting one stays.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        db.store
            .purge_idempotency_keys(Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(db.count("idempotency_keys").await, 1);
    // Its key free again, the delivered message's key writes a new message.
    let tx = db.store.begin().await.unwrap();
    let next = keyed("orders", "delivered", 3);
    assert_eq!(tx.enqueue(next.clone()).await.unwrap(), next.id);
    assert_eq!(
        tx.enqueue(keyed("later", "waiting", 4)).await.unwrap(),
        waiting.id
    );
    tx.commit().await.unwrap();
    db.cleanup().await;
}

/// Two transactions enqueue the same new key at once: the second waits for
/// the first; it commits, so the second writes nothing and gets its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_write_one_message() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = db.store.begin().await.unwrap();
    let first = keyed("orders", "race", 1);
    assert_eq!(a.enqueue(first.clone()).await.unwrap(), first.id);
    let store = db.store.clone();
    let second = tokio::spawn(async move {
        let b = store.begin().await.unwrap();
        let id = b.enqueue(keyed("orders", "race", 2)).await.unwrap();
        b.commit().await.unwrap();
        id
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second transaction must wait for the first's key"
    );
    a.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), first.id);
    assert_eq!(db.count("outbox").await, 1);
    db.cleanup().await;
}
