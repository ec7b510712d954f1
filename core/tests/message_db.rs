//! The Message DB transport against the real Message DB functions in a real
//! PostgreSQL: what the relay writes is read back with Message DB's own
//! `get_stream_messages` over a plain SQL connection, and the consumer is
//! driven through `MessageDbSource`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_MESSAGE_DB_URL`
//! (`dev/services start postgres messagedb && eval "$(dev/services env)"`);
//! the tests fail, never skip, without them. Every test writes to its own
//! categories and uses its own table prefix, so they run in parallel.
#![cfg(feature = "message-db")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::sqlx::{self, Connection as _, PgConnection, Row as _};
use relaybox::transport::message_db::{MessageDbConfig, MessageDbSink, MessageDbSource};
use relaybox::{Consumer, Message, Relay, RelayConfig, Sink, Source, TransportConfig};
use uuid::Uuid;

/// The Message DB URL; fails the test loudly when it is not set.
fn mdb_url() -> String {
    match std::env::var("RELAYBOX_MESSAGE_DB_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "RELAYBOX_MESSAGE_DB_URL is not set: the Message DB tests run against the real \
             Message DB functions and are never skipped. Install and export it with \
             `dev/services start postgres messagedb && eval \"$(dev/services env)\"`"
        ),
    }
}

/// A category no other test uses (letters and digits only).
fn category(what: &str) -> String {
    format!("{what}{:08x}", rand::random::<u32>())
}

/// A plain connection to Message DB, the third-party reader of these tests,
/// with the `search_path` Message DB's functions expect.
async fn mdb() -> PgConnection {
    let mut conn = PgConnection::connect(&mdb_url())
        .await
        .expect("connect to Message DB");
    sqlx::query("SET search_path TO message_store, public")
        .execute(&mut conn)
        .await
        .expect("set search_path");
    conn
}

/// One message as `get_stream_messages` returns it.
#[derive(Debug)]
struct Stored {
    id: Uuid,
    stream_name: String,
    message_type: String,
    position: i64,
    global_position: i64,
    data: serde_json::Value,
    metadata: serde_json::Value,
}

/// Every message of `stream`, in stream order, read with `get_stream_messages`.
async fn stream_messages(conn: &mut PgConnection, stream: &str) -> Vec<Stored> {
    sqlx::query(
        "SELECT id, stream_name, type, position, global_position, data, metadata \
         FROM message_store.get_stream_messages($1, 0, -1)",
    )
    .bind(stream)
    .fetch_all(conn)
    .await
    .expect("get_stream_messages")
    .into_iter()
    .map(|r| Stored {
        id: r.get::<String, _>("id").parse().unwrap(),
        stream_name: r.get("stream_name"),
        message_type: r.get("type"),
        position: r.get("position"),
        global_position: r.get("global_position"),
        data: serde_json::from_str(&r.get::<String, _>("data")).unwrap(),
        metadata: r
            .get::<Option<String>, _>("metadata")
            .map_or(serde_json::Value::Null, |m| {
                serde_json::from_str(&m).unwrap()
            }),
    })
    .collect()
}

fn transport(url: &str) -> TransportConfig {
    TransportConfig::from_json(serde_json::json!({"message_db": {"url": url}}))
        .expect("message_db transport")
}

async fn enqueue(db: &TestDb, messages: &[Message]) {
    let tx = db.store.begin().await.expect("begin");
    for m in messages {
        tx.enqueue(m.clone()).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

// ---- relay → Message DB, read back with get_stream_messages -----------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writes_streams_readable_with_get_stream_messages() {
    let url = mdb_url();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("orders");
    let relay = Relay::start(
        db.store.clone(),
        transport(&url).sink(&db.store).unwrap(),
        relay_config(),
    )
    .expect("relay");

    let mut messages: Vec<Message> = (0..40u32)
        .map(|i| {
            Message::json(
                &cat,
                &serde_json::json!({"n": i, "note": "a \"quoted\" note"}),
            )
            .unwrap()
            .with_key(format!("k{}", i % 4))
            .with_type(if i % 2 == 0 {
                "OrderPlaced"
            } else {
                "OrderPaid"
            })
            .with_source("mdb-it")
            .with_header(
                "traceparent",
                format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
            )
            .with_header("correlationStreamName", "workflow-7")
        })
        .collect();
    let keyless = Message::json(&cat, &serde_json::json!([1, 2, 3]))
        .unwrap()
        .with_type("Listed");
    messages.push(keyless.clone());
    for chunk in messages.chunks(7) {
        enqueue(&db, chunk).await;
    }
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.expect("relay shutdown");

    let mut conn = mdb().await;
    let mut global_positions = Vec::new();
    for k in 0..4 {
        let stream = format!("{cat}-k{k}");
        let stored = stream_messages(&mut conn, &stream).await;
        let expected: Vec<&Message> = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(&format!("k{k}")))
            .collect();
        assert_eq!(
            stored.iter().map(|s| s.id).collect::<Vec<_>>(),
            expected.iter().map(|m| m.id).collect::<Vec<_>>(),
            "stream {stream} holds its messages once each, in outbox order"
        );
        for (i, (s, m)) in stored.iter().zip(&expected).enumerate() {
            assert_eq!(s.stream_name, stream);
            assert_eq!(s.position, i as i64);
            assert_eq!(s.message_type, m.event_type);
            let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(s.data, payload);
            assert_eq!(s.metadata["traceparent"], m.headers["traceparent"].as_str());
            assert_eq!(s.metadata["source"], "mdb-it");
            assert_eq!(s.metadata["correlationStreamName"], "workflow-7");
            assert_eq!(s.metadata["relaybox"]["key"], format!("k{k}").as_str());
            assert_eq!(s.metadata["relaybox"]["contentType"], "application/json");
            global_positions.push(s.global_position);
        }
    }
    let keyless_stream = format!("{cat}-{}", keyless.id);
    let stored = stream_messages(&mut conn, &keyless_stream).await;
    assert_eq!(
        stored.len(),
        1,
        "a keyless message gets its id as stream id"
    );
    assert_eq!(stored[0].id, keyless.id);
    assert_eq!(stored[0].data, serde_json::json!([1, 2, 3]));
    assert_eq!(
        stored[0].metadata["relaybox"]["key"],
        serde_json::Value::Null
    );
    let unique: HashSet<_> = global_positions.iter().collect();
    assert_eq!(unique.len(), 40);

    // A redelivery of a message already written counts as delivered and
    // writes nothing.
    let sink = MessageDbSink::new(MessageDbConfig::new(&url), &db.store).unwrap();
    let again = sink.publish(&messages[..3]).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(
        stream_messages(&mut conn, &format!("{cat}-k0")).await.len(),
        10
    );
}

// ---- permanent errors: expected version, non-JSON payloads -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_conflicts_and_non_json_payloads_are_permanent_and_dead_letter() {
    let url = mdb_url();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("acct");
    let sink = MessageDbSink::new(MessageDbConfig::new(&url), &db.store).unwrap();

    // Straight through the sink: the error is permanent and names the message.
    let first = Message::json(&cat, &serde_json::json!({"v": 0}))
        .unwrap()
        .with_key("a1")
        .with_type("Opened")
        .with_header("expected_version", "-1");
    let stale = Message::json(&cat, &serde_json::json!({"v": 1}))
        .unwrap()
        .with_key("a1")
        .with_type("Deposited")
        .with_header("expected_version", "-1");
    let behind = Message::json(&cat, &serde_json::json!({"v": 2}))
        .unwrap()
        .with_key("a1")
        .with_type("Deposited")
        .with_header("expected_version", "0");
    let raw = Message::new(&cat, b"\x00not json".to_vec()).with_key("a2");
    let results = sink
        .publish(&[first.clone(), stale.clone(), behind.clone(), raw.clone()])
        .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let e = results[1].as_ref().unwrap_err();
    assert!(!e.retryable(), "a version conflict is permanent: {e}");
    assert_eq!(e.message_id(), Some(stale.id));
    assert!(e.to_string().contains("version conflict"), "{e}");
    let e = results[2].as_ref().unwrap_err();
    assert!(
        e.retryable(),
        "a message behind a failed one of its key is held, not lost: {e}"
    );
    let e = results[3].as_ref().unwrap_err();
    assert!(!e.retryable());
    assert!(e.to_string().contains("not JSON"), "{e}");

    // Through the relay: the conflicting and the non-JSON message are
    // dead-lettered, the message behind the conflict is written after it.
    let cat = category("acct");
    let relay = Relay::start(
        db.store.clone(),
        transport(&url).sink(&db.store).unwrap(),
        RelayConfig {
            max_attempts: 2,
            // The message behind the conflict goes on without it.
            park_keys: false,
            ..relay_config()
        },
    )
    .expect("relay");
    let with_cat = |m: &Message| Message {
        id: Uuid::now_v7(),
        topic: cat.clone(),
        ..m.clone()
    };
    let (first, stale, behind, raw) = (
        with_cat(&first),
        with_cat(&stale),
        with_cat(&behind),
        with_cat(&raw),
    );
    enqueue(
        &db,
        &[first.clone(), stale.clone(), behind.clone(), raw.clone()],
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
    assert!(dead[&stale.id].contains("version conflict"), "{dead:?}");
    assert!(dead[&raw.id].contains("not JSON"), "{dead:?}");
    let mut conn = mdb().await;
    let stored = stream_messages(&mut conn, &format!("{cat}-a1")).await;
    assert_eq!(
        stored
            .iter()
            .map(|s| (s.id, s.position))
            .collect::<Vec<_>>(),
        vec![(first.id, 0), (behind.id, 1)]
    );
    assert!(stream_messages(&mut conn, &format!("{cat}-a2"))
        .await
        .is_empty());
}

// ---- consumer groups over get_category_messages -------------------------------

/// The member of a group of `size` that Message DB assigns `stream`'s cardinal id.
async fn mdb_member(conn: &mut PgConnection, key: &str, size: i64) -> i64 {
    sqlx::query_scalar("SELECT @message_store.hash_64($1) % $2")
        .bind(key)
        .bind(size)
        .fetch_one(conn)
        .await
        .expect("hash_64")
}

fn member_source(
    db: &TestDb,
    url: &str,
    cat: &str,
    group: &str,
    member: u32,
) -> Arc<MessageDbSource> {
    MessageDbSource::new(
        MessageDbConfig::new(url).member(member, 2),
        &db.store,
        cat,
        group,
    )
    .expect("message db source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_by_hash_64_without_overlap_and_resume_after_restart() {
    let url = mdb_url();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("ship");
    let group = format!("g{:06x}", rand::random::<u32>() & 0xff_ffff);
    let sink = MessageDbSink::new(MessageDbConfig::new(&url), &db.store).unwrap();
    let batch = |from: u32, n: u32| -> Vec<Message> {
        (from..from + n)
            .map(|i| {
                Message::json(&cat, &serde_json::json!({"i": i}))
                    .unwrap()
                    .with_key(format!("s{}", i % 12))
                    .with_type("Shipped")
            })
            .collect()
    };
    let first = batch(0, 60);
    for r in sink.publish(&first).await {
        r.expect("write");
    }

    let run = |recorders: Vec<Arc<Recorder>>| {
        recorders
            .iter()
            .enumerate()
            .map(|(member, r)| {
                Consumer::start(
                    db.store.clone(),
                    member_source(&db, &url, &cat, &group, member as u32),
                    r.clone(),
                    consumer_config(&group),
                )
                .expect("consumer")
            })
            .collect::<Vec<_>>()
    };
    let recorders: Vec<Arc<Recorder>> =
        (0..2).map(|m| Recorder::new(&db).member(m).arc()).collect();
    let consumers = run(recorders.clone());
    wait_for("60 messages handled", WAIT, async || {
        let n: usize = recorders.iter().map(|r| r.handled_count()).sum();
        if n >= 60 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    // Let positions reach the store, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in &consumers {
        c.shutdown().await.expect("consumer shutdown");
    }

    let ids: Vec<Uuid> = first.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorders[0], &recorders[1]], &ids).await;
    let mut conn = mdb().await;
    for (member, r) in recorders.iter().enumerate() {
        let handled = r.handled();
        assert!(!handled.is_empty(), "member {member} got no stream");
        let mut last_per_stream: HashMap<String, i64> = HashMap::new();
        for m in &handled {
            let key = m.key.clone().expect("key");
            assert_eq!(
                mdb_member(&mut conn, &key, 2).await,
                member as i64,
                "stream {key} handled by member {member}, not the one Message DB assigns"
            );
            let i = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["i"]
                .as_i64()
                .unwrap();
            let last = last_per_stream.insert(key.clone(), i);
            assert!(last.is_none_or(|l| l < i), "stream {key} out of order");
        }
    }

    // Restart: each member resumes after its stored position.
    let second = batch(60, 24);
    for r in sink.publish(&second).await {
        r.expect("write");
    }
    let mut fetched = Vec::new();
    for member in 0..2 {
        let source = member_source(&db, &url, &cat, &group, member);
        let stored = source.stored_position().await.unwrap();
        assert!(stored.is_some(), "member {member} stored no position");
        let got = source.fetch(1000, Duration::from_secs(2)).await.unwrap();
        assert!(
            got.iter().all(|d| d.ack.offset > stored.unwrap()),
            "member {member} re-read messages before its stored position"
        );
        fetched.extend(got.into_iter().map(|d| d.message.id));
    }
    let expected: HashSet<Uuid> = second.iter().map(|m| m.id).collect();
    assert_eq!(fetched.len(), expected.len(), "no overlap after restart");
    assert_eq!(fetched.into_iter().collect::<HashSet<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_messages_written_by_other_message_db_clients() {
    let url = mdb_url();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("ext");
    let mut conn = mdb().await;
    let id = Uuid::now_v7();
    sqlx::query("SELECT message_store.write_message($1, $2, 'Renamed', $3::jsonb, $4::jsonb)")
        .bind(id.to_string())
        .bind(format!("{cat}-42+retry"))
        .bind(r#"{"name":"x"}"#)
        .bind(r#"{"correlationStreamName":"wf-1","attempt":2}"#)
        .execute(&mut conn)
        .await
        .expect("write_message");
    let source = MessageDbSource::new(MessageDbConfig::new(&url), &db.store, &cat, "ext").unwrap();
    let got = source.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(m.id, id);
    assert_eq!(m.topic, cat);
    assert_eq!(m.key.as_deref(), Some("42+retry"));
    assert_eq!(m.event_type, "Renamed");
    assert_eq!(m.payload, br#"{"name":"x"}"#);
    assert_eq!(m.headers["correlationStreamName"], "wf-1");
    assert_eq!(m.headers["attempt"], "2");
    // Nothing more after it, and the acknowledged position is stored.
    source.ack(&[got[0].ack]).await.unwrap();
    assert_eq!(
        source.stored_position().await.unwrap(),
        Some(got[0].ack.offset)
    );
    assert!(source
        .fetch(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_url_the_store_database_is_used_and_must_be_postgres() {
    let sqlite = TestDb::new(Backend::Sqlite).await;
    let e = MessageDbSink::new(MessageDbConfig::default(), &sqlite.store).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("message_db.url"), "{e}");
    let e = TransportConfig::from_json(
        serde_json::json!({"message_db": {"url": "mysql://u:s3cret@h/d"}}),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("message_db.url") && !e.to_string().contains("s3cret"),
        "{e}"
    );

    // A PostgreSQL store without Message DB installed: writes fail, naming
    // the missing `message_store` schema.
    let pg = TestDb::new(Backend::Postgres).await;
    let sink = MessageDbSink::new(MessageDbConfig::default(), &pg.store).unwrap();
    let m = Message::json(category("nomdb"), &1).unwrap();
    let results = sink.publish(std::slice::from_ref(&m)).await;
    let e = results[0].as_ref().unwrap_err();
    assert!(e.to_string().contains("message_store"), "{e}");
    assert_eq!(e.message_id(), Some(m.id));
}
