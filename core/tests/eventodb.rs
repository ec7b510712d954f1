//! The EventoDB transport against the real EventoDB server (its Go server on
//! its PostgreSQL backend, run by `dev/services start eventodb`): what the
//! relay writes is read back with the server's own `stream.get`, not through
//! relaybox's source; the consumer is driven through `EventoDbSource`.
//!
//! Needs `RELAYBOX_EVENTODB_URL` and `RELAYBOX_EVENTODB_TOKEN` (a namespace
//! token) and `RELAYBOX_TEST_DATABASE_URL` for the relaybox store:
//! `dev/services start postgres eventodb && eval "$(dev/services env)"`. The
//! tests fail, never skip, without them. Every test writes to categories of
//! its own, so they share the server's namespace.
#![cfg(feature = "eventodb")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::transport::eventodb::{check_message, EventoDbConfig, EventoDbSink, EventoDbSource};
use relaybox::{Consumer, Error, Message, Relay, RelayConfig, Sink, Source, TransportConfig};
use serde_json::{json, Value as Json};
use uuid::Uuid;

/// The server of `dev/services`, talked to with plain HTTP.
struct Server {
    url: String,
    token: String,
    http: reqwest::Client,
}

/// One row of `stream.get`: `[id, type, position, globalPosition, data, metadata, time]`.
struct Stored {
    id: Uuid,
    message_type: String,
    position: i64,
    data: Json,
    metadata: Json,
}

impl Server {
    fn from_env() -> Server {
        let var = |name: &str| match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => panic!(
                "{name} is not set: the EventoDB tests run against the real EventoDB server and \
                 are never skipped; start it with `dev/services start postgres eventodb && eval \
                 \"$(dev/services env)\"`"
            ),
        };
        Server {
            url: var("RELAYBOX_EVENTODB_URL"),
            token: var("RELAYBOX_EVENTODB_TOKEN"),
            http: reqwest::Client::new(),
        }
    }

    fn config(&self) -> EventoDbConfig {
        EventoDbConfig::new(&self.url, Some(&self.token))
    }

    /// Calls the RPC API with the namespace token; panics on an error answer.
    async fn rpc(&self, body: Json) -> Json {
        let answer: Json = self
            .http
            .post(format!("{}/rpc", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("POST /rpc")
            .json()
            .await
            .expect("a JSON answer");
        assert!(answer.get("error").is_none(), "{body}: {answer}");
        answer
    }

    /// Every message of stream `name`, in stream order.
    async fn stream(&self, name: &str) -> Vec<Stored> {
        let rows = self
            .rpc(json!(["stream.get", name, {"position": 0, "batchSize": -1}]))
            .await;
        rows.as_array()
            .expect("an array of messages")
            .iter()
            .map(|r| Stored {
                id: r[0].as_str().unwrap().parse().unwrap(),
                message_type: r[1].as_str().unwrap().to_string(),
                position: r[2].as_i64().unwrap(),
                data: r[4].clone(),
                metadata: r[5].clone(),
            })
            .collect()
    }

    async fn stream_ids(&self, name: &str) -> Vec<Uuid> {
        self.stream(name).await.into_iter().map(|s| s.id).collect()
    }
}

fn category(what: &str) -> String {
    format!("{what}{:08x}", rand::random::<u32>())
}

async fn enqueue(db: &TestDb, messages: &[Message]) {
    let tx = db.store.begin().await.expect("begin");
    for m in messages {
        tx.enqueue(m.clone()).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

// ---- relay → EventoDB ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writes_streams_with_type_data_metadata_and_order() {
    let server = Server::from_env();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("orders");
    let transport = TransportConfig::from_json(json!({"eventodb": {
        "url": server.url, "token": server.token
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
            Message::json(&cat, &json!({"n": i}))
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
    let keyless = Message::json(&cat, &json!({"alone": true}))
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
        let stored = server.stream(&name).await;
        let expected: Vec<&Message> = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(&format!("k{k}")))
            .collect();
        assert_eq!(
            stored.iter().map(|s| s.id).collect::<Vec<_>>(),
            expected.iter().map(|m| m.id).collect::<Vec<_>>(),
            "stream {name}: each message once, in outbox order"
        );
        for (i, (s, m)) in stored.iter().zip(&expected).enumerate() {
            assert_eq!(s.position, i as i64);
            assert_eq!(s.message_type, m.event_type);
            assert_eq!(s.data, serde_json::from_slice::<Json>(&m.payload).unwrap());
            assert_eq!(s.metadata["source"], "evento-it");
            assert_eq!(s.metadata["correlationStreamName"], "workflow-1");
            assert_eq!(s.metadata["relaybox"]["key"], format!("k{k}").as_str());
        }
    }
    let alone = server.stream_ids(&format!("{cat}-{}", keyless.id)).await;
    assert_eq!(
        alone,
        vec![keyless.id],
        "a keyless message gets its id as stream id"
    );
    assert!(db.store.dead_letters(10).await.unwrap().is_empty());
    db.cleanup().await;
}

/// A relay that wrote messages and crashed before recording it sends them
/// again: the server refuses the second write of an id it stores (a
/// `BACKEND_ERROR` for the unique id, or a `STREAM_VERSION_CONFLICT` when
/// an expected version is given), and the sink reports them delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_already_stores_counts_as_delivered_when_sent_again() {
    let server = Server::from_env();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("resend");
    let sink = EventoDbSink::new(server.config()).unwrap();
    let of_key = |key: &str, n: u32| {
        Message::json(&cat, &json!({"n": n}))
            .unwrap()
            .with_key(key)
            .with_type("Happened")
    };
    let sent = vec![
        of_key("plain", 0),
        of_key("plain", 1),
        of_key("versioned", 0).with_header("expected_version", "-1"),
        of_key("versioned", 1).with_header("expected_version", "0"),
        Message::json(&cat, &json!({"alone": true}))
            .unwrap()
            .with_type("Happened"),
    ];
    for r in sink.publish(&sent).await {
        r.expect("first write");
    }
    // The same messages again, straight from the sink: each one delivered.
    for (m, r) in sent.iter().zip(sink.publish(&sent).await) {
        r.unwrap_or_else(|e| panic!("second write of {} ({:?}): {e}", m.id, m.key));
    }
    // And through a relay, as after a crash: delivered at the first attempt.
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(EventoDbSink::new(server.config()).unwrap()),
        RelayConfig {
            max_attempts: 1,
            ..relay_config()
        },
    )
    .expect("relay");
    enqueue(&db, &sent).await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.expect("relay shutdown");
    let stats = relay.stats();
    assert!(
        db.store.dead_letters(10).await.unwrap().is_empty(),
        "nothing dead-lettered: {stats:?}"
    );
    assert_eq!(stats.delivered, sent.len() as u64, "{stats:?}");
    for key in ["plain", "versioned"] {
        let expected: Vec<Uuid> = sent
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.id)
            .collect();
        assert_eq!(
            server.stream_ids(&format!("{cat}-{key}")).await,
            expected,
            "stream {key} holds each message once"
        );
    }
    assert_eq!(
        server.stream_ids(&format!("{cat}-{}", sent[4].id)).await,
        vec![sent[4].id]
    );

    // The same id in another stream is not a delivery: refused for good.
    let moved = Message {
        key: Some("elsewhere".into()),
        ..sent[0].clone()
    };
    let e = sink.publish(std::slice::from_ref(&moved)).await.remove(0);
    let e = e.expect_err("an id stored in another stream");
    assert!(!e.retryable(), "{e}");
    assert!(e.to_string().contains("another stream"), "{e}");
    db.cleanup().await;
}

/// What EventoDB refuses for good (no type, data that is not a JSON
/// object, a real version conflict) is a permanent error naming the cause:
/// the relay dead-letters it at its first attempt and moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_eventodb_cannot_store_are_refused_for_good_with_the_reason() {
    let server = Server::from_env();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("acct");
    let open = Message::json(&cat, &json!({"v": 0}))
        .unwrap()
        .with_key("a1")
        .with_type("Opened")
        .with_header("expected_version", "-1");
    let stale = Message::json(&cat, &json!({"v": 1}))
        .unwrap()
        .with_key("a1")
        .with_type("Deposited")
        .with_header("expected_version", "-1");
    let behind = Message::json(&cat, &json!({"v": 2}))
        .unwrap()
        .with_key("a1")
        .with_type("Deposited")
        .with_header("expected_version", "0");
    let untyped = Message::json(&cat, &json!({"v": 3}))
        .unwrap()
        .with_key("a2");
    let array = Message::json(&cat, &json!([1, 2, 3]))
        .unwrap()
        .with_key("a2")
        .with_type("Listed");
    let raw = Message::new(&cat, b"\x01binary".to_vec())
        .with_key("a2")
        .with_type("Raw");
    let fine = Message::json(&cat, &json!({"v": 4}))
        .unwrap()
        .with_key("a2")
        .with_type("Fine");

    // check_message, for whoever enqueues knowing the transport.
    assert!(check_message(&open).is_ok());
    for (m, field, says) in [
        (&untyped, "type", "type"),
        (&array, "payload", "JSON array"),
        (&raw, "payload", "not JSON"),
    ] {
        match check_message(m) {
            Err(e @ Error::InvalidMessage { field: f, .. }) => {
                assert_eq!(f, field, "{e}");
                assert!(e.to_string().contains(says), "{e}");
            }
            other => panic!("expected an invalid {field}, got {other:?}"),
        }
    }

    let relay = Relay::start(
        db.store.clone(),
        Arc::new(EventoDbSink::new(server.config()).unwrap()),
        RelayConfig {
            max_attempts: 1000,
            // Each key goes on past what EventoDB refused.
            park_keys: false,
            ..relay_config()
        },
    )
    .expect("relay");
    enqueue(
        &db,
        &[
            open.clone(),
            stale.clone(),
            behind.clone(),
            untyped.clone(),
            array.clone(),
            raw.clone(),
            fine.clone(),
        ],
    )
    .await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.expect("relay shutdown");
    let dead: HashMap<Uuid, (u32, String)> = db
        .store
        .dead_letters(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.message.id, (d.attempts, d.last_error)))
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    for (m, says) in [
        (&stale, "STREAM_VERSION_CONFLICT"),
        (&untyped, "type"),
        (&array, "JSON array"),
        (&raw, "not JSON"),
    ] {
        let (attempts, error) = &dead[&m.id];
        assert_eq!(*attempts, 1, "dead-lettered at the first attempt: {error}");
        assert!(error.contains(says), "{error}");
    }
    assert_eq!(
        server.stream_ids(&format!("{cat}-a1")).await,
        vec![open.id, behind.id]
    );
    assert_eq!(server.stream_ids(&format!("{cat}-a2")).await, vec![fine.id]);
    db.cleanup().await;
}

/// A token the server refuses is a configuration error of
/// `eventodb.token`, for the sink and the source alike; no token shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_configuration_error_that_never_shows_the_token() {
    let server = Server::from_env();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("auth");
    let message = Message::json(&cat, &json!({"v": 0}))
        .unwrap()
        .with_type("Tried");
    // The namespace's own token shape with another secret; a malformed
    // token; no token at all.
    let prefix: String = server.token.rsplit_once('_').unwrap().0.to_string();
    let wrong_secret = format!("{prefix}_{}", "5ec7e7".repeat(10) + "5ec7");
    for token in [
        Some(wrong_secret.as_str()),
        Some("not-a-token-5ec7e7"),
        None,
    ] {
        let config = EventoDbConfig::new(&server.url, token);
        assert!(!format!("{config:?}").contains("5ec7e7"));
        let sink = EventoDbSink::new(config.clone()).unwrap();
        let e = sink
            .publish(std::slice::from_ref(&message))
            .await
            .remove(0)
            .expect_err("refused");
        match &e {
            Error::InvalidConfig { field, reason } => {
                assert_eq!(field, "eventodb.token", "{e}");
                assert!(reason.contains("AUTH_"), "{e}");
            }
            other => panic!("{token:?}: expected invalid eventodb.token, got {other:?}"),
        }
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("5ec7e7") && !text.contains(&server.token),
            "{text}"
        );

        let source = EventoDbSource::new(config, &db.store, &cat, "auth").unwrap();
        let e = source
            .fetch(10, Duration::from_millis(10))
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "eventodb.token"),
            "{e}"
        );
    }
    assert!(server
        .stream_ids(&format!("{cat}-{}", message.id))
        .await
        .is_empty());
    db.cleanup().await;
}

// ---- consumer groups over category.get --------------------------------------

/// The member of a group of `size` that EventoDB gives stream id `id`:
/// `abs(hash_64(cardinal id)) mod size`, hash_64 being Message DB's.
async fn member_of(db: &TestDb, id: &str, size: i64) -> i64 {
    db.scalar(&format!(
        "SELECT mod(abs(('x' || left(md5('{id}'), 16))::bit(64)::bigint), {size})"
    ))
    .await
}

fn member_source(
    db: &TestDb,
    server: &Server,
    cat: &str,
    group: &str,
    member: u32,
) -> Arc<dyn Source> {
    TransportConfig::from_json(json!({"eventodb": {
        "url": server.url, "token": server.token,
        "consumer_group_member": member, "consumer_group_size": 2
    }}))
    .unwrap()
    .source(&db.store, cat, group)
    .expect("source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_by_cardinal_id_without_overlap_and_resume_after_restart() {
    let server = Server::from_env();
    let db = TestDb::new(Backend::Postgres).await;
    let cat = category("ship");
    let group = "shipping";
    let sink = EventoDbSink::new(server.config()).unwrap();
    let batch = |from: u32, n: u32| -> Vec<Message> {
        (from..from + n)
            .map(|i| {
                Message::json(&cat, &json!({"i": i}))
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
                member_of(&db, &key, 2).await,
                member as i64,
                "stream {key} went to member {member}"
            );
            let i = serde_json::from_slice::<Json>(&m.payload).unwrap()["i"]
                .as_i64()
                .unwrap();
            assert!(
                last.insert(key.clone(), i).is_none_or(|l| l < i),
                "{key} out of order"
            );
        }
    }

    // Restarted members go on from their stored positions.
    let second = batch(50, 20);
    for r in sink.publish(&second).await {
        r.expect("write");
    }
    let mut fetched = Vec::new();
    for member in 0..2 {
        let source =
            EventoDbSource::new(server.config().member(member, 2), &db.store, &cat, group).unwrap();
        let stored = source
            .stored_position()
            .await
            .unwrap()
            .expect("a stored position");
        let got = source
            .fetch(1000, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(
            got.iter().all(|d| d.ack.offset > stored),
            "member {member} re-read old messages"
        );
        fetched.extend(got.into_iter().map(|d| d.message.id));
    }
    let expected: HashSet<Uuid> = second.iter().map(|m| m.id).collect();
    assert_eq!(fetched.len(), expected.len(), "no overlap after restart");
    assert_eq!(fetched.into_iter().collect::<HashSet<_>>(), expected);
    db.cleanup().await;
}
