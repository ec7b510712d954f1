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
    retrying_message_holds_back_only_its_own_key,
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
    // On SQLite the relay appends a batch to the log and completes its
    // outbox rows in a transaction after that: the consumer may have
    // handled the log's rows before the outbox is empty.
    wait_pending(&db.store, 0, "the outbox drained", WAIT, Some(&relay)).await;
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

// ---------------------------------------------------------------------------
// Lanes run independently: a slow lane holds back neither other lanes nor
// later fetches, and acknowledgements never pass an unprocessed delivery.

/// A key whose messages go to lane `lane` of a consumer with `lanes` lanes.
fn key_in_lane(prefix: &str, lane: u32, lanes: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| relaybox::partition::key_hash(k) % lanes == lane)
        .unwrap()
}

/// Delegates to a [`Recorder`], but the call for `held` first waits for a
/// permit of `gate` (none at first: the message is held until the test adds one).
struct Gated {
    inner: Arc<Recorder>,
    held: Uuid,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicBool,
}

impl Gated {
    fn new(inner: Arc<Recorder>, held: Uuid) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            held,
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            waiting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the held message's handler has started and waits.
    fn waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }
}

#[async_trait::async_trait]
impl relaybox::Handler for Gated {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        if message.id == self.held {
            self.waiting.store(true, Ordering::SeqCst);
            self.gate.acquire().await?.forget();
            self.waiting.store(false, Ordering::SeqCst);
        }
        self.inner.handle(message, tx).await
    }
}

/// One message's handler is held. Messages of the other lane, fetched in
/// many later batches, are handled meanwhile; the stored position stays
/// before the held message until it is done, then covers everything.
///
/// PostgreSQL only here and below: on SQLite a held handler holds the one
/// write lock, so every lane waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_lane_holds_back_neither_other_lanes_nor_later_batches() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("lanes", "lanes");
    let (slow_key, fast_key) = (key_in_lane("slow", 0, 2), key_in_lane("fast", 1, 2));
    let held = Message::new(topic, b"held".to_vec()).with_key(slow_key.clone());
    let fast: Vec<Message> = (0..30)
        .map(|i| Message::new(topic, format!("f{i}").into_bytes()).with_key(fast_key.clone()))
        .collect();
    let after = Message::new(topic, b"after".to_vec()).with_key(slow_key);
    let mut all = vec![held.clone()];
    all.extend(fast.iter().cloned());
    all.push(after.clone());
    db.store.append_log(&all).await.unwrap();
    let log = read_all_log(&db.store, topic).await;
    let position_of = |id: Uuid| log.iter().find(|e| e.message.id == id).unwrap().position;

    let recorder = Recorder::new(&db).arc();
    let handler = Gated::new(recorder.clone(), held.id);
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        handler.clone(),
        ConsumerConfig {
            batch_size: 4,
            concurrency: 2,
            ..consumer_config(group)
        },
    )
    .unwrap();
    let source_key = DatabaseSourceConfig::new(topic, group).position_source();
    wait_for(
        "the other lane's 30 messages handled while one message is held",
        WAIT,
        async || {
            let handled = recorder.handled_count();
            if handled >= fast.len() && handler.waiting() {
                Ok(())
            } else {
                Err(format!(
                    "{handled} handled, held message waiting: {}, {:?}",
                    handler.waiting(),
                    consumer.stats()
                ))
            }
        },
    )
    .await;
    let handled: Vec<Uuid> = recorder.handled().iter().map(|m| m.id).collect();
    assert!(fast.iter().all(|m| handled.contains(&m.id)));
    assert!(!handled.contains(&held.id) && !handled.contains(&after.id));
    // Processed work after the held message is not acknowledged past it.
    let position = db.store.position(group, &source_key).await.unwrap();
    assert!(
        position.unwrap_or(0) < position_of(held.id),
        "the stored position {position:?} passed the held message at {}",
        position_of(held.id)
    );

    handler.release();
    wait_for("every message handled", WAIT, async || {
        let s = consumer.stats();
        if s.processed >= all.len() as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    let order: Vec<Uuid> = recorder.handled().iter().map(|m| m.id).collect();
    let pos = |id: Uuid| order.iter().position(|x| *x == id).unwrap();
    assert!(pos(held.id) < pos(after.id), "order within a key kept");
    assert_eq!(
        db.store.position(group, &source_key).await.unwrap(),
        Some(position_of(after.id)),
        "after shutdown the position covers every message"
    );
    db.cleanup().await;
}

/// One lane: a message that keeps failing waits for its retries with its
/// key's later message behind it, while the lane's other key is handled in
/// full meanwhile; once it succeeds, its key goes on in order.
async fn retrying_message_holds_back_only_its_own_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (topic, group) = ("per-key-retry", "per-key-retry");
    let first = Message::new(topic, b"a1".to_vec()).with_key("a");
    let second = Message::new(topic, b"a2".to_vec()).with_key("a");
    let others: Vec<Message> = (0..20)
        .map(|i| Message::new(topic, format!("b{i}").into_bytes()).with_key("b"))
        .collect();
    let mut all = vec![first.clone(), second.clone()];
    all.extend(others.iter().cloned());
    db.store.append_log(&all).await.unwrap();

    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = first.id;
    let recorder = Recorder::new(&db)
        .failing({
            let healed = healed.clone();
            move |m| m.id == failing && !healed.load(Ordering::SeqCst)
        })
        .arc();
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        ConsumerConfig {
            concurrency: 1,
            max_retries: 1_000,
            retry_delay: std::time::Duration::from_millis(20),
            retry_delay_max: std::time::Duration::from_millis(50),
            ..consumer_config(group)
        },
    )
    .unwrap();
    wait_for(
        "the other key handled while the first message keeps failing",
        WAIT,
        async || {
            let handled = recorder.handled();
            let b = handled
                .iter()
                .filter(|m| m.key.as_deref() == Some("b"))
                .count();
            if b == others.len() {
                Ok(())
            } else {
                Err(format!("{b} of key b handled, {:?}", consumer.stats()))
            }
        },
    )
    .await;
    let handled: Vec<Uuid> = recorder.handled().iter().map(|m| m.id).collect();
    assert!(
        !handled.contains(&second.id),
        "the failing message's key went on without it"
    );
    assert!(consumer.stats().retried > 0, "{:?}", consumer.stats());

    healed.store(true, Ordering::SeqCst);
    wait_for("every message handled", WAIT, async || {
        let s = consumer.stats();
        if s.processed >= all.len() as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let order: Vec<Uuid> = recorder.handled().iter().map(|m| m.id).collect();
    let pos = |id: Uuid| order.iter().position(|x| *x == id).unwrap();
    assert!(pos(first.id) < pos(second.id), "order within the key kept");
    let mut once = order.clone();
    once.sort();
    once.dedup();
    assert_eq!(
        once.len(),
        all.len(),
        "each message handled once: {order:?}"
    );
    db.cleanup().await;
}

/// A source of fixed deliveries over two partitions that records what the
/// consumer acknowledges.
struct ScriptedSource {
    deliveries: std::sync::Mutex<std::collections::VecDeque<relaybox::Delivery>>,
    acked: std::sync::Mutex<std::collections::BTreeMap<i32, i64>>,
}

impl ScriptedSource {
    fn acked(&self, partition: i32) -> Option<i64> {
        self.acked.lock().unwrap().get(&partition).copied()
    }
}

#[async_trait::async_trait]
impl relaybox::Source for ScriptedSource {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn fetch(
        &self,
        max: usize,
        wait: std::time::Duration,
    ) -> relaybox::Result<Vec<relaybox::Delivery>> {
        let batch: Vec<relaybox::Delivery> = {
            let mut queue = self.deliveries.lock().unwrap();
            let n = max.min(queue.len());
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            tokio::time::sleep(wait.min(std::time::Duration::from_millis(20))).await;
        }
        Ok(batch)
    }

    async fn ack(&self, acks: &[relaybox::AckToken]) -> relaybox::Result<()> {
        let mut acked = self.acked.lock().unwrap();
        for a in acks {
            let entry = acked.entry(a.partition).or_insert(a.offset);
            assert!(
                a.offset >= *entry,
                "partition {} acknowledged backwards: {} after {}",
                a.partition,
                a.offset,
                *entry
            );
            *entry = a.offset;
        }
        Ok(())
    }
}

/// Partition 0's first delivery is held in one lane while its later
/// deliveries and all of partition 1 are handled in another: partition 1 is
/// acknowledged to its end, partition 0 not at all until the held delivery is
/// done, then to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_covers_only_the_processed_prefix_of_each_partition() {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "scripted";
    let delivery = |partition: i32, offset: i64, lane: u64| relaybox::Delivery {
        message: Message::new(topic, format!("{partition}/{offset}").into_bytes())
            .with_key(format!("k{partition}-{offset}")),
        lane,
        ack: relaybox::AckToken { partition, offset },
    };
    let deliveries = vec![
        delivery(0, 10, 0),
        delivery(1, 20, 1),
        delivery(0, 11, 1),
        delivery(1, 21, 1),
        delivery(0, 12, 1),
    ];
    let held = deliveries[0].message.id;
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.message.id).collect();
    let source = Arc::new(ScriptedSource {
        deliveries: std::sync::Mutex::new(deliveries.into()),
        acked: Default::default(),
    });
    let recorder = Recorder::new(&db).arc();
    let handler = Gated::new(recorder.clone(), held);
    let consumer = Consumer::start(
        db.store.clone(),
        source.clone(),
        handler.clone(),
        ConsumerConfig {
            concurrency: 2,
            ..consumer_config("scripted")
        },
    )
    .unwrap();
    wait_for("partition 1 acknowledged to its end", WAIT, async || {
        if source.acked(1) == Some(21) && recorder.handled_count() == 4 && handler.waiting() {
            Ok(())
        } else {
            Err(format!(
                "acked {:?}, {} handled, {:?}",
                source.acked.lock().unwrap(),
                recorder.handled_count(),
                consumer.stats()
            ))
        }
    })
    .await;
    assert_eq!(
        source.acked(0),
        None,
        "partition 0 acknowledged past its held first delivery"
    );
    handler.release();
    wait_for("partition 0 acknowledged to its end", WAIT, async || {
        if source.acked(0) == Some(12) {
            Ok(())
        } else {
            Err(format!("acked {:?}", source.acked.lock().unwrap()))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    assert_handled_once(&db, &[&recorder], &ids).await;
    db.cleanup().await;
}

dialect_tests!(restart_redelivers_only_unacknowledged_messages_and_the_inbox_skips_processed_ones);

/// A message keeps failing while the other lane goes on; the consumer shuts
/// down during a retry wait. The stored position stops before the failing
/// message. A restarted consumer gets the failing message and everything
/// after it again, not what came before: it handles the failing message and
/// its lane's successors, and the inbox skips the other lane's messages that
/// were processed already.
async fn restart_redelivers_only_unacknowledged_messages_and_the_inbox_skips_processed_ones(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    // A quote and a backslash in the group: the inbox rows of messages after
    // the first of a shared transaction are written with the group spelled
    // out in the SQL, and the restart must find them under the same group.
    let (topic, group) = ("restart", r"restart's \group");
    let (a, b) = (key_in_lane("a", 0, 2), key_in_lane("b", 1, 2));
    let msg = |key: &str, i: usize| {
        Message::new(topic, format!("{key}/{i}").into_bytes()).with_key(key.to_string())
    };
    // a0 b0 a1 b1 ... ; a2 fails in the first run.
    let all: Vec<Message> = (0..6).flat_map(|i| [msg(&a, i), msg(&b, i)]).collect();
    let failing = all[4].clone();
    assert_eq!(failing.payload, format!("{a}/2").into_bytes());
    db.store.append_log(&all).await.unwrap();
    let log = read_all_log(&db.store, topic).await;
    let position_of = |id: Uuid| log.iter().find(|e| e.message.id == id).unwrap().position;
    let config = ConsumerConfig {
        batch_size: 3,
        concurrency: 2,
        max_retries: 1_000,
        retry_delay: std::time::Duration::from_millis(20),
        retry_delay_max: std::time::Duration::from_millis(50),
        ..consumer_config(group)
    };
    let source_key = DatabaseSourceConfig::new(topic, group).position_source();

    let first = Recorder::new(&db)
        .failing({
            let id = failing.id;
            move |m| m.id == id
        })
        .arc();
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer =
        Consumer::start(db.store.clone(), source, first.clone(), config.clone()).unwrap();
    let lane_b: Vec<Uuid> = all
        .iter()
        .filter(|m| m.key.as_deref() == Some(b.as_str()))
        .map(|m| m.id)
        .collect();
    wait_for("lane b done while a2 keeps failing", WAIT, async || {
        let handled: Vec<Uuid> = first.handled().iter().map(|m| m.id).collect();
        let s = consumer.stats();
        if lane_b.iter().all(|id| handled.contains(id)) && s.retried >= 2 {
            Ok(())
        } else {
            Err(format!("{} handled, {s:?}", handled.len()))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let handled_first: Vec<Uuid> = first.handled().iter().map(|m| m.id).collect();
    let before_failing: Vec<Uuid> = all[..4].iter().map(|m| m.id).collect();
    assert!(before_failing.iter().all(|id| handled_first.contains(id)));
    assert_eq!(
        db.store.position(group, &source_key).await.unwrap(),
        Some(position_of(all[3].id)),
        "the position covers exactly what precedes the failing message"
    );

    // Restart with a handler that works.
    let second = Recorder::new(&db).arc();
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(db.store.clone(), source, second.clone(), config).unwrap();
    let redelivered = all.len() - 4;
    wait_for("the redelivered messages settled", WAIT, async || {
        let s = consumer.stats();
        if s.processed + s.duplicates >= redelivered as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    let stats = consumer.stats();
    let handled_second: std::collections::HashSet<Uuid> = second.calls().keys().copied().collect();
    let expected_second: std::collections::HashSet<Uuid> = all[4..]
        .iter()
        .filter(|m| !handled_first.contains(&m.id))
        .map(|m| m.id)
        .collect();
    assert!(expected_second.contains(&failing.id));
    assert_eq!(
        handled_second, expected_second,
        "only unprocessed messages are handled after the restart"
    );
    assert_eq!(
        (stats.processed, stats.duplicates),
        (
            expected_second.len() as u64,
            (redelivered - expected_second.len()) as u64
        ),
        "{stats:?}"
    );
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    let rows = db.handled_rows().await;
    assert!(ids.iter().all(|id| rows.get(id) == Some(&1)), "{rows:?}");
    assert_eq!(
        db.store.position(group, &source_key).await.unwrap(),
        Some(position_of(all.last().unwrap().id))
    );
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Consecutive messages of a lane share a transaction, one savepoint each.

/// `n` messages of one key (so one lane, in order), payload `v<i>`.
fn one_lane(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(topic, format!("v{i}").into_bytes()).with_key("one-lane"))
        .collect()
}

/// A handler that inserts the message's payload as the key of `table`
/// (whose key is unique) and counts its calls per message; for the message
/// with payload `swallow` it also runs a failing statement and ignores the error.
fn inserting_handler(
    db: &TestDb,
    table: &str,
    calls: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, u32>>>,
) -> Arc<dyn relaybox::Handler> {
    let insert = format!("INSERT INTO {table} (id) VALUES ({})", db.ph(1));
    let failing = format!("INSERT INTO {table} (id) VALUES ('v0')");
    Arc::new(handler_fn(move |m: Message, tx: Transaction| {
        let (insert, failing, calls) = (insert.clone(), failing.clone(), calls.clone());
        async move {
            *calls.lock().unwrap().entry(m.id).or_default() += 1;
            let value = String::from_utf8(m.payload.clone())?;
            if value == "swallow" {
                let _ = tx.execute(&failing, &[]).await;
                return Ok(());
            }
            tx.execute(&insert, &[Value::from(value)]).await?;
            Ok::<(), BoxError>(())
        }
    }))
}

/// Appends `msgs` to the log and runs a consumer of group `group` with
/// [`inserting_handler`] on `table` (one retry) until every message settled;
/// returns its stats and the handler's calls per message id.
async fn run_inserting(
    db: &TestDb,
    table: &str,
    topic: &str,
    group: &str,
    msgs: &[Message],
) -> (
    relaybox::ConsumerStats,
    std::collections::HashMap<Uuid, u32>,
) {
    db.store.append_log(msgs).await.unwrap();
    let calls = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, group)).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        inserting_handler(db, table, calls.clone()),
        ConsumerConfig {
            max_retries: 1,
            ..consumer_config(group)
        },
    )
    .unwrap();
    wait_settled(&consumer, msgs.len() as u64).await;
    consumer.shutdown().await.unwrap();
    let calls = calls.lock().unwrap().clone();
    (consumer.stats(), calls)
}

async fn wait_settled(consumer: &Consumer, n: u64) {
    wait_for("every message settled", WAIT, async || {
        let s = consumer.stats();
        if s.processed + s.duplicates + s.dead_lettered >= n {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
}

dialect_tests!(failing_statement_in_a_shared_transaction_undoes_only_its_own_message);

/// Ten messages of one lane are handled in a shared transaction; the fifth
/// one's INSERT violates a unique key (on PostgreSQL this aborts the
/// transaction). Only that message is rolled back, retried and
/// dead-lettered; every other message is handled once and its write kept.
async fn failing_statement_in_a_shared_transaction_undoes_only_its_own_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.t("uniq");
    db.exec(&format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)"))
        .await;
    db.exec(&format!("INSERT INTO {table} (id) VALUES ('taken')"))
        .await;
    let topic = "shared";
    let mut msgs = one_lane(topic, 10);
    msgs[4] = Message::new(topic, b"taken".to_vec()).with_key("one-lane");
    let (stats, calls) = run_inserting(&db, &table, topic, "s", &msgs).await;
    assert_eq!(
        (stats.processed, stats.dead_lettered, stats.retried),
        (9, 1, 1),
        "{stats:?}"
    );
    for (i, m) in msgs.iter().enumerate() {
        let expected = if i == 4 { 2 } else { 1 };
        assert_eq!(calls.get(&m.id), Some(&expected), "calls of message {i}");
    }
    assert_eq!(db.count("uniq").await, 10, "'taken' and v0..v9 without v4");
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message.id, dead[0].attempts), (msgs[4].id, 2));
    db.cleanup().await;
}

/// PostgreSQL aborts a transaction whose statement failed. A handler that
/// ignores such a failure and returns Ok, in the middle of a shared
/// transaction, must not be counted processed (its writes cannot commit),
/// and must not cost the other messages their writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swallowed_database_error_in_a_shared_transaction_spares_the_other_messages() {
    let db = TestDb::new(Backend::Postgres).await;
    let table = db.t("uniq");
    db.exec(&format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)"))
        .await;
    let topic = "shared-swallow";
    let mut msgs = one_lane(topic, 6);
    msgs[2] = Message::new(topic, b"swallow".to_vec()).with_key("one-lane");
    let (stats, calls) = run_inserting(&db, &table, topic, "sw", &msgs).await;
    assert_eq!((stats.processed, stats.dead_lettered), (5, 1), "{stats:?}");
    for (i, m) in msgs.iter().enumerate() {
        let expected = if i == 2 { 2 } else { 1 };
        assert_eq!(calls.get(&m.id), Some(&expected), "calls of message {i}");
    }
    assert_eq!(db.count("uniq").await, 5);
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, msgs[2].id);
    let inbox = db
        .scalar(&format!(
            "SELECT count(*) FROM {} WHERE message_id = '{}'",
            db.t("inbox"),
            msgs[2].id
        ))
        .await;
    assert_eq!(inbox, 0, "the swallowing message is not in the inbox");
    db.cleanup().await;
}

dialect_tests!(handler_committing_the_shared_transaction_itself_loses_nothing);

/// A handler that commits the consumer's transaction itself, in the middle
/// of a shared transaction, commits the messages before it too. Every
/// message still takes effect exactly once and none is dead-lettered.
async fn handler_committing_the_shared_transaction_itself_loses_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.t("uniq");
    db.exec(&format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)"))
        .await;
    let topic = "shared-commit";
    let msgs = one_lane(topic, 6);
    let committer = msgs[2].id;
    db.store.append_log(&msgs).await.unwrap();
    let insert = format!("INSERT INTO {table} (id) VALUES ({})", db.ph(1));
    let handler = handler_fn(move |m: Message, tx: Transaction| {
        let insert = insert.clone();
        async move {
            let value = String::from_utf8(m.payload.clone())?;
            tx.execute(&insert, &[Value::from(value)]).await?;
            if m.id == committer {
                tx.commit().await?;
            }
            Ok::<(), BoxError>(())
        }
    });
    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new(topic, "c")).unwrap();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(handler),
        consumer_config("c"),
    )
    .unwrap();
    wait_settled(&consumer, msgs.len() as u64).await;
    consumer.shutdown().await.unwrap();
    let stats = consumer.stats();
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(db.count("uniq").await, 6, "each message's write once");
    assert_eq!(db.count("inbox").await, 6);
    db.cleanup().await;
}
