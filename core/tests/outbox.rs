//! The transactional outbox: what commits is relayed and consumed once, what
//! rolls back leaves nothing; migrations are idempotent.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::*;
use relaybox::{Error, Message, Value};

dialect_tests!(
    rollback_leaves_no_outbox_row,
    commit_is_relayed_and_consumed_once,
    migrate_is_idempotent_and_concurrent_safe,
    as_many_transactions_as_pooled_connections_can_enqueue,
    min_connections_are_open_before_the_first_transaction,
);

async fn rollback_leaves_no_outbox_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "orders";
    let insert = format!(
        "INSERT INTO {} (id, note) VALUES ({}, {})",
        db.t("orders"),
        db.ph(1),
        db.ph(2)
    );

    // Owned transaction, explicit rollback.
    let tx = db.store.begin().await.expect("begin");
    let n = tx
        .execute(&insert, &["o-1".into(), "rolled back".into()])
        .await
        .expect("business insert");
    assert_eq!(n, 1);
    tx.enqueue(Message::new(topic, b"single".to_vec()).with_key("o-1"))
        .await
        .expect("enqueue");
    tx.enqueue_batch(&messages(topic, 3, 3))
        .await
        .expect("enqueue_batch");
    let inside = tx
        .query(
            &format!("SELECT count(*) AS n FROM {}", db.t("outbox")),
            &[],
        )
        .await
        .expect("count inside the transaction");
    assert_eq!(
        inside[0].get("n"),
        Some(&Value::Int(4)),
        "the transaction sees its own rows"
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(db.count("outbox").await, 0, "outbox rows after rollback");
    assert_eq!(db.count("orders").await, 0, "business rows after rollback");
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    assert!(
        matches!(tx.rollback().await, Err(Error::Closed { .. })),
        "a finished transaction is closed"
    );
    assert!(matches!(
        tx.enqueue(Message::new(topic, b"late".to_vec())).await,
        Err(Error::Closed { .. })
    ));

    // Owned transaction dropped uncommitted (all clones) rolls back.
    {
        let tx = db.store.begin().await.expect("begin");
        tx.execute(&insert, &["o-2".into(), "dropped".into()])
            .await
            .expect("business insert");
        tx.enqueue(Message::new(topic, b"dropped".to_vec()))
            .await
            .expect("enqueue");
        let clone = tx.clone();
        drop(tx);
        clone
            .enqueue(Message::new(topic, b"dropped via clone".to_vec()))
            .await
            .expect("a clone keeps the transaction open");
        drop(clone);
    }
    // The write lock / connection is given back: a new transaction commits.
    let tx = db.store.begin().await.expect("begin after drop");
    tx.execute(&insert, &["o-keep".into(), "committed".into()])
        .await
        .expect("insert after drop");
    tx.commit().await.expect("commit after drop");
    assert_eq!(db.count("outbox").await, 0, "outbox rows after drop");
    assert_eq!(
        db.count("orders").await,
        1,
        "only the committed business row remains"
    );

    // The caller's own sqlx transaction, rolled back: single and batch.
    db.own_tx(
        Some("o-3"),
        &[Message::new(topic, b"own".to_vec()).with_key("o-3")],
        false,
    )
    .await
    .expect("own tx, single");
    db.own_tx(Some("o-4"), &messages(topic, 5, 2), false)
        .await
        .expect("own tx, batch");
    assert_eq!(
        db.count("outbox").await,
        0,
        "outbox rows after own rollback"
    );
    assert_eq!(
        db.count("orders").await,
        1,
        "business rows after own rollback"
    );
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    db.cleanup().await;
}

async fn commit_is_relayed_and_consumed_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "orders.placed";
    let insert = format!(
        "INSERT INTO {} (id, note) VALUES ({}, {})",
        db.t("orders"),
        db.ph(1),
        db.ph(2)
    );
    let mut committed: Vec<Message> = Vec::new();
    let mut rolled_back: Vec<Message> = Vec::new();

    // Owned transaction: single enqueue and batch, committed.
    let tx = db.store.begin().await.unwrap();
    tx.execute(&insert, &["c-1".into(), "owned".into()])
        .await
        .unwrap();
    let first = Message::json(topic, &serde_json::json!({"order": "c-1", "total": 12.5}))
        .unwrap()
        .with_key("c-1")
        .with_type("OrderPlaced")
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    tx.enqueue(first.clone()).await.unwrap();
    let batch = messages(topic, 10, 3);
    tx.enqueue_batch(&batch).await.unwrap();
    tx.commit().await.unwrap();
    committed.push(first);
    committed.extend(batch);

    // A rolled-back transaction in between: none of it may ever be delivered.
    let tx = db.store.begin().await.unwrap();
    let lost = messages(topic, 4, 2);
    tx.enqueue_batch(&lost).await.unwrap();
    tx.rollback().await.unwrap();
    rolled_back.extend(lost);

    // The caller's own sqlx transaction: single and batch, committed.
    let own_single = Message::new(topic, b"own single".to_vec()).with_key("c-2");
    db.own_tx(Some("c-2"), std::slice::from_ref(&own_single), true)
        .await
        .unwrap();
    committed.push(own_single);
    let own_batch = messages(topic, 8, 4);
    db.own_tx(Some("c-3"), &own_batch, true).await.unwrap();
    committed.extend(own_batch);
    let lost = messages(topic, 3, 3);
    db.own_tx(Some("c-4"), &lost, false).await.unwrap();
    rolled_back.extend(lost);

    assert_eq!(
        db.store.pending_count().await.unwrap(),
        committed.len() as i64
    );
    assert_eq!(db.count("orders").await, 3);

    let relay = start_db_relay(&db.store, relay_config());
    let log = wait_in_log(&db.store, topic, &committed, WAIT).await;
    wait_until_drained(&db.store, WAIT, None).await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        log.len(),
        committed.len(),
        "one relay without failures delivers each message exactly once"
    );
    let in_log: HashSet<_> = log.iter().map(|e| e.message.id).collect();
    for m in &rolled_back {
        assert!(
            !in_log.contains(&m.id),
            "rolled-back message {} delivered",
            m.id
        );
    }
    for m in &committed {
        let entry = log.iter().find(|e| e.message.id == m.id).unwrap();
        assert_eq!(
            &entry.message, m,
            "message changed on its way through the log"
        );
    }
    assert_order_per_key(&log, &committed);
    assert!(relay.stats().delivered >= committed.len() as u64);

    let recorder = Recorder::new(&db).arc();
    let consumer = start_consumer(&db.store, topic, "billing", recorder.clone());
    wait_for("every committed message handled", WAIT, async || {
        let n = consumer.stats().processed;
        if n >= committed.len() as u64 {
            Ok(())
        } else {
            Err(format!("{:?}", consumer.stats()))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let ids: Vec<_> = committed.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    let stats = consumer.stats();
    assert_eq!(stats.processed, committed.len() as u64, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    // The handler received the messages as enqueued.
    for m in recorder.handled() {
        let original = committed.iter().find(|c| c.id == m.id).unwrap();
        assert_eq!(&m, original);
    }
    db.cleanup().await;
}

async fn migrate_is_idempotent_and_concurrent_safe(backend: Backend) {
    let db = TestDb::unmigrated(backend, |_| {}).await;
    // Before migrating, using the store says what is missing.
    let err = db
        .store
        .status()
        .await
        .expect_err("status before migrate must fail");
    assert_eq!(err.code(), "schema", "{err}");

    // Two handles migrate at the same time, from two tasks.
    let a = db.store.clone();
    let b = db.open_store().await;
    let ta = tokio::spawn(async move { a.migrate().await });
    let tb = tokio::spawn(async move { b.migrate().await });
    ta.await.unwrap().expect("concurrent migrate (1)");
    tb.await.unwrap().expect("concurrent migrate (2)");
    // And again, twice.
    db.store.migrate().await.expect("second migrate");
    db.store.migrate().await.expect("third migrate");

    assert_eq!(
        db.count("schema_migrations").await,
        relaybox::schema::MIGRATIONS.len() as i64
    );
    assert_eq!(db.count("leases").await, 16, "lease rows seeded once");
    assert_eq!(db.store.partitions().await.unwrap(), 16);
    let status = db.store.status().await.unwrap();
    assert_eq!(status.partitions, 16);
    assert!(status.topics.is_empty());

    // The schema works.
    let tx = db.store.begin().await.unwrap();
    tx.enqueue(Message::new("t", b"x".to_vec())).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.store.pending_count().await.unwrap(), 1);
    db.store.migrate().await.expect("migrate with data");
    assert_eq!(db.store.pending_count().await.unwrap(), 1);
    db.cleanup().await;
}

/// A pool of N connections serves N concurrent transactions that enqueue:
/// enqueueing inside a transaction must not need a second pooled connection
/// (e.g. to read the partition count on a store's first enqueue).
async fn as_many_transactions_as_pooled_connections_can_enqueue(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A fresh handle (nothing cached), two connections, a short wait for one.
    let store = db
        .open_store_with(|o| {
            o.max_connections = Some(2);
            o.connect_timeout = std::time::Duration::from_secs(2);
        })
        .await;
    let first = store.begin().await.expect("first transaction");
    let other = store.clone();
    // The second transaction holds its connection until the first has
    // enqueued and committed, so the first enqueues with the pool fully used.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(async move {
        // On SQLite this waits for the first transaction's write lock.
        let tx = other.begin().await?;
        let _ = released.await;
        tx.enqueue(Message::new("orders", b"second".to_vec()).with_key("b"))
            .await?;
        tx.commit().await
    });
    wait_for("both connections in use", WAIT, async || {
        match pool_usage(&store) {
            (2, 0) => Ok(()),
            (size, idle) => Err(format!("pool size {size}, idle {idle}")),
        }
    })
    .await;
    first
        .enqueue(Message::new("orders", b"first".to_vec()).with_key("a"))
        .await
        .expect("enqueue in the first transaction while the pool is fully used");
    first.commit().await.expect("commit the first transaction");
    release.send(()).expect("the second transaction is waiting");
    second
        .await
        .unwrap()
        .expect("the second transaction enqueues and commits");
    assert_eq!(db.store.pending_count().await.unwrap(), 2);
    db.cleanup().await;
}

/// (open connections, idle connections) of a store's pool.
/// `min_connections` are connected by the time the store is, and stay open
/// while idle; more than the pool holds is a config error naming the field.
async fn min_connections_are_open_before_the_first_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db
        .open_store_with(|o| {
            o.max_connections = Some(4);
            o.min_connections = 3;
        })
        .await;
    assert_eq!(pool_usage(&store), (3, 3), "three idle connections at once");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(pool_usage(&store), (3, 3), "still open while idle");
    let tx = store
        .begin()
        .await
        .expect("a transaction on a ready connection");
    tx.commit().await.expect("commit");
    wait_for(
        "the connection back in the pool",
        WAIT,
        async || match pool_usage(&store) {
            (3, 3) => Ok(()),
            (size, idle) => Err(format!("pool size {size}, idle {idle}")),
        },
    )
    .await;

    let mut options = db.options.clone();
    options.max_connections = Some(2);
    options.min_connections = 3;
    match relaybox::Store::connect_with(&db.url, options).await {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "min_connections");
            assert!(reason.contains('2'), "{reason}");
        }
        other => panic!("expected a config error for min_connections, got {other:?}"),
    }
    db.cleanup().await;
}

fn pool_usage(store: &relaybox::Store) -> (u32, usize) {
    match (store.pg_pool(), store.sqlite_pool()) {
        (Some(p), _) => (p.size(), p.num_idle()),
        (_, Some(p)) => (p.size(), p.num_idle()),
        _ => unreachable!("a store has one pool"),
    }
}

dialect_tests!(
    schema_sql_applied_by_hand_is_a_migrated_schema,
    large_batches_are_written_whole,
);

/// `schema_sql` is what a host's own migration tool applies: afterwards the
/// store works and `migrate` has nothing left to do.
async fn schema_sql_applied_by_hand_is_a_migrated_schema(backend: Backend) {
    let db = TestDb::unmigrated(backend, |o| o.partitions = 8).await;
    let dialect = match backend {
        Backend::Postgres => relaybox::Dialect::Postgres,
        Backend::Sqlite => relaybox::Dialect::Sqlite,
    };
    let sql = relaybox::schema::schema_sql(dialect, &db.prefix, 8).unwrap();
    db.exec(&sql).await;
    db.exec(&sql).await; // idempotent
    assert_eq!(db.count("leases").await, 8);
    db.store.migrate().await.unwrap();
    assert_eq!(
        db.count("schema_migrations").await,
        relaybox::schema::MIGRATIONS.len() as i64
    );
    assert_eq!(db.count("leases").await, 8);
    assert_eq!(db.store.partitions().await.unwrap(), 8);
    let msgs = messages("manual", 20, 4);
    db.enqueue_committed(&msgs).await;
    let relay = start_db_relay(&db.store, relay_config());
    let log = wait_in_log(&db.store, "manual", &msgs, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_order_per_key(&log, &msgs);
    db.cleanup().await;
}

/// One enqueue_batch call larger than any internal chunk: all or nothing.
async fn large_batches_are_written_whole(backend: Backend) {
    let db = TestDb::new(backend).await;
    let msgs = messages("bulk", 1234, 7);
    let tx = db.store.begin().await.unwrap();
    tx.enqueue_batch(&msgs).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.count("outbox").await, 0);
    db.own_tx(None, &msgs, true).await.unwrap();
    assert_eq!(db.store.pending_count().await.unwrap(), 1234);
    // A bad message at the very end of a large batch: nothing of it is written.
    let more = messages("bulk", 1100, 7);
    let mut bad = more.clone();
    bad.push(Message::new("bad topic", b"x".to_vec()));
    let err = db.own_tx(None, &bad, true).await.unwrap_err();
    assert_eq!(err.code(), "invalid_topic");
    assert_eq!(db.store.pending_count().await.unwrap(), 1234);
    let relay = start_db_relay(
        &db.store,
        relaybox::RelayConfig {
            batch_size: 500,
            ..relay_config()
        },
    );
    let log = wait_in_log(&db.store, "bulk", &msgs, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), msgs.len());
    assert_order_per_key(&log, &msgs);
    db.cleanup().await;
}
