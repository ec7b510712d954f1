//! The relay: several instances sharing partitions, order per key, poison
//! messages and dead letters, rows written by host drivers (insert_statement).

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use relaybox::sqlx::{self, AssertSqlSafe};
use relaybox::{
    DatabaseSink, DeadLetterFilter, Error, Message, Placeholders, Relay, RelayConfig, Sink, Value,
};
use uuid::Uuid;

dialect_tests!(
    order_per_key_with_one_relay,
    poison_message_is_retried_then_dead_lettered_without_blocking_other_keys,
    insert_statement_rows_are_relayed,
    delayed_message_waits_and_holds_back_its_key,
    retention_keeps_delivered_rows_until_purged,
    message_refused_for_good_is_dead_lettered_at_once,
    rows_failed_in_an_outage_go_out_when_the_transport_recovers,
);

// ---------------------------------------------------------------------------
// Three relays, 10,000 messages (PostgreSQL).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_deliver_10000_messages_in_order_per_key() {
    const N: usize = 10_000;
    const KEYS: usize = 100;
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "load";
    let config = RelayConfig {
        batch_size: 500,
        ..relay_config()
    };
    let mut relays: Vec<Relay> = Vec::new();
    for i in 0..3 {
        let store = db.open_store().await;
        relays.push(start_db_relay(
            &store,
            RelayConfig {
                instance_id: Some(format!("{}relay-{i}", db.prefix)),
                ..config.clone()
            },
        ));
    }
    let owners = wait_for("3 relays sharing all 16 partitions", WAIT, async || {
        let status = db.store.status().await.map_err(|e| e.to_string())?;
        let held: i64 = status.lease_owners.iter().map(|o| o.partitions).sum();
        if status.lease_owners.len() == 3 && held == 16 {
            Ok(status.lease_owners)
        } else {
            Err(format!("{:?}", status.lease_owners))
        }
    })
    .await;
    let names: HashSet<&str> = owners.iter().map(|o| o.owner.as_str()).collect();
    for r in &relays {
        assert!(
            names.contains(r.owner()),
            "{} holds no lease: {owners:?}",
            r.owner()
        );
    }

    let all = messages(topic, N, KEYS);
    for chunk in all.chunks(500) {
        db.own_tx(None, chunk, true).await.expect("enqueue chunk");
    }
    let distinct_sql = format!("SELECT count(DISTINCT id) FROM {}", db.t("log"));
    wait_for(
        "10,000 distinct messages in the log",
        Duration::from_secs(90),
        async || {
            let n = db.scalar(&distinct_sql).await;
            if n as usize >= N {
                Ok(())
            } else {
                let stats: Vec<_> = relays.iter().map(|r| r.stats()).collect();
                Err(format!("{n} distinct ids in the log; relays: {stats:?}"))
            }
        },
    )
    .await;
    let log = read_all_log(&db.store, topic).await;
    assert!(log.len() >= N, "log has {} entries", log.len());
    let expected: HashSet<Uuid> = all.iter().map(|m| m.id).collect();
    let in_log: HashSet<Uuid> = log.iter().map(|e| e.message.id).collect();
    assert_eq!(in_log, expected, "the log holds exactly the enqueued ids");
    assert_order_per_key(&log, &all);
    for r in &relays {
        let stats = r.stats();
        assert!(
            stats.delivered > 0,
            "{} delivered nothing: {stats:?}",
            r.owner()
        );
        assert!(
            stats.partitions_held > 0,
            "{} held no partitions: {stats:?}",
            r.owner()
        );
        assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    }
    let delivered: u64 = relays.iter().map(|r| r.stats().delivered).sum();
    assert!(delivered >= N as u64, "delivered {delivered}");
    for r in &relays {
        r.shutdown().await.expect("relay shutdown");
    }
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    assert!(
        db.store.status().await.unwrap().lease_owners.is_empty(),
        "shutdown releases every lease"
    );

    let recorder = Recorder::new(&db).arc();
    let source = relaybox::DatabaseSource::new(
        db.store.clone(),
        relaybox::DatabaseSourceConfig::new(topic, "load-check"),
    )
    .unwrap();
    let consumer = relaybox::Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        relaybox::ConsumerConfig {
            batch_size: 500,
            concurrency: 8,
            ..consumer_config("load-check")
        },
    )
    .unwrap();
    wait_for(
        "10,000 messages handled",
        Duration::from_secs(90),
        async || {
            let stats = consumer.stats();
            if stats.processed + stats.duplicates >= log.len() as u64 {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    consumer.shutdown().await.unwrap();
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    assert_eq!(consumer.stats().processed, N as u64);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Order per key, one relay, messages enqueued while it runs.

async fn order_per_key_with_one_relay(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "ordered";
    let relay = start_db_relay(
        &db.store,
        RelayConfig {
            batch_size: 64,
            ..relay_config()
        },
    );
    let all = messages(topic, 500, 10);
    for (i, chunk) in all.chunks(100).enumerate() {
        if i % 2 == 0 {
            db.enqueue_committed(chunk).await;
        } else {
            db.own_tx(None, chunk, true).await.unwrap();
        }
    }
    let log = wait_in_log(&db.store, topic, &all, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), all.len(), "each message exactly once in the log");
    assert_order_per_key(&log, &all);
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Poison messages.

/// A sink that rejects every message whose payload is `poison` (and, per the
/// Sink contract, every later message of the same key in the batch, with a
/// retryable error) until `accept_poison` is set; it appends the rest to the
/// log table. The rejection is `retryable` (a refusal that may pass later) or
/// not (the message can never be sent). It records what it did, in order.
struct PoisonSink {
    inner: DatabaseSink,
    retryable: bool,
    accept_poison: AtomicBool,
    events: Mutex<Vec<SinkEvent>>,
}

impl PoisonSink {
    fn new(store: &relaybox::Store, retryable: bool) -> Arc<PoisonSink> {
        Arc::new(PoisonSink {
            inner: DatabaseSink::new(store.clone()),
            retryable,
            accept_poison: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkEvent {
    Delivered(Uuid),
    Rejected(Uuid),
    HeldBehind(Uuid),
}

impl PoisonSink {
    fn events(&self) -> Vec<SinkEvent> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Sink for PoisonSink {
    fn name(&self) -> &str {
        "poison-test"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        let accept = self.accept_poison.load(Ordering::SeqCst);
        let mut failed_keys: HashSet<Option<String>> = HashSet::new();
        let mut results: Vec<Option<relaybox::Result<()>>> = Vec::new();
        let mut events = Vec::new();
        let mut passed = Vec::new();
        let fail = |m: &Message, why: &str, retryable: bool| Error::Transport {
            transport: "poison-test".into(),
            message: why.into(),
            retryable,
            message_id: Some(m.id),
        };
        for m in batch {
            if m.key.is_some() && failed_keys.contains(&m.key) {
                events.push(SinkEvent::HeldBehind(m.id));
                results.push(Some(Err(fail(
                    m,
                    "held behind an earlier failure of its key",
                    true,
                ))));
            } else if m.payload == b"poison" && !accept {
                failed_keys.insert(m.key.clone());
                events.push(SinkEvent::Rejected(m.id));
                results.push(Some(Err(fail(
                    m,
                    "poison message rejected by the test sink",
                    self.retryable,
                ))));
            } else {
                passed.push(m.clone());
                results.push(None);
            }
        }
        let mut inner = self.inner.publish(&passed).await.into_iter();
        for (r, m) in results.iter_mut().zip(batch) {
            if r.is_none() {
                let outcome = inner.next().expect("one result per message");
                if outcome.is_ok() {
                    events.push(SinkEvent::Delivered(m.id));
                }
                *r = Some(outcome);
            }
        }
        self.events.lock().unwrap().extend(events);
        results.into_iter().map(Option::unwrap).collect()
    }
}

async fn poison_message_is_retried_then_dead_lettered_without_blocking_other_keys(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let topic = "payments";
    let key_msg = |payload: &str| Message::new(topic, payload.as_bytes().to_vec()).with_key("p");
    let before = key_msg("before");
    let poison = key_msg("poison");
    let after = [key_msg("after-1"), key_msg("after-2")];
    let others = messages(topic, 30, 6);
    // Enqueue order: before, poison, others[..15], after-1, others[15..], after-2.
    let mut enqueued = vec![before.clone(), poison.clone()];
    enqueued.extend_from_slice(&others[..15]);
    enqueued.push(after[0].clone());
    enqueued.extend_from_slice(&others[15..]);
    enqueued.push(after[1].clone());
    db.enqueue_committed(&enqueued).await;

    // A refusal that may pass later: retried with backoff.
    let sink = PoisonSink::new(&db.store, true);
    // Backoff of 0.5-1 s then 1-2 s: the poison message stays in the outbox,
    // retrying, for at least 1.5 s before it is dead-lettered.
    // The key goes on after the dead letter (parked keys: tests/parked_keys.rs).
    let config = RelayConfig {
        max_attempts: 3,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(2),
        park_keys: false,
        ..relay_config()
    };
    let relay = Relay::start(db.store.clone(), sink.clone(), config.clone()).unwrap();

    // Other keys flow while the poison message is retrying.
    let mut flowing = vec![before.clone()];
    flowing.extend_from_slice(&others);
    wait_in_log(&db.store, topic, &flowing, WAIT).await;
    // The batch is complete once only the poison message and the two behind
    // it are left (its completion commits just after the sink's append).
    wait_pending(&db.store, 3, "the others recorded as delivered", WAIT, None).await;
    let dead_now = db.store.dead_letters(10).await.unwrap();
    let in_log = log_ids(&db.store, topic).await;
    assert!(
        dead_now.is_empty(),
        "poison dead-lettered before the other keys were observed delivered: {dead_now:?}"
    );
    assert!(!in_log.contains(&poison.id));
    for m in &after {
        assert!(
            !in_log.contains(&m.id),
            "{} of the poisoned key overtook the poison message",
            String::from_utf8_lossy(&m.payload)
        );
    }
    let status = db.store.status().await.unwrap();
    let backlog = status.topics.iter().find(|t| t.topic == topic).unwrap();
    assert_eq!(backlog.pending, 3, "{backlog:?}");
    assert_eq!(
        backlog.retrying, 1,
        "the poison message is retrying: {backlog:?}"
    );

    // Then it is dead-lettered after 3 attempts, and its key moves on.
    let dead = wait_for("the poison message in dead letters", WAIT, async || {
        let dl = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
        if dl.is_empty() {
            Err(format!("no dead letters; relay {:?}", relay.stats()))
        } else {
            Ok(dl)
        }
    })
    .await;
    let log = wait_in_log(&db.store, topic, &after, WAIT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dl = &dead[0];
    assert_eq!(dl.message.id, poison.id);
    assert_eq!(dl.message.payload, b"poison");
    assert_eq!(dl.message.key.as_deref(), Some("p"));
    assert_eq!(dl.origin, "relay");
    assert_eq!(dl.attempts, 3);
    assert!(
        dl.last_error.contains("poison message rejected"),
        "last_error: {}",
        dl.last_error
    );
    let stats = relay.stats();
    assert!(stats.retried >= 2, "{stats:?}");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    let status = db.store.status().await.unwrap();
    assert_eq!(status.dead_letters, 1);

    // The sink's own record: every other-key message was delivered before the
    // third (final) rejection; the poisoned key's later messages after it.
    let events = sink.events();
    let rejections: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| **e == SinkEvent::Rejected(poison.id))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rejections.len(), 3, "three attempts: {events:?}");
    let final_rejection = rejections[2];
    let delivered_at = |id: Uuid| {
        events
            .iter()
            .position(|e| *e == SinkEvent::Delivered(id))
            .unwrap_or_else(|| panic!("{id} never delivered"))
    };
    for m in &flowing {
        assert!(delivered_at(m.id) < final_rejection);
    }
    for m in &after {
        assert!(delivered_at(m.id) > final_rejection);
    }
    let mut keyed: Vec<Message> = enqueued.clone();
    keyed.retain(|m| m.id != poison.id);
    assert_order_per_key(&log, &keyed);
    relay.shutdown().await.unwrap();

    // An operator retries it: back in the outbox; a sink that accepts it delivers it.
    let moved = db
        .store
        .retry_dead_letters(&DeadLetterFilter::All)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(db.store.pending_count().await.unwrap(), 1);
    assert!(db.store.dead_letters(10).await.unwrap().is_empty());
    sink.accept_poison.store(true, Ordering::SeqCst);
    let relay = Relay::start(db.store.clone(), sink.clone(), config).unwrap();
    let log = wait_in_log(&db.store, topic, std::slice::from_ref(&poison), WAIT).await;
    wait_until_drained(&db.store, WAIT, None).await;
    relay.shutdown().await.unwrap();
    let copies: Vec<_> = log.iter().filter(|e| e.message.id == poison.id).collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].message.payload, b"poison");
    assert_eq!(log.len(), enqueued.len(), "every message exactly once");
    db.cleanup().await;
}

/// A message the transport refuses for good (a non-retryable error naming
/// it: too large for the producer, too many attributes, a stream version
/// conflict) is dead-lettered at its first attempt, with that error; the
/// later messages of its key follow it as after any dead letter.
async fn message_refused_for_good_is_dead_lettered_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "refused";
    let key_msg = |payload: &str| Message::new(topic, payload.as_bytes().to_vec()).with_key("p");
    let before = key_msg("before");
    let poison = key_msg("poison");
    let after = key_msg("after");
    let others = messages(topic, 10, 5);
    let mut enqueued = vec![before.clone(), poison.clone(), after.clone()];
    enqueued.extend_from_slice(&others);
    db.enqueue_committed(&enqueued).await;

    let sink = PoisonSink::new(&db.store, false);
    // Retries, if any, would come seconds apart and 5 of them.
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            max_attempts: 5,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(4),
            // The key goes on after the dead letter (parked keys: tests/parked_keys.rs).
            park_keys: false,
            ..relay_config()
        },
    )
    .unwrap();
    let dead = wait_for("the refused message in dead letters", WAIT, async || {
        let dl = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
        if dl.is_empty() {
            Err(format!("no dead letters; relay {:?}", relay.stats()))
        } else {
            Ok(dl)
        }
    })
    .await;
    let mut delivered = vec![before.clone(), after.clone()];
    delivered.extend_from_slice(&others);
    let log = wait_in_log(&db.store, topic, &delivered, WAIT).await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();

    assert_eq!(dead.len(), 1, "{dead:?}");
    let dl = &dead[0];
    assert_eq!(dl.message.id, poison.id);
    assert_eq!(dl.origin, "relay");
    assert_eq!(dl.attempts, 1, "dead-lettered at its first attempt");
    assert!(
        dl.last_error.contains("poison message rejected"),
        "last_error: {}",
        dl.last_error
    );
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.retried, 0, "nothing was retried: {stats:?}");
    let events = sink.events();
    let rejections = events
        .iter()
        .filter(|e| **e == SinkEvent::Rejected(poison.id))
        .count();
    assert_eq!(rejections, 1, "one attempt: {events:?}");
    // The key's later message went out after the refused one, once.
    let rejected_at = events
        .iter()
        .position(|e| *e == SinkEvent::Rejected(poison.id))
        .unwrap();
    let after_delivered = events
        .iter()
        .position(|e| *e == SinkEvent::Delivered(after.id))
        .expect("the later message of the key delivered");
    assert!(rejected_at < after_delivered, "{events:?}");
    assert_eq!(log.len(), delivered.len(), "each message once");
    assert!(!log.iter().any(|e| e.message.id == poison.id));
    assert_order_per_key(&log, &delivered);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// A transport outage: rows that failed during it go out once it recovers.

/// Fails every message with a retryable transport error while `down` is
/// set (as a broker that cannot be reached), appends to the log otherwise.
struct OutageSink {
    inner: DatabaseSink,
    down: AtomicBool,
}

#[async_trait::async_trait]
impl Sink for OutageSink {
    fn name(&self) -> &str {
        "outage-test"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        if self.down.load(Ordering::SeqCst) {
            return batch
                .iter()
                .map(|m| {
                    Err(Error::Transport {
                        transport: "outage-test".into(),
                        message: "the broker cannot be reached".into(),
                        retryable: true,
                        message_id: Some(m.id),
                    })
                })
                .collect();
        }
        self.inner.publish(batch).await
    }
}

/// Rows whose attempts failed during an outage are due again at once when
/// the transport delivers again, instead of sitting out their backoff
/// (here 15 to 30 s) while holding back their keys. A message its producer
/// delayed keeps its time.
async fn rows_failed_in_an_outage_go_out_when_the_transport_recovers(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "outage";
    const KEYS: usize = 8;
    let during = messages(topic, 40, KEYS);
    db.enqueue_committed(&during).await;
    let later = Message::new(topic, b"later".to_vec())
        .with_key("later")
        .delayed_by(Duration::from_secs(120));
    db.enqueue_committed(std::slice::from_ref(&later)).await;
    let sink = Arc::new(OutageSink {
        inner: DatabaseSink::new(db.store.clone()),
        down: AtomicBool::new(true),
    });
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            ..relay_config()
        },
    )
    .unwrap();
    // The first message of each key failed; the others wait behind it.
    wait_for("the first message of every key failed", WAIT, async || {
        let status = db.store.status().await.map_err(|e| e.to_string())?;
        let retrying: i64 = status.topics.iter().map(|t| t.retrying).sum();
        if retrying == KEYS as i64 {
            Ok(())
        } else {
            Err(format!("{retrying} retrying; relay {:?}", relay.stats()))
        }
    })
    .await;

    // The broker is back; the application goes on writing.
    sink.down.store(false, Ordering::SeqCst);
    let fresh = Message::new(topic, b"fresh".to_vec()).with_key("fresh");
    db.enqueue_committed(std::slice::from_ref(&fresh)).await;
    let mut all = during.clone();
    all.push(fresh);
    let log = wait_in_log(&db.store, topic, &all, Duration::from_secs(5)).await;
    wait_pending(
        &db.store,
        1,
        "only the delayed message left",
        WAIT,
        Some(&relay),
    )
    .await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();
    assert!(
        !log.iter().any(|e| e.message.id == later.id),
        "the delayed message went out before its time"
    );
    assert_eq!(log.len(), all.len(), "each message once");
    assert_order_per_key(&log, &during);
    assert_eq!(stats.retried, KEYS as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// insert_statement: a host driver writes the outbox row itself.

fn bind_pg<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    params: &[Value],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(Option::<String>::None),
            Value::Bool(v) => q.bind(v),
            Value::Int(v) => q.bind(v),
            Value::Float(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            Value::Json(v) => q.bind(sqlx::types::Json(v)),
            Value::Uuid(v) => q.bind(v),
            Value::Timestamp(v) => q.bind(v),
        };
    }
    q
}

fn bind_sqlite<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    params: &[Value],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(Option::<String>::None),
            Value::Bool(v) => q.bind(v),
            Value::Int(v) => q.bind(v),
            Value::Float(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            Value::Json(v) => q.bind(v.to_string()),
            Value::Uuid(v) => q.bind(v.to_string()),
            Value::Timestamp(v) => q.bind(v.to_rfc3339()),
        };
    }
    q
}

async fn insert_statement_rows_are_relayed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "driver";
    let keyed = Message::json(topic, &serde_json::json!({"via": "host driver"}))
        .unwrap()
        .with_key("acct-9")
        .with_type("AccountOpened")
        .with_header("source", "billing");
    let keyless = Message::new(topic, vec![0u8, 1, 2, 255]);
    let rolled_back = Message::new(topic, b"never".to_vec()).with_key("acct-9");

    // Other placeholder styles render as documented.
    let percent = db
        .store
        .insert_statement(&keyed, Placeholders::Percent)
        .await
        .unwrap();
    assert!(
        percent.sql.contains("%s") && !percent.sql.contains("$1"),
        "{}",
        percent.sql
    );
    let question = db
        .store
        .insert_statement(&keyed, Placeholders::Question)
        .await
        .unwrap();
    assert!(
        question.sql.contains('?') && !question.sql.contains("%s"),
        "{}",
        question.sql
    );
    // Validation happens first.
    let err = db
        .store
        .insert_statement(
            &Message::new("bad topic", b"x".to_vec()),
            Placeholders::Dollar,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_topic");

    let style = match backend {
        Backend::Postgres => Placeholders::Dollar,
        Backend::Sqlite => Placeholders::Question,
    };
    let insert_order = format!(
        "INSERT INTO {} (id, note) VALUES ({}, 'via driver')",
        db.t("orders"),
        db.ph(1)
    );
    for (m, commit) in [(&keyed, true), (&keyless, true), (&rolled_back, false)] {
        let stmt = db.store.insert_statement(m, style).await.unwrap();
        assert_eq!(stmt.message_id, m.id);
        assert_eq!(stmt.params.len(), 10);
        if backend == Backend::Postgres {
            assert!(stmt.sql.contains("$10"), "{}", stmt.sql);
        }
        match backend {
            Backend::Postgres => {
                let mut tx = db.store.pg_pool().unwrap().begin().await.unwrap();
                sqlx::query(AssertSqlSafe(insert_order.clone()))
                    .bind(m.id.to_string())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                bind_pg(sqlx::query(AssertSqlSafe(stmt.sql.clone())), &stmt.params)
                    .execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("executing {}: {e}", stmt.sql));
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
            }
            Backend::Sqlite => {
                let mut tx = db.store.sqlite_pool().unwrap().begin().await.unwrap();
                sqlx::query(AssertSqlSafe(insert_order.clone()))
                    .bind(m.id.to_string())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                bind_sqlite(sqlx::query(AssertSqlSafe(stmt.sql.clone())), &stmt.params)
                    .execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("executing {}: {e}", stmt.sql));
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
            }
        }
    }
    assert_eq!(db.store.pending_count().await.unwrap(), 2);
    assert_eq!(db.count("orders").await, 2);

    let relay = start_db_relay(&db.store, relay_config());
    let expected = [keyed.clone(), keyless.clone()];
    let log = wait_in_log(&db.store, topic, &expected, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    let by_id: HashMap<Uuid, &Message> = log.iter().map(|e| (e.message.id, &e.message)).collect();
    assert_eq!(by_id[&keyed.id], &keyed);
    assert_eq!(by_id[&keyless.id], &keyless);
    assert!(!by_id.contains_key(&rolled_back.id));
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Delayed delivery and retention.

/// Appends to the log like `DatabaseSink` and records when each message was
/// handed to it.
struct TimingSink {
    inner: DatabaseSink,
    published: Mutex<HashMap<Uuid, chrono::DateTime<chrono::Utc>>>,
}

#[async_trait::async_trait]
impl Sink for TimingSink {
    fn name(&self) -> &str {
        "timing"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        let now = chrono::Utc::now();
        {
            let mut published = self.published.lock().unwrap();
            for m in batch {
                published.entry(m.id).or_insert(now);
            }
        }
        self.inner.publish(batch).await
    }
}

async fn delayed_message_waits_and_holds_back_its_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "reminders";
    let delayed = Message::new(topic, b"later".to_vec())
        .with_key("k")
        .delayed_by(Duration::from_millis(1500));
    let behind = Message::new(topic, b"behind".to_vec()).with_key("k");
    let other = Message::new(topic, b"other".to_vec()).with_key("j");
    assert!(delayed.available_at > delayed.created_at);
    db.enqueue_committed(&[delayed.clone(), behind.clone(), other.clone()])
        .await;
    let sink = Arc::new(TimingSink {
        inner: DatabaseSink::new(db.store.clone()),
        published: Mutex::new(HashMap::new()),
    });
    let relay = Relay::start(db.store.clone(), sink.clone(), relay_config()).unwrap();
    wait_in_log(&db.store, topic, std::slice::from_ref(&other), WAIT).await;
    let observed_at = chrono::Utc::now();
    let in_log = log_ids(&db.store, topic).await;
    if observed_at < delayed.available_at {
        assert!(!in_log.contains(&delayed.id), "delivered before its time");
        assert!(
            !in_log.contains(&behind.id),
            "a later message of the key overtook the delayed one"
        );
    }
    let log = wait_in_log(&db.store, topic, &[delayed.clone(), behind.clone()], WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), 3);
    assert_order_per_key(&log, &[delayed.clone(), behind.clone(), other.clone()]);
    let published = sink.published.lock().unwrap().clone();
    assert!(
        published[&delayed.id] >= delayed.available_at,
        "published at {} before available_at {}",
        published[&delayed.id],
        delayed.available_at
    );
    assert!(published[&behind.id] >= delayed.available_at);
    let entry = log.iter().find(|e| e.message.id == delayed.id).unwrap();
    assert_eq!(entry.message, delayed, "available_at survives the trip");
    db.cleanup().await;
}

async fn retention_keeps_delivered_rows_until_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "kept";
    let msgs = messages(topic, 10, 3);
    db.enqueue_committed(&msgs).await;
    let relay = start_db_relay(
        &db.store,
        RelayConfig {
            retention: Some(Duration::from_secs(3600)),
            ..relay_config()
        },
    );
    wait_in_log(&db.store, topic, &msgs, WAIT).await;
    wait_pending(&db.store, 0, "an empty backlog", WAIT, None).await;
    relay.shutdown().await.unwrap();
    assert_eq!(db.count("outbox").await, 10, "delivered rows are kept");
    assert!(db.store.status().await.unwrap().topics.is_empty());
    assert_eq!(
        db.store
            .purge_sent(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(db.store.purge_sent(Duration::ZERO).await.unwrap(), 10);
    assert_eq!(db.count("outbox").await, 0);
    assert_eq!(
        read_all_log(&db.store, topic).await.len(),
        10,
        "delivered once"
    );
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Sinks that panic, hang or answer short.

/// Misbehaves on its first calls: panics, then returns too few results, then
/// hangs past the publish timeout; afterwards appends to the log.
struct UnrulySink {
    inner: DatabaseSink,
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Sink for UnrulySink {
    fn name(&self) -> &str {
        "unruly"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        match self.calls.fetch_add(1, Ordering::SeqCst) {
            0 => panic!("the sink panics"),
            1 => Vec::new(),
            2 => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Vec::new()
            }
            _ => self.inner.publish(batch).await,
        }
    }
}

dialect_tests!(relay_survives_a_panicking_short_answering_and_hanging_sink);

async fn relay_survives_a_panicking_short_answering_and_hanging_sink(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "unruly";
    let msgs = messages(topic, 30, 5);
    db.enqueue_committed(&msgs).await;
    let sink = Arc::new(UnrulySink {
        inner: DatabaseSink::new(db.store.clone()),
        calls: std::sync::atomic::AtomicU32::new(0),
    });
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            lease_ttl: Duration::from_secs(1),
            publish_timeout: Some(Duration::from_millis(300)),
            ..relay_config()
        },
    )
    .unwrap();
    let log = wait_in_log(&db.store, topic, &msgs, WAIT).await;
    assert!(relay.is_running());
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();
    assert!(sink.calls.load(Ordering::SeqCst) >= 4);
    assert!(stats.retried >= 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(log.len(), msgs.len(), "nothing delivered twice");
    assert_order_per_key(&log, &msgs);
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Batches in flight: a failed report holds back the later messages of its key.

/// Hands batches over at once and reports later: the first attempt of the
/// message with payload `fail-once` fails after `delay`; everything else is
/// acknowledged at once. Records each hand-over, and checks what is still
/// pending when `fail-once` is handed over again.
struct SlowFailSink {
    store: relaybox::Store,
    delay: Duration,
    handed: Mutex<Vec<Uuid>>,
    failed_once: AtomicBool,
    /// Set when the failing report is out.
    reported: Arc<AtomicBool>,
    /// (message handed over, whether the failing report was out by then)
    handed_while: Mutex<Vec<(Uuid, bool)>>,
    /// pending_count() when `fail-once` was handed over the second time.
    pending_at_resend: Mutex<Option<i64>>,
    /// What the relay said it did not record although acknowledged.
    unrecorded: Mutex<Vec<Uuid>>,
}

#[async_trait::async_trait]
impl Sink for SlowFailSink {
    fn name(&self) -> &str {
        "slow-fail-test"
    }

    fn unrecorded(&self, messages: &[&Message]) {
        self.unrecorded
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| m.id));
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        self.send(batch).await.await
    }

    async fn send(&self, batch: &[Message]) -> relaybox::Acks {
        let mut plan = Vec::new();
        for m in batch {
            self.handed.lock().unwrap().push(m.id);
            let reported = self.reported.load(Ordering::SeqCst);
            self.handed_while.lock().unwrap().push((m.id, reported));
            let fail = m.payload == b"fail-once" && !self.failed_once.swap(true, Ordering::SeqCst);
            if m.payload == b"fail-once" && !fail {
                let pending = self.store.pending_count().await.unwrap();
                *self.pending_at_resend.lock().unwrap() = Some(pending);
            }
            plan.push((m.id, fail));
        }
        let delay = self.delay;
        let reported = self.reported.clone();
        Box::pin(async move {
            let mut results = Vec::new();
            for (id, fail) in plan {
                if fail {
                    tokio::time::sleep(delay).await;
                    reported.store(true, Ordering::SeqCst);
                    results.push(Err(Error::Transport {
                        transport: "slow-fail-test".into(),
                        message: "the broker timed out".into(),
                        retryable: true,
                        message_id: Some(id),
                    }));
                } else {
                    results.push(Ok(()));
                }
            }
            results
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_in_flight_holds_back_later_messages_of_its_key() {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "pipelined";
    let first = Message::new(topic, b"fail-once".to_vec()).with_key("k");
    let second = Message::new(topic, b"second".to_vec()).with_key("k");
    db.enqueue_committed(&[first.clone(), second.clone()]).await;
    let sink = Arc::new(SlowFailSink {
        store: db.store.clone(),
        delay: Duration::from_millis(400),
        handed: Mutex::new(Vec::new()),
        failed_once: AtomicBool::new(false),
        reported: Arc::new(AtomicBool::new(false)),
        handed_while: Mutex::new(Vec::new()),
        pending_at_resend: Mutex::new(None),
        unrecorded: Mutex::new(Vec::new()),
    });
    // One message per batch, one batch loop, two batches in flight: the
    // second message is claimed and handed over (and acknowledged at once)
    // while the first one's report is still on its way.
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            batch_size: 1,
            concurrency: 1,
            batches_in_flight: 2,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_millis(400),
            ..relay_config()
        },
    )
    .unwrap();
    wait_pending(&db.store, 0, "both messages delivered", WAIT, None).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();

    let handed = sink.handed.lock().unwrap().clone();
    let handed_while = sink.handed_while.lock().unwrap().clone();
    // Pipelined: the second message went out before the first one's report came back.
    assert_eq!(
        handed_while.first().map(|h| h.0),
        Some(first.id),
        "{handed_while:?}"
    );
    assert_eq!(
        handed_while.get(1),
        Some(&(second.id, false)),
        "{handed_while:?}"
    );
    // The second message was acknowledged, but not recorded as delivered while
    // the first one waited for its retry: both were pending at the resend.
    assert_eq!(*sink.pending_at_resend.lock().unwrap(), Some(2));
    // The sink was told, so that one that can tell a repeat could skip it;
    // this one publishes it again.
    assert_eq!(*sink.unrecorded.lock().unwrap(), vec![second.id]);
    // So it went out again after the first one's successful retry.
    let last = |id: Uuid| handed.iter().rposition(|h| *h == id).unwrap();
    assert!(last(first.id) < last(second.id), "{handed:?}");
    assert_eq!(handed.iter().filter(|h| **h == first.id).count(), 2);
    assert_eq!(handed.iter().filter(|h| **h == second.id).count(), 2);
    // Only the failed report counts as an attempt.
    assert_eq!(stats.retried, 1, "{stats:?}");
    assert_eq!(stats.delivered, 2, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    db.cleanup().await;
}

/// Publishes within `send` (the default): its first batch fails, every
/// later one is written; records the messages written, in order.
struct FirstBatchFailsSink {
    calls: std::sync::atomic::AtomicU32,
    written: Mutex<Vec<Uuid>>,
}

#[async_trait::async_trait]
impl Sink for FirstBatchFailsSink {
    fn name(&self) -> &str {
        "first-batch-fails-test"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return batch
                .iter()
                .map(|m| {
                    Err(Error::Transport {
                        transport: "first-batch-fails-test".into(),
                        message: "the broker is down".into(),
                        retryable: true,
                        message_id: Some(m.id),
                    })
                })
                .collect();
        }
        self.written
            .lock()
            .unwrap()
            .extend(batch.iter().map(|m| m.id));
        batch.iter().map(|_| Ok(())).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_publishing_within_send_writes_each_key_in_order_after_a_failed_batch() {
    // The first batch fails when the sink has already answered: the relay
    // records that failure before it claims the next batch, so the later
    // messages of the key wait for the failed ones instead of being written
    // ahead of them (two batches in flight are allowed).
    let db = TestDb::new(Backend::Postgres).await;
    let msgs: Vec<Message> = (0..12)
        .map(|i| Message::new("sync-sink", format!("{i}").into_bytes()).with_key("k"))
        .collect();
    db.enqueue_committed(&msgs).await;
    let sink = Arc::new(FirstBatchFailsSink {
        calls: std::sync::atomic::AtomicU32::new(0),
        written: Mutex::new(Vec::new()),
    });
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            batch_size: 3,
            concurrency: 1,
            batches_in_flight: 2,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(100),
            ..relay_config()
        },
    )
    .unwrap();
    wait_pending(&db.store, 0, "every message delivered", WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
    let written = sink.written.lock().unwrap().clone();
    let want: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
    assert_eq!(
        written, want,
        "the broker received the key's messages out of order"
    );
    db.cleanup().await;
}

/// Hands batches over at once and acknowledges each after `delay`; the first
/// attempt of the message with payload `fail-once` fails.
struct DelayedAckSink {
    delay: Duration,
    failed_once: AtomicBool,
}

#[async_trait::async_trait]
impl Sink for DelayedAckSink {
    fn name(&self) -> &str {
        "delayed-ack-test"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        self.send(batch).await.await
    }

    async fn send(&self, batch: &[Message]) -> relaybox::Acks {
        let plan: Vec<(Uuid, bool)> = batch
            .iter()
            .map(|m| {
                let fail =
                    m.payload == b"fail-once" && !self.failed_once.swap(true, Ordering::SeqCst);
                (m.id, fail)
            })
            .collect();
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            plan.into_iter()
                .map(|(id, fail)| {
                    if fail {
                        Err(Error::Transport {
                            transport: "delayed-ack-test".into(),
                            message: "the broker timed out".into(),
                            retryable: true,
                            message_id: Some(id),
                        })
                    } else {
                        Ok(())
                    }
                })
                .collect()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_held_back_in_a_busy_pipeline_are_delivered() {
    // Batches are always in flight (two per loop, each acknowledged 30 ms
    // after it was handed over) while a key's first message fails once:
    // the rows held back behind it must still be delivered, in order, and
    // not be held back again by every batch that follows.
    let db = TestDb::new(Backend::Postgres).await;
    let topic = "busy";
    let mut msgs = Vec::new();
    for i in 0..40 {
        for k in 0..4 {
            let payload = if i == 0 && k == 0 {
                b"fail-once".to_vec()
            } else {
                format!("{k}-{i}").into_bytes()
            };
            msgs.push(Message::new(topic, payload).with_key(format!("key-{k}")));
        }
    }
    db.enqueue_committed(&msgs).await;
    let sink = Arc::new(DelayedAckSink {
        delay: Duration::from_millis(30),
        failed_once: AtomicBool::new(false),
    });
    let relay = Relay::start(
        db.store.clone(),
        sink,
        RelayConfig {
            batch_size: 4,
            concurrency: 1,
            batches_in_flight: 2,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..relay_config()
        },
    )
    .unwrap();
    wait_pending(&db.store, 0, "every message delivered", WAIT, Some(&relay)).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();
    assert_eq!(stats.delivered, msgs.len() as u64, "{stats:?}");
    assert_eq!(stats.retried, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    db.cleanup().await;
}

/// Hands batches over at once and acknowledges each after `delay`, counting
/// the batches (and rows) handed over and not yet acknowledged.
#[derive(Default)]
struct OutstandingSink {
    delay: Duration,
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
    rows_out: Arc<std::sync::atomic::AtomicUsize>,
    /// The most batches outstanding at once.
    most: Arc<std::sync::atomic::AtomicUsize>,
    /// The most rows outstanding when another batch was handed over.
    most_rows_behind: Arc<std::sync::atomic::AtomicUsize>,
    /// The largest batch handed over.
    largest: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl Sink for OutstandingSink {
    fn name(&self) -> &str {
        "outstanding-test"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        self.send(batch).await.await
    }

    async fn send(&self, batch: &[Message]) -> relaybox::Acks {
        let now = self.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let behind = self.rows_out.fetch_add(batch.len(), Ordering::SeqCst);
        self.most_rows_behind.fetch_max(behind, Ordering::SeqCst);
        self.largest.fetch_max(batch.len(), Ordering::SeqCst);
        let (n, delay) = (batch.len(), self.delay);
        let (outstanding, rows_out) = (self.outstanding.clone(), self.rows_out.clone());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            outstanding.fetch_sub(1, Ordering::SeqCst);
            rows_out.fetch_sub(n, Ordering::SeqCst);
            (0..n).map(|_| Ok(())).collect()
        })
    }
}

/// What the sink saw of a relay's batches.
struct InFlightSeen {
    /// The most batches outstanding at once.
    most: usize,
    /// The most rows outstanding when another batch was handed over.
    most_rows_behind: usize,
    /// The largest batch.
    largest: usize,
}

/// Relays `n` committed messages with one batch loop allowed two batches in
/// flight; returns what the sink saw.
async fn batches_in_flight(n: usize, batch_size: u32) -> InFlightSeen {
    let db = TestDb::new(Backend::Postgres).await;
    let msgs: Vec<Message> = (0..n)
        .map(|i| Message::new("depth", format!("{i}").into_bytes()).with_key(format!("k{}", i % 7)))
        .collect();
    db.enqueue_committed(&msgs).await;
    let sink = Arc::new(OutstandingSink {
        delay: Duration::from_millis(50),
        ..OutstandingSink::default()
    });
    let relay = Relay::start(
        db.store.clone(),
        sink.clone(),
        RelayConfig {
            batch_size,
            concurrency: 1,
            batches_in_flight: 2,
            ..relay_config()
        },
    )
    .unwrap();
    wait_pending(&db.store, 0, "every message delivered", WAIT, None).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();
    assert_eq!(stats.delivered, n as u64, "{stats:?}");
    db.cleanup().await;
    InFlightSeen {
        most: sink.most.load(Ordering::SeqCst),
        most_rows_behind: sink.most_rows_behind.load(Ordering::SeqCst),
        largest: sink.largest.load(Ordering::SeqCst),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_one_large_batch_at_a_time_and_small_batches_are_pipelined() {
    // The batches grow to 300 rows over the backlog. A claim behind 256 or
    // more locked rows would step over them all, so no batch is handed over
    // while that many are outstanding.
    let backlog = batches_in_flight(2_000, 300).await;
    assert_eq!(backlog.largest, 300, "the batches grew to the largest");
    assert!(
        backlog.most_rows_behind < 256,
        "a batch was claimed behind {} outstanding rows",
        backlog.most_rows_behind
    );
    // Batches of 10 rows are claimed and handed over while earlier ones
    // are acknowledged.
    assert_eq!(batches_in_flight(100, 10).await.most, 2);
}

// ---------------------------------------------------------------------------
// Wake-ups across processes (PostgreSQL).

/// Waits until `relay` holds all 16 partitions of the test schema.
async fn wait_holding_every_partition(relay: &Relay) {
    wait_for("the relay holding every partition", WAIT, async || {
        let stats = relay.stats();
        if stats.partitions_held == 16 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
}

/// A relay on another store handle, as in another process, wakes on the
/// `NOTIFY` that the enqueuing store sends after its commit: the message is
/// delivered long before the relay's next poll (60 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_of_another_store_wakes_on_notify_before_its_poll() {
    let db = TestDb::new(Backend::Postgres).await;
    let other = db.open_store().await;
    let relay = start_db_relay(
        &other,
        RelayConfig {
            poll_interval: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(60),
            ..relay_config()
        },
    );
    wait_holding_every_partition(&relay).await;
    // Past the relay's first claims and their re-checks: from here on, only
    // a wake-up or the poll makes it look again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tx = db.store.begin().await.expect("begin");
    tx.enqueue(Message::new("wake", b"across".to_vec()))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    wait_until_drained(&db.store, Duration::from_secs(20), Some(&relay)).await;
    assert_eq!(relay.stats().delivered, 1);
    relay.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------
// Claims of a steady trickle (PostgreSQL).

/// Commits `n` messages one transaction at a time, each once the previous
/// one was delivered, with a relay of two batch loops started on `relay_store`
/// (the enqueuing store itself, or another handle on the same database, as in
/// another process) and relaying to `sink`; returns the claims the relay ran
/// for them.
async fn claims_of_a_trickle(
    db: &TestDb,
    relay_store: &relaybox::Store,
    sink: Arc<dyn Sink>,
    n: u64,
) -> u64 {
    let relay = Relay::start(
        relay_store.clone(),
        sink,
        RelayConfig {
            concurrency: 2,
            batches_in_flight: 2,
            poll_interval: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(60),
            ..relay_config()
        },
    )
    .expect("relay start");
    wait_holding_every_partition(&relay).await;
    // Past the relay's first claims and their re-checks.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = relay.stats().claims;
    for i in 0..n {
        let tx = db.store.begin().await.expect("begin");
        tx.enqueue(Message::new("trickle", format!("{i}").into_bytes()).with_key(format!("k{i}")))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        wait_for("the message delivered", WAIT, async || {
            let stats = relay.stats();
            if stats.delivered == i + 1 {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        })
        .await;
    }
    let claims = relay.stats().claims - before;
    relay.shutdown().await.expect("shutdown");
    claims
}

/// Each commit wakes both batch loops of the relay, but only the loop whose
/// partitions received the row claims: a trickle costs one claim per
/// message, not one per loop, nor a claim after each batch to find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_costs_one_claim_per_message() {
    const N: u64 = 40;
    let db = TestDb::new(Backend::Postgres).await;
    // The relay's own database log: each batch is moved in one transaction.
    let sink = Arc::new(DatabaseSink::new(db.store.clone()));
    let claims = claims_of_a_trickle(&db, &db.store, sink, N).await;
    assert!(claims <= N + 4, "{claims} claims for {N} messages");
    // A broker: each batch is claimed, handed over, acknowledged, completed.
    let sink = Arc::new(OutstandingSink {
        delay: Duration::from_millis(5),
        ..OutstandingSink::default()
    });
    let claims = claims_of_a_trickle(&db, &db.store, sink.clone(), N).await;
    assert!(claims <= N + 4, "{claims} claims for {N} messages");
    // A relay of another process learns the partitions from the NOTIFY.
    let other = db.open_store().await;
    let claims = claims_of_a_trickle(&db, &other, sink, N).await;
    assert!(claims <= N + 4, "{claims} claims for {N} messages");
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// The claim's plan (PostgreSQL).
// ---------------------------------------------------------------------------

/// The plan PostgreSQL gives `statement` (with `args`, SQL literals) in a
/// transaction begun with the relay's batch settings, made while the
/// outbox is empty: the generic plan a relay's connection keeps from its
/// first claim on.
async fn relay_plan(db: &TestDb, statement: &str, args: &str) -> String {
    let pool = db.store.pg_pool().unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(
        relaybox::store::statements::batch_settings().to_string(),
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("PREPARE relay_plan AS {statement}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    let lines: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE relay_plan({args})")))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_planned_on_an_empty_outbox_read_it_through_its_indexes() {
    // A relay that starts on an empty outbox keeps the plan of its first
    // claim. Planned as a scan of a one-page table, the held-key test would
    // read the whole outbox once per candidate row when a backlog comes.
    // Autovacuum records an emptied outbox as empty.
    let db = TestDb::new(Backend::Postgres).await;
    let p = db.t("");
    let outbox = db.t("outbox");
    db.exec(&format!("VACUUM ANALYZE {outbox}")).await;
    for (name, statement, args) in [
        (
            "claim",
            relaybox::store::statements::claim(&p),
            "'relay-1', 1, 0, 100",
        ),
        (
            "move_to_log",
            relaybox::store::statements::move_to_log(&p),
            "ARRAY[0, 1, 2, 3], 100",
        ),
    ] {
        let plan = relay_plan(&db, &statement, args).await;
        assert!(
            !plan.contains(&format!("Seq Scan on {outbox}")),
            "{name} scans the outbox:\n{plan}"
        );
        assert!(
            plan.contains(&format!("{outbox}_held")),
            "{name} does not probe the held rows' index:\n{plan}"
        );
    }
    db.cleanup().await;
}
