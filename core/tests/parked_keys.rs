//! Keys parked behind a dead letter: after the relay dead-letters a message
//! with a key, the key's later messages wait (other keys and messages
//! without a key flow) until the dead letter is retried, which delivers it
//! first, or purged; `relaybox status` lists the parked key; with
//! `park_keys` off the key goes on without it.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use relaybox::{DatabaseSink, DeadLetterFilter, Error, Message, Relay, RelayConfig, Sink};
use uuid::Uuid;

dialect_tests!(
    parked_key_waits_until_its_dead_letter_is_retried_then_goes_first,
    parked_key_resumes_without_the_purged_dead_letter,
    key_goes_on_when_parking_is_off,
    dead_letter_without_a_stored_position_goes_back_at_the_end,
    status_lists_the_first_100_parked_keys_and_counts_them_all,
);

/// A sink that refuses for good every message whose payload is `poison`
/// (and, per the Sink contract, holds back the later messages of its key in
/// the batch) until `accept` is set; it appends the rest to the log table.
struct RefusingPoison {
    inner: DatabaseSink,
    accept: AtomicBool,
}

impl RefusingPoison {
    fn new(store: &relaybox::Store) -> Arc<RefusingPoison> {
        Arc::new(RefusingPoison {
            inner: DatabaseSink::new(store.clone()),
            accept: AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl Sink for RefusingPoison {
    fn name(&self) -> &str {
        "refusing-poison"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        let accept = self.accept.load(Ordering::SeqCst);
        let fail = |m: &Message, why: &str, retryable: bool| Error::Transport {
            transport: "refusing-poison".into(),
            message: why.into(),
            retryable,
            message_id: Some(m.id),
        };
        let mut failed_keys: Vec<Option<String>> = Vec::new();
        let mut results: Vec<Option<relaybox::Result<()>>> = Vec::new();
        let mut passed = Vec::new();
        for m in batch {
            if m.key.is_some() && failed_keys.contains(&m.key) {
                results.push(Some(Err(fail(m, "held behind its key", true))));
            } else if m.payload == b"poison" && !accept {
                failed_keys.push(m.key.clone());
                results.push(Some(Err(fail(m, "poison refused for good", false))));
            } else {
                passed.push(m.clone());
                results.push(None);
            }
        }
        let mut inner = self.inner.publish(&passed).await.into_iter();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| inner.next().expect("one result per message")))
            .collect()
    }
}

const TOPIC: &str = "parked";

fn keyed(key: &str, payload: &str) -> Message {
    Message::new(TOPIC, payload.as_bytes().to_vec()).with_key(key)
}

/// The parked key's stream (`before`, the poison, two later ones) between
/// messages of other keys, and a poison without a key followed by another
/// message without a key.
struct Scene {
    before: Message,
    poison: Message,
    later: Vec<Message>,
    keyless_poison: Message,
    keyless: Message,
    others: Vec<Message>,
    enqueued: Vec<Message>,
}

impl Scene {
    fn new() -> Scene {
        let before = keyed("p", "before");
        let poison = keyed("p", "poison");
        let later = vec![keyed("p", "later-1"), keyed("p", "later-2")];
        let keyless_poison = Message::new(TOPIC, b"poison".to_vec());
        let keyless = Message::new(TOPIC, b"no key".to_vec());
        let others = messages(TOPIC, 20, 4);
        let mut enqueued = vec![before.clone(), poison.clone(), later[0].clone()];
        enqueued.extend_from_slice(&others[..10]);
        enqueued.extend([keyless_poison.clone(), keyless.clone(), later[1].clone()]);
        enqueued.extend_from_slice(&others[10..]);
        Scene {
            before,
            poison,
            later,
            keyless_poison,
            keyless,
            others,
            enqueued,
        }
    }

    /// What flows while the key is parked.
    fn flowing(&self) -> Vec<Message> {
        let mut flowing = vec![self.before.clone(), self.keyless.clone()];
        flowing.extend_from_slice(&self.others);
        flowing
    }
}

fn config(park_keys: bool) -> RelayConfig {
    RelayConfig {
        max_attempts: 3,
        park_keys,
        ..relay_config()
    }
}

/// Runs the scene through a relay over `sink` until both poisons are
/// dead-lettered and everything else that flows is in the log.
async fn park(db: &TestDb, scene: &Scene, sink: Arc<RefusingPoison>) -> Relay {
    db.enqueue_committed(&scene.enqueued).await;
    let relay = Relay::start(db.store.clone(), sink, config(true)).unwrap();
    wait_in_log(&db.store, TOPIC, &scene.flowing(), WAIT).await;
    wait_for("both poisons dead-lettered", WAIT, async || {
        let dead = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
        if dead.len() == 2 {
            Ok(())
        } else {
            Err(format!("{dead:?}; relay {:?}", relay.stats()))
        }
    })
    .await;
    relay
}

/// Enqueues a message of another key and one more of the parked key, waits
/// until the first is delivered (the relay claimed after the dead letter),
/// and asserts that no message of the parked key behind the poison was.
async fn assert_parked(db: &TestDb, scene: &Scene, more: &Message) {
    let fresh = keyed("fresh", "after the dead letter");
    db.enqueue_committed(&[more.clone(), fresh.clone()]).await;
    let log = wait_in_log(&db.store, TOPIC, std::slice::from_ref(&fresh), WAIT).await;
    for m in scene.later.iter().chain([more]) {
        assert!(
            !log.iter().any(|e| e.message.id == m.id),
            "{} of the parked key went out",
            String::from_utf8_lossy(&m.payload)
        );
    }
    assert!(!log.iter().any(|e| e.message.id == scene.poison.id));
    // The fresh message's outbox row goes a moment after its log entry (on
    // SQLite in a transaction of its own): what stays is the parked key's.
    wait_pending(
        &db.store,
        scene.later.len() as i64 + 1,
        "the parked key waits",
        WAIT,
        None,
    )
    .await;

    let status = db.store.status().await.unwrap();
    assert_eq!(status.parked_keys_total, 1, "{:?}", status.parked_keys);
    let parked = &status.parked_keys[0];
    assert_eq!(parked.topic, TOPIC);
    assert_eq!(parked.key, "p");
    assert_eq!(parked.dead_letter_id, scene.poison.id);
    let dead = db.store.dead_letters(10).await.unwrap();
    let letter = dead
        .iter()
        .find(|d| d.message.id == scene.poison.id)
        .unwrap();
    assert_eq!(letter.origin, "relay");
    assert_eq!(parked.since, letter.failed_at);
    assert!(
        dead.iter().any(|d| d.message.id == scene.keyless_poison.id),
        "the poison without a key is dead-lettered too, and parks nothing"
    );
}

/// The payloads of the parked key's messages in the log, in log order.
async fn stream_of_p(db: &TestDb) -> Vec<String> {
    read_all_log(&db.store, TOPIC)
        .await
        .iter()
        .filter(|e| e.message.key.as_deref() == Some("p"))
        .map(|e| String::from_utf8_lossy(&e.message.payload).into_owned())
        .collect()
}

async fn parked_key_waits_until_its_dead_letter_is_retried_then_goes_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    let scene = Scene::new();
    let sink = RefusingPoison::new(&db.store);
    let relay = park(&db, &scene, sink.clone()).await;
    let more = keyed("p", "later-3");
    assert_parked(&db, &scene, &more).await;

    // Retried (and accepted now): the poison goes out first, then the rest
    // of its key, in order; the key is no longer parked.
    sink.accept.store(true, Ordering::SeqCst);
    let moved = db
        .store
        .retry_dead_letters(&DeadLetterFilter::Ids(vec![scene.poison.id]))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        stream_of_p(&db).await,
        ["before", "poison", "later-1", "later-2", "later-3"],
        "the key's messages in the log, once each"
    );
    let status = db.store.status().await.unwrap();
    assert_eq!(status.parked_keys_total, 0);
    assert!(status.parked_keys.is_empty());
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "the keyless poison stays: {dead:?}");
    db.cleanup().await;
}

async fn parked_key_resumes_without_the_purged_dead_letter(backend: Backend) {
    let db = TestDb::new(backend).await;
    let scene = Scene::new();
    let relay = park(&db, &scene, RefusingPoison::new(&db.store)).await;
    relay.shutdown().await.unwrap();

    // A relay into the store's own log (on PostgreSQL it moves rows in one
    // statement) keeps the key parked too.
    let relay = start_db_relay(&db.store, relay_config());
    let more = keyed("p", "later-3");
    assert_parked(&db, &scene, &more).await;

    let purged = db
        .store
        .purge_dead_letters(&DeadLetterFilter::Ids(vec![scene.poison.id]))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
    let log = read_all_log(&db.store, TOPIC).await;
    assert!(!log.iter().any(|e| e.message.id == scene.poison.id));
    let mut expected: Vec<Message> = scene
        .enqueued
        .iter()
        .filter(|m| m.payload != b"poison")
        .cloned()
        .collect();
    expected.push(more);
    assert_order_per_key(&log, &expected);
    assert_eq!(db.store.status().await.unwrap().parked_keys_total, 0);
    db.cleanup().await;
}

async fn key_goes_on_when_parking_is_off(backend: Backend) {
    let db = TestDb::new(backend).await;
    let scene = Scene::new();
    db.enqueue_committed(&scene.enqueued).await;
    let relay = Relay::start(
        db.store.clone(),
        RefusingPoison::new(&db.store),
        config(false),
    )
    .unwrap();
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
    let log = read_all_log(&db.store, TOPIC).await;
    let expected: Vec<Message> = scene
        .enqueued
        .iter()
        .filter(|m| m.payload != b"poison")
        .cloned()
        .collect();
    assert_order_per_key(&log, &expected);
    assert_eq!(log.len(), expected.len());
    assert_eq!(db.store.dead_letters(10).await.unwrap().len(), 2);
    // The status still names the key: a relay that parks keys would hold it.
    let status = db.store.status().await.unwrap();
    assert_eq!(status.parked_keys_total, 1);
    assert_eq!(status.parked_keys[0].dead_letter_id, scene.poison.id);
    db.cleanup().await;
}

/// A relay's dead letter without a stored outbox position (one written
/// before schema version 4) goes back at the end of the outbox, after its
/// key's later messages, as before.
async fn dead_letter_without_a_stored_position_goes_back_at_the_end(backend: Backend) {
    let db = TestDb::new(backend).await;
    let scene = Scene::new();
    let sink = RefusingPoison::new(&db.store);
    let relay = park(&db, &scene, sink.clone()).await;
    db.exec(&match backend {
        Backend::Postgres => format!("UPDATE {} SET seq = NULL", db.t("dead_letters")),
        Backend::Sqlite => format!("DELETE FROM {}", db.t("dead_letter_seqs")),
    })
    .await;
    sink.accept.store(true, Ordering::SeqCst);
    let moved = db
        .store
        .retry_dead_letters(&DeadLetterFilter::Ids(vec![scene.poison.id]))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        stream_of_p(&db).await,
        ["before", "later-1", "later-2", "poison"],
        "the key's messages in the log, once each"
    );
    db.cleanup().await;
}

/// The status lists at most 100 parked keys, longest parked first, one per
/// key however many dead letters it has, and counts them all; consumers'
/// dead letters and the relay's of messages without a key park nothing.
async fn status_lists_the_first_100_parked_keys_and_counts_them_all(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = Uuid::now_v7();
    // (id, origin, key, seconds ago); key k-000 is the longest parked, by two dead letters.
    let mut letters: Vec<(Uuid, &str, Option<String>, i64)> = vec![
        (first, "relay", Some("k-000".into()), 500),
        (Uuid::now_v7(), "relay", Some("k-000".into()), 10),
        (
            Uuid::now_v7(),
            "consumer:g",
            Some("by-consumer".into()),
            900,
        ),
        (Uuid::now_v7(), "relay", None, 900),
    ];
    for i in 1..=104 {
        letters.push((Uuid::now_v7(), "relay", Some(format!("k-{i:03}")), 400 - i));
    }
    let values: Vec<String> = letters
        .iter()
        .map(|(id, origin, key, ago)| {
            let key = key.as_ref().map_or("NULL".to_string(), |k| format!("'{k}'"));
            let (payload, failed_at) = match backend {
                Backend::Postgres => (
                    "'\\x00'::bytea".to_string(),
                    format!("now() - interval '{ago} seconds'"),
                ),
                Backend::Sqlite => (
                    "x'00'".to_string(),
                    format!("(CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER) - {ago} * 1000000)"),
                ),
            };
            format!(
                "('{id}', '{origin}', '{TOPIC}', {key}, 3, 'T', {payload}, 'text/plain', '{{}}', {failed_at}, 1, 'e', {failed_at})"
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO {} (id, origin, topic, key, partition, type, payload, content_type, headers, created_at, attempts, last_error, failed_at) VALUES {}",
        db.t("dead_letters"),
        values.join(", ")
    ))
    .await;
    let status = db.store.status().await.unwrap();
    assert_eq!(status.dead_letters, letters.len() as i64);
    assert_eq!(status.parked_keys_total, 105, "k-000 to k-104");
    assert_eq!(status.parked_keys.len(), 100);
    let keys: Vec<&str> = status.parked_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys[0], "k-000");
    assert_eq!(status.parked_keys[0].dead_letter_id, first);
    assert_eq!(keys[1], "k-001", "then by time: {keys:?}");
    assert_eq!(keys[99], "k-099", "{keys:?}");
    assert!(status
        .parked_keys
        .iter()
        .all(|k| k.partition == 3 && k.topic == TOPIC));
    db.cleanup().await;
}
