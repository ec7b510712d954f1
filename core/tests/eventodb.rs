//! The EventoDB transport against the in-test EventoDB server of
//! `tests/eventodb_server` (EventoDB's Go server is not served by the Go
//! module proxy): what the relay writes is read back from the server's
//! store, not through relaybox's source; the consumer is driven through
//! `EventoDbSource`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` (`dev/services start postgres && eval
//! "$(dev/services env)"`) for the relaybox store; the tests fail, never
//! skip, without it. Each test runs its own server on a free loopback port.
#![cfg(feature = "eventodb")]

mod common;
mod eventodb_server;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventodb_server::{hash_64, EventoDbServer, StoredMessage};
use relaybox::transport::eventodb::{EventoDbConfig, EventoDbSink, EventoDbSource};
use relaybox::{Consumer, Message, Relay, RelayConfig, Sink, Source, TransportConfig};
use uuid::Uuid;

fn category(what: &str) -> String {
    format!("{what}{:08x}", rand::random::<u32>())
}

fn config(server: &EventoDbServer) -> EventoDbConfig {
    EventoDbConfig::new(server.url(), Some(&server.token))
}

async fn enqueue(db: &TestDb, messages: &[Message]) {
    let tx = db.store.begin().await.expect("begin");
    for m in messages {
        tx.enqueue(m.clone()).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

fn stream(server: &EventoDbServer, name: &str) -> Vec<StoredMessage> {
    server
        .messages()
        .into_iter()
        .filter(|m| m.stream_name == name)
        .collect()
}

#[test]
fn the_test_server_hashes_like_message_db() {
    // `SELECT message_store.hash_64('1')` in Message DB 1.3.1.
    assert_eq!(hash_64("1"), -4266524885998034046);
}

// ---- relay → EventoDB ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writes_streams_with_type_data_metadata_and_order() {
    let server = EventoDbServer::start_new().await;
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("orders");
    let transport = TransportConfig::from_json(serde_json::json!({"eventodb": {
        "url": server.url(), "token": server.token
    }}))
    .unwrap();
    let relay = Relay::start(
        db.store.clone(),
        transport.sink(&db.store).unwrap(),
        relay_config(),
    )
    .expect("relay");
    let mut messages: Vec<Message> = (0..30u32)
        .map(|i| {
            Message::json(&cat, &serde_json::json!({"n": i}))
                .unwrap()
                .with_key(format!("k{}", i % 3))
                .with_type(if i % 2 == 0 {
                    "OrderPlaced"
                } else {
                    "OrderPaid"
                })
                .with_source("evento-it")
                .with_header("correlationStreamName", "workflow-1")
        })
        .collect();
    let keyless = Message::json(&cat, &serde_json::json!({"alone": true}))
        .unwrap()
        .with_type("Listed");
    messages.push(keyless.clone());
    for chunk in messages.chunks(4) {
        enqueue(&db, chunk).await;
    }
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.expect("relay shutdown");

    for k in 0..3 {
        let name = format!("{cat}-k{k}");
        let stored = stream(&server, &name);
        let expected: Vec<&Message> = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(&format!("k{k}")))
            .collect();
        assert_eq!(
            stored.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            expected
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>(),
            "stream {name}: each message once, in outbox order"
        );
        for (i, (s, m)) in stored.iter().zip(&expected).enumerate() {
            assert_eq!(s.position, i as i64);
            assert_eq!(s.message_type, m.event_type);
            assert_eq!(
                s.data,
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()
            );
            assert_eq!(s.metadata["source"], "evento-it");
            assert_eq!(s.metadata["correlationStreamName"], "workflow-1");
            assert_eq!(s.metadata["relaybox"]["key"], format!("k{k}").as_str());
        }
    }
    let alone = stream(&server, &format!("{cat}-{}", keyless.id));
    assert_eq!(alone.len(), 1, "a keyless message gets its id as stream id");
    assert_eq!(server.messages().len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_non_json_and_bad_tokens_are_permanent_and_the_token_never_shows() {
    let server = EventoDbServer::start_new().await;
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("acct");
    let sink = EventoDbSink::new(config(&server)).unwrap();
    let open = Message::json(&cat, &serde_json::json!({"v": 0}))
        .unwrap()
        .with_key("a1")
        .with_type("Opened")
        .with_header("expected_version", "-1");
    let stale = Message::json(&cat, &serde_json::json!({"v": 1}))
        .unwrap()
        .with_key("a1")
        .with_type("Deposited")
        .with_header("expected_version", "-1");
    let raw = Message::new(&cat, b"\x01binary".to_vec())
        .with_key("a2")
        .with_type("Raw");
    let results = sink
        .publish(&[open.clone(), stale.clone(), raw.clone()])
        .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let e = results[1].as_ref().unwrap_err();
    assert!(!e.retryable(), "STREAM_VERSION_CONFLICT is permanent: {e}");
    assert!(e.to_string().contains("STREAM_VERSION_CONFLICT"), "{e}");
    assert_eq!(e.message_id(), Some(stale.id));
    let e = results[2].as_ref().unwrap_err();
    assert!(!e.retryable() && e.to_string().contains("not JSON"), "{e}");

    // A wrong token: permanent, and neither token is shown anywhere.
    let wrong = EventoDbConfig::new(server.url(), Some("ns_dGVzdA_wrongsecret"));
    let shown = format!("{wrong:?}");
    assert!(!shown.contains("wrongsecret"), "{shown}");
    let bad = EventoDbSink::new(wrong).unwrap();
    let results = bad.publish(std::slice::from_ref(&open)).await;
    let e = results[0].as_ref().unwrap_err();
    assert!(!e.retryable(), "{e}");
    assert!(e.to_string().contains("AUTH_REQUIRED"), "{e}");
    assert!(!e.to_string().contains("wrongsecret") && !e.to_string().contains(&server.token));
    assert!(!format!("{sink:?}").contains(&server.token));

    // Through the relay: dead letters, and the stream keeps what was right.
    let cat = category("acct");
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(EventoDbSink::new(config(&server)).unwrap()),
        RelayConfig {
            max_attempts: 2,
            ..relay_config()
        },
    )
    .expect("relay");
    let retopic = |m: &Message| Message {
        id: Uuid::now_v7(),
        topic: cat.clone(),
        ..m.clone()
    };
    let behind = retopic(&open).with_header("expected_version", "0");
    let (open, stale, raw) = (retopic(&open), retopic(&stale), retopic(&raw));
    enqueue(
        &db,
        &[open.clone(), stale.clone(), behind.clone(), raw.clone()],
    )
    .await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.expect("relay shutdown");
    let dead: HashMap<Uuid, String> = db
        .store
        .dead_letters(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.message.id, d.last_error))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead[&stale.id].contains("STREAM_VERSION_CONFLICT"),
        "{dead:?}"
    );
    assert!(dead[&raw.id].contains("not JSON"), "{dead:?}");
    let a1: Vec<_> = stream(&server, &format!("{cat}-a1"))
        .into_iter()
        .map(|m| (m.id, m.position))
        .collect();
    assert_eq!(
        a1,
        vec![(open.id.to_string(), 0), (behind.id.to_string(), 1)]
    );
}

// ---- consumer groups over category.get --------------------------------------

fn member_source(
    db: &TestDb,
    server: &EventoDbServer,
    cat: &str,
    group: &str,
    member: u32,
) -> Arc<EventoDbSource> {
    EventoDbSource::new(config(server).member(member, 2), &db.store, cat, group).expect("source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_by_cardinal_id_without_overlap_and_resume_after_restart() {
    let server = EventoDbServer::start_new().await;
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("ship");
    let group = "shipping";
    let sink = EventoDbSink::new(config(&server)).unwrap();
    let batch = |from: u32, n: u32| -> Vec<Message> {
        (from..from + n)
            .map(|i| {
                Message::json(&cat, &serde_json::json!({"i": i}))
                    .unwrap()
                    .with_key(format!("s{}", i % 10))
                    .with_type("Shipped")
            })
            .collect()
    };
    let first = batch(0, 50);
    for r in sink.publish(&first).await {
        r.expect("write");
    }
    let recorders: Vec<Arc<Recorder>> =
        (0..2).map(|m| Recorder::new(&db).member(m).arc()).collect();
    let consumers: Vec<Consumer> = recorders
        .iter()
        .enumerate()
        .map(|(member, r)| {
            Consumer::start(
                db.store.clone(),
                member_source(&db, &server, &cat, group, member as u32),
                r.clone(),
                consumer_config(group),
            )
            .expect("consumer")
        })
        .collect();
    wait_for("50 messages handled", WAIT, async || {
        let n: usize = recorders.iter().map(|r| r.handled_count()).sum();
        if n >= 50 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in &consumers {
        c.shutdown().await.expect("consumer shutdown");
    }
    let ids: Vec<Uuid> = first.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorders[0], &recorders[1]], &ids).await;
    for (member, r) in recorders.iter().enumerate() {
        let handled = r.handled();
        assert!(!handled.is_empty(), "member {member} got no stream");
        let mut last: HashMap<String, i64> = HashMap::new();
        for m in &handled {
            let key = m.key.clone().unwrap();
            assert_eq!(
                hash_64(&key).unsigned_abs() % 2,
                member as u64,
                "stream {key} went to member {member}"
            );
            let i = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["i"]
                .as_i64()
                .unwrap();
            assert!(
                last.insert(key.clone(), i).is_none_or(|l| l < i),
                "{key} out of order"
            );
        }
    }

    let second = batch(50, 20);
    for r in sink.publish(&second).await {
        r.expect("write");
    }
    let mut fetched = Vec::new();
    for member in 0..2 {
        let source = member_source(&db, &server, &cat, group, member);
        let stored = source
            .stored_position()
            .await
            .unwrap()
            .expect("a stored position");
        let got = source.fetch(1000, Duration::from_secs(2)).await.unwrap();
        assert!(
            got.iter().all(|d| d.ack.offset > stored),
            "member {member} re-read old messages"
        );
        fetched.extend(got.into_iter().map(|d| d.message.id));
    }
    let expected: HashSet<Uuid> = second.iter().map(|m| m.id).collect();
    assert_eq!(fetched.len(), expected.len(), "no overlap after restart");
    assert_eq!(fetched.into_iter().collect::<HashSet<_>>(), expected);
}

// ---- outage ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_ride_out_a_server_outage() {
    let server = EventoDbServer::start_new().await;
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("out");
    let mut cfg = config(&server);
    cfg.request_timeout = Duration::from_secs(1);
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(EventoDbSink::new(cfg.clone()).unwrap()),
        RelayConfig {
            max_attempts: 1000,
            ..relay_config()
        },
    )
    .expect("relay");
    let recorder = Recorder::new(&db).arc();
    let consumer = Consumer::start(
        db.store.clone(),
        EventoDbSource::new(cfg, &db.store, &cat, "outage").unwrap(),
        recorder.clone(),
        consumer_config("outage"),
    )
    .expect("consumer");
    let all: Vec<Message> = (0..40u32)
        .map(|i| {
            Message::json(&cat, &serde_json::json!({"i": i}))
                .unwrap()
                .with_key(format!("k{}", i % 4))
                .with_type("T")
        })
        .collect();
    enqueue(&db, &all[..20]).await;
    wait_for("the first half handled", WAIT, async || {
        let n = recorder.handled_count();
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    server.stop();
    enqueue(&db, &all[20..]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        db.store.pending_count().await.unwrap() > 0,
        "nothing can be delivered while the server is down"
    );
    server.start().await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    wait_for("everything handled", WAIT, async || {
        let n = recorder.handled_count();
        if n >= 40 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    relay.shutdown().await.unwrap();
    consumer.shutdown().await.unwrap();
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    assert_eq!(db.store.dead_letters(10).await.unwrap().len(), 0);
    for k in 0..4 {
        let stored: Vec<String> = stream(&server, &format!("{cat}-k{k}"))
            .into_iter()
            .map(|m| m.id)
            .collect();
        let expected: Vec<String> = all
            .iter()
            .filter(|m| m.key.as_deref() == Some(&format!("k{k}")))
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(stored, expected, "stream k{k} in order, each message once");
    }
}
