//! The idempotent consumer: failing handlers are retried, then dead-lettered
//! with origin `consumer:<group>`, and the consumer moves on; a panicking
//! handler is an error like any other; a failed attempt leaves no writes.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use relaybox::{
    handler_fn, BoxError, Consumer, ConsumerConfig, DatabaseSource, DatabaseSourceConfig, Message,
    Transaction, Value,
};
use uuid::Uuid;

dialect_tests!(
    failing_message_is_dead_lettered_and_the_consumer_moves_on,
    panicking_handler_is_retried_and_its_writes_rolled_back,
);

async fn failing_message_is_dead_lettered_and_the_consumer_moves_on(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "events";
    let group = "projector";
    let good = messages(topic, 20, 4);
    // The bad message shares its key with later good ones: they wait behind it.
    let bad = Message::new(topic, b"bad".to_vec()).with_key("key-1");
    let mut first: Vec<Message> = good[..10].to_vec();
    first.push(bad.clone());
    first.extend_from_slice(&good[10..]);
    db.store.append_log(&first).await.unwrap();

    let bad_id = bad.id;
    let recorder = Recorder::new(&db).failing(move |m| m.id == bad_id).arc();
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        ConsumerConfig {
            max_retries: 2,
            ..consumer_config(group)
        },
    )
    .unwrap();

    let dead = wait_for("the failing message in dead letters", WAIT, async || {
        let dl = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
        if dl.is_empty() {
            Err(format!("consumer {:?}", consumer.stats()))
        } else {
            Ok(dl)
        }
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dl = &dead[0];
    assert_eq!(dl.message.id, bad.id);
    assert_eq!(dl.message.payload, b"bad");
    assert_eq!(dl.origin, format!("consumer:{group}"));
    assert_eq!(dl.attempts, 3, "first attempt + max_retries");
    assert!(
        dl.last_error.contains("test handler refuses"),
        "last_error: {}",
        dl.last_error
    );

    // The consumer moved on: the rest of the batch, then new messages.
    let later = messages(topic, 10, 4);
    db.store.append_log(&later).await.unwrap();
    let expected_ok = good.len() + later.len();
    wait_for("every good message processed", WAIT, async || {
        let s = consumer.stats();
        if s.processed >= expected_ok as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();

    let stats = consumer.stats();
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.retried, 2, "{stats:?}");
    assert_eq!(stats.processed, expected_ok as u64, "{stats:?}");
    assert_eq!(recorder.calls()[&bad.id], 3, "called once per attempt");
    let ids: Vec<Uuid> = good.iter().chain(&later).map(|m| m.id).collect();
    let rows = db.handled_rows().await;
    assert!(
        !rows.contains_key(&bad.id),
        "failed attempts leave no writes"
    );
    // Good messages: each handled once; the bad one only attempted.
    let mut calls = recorder.calls();
    calls.remove(&bad.id);
    assert!(ids.iter().all(|id| calls.get(id) == Some(&1)), "{calls:?}");
    assert_eq!(rows.len(), ids.len());
    assert!(rows.values().all(|n| *n == 1));
    // The good messages of the bad one's key were handled after it was given up.
    let order: Vec<Uuid> = recorder.handled().iter().map(|m| m.id).collect();
    let same_key_after: Vec<&Message> = good[10..]
        .iter()
        .filter(|m| m.key.as_deref() == Some("key-1"))
        .collect();
    assert!(!same_key_after.is_empty());
    let same_key_before: Vec<&Message> = good[..10]
        .iter()
        .filter(|m| m.key.as_deref() == Some("key-1"))
        .collect();
    let pos = |id: Uuid| order.iter().position(|x| *x == id).unwrap();
    for (b, a) in same_key_before.iter().zip(same_key_after.iter()) {
        assert!(pos(b.id) < pos(a.id), "order within a key kept");
    }
    assert_eq!(db.store.status().await.unwrap().dead_letters, 1);
    db.cleanup().await;
}

async fn panicking_handler_is_retried_and_its_writes_rolled_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "panics";
    let msgs = messages(topic, 3, 3);
    db.store.append_log(&msgs).await.unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let sql = format!(
        "INSERT INTO {} (message_id, topic, msg_key, member) VALUES ({}, {}, NULL, 0)",
        db.t("handled"),
        db.ph(1),
        db.ph(2)
    );
    let target = msgs[1].id;
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |m: Message, tx: Transaction| {
            let attempts = attempts.clone();
            let sql = sql.clone();
            async move {
                tx.execute(
                    &sql,
                    &[Value::from(m.id.to_string()), Value::from(m.topic.clone())],
                )
                .await?;
                if m.id == target && attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("handler panics on its first attempt");
                }
                Ok::<(), BoxError>(())
            }
        })
    };
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, "p")).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(handler),
        consumer_config("p"),
    )
    .unwrap();
    wait_for("all 3 processed", WAIT, async || {
        let s = consumer.stats();
        if s.processed >= 3 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let stats = consumer.stats();
    assert_eq!(
        (stats.processed, stats.retried, stats.dead_lettered),
        (3, 1, 0),
        "{stats:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let rows = db.handled_rows().await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.values().all(|n| *n == 1),
        "the panicked attempt's write was rolled back: {rows:?}"
    );
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Dead letters of a consumer, retried through the outbox and the relay.

dialect_tests!(
    consumer_dead_letter_retried_is_delivered_again,
    consumer_dead_letter_retried_is_delivered_again_with_relay_retention,
);

async fn consumer_dead_letter_retried_is_delivered_again(backend: Backend) {
    retry_consumer_dead_letter(backend, None).await
}

async fn consumer_dead_letter_retried_is_delivered_again_with_relay_retention(backend: Backend) {
    // With a retention, the relay keeps delivered outbox rows (sent_at set).
    retry_consumer_dead_letter(backend, Some(std::time::Duration::from_secs(3600))).await
}

async fn retry_consumer_dead_letter(backend: Backend, retention: Option<std::time::Duration>) {
    let db = TestDb::new(backend).await;
    let topic = "invoices";
    let group = "mailer";
    let msgs = messages(topic, 5, 5);
    let bad_id = msgs[2].id;
    db.enqueue_committed(&msgs).await;
    let relay = start_db_relay(
        &db.store,
        relaybox::RelayConfig {
            retention,
            ..relay_config()
        },
    );
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let recorder = {
        let broken = broken.clone();
        Recorder::new(&db)
            .failing(move |m| m.id == bad_id && broken.load(Ordering::SeqCst))
            .arc()
    };
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        ConsumerConfig {
            max_retries: 1,
            ..consumer_config(group)
        },
    )
    .unwrap();
    wait_for("4 processed and 1 dead-lettered", WAIT, async || {
        let s = consumer.stats();
        if s.processed >= 4 && s.dead_lettered >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, bad_id);
    assert_eq!(dead[0].origin, format!("consumer:{group}"));

    if retention.is_some() {
        // The relay kept the delivered rows: the retried id is still in the outbox.
        assert_eq!(db.count("outbox").await, msgs.len() as i64);
    }
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    // The handler is fixed; an operator retries the dead letter.
    broken.store(false, Ordering::SeqCst);
    let moved = db
        .store
        .retry_dead_letters(&relaybox::DeadLetterFilter::Ids(vec![bad_id]))
        .await
        .unwrap();
    let left = db.store.dead_letters(10).await.unwrap();
    assert_eq!(
        moved,
        1,
        "retry_dead_letters must move the dead letter back to the outbox \
         (dead letters left: {})",
        left.len()
    );
    wait_for("the retried message handled", WAIT, async || {
        let rows = db.handled_rows().await;
        if rows.contains_key(&bad_id) {
            Ok(())
        } else {
            Err(format!(
                "consumer {:?}, pending {:?}, dead letters {:?}",
                consumer.stats(),
                db.store.pending_count().await,
                db.store.dead_letters(10).await.map(|d| d.len())
            ))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
    let ids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
    let rows = db.handled_rows().await;
    assert!(ids.iter().all(|id| rows.get(id) == Some(&1)), "{rows:?}");
    assert!(db.store.dead_letters(10).await.unwrap().is_empty());
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Failures the handler's transaction only reveals at commit.

dialect_tests!(commit_failure_of_the_handler_transaction_is_a_handler_failure);

/// A handler whose writes violate a deferred foreign key: every attempt fails
/// at COMMIT, deterministically. Like any failing handler, the message must
/// be retried `max_retries` times, dead-lettered, and the consumer move on.
async fn commit_failure_of_the_handler_transaction_is_a_handler_failure(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (parents, children) = (db.t("parents"), db.t("children"));
    db.exec(&format!("CREATE TABLE {parents} (id TEXT PRIMARY KEY)"))
        .await;
    db.exec(&format!(
        "CREATE TABLE {children} (id TEXT PRIMARY KEY, parent_id TEXT NOT NULL \
         REFERENCES {parents} (id) DEFERRABLE INITIALLY DEFERRED)"
    ))
    .await;
    db.exec(&format!("INSERT INTO {parents} (id) VALUES ('p-ok')"))
        .await;
    let topic = "children";
    let ok1 = Message::new(topic, b"p-ok".to_vec()).with_key("a");
    let orphan = Message::new(topic, b"p-missing".to_vec()).with_key("b");
    let ok2 = Message::new(topic, b"p-ok".to_vec()).with_key("c");
    db.store
        .append_log(&[ok1.clone(), orphan.clone(), ok2.clone()])
        .await
        .unwrap();
    let sql = format!(
        "INSERT INTO {children} (id, parent_id) VALUES ({}, {})",
        db.ph(1),
        db.ph(2)
    );
    let handler = handler_fn(move |m: Message, tx: Transaction| {
        let sql = sql.clone();
        async move {
            let parent = String::from_utf8(m.payload.clone())?;
            tx.execute(&sql, &[Value::from(m.id.to_string()), Value::from(parent)])
                .await?;
            Ok::<(), BoxError>(())
        }
    });
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, "fk")).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(handler),
        ConsumerConfig {
            max_retries: 2,
            ..consumer_config("fk")
        },
    )
    .unwrap();
    wait_for(
        "the orphan dead-lettered and the others processed",
        std::time::Duration::from_secs(15),
        async || {
            let s = consumer.stats();
            let dead = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
            if s.processed >= 2 && dead.iter().any(|d| d.message.id == orphan.id) {
                Ok(())
            } else {
                Err(format!(
                    "consumer {s:?}, dead letters {}; a COMMIT that fails every time \
                     must count as a handler failure, not be retried forever",
                    dead.len()
                ))
            }
        },
    )
    .await;
    consumer.shutdown().await.unwrap();
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].origin, "consumer:fk");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(db.count("children").await, 2);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// PostgreSQL: a handler that swallows a database error.

/// On PostgreSQL a failed statement aborts the transaction, and COMMIT of an
/// aborted transaction silently rolls back. A handler that ignores the error
/// and returns Ok must not make the consumer report the message processed
/// (and acknowledge it) while nothing, not even the inbox row, was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swallowed_database_error_does_not_lose_the_message() {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "swallow";
    let m = Message::new(topic, b"x".to_vec()).with_key("k");
    db.store.append_log(std::slice::from_ref(&m)).await.unwrap();
    let handler = handler_fn(|_m: Message, tx: Transaction| async move {
        // An error the handler decides to ignore ("table may not exist yet").
        let _ = tx
            .execute("SELECT * FROM relaybox_no_such_table", &[])
            .await;
        Ok::<(), BoxError>(())
    });
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, "sw")).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(handler),
        ConsumerConfig {
            max_retries: 1,
            ..consumer_config("sw")
        },
    )
    .unwrap();
    let inbox_sql = format!(
        "SELECT count(*) FROM {} WHERE message_id = '{}'",
        db.t("inbox"),
        m.id
    );
    wait_for(
        "the message either committed as processed or dead-lettered",
        std::time::Duration::from_secs(10),
        async || {
            let in_inbox = db.scalar(&inbox_sql).await;
            let dead = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
            if in_inbox == 1 || dead.iter().any(|d| d.message.id == m.id) {
                Ok(())
            } else {
                Err(format!(
                    "consumer {:?}, inbox rows {in_inbox}, dead letters {}, position {:?}: \
                     the message was acknowledged although its transaction rolled back",
                    consumer.stats(),
                    dead.len(),
                    db.store.position("sw", &format!("log:{topic}:0/1")).await
                ))
            }
        },
    )
    .await;
    consumer.shutdown().await.unwrap();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// A handler that produces follow-up events through the consumer's transaction.

dialect_tests!(handler_enqueues_follow_up_events_in_its_transaction);

/// The outbox-in-consumer pattern: each handled message enqueues a follow-up
/// event in the consumer's transaction. A consumer whose lanes use every
/// pooled connection at once (here 2 lanes, 2 connections, on a fresh store
/// handle) must still process every message without failures.
async fn handler_enqueues_follow_up_events_in_its_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "commands";
    // Two keys that land in different lanes of a 2-lane consumer.
    let key_in_lane = |lane: u32| {
        (0..)
            .map(|i| format!("cmd-{i}"))
            .find(|k| relaybox::partition::key_hash(k) % 2 == lane)
            .unwrap()
    };
    let msgs = [
        Message::new(topic, b"a".to_vec()).with_key(key_in_lane(0)),
        Message::new(topic, b"b".to_vec()).with_key(key_in_lane(1)),
    ];
    db.store.append_log(&msgs).await.unwrap();
    // The consumer's transactions use a fresh handle with 2 connections (the
    // source reads through the test's own store). A short connect timeout only
    // makes a starved pool fail faster.
    let store = db
        .open_store_with(|o| {
            o.max_connections = Some(2);
            o.connect_timeout = std::time::Duration::from_secs(1);
        })
        .await;
    let pool_full = {
        let store = store.clone();
        move || match (store.pg_pool(), store.sqlite_pool()) {
            (Some(p), _) => p.size() == 2 && p.num_idle() == 0,
            (_, Some(p)) => p.size() == 2 && p.num_idle() == 0,
            _ => false,
        }
    };
    let handler = handler_fn(move |m: Message, tx: Transaction| {
        let pool_full = pool_full.clone();
        async move {
            // Both lanes are in their transactions (on SQLite the second one
            // waits for the write lock, holding its connection): the pool is
            // fully used. Bounded, so a correct consumer never waits long.
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !pool_full() && tokio::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let follow_up = Message::new("events", m.payload.clone())
                .with_key(m.key.clone().unwrap_or_default())
                .with_header("caused-by", m.id.to_string());
            tx.enqueue(follow_up).await?;
            Ok::<(), BoxError>(())
        }
    });
    let source = DatabaseSource::new(
        db.store.clone(),
        DatabaseSourceConfig::new(topic, "emitter"),
    )
    .unwrap();
    let consumer = Consumer::start(
        store.clone(),
        source,
        Arc::new(handler),
        ConsumerConfig {
            concurrency: 2,
            ..consumer_config("emitter")
        },
    )
    .unwrap();
    wait_for(
        "both messages processed or dead-lettered",
        WAIT,
        async || {
            let s = consumer.stats();
            if s.processed + s.dead_lettered >= 2 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    consumer.shutdown().await.unwrap();
    let s = consumer.stats();
    assert_eq!(
        (s.retried, s.dead_lettered),
        (0, 0),
        "enqueueing in the handler failed for lack of a pooled connection: {s:?}"
    );
    assert_eq!(
        db.store.pending_count().await.unwrap(),
        2,
        "one follow-up each"
    );
    db.cleanup().await;
}

dialect_tests!(rejected_message_is_dead_lettered_without_retries);

/// A handler returning [`relaybox::Rejected`] sends the message to dead
/// letters at once, with the rejection's reason, and the consumer moves on.
async fn rejected_message_is_dead_lettered_without_retries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (topic, group) = ("events", "validator");
    let bad = Message::new(topic, b"not json".to_vec()).with_key("k");
    let good = Message::new(topic, b"{}".to_vec()).with_key("k");
    db.store
        .append_log(&[bad.clone(), good.clone()])
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let handler = handler_fn(move |m: Message, _tx: Transaction| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            if m.payload == b"not json" {
                return Err(Box::new(relaybox::Rejected::new("payload is not JSON")) as BoxError);
            }
            Ok(())
        }
    });
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(handler),
        ConsumerConfig {
            max_retries: 5,
            ..consumer_config(group)
        },
    )
    .unwrap();
    wait_for("both messages settled", WAIT, async || {
        let s = consumer.stats();
        if s.processed == 1 && s.dead_lettered == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    assert_eq!(consumer.stats().retried, 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the rejected one is called once"
    );
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, bad.id);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error, "payload is not JSON");
    db.cleanup().await;
}
