//! The RabbitMQ transport against a real RabbitMQ node and PostgreSQL: what
//! the relay publishes is read back with lapin's raw `basic.get` (not with
//! relaybox's source), and the consumer is driven through `RabbitMqSource`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_RABBITMQ_URL`
//! (`dev/services start postgres rabbitmq && eval "$(dev/services env)"`);
//! the tests fail, never skip, without them. Every test uses its own
//! exchange, queues and table prefix, so they run in parallel.
#![cfg(feature = "rabbitmq")]

#[path = "support/amqp.rs"]
mod amqp;
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amqp::*;
use common::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use relaybox::transport::rabbitmq::{
    Codec, RabbitMqConfig, RabbitMqSink, RabbitMqSource, RabbitMqSourceConfig,
};
use relaybox::{Consumer, ConsumerConfig, Error, Message, Relay, Sink, Store, TransportConfig};
use uuid::Uuid;

/// Bound of the waits for deliveries and processing.
const WAIT: Duration = Duration::from_secs(45);

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Settings with an exchange of this test's own.
fn config() -> RabbitMqConfig {
    RabbitMqConfig {
        exchange: format!("relaybox-it-{}", suffix()),
        ..RabbitMqConfig::new(url())
    }
}

fn relay_config() -> relaybox::RelayConfig {
    relaybox::RelayConfig {
        batch_size: 200,
        poll_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        ..relaybox::RelayConfig::default()
    }
}

/// Enqueues `messages` in order, `per_tx` per committed transaction.
async fn enqueue_all(store: &Store, messages: &[Message], per_tx: usize) {
    for chunk in messages.chunks(per_tx) {
        let tx = store.begin().await.expect("begin");
        for m in chunk {
            tx.enqueue(m.clone()).await.expect("enqueue");
        }
        tx.commit().await.expect("commit");
    }
}

/// Ids per key, in the order of `ids`.
fn per_key(items: impl IntoIterator<Item = (Option<String>, Uuid)>) -> HashMap<String, Vec<Uuid>> {
    let mut out: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (k, id) in items {
        out.entry(k.unwrap_or_default()).or_default().push(id);
    }
    out
}

fn start_consumer(
    db: &TestDb,
    transport: &TransportConfig,
    topic: &str,
    config: ConsumerConfig,
    handler: Arc<Recorder>,
) -> Consumer {
    let source = transport
        .source(&db.store, topic, &config.group)
        .expect("rabbitmq source");
    Consumer::start(db.store.clone(), source, handler, config).expect("consumer start")
}

// ---- the relay's messages as a raw AMQP client reads them --------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_rabbitmq_is_read_by_basic_get_with_body_properties_headers_and_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = config();
    let topic = format!("orders-{}", suffix());
    let queue = format!("it-read-{}", suffix());
    let (_conn, ch) = raw(&url()).await;
    bind_queue(&ch, &config.exchange, &queue, &topic, FieldTable::default()).await;
    // A queue bound to another topic gets nothing.
    let other = format!("it-other-{}", suffix());
    bind_queue(
        &ch,
        &config.exchange,
        &other,
        "some.other.topic",
        FieldTable::default(),
    )
    .await;

    let sink = RabbitMqSink::new(config.clone()).expect("sink");
    let relay = Relay::start(db.store.clone(), Arc::new(sink), relay_config()).expect("relay");
    let messages: Vec<Message> = (0..300u32)
        .map(|i| {
            let mut payload = format!("m{i}:").into_bytes();
            payload.extend_from_slice(&[0x00, 0xff, 0xfe, i as u8, b'"', b'\n', 0x80]);
            Message::new(&topic, payload)
                .with_key(format!("key-{}", i % 10))
                .with_type("OrderPlaced")
                .with_content_type("application/x-relaybox-test")
                .with_source("rabbitmq-it")
                .with_header(
                    "traceparent",
                    format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
                )
        })
        .collect();
    enqueue_all(&db.store, &messages, 10).await;
    wait_until_drained(&db.store, WAIT, None).await;
    relay.shutdown().await.expect("relay shutdown");
    let stats = relay.stats();
    assert_eq!(
        (stats.delivered, stats.dead_lettered),
        (300, 0),
        "{stats:?}"
    );

    let got = drain(&ch, &queue).await;
    assert_eq!(
        got.len(),
        300,
        "every message exactly once in the bound queue"
    );
    assert_eq!(queue_depth(&ch, &other).await, 0, "routing key = topic");
    let by_id: HashMap<Uuid, &Message> = messages.iter().map(|m| (m.id, m)).collect();
    for g in &got {
        let m = by_id[&g.message_id()];
        assert_eq!(g.body, m.payload, "body bytes of {}", m.id);
        assert_eq!(g.routing_key, topic);
        assert_eq!(g.exchange, config.exchange);
        let p = &g.properties;
        assert_eq!(Got::prop(p.correlation_id()), m.key, "correlation_id = key");
        assert_eq!(Got::prop(p.kind()).as_deref(), Some("OrderPlaced"), "type");
        assert_eq!(
            Got::prop(p.content_type()).as_deref(),
            Some("application/x-relaybox-test")
        );
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(p.timestamp(), &Some(m.created_at.timestamp() as u64));
        assert_eq!(g.header("relaybox-id"), Some(m.id.to_string()));
        assert_eq!(g.header("relaybox-type").as_deref(), Some("OrderPlaced"));
        assert_eq!(
            g.header("relaybox-created-at")
                .map(|t| chrono::DateTime::parse_from_rfc3339(&t).expect("RFC 3339")),
            Some(m.created_at.into())
        );
        assert_eq!(g.header("source").as_deref(), Some("rabbitmq-it"));
        assert_eq!(
            g.header("traceparent"),
            m.headers.get("traceparent").cloned()
        );
        let names = p.headers().as_ref().unwrap().inner().len();
        assert_eq!(names, 5, "relaybox-id/type/created-at, source, traceparent");
    }
    let published = per_key(
        got.iter()
            .map(|g| (Got::prop(g.properties.correlation_id()), g.message_id())),
    );
    let enqueued = per_key(messages.iter().map(|m| (m.key.clone(), m.id)));
    assert_eq!(published, enqueued, "order per key");

    delete(&ch, &[&queue, &other], &[&config.exchange]).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_codec_publishes_the_json_event_envelope() {
    let config = RabbitMqConfig {
        codec: Codec::Envelope,
        ..config()
    };
    let topic = format!("events-{}", suffix());
    let queue = format!("it-env-{}", suffix());
    let (_conn, ch) = raw(&url()).await;
    bind_queue(&ch, &config.exchange, &queue, &topic, FieldTable::default()).await;
    let sink = RabbitMqSink::new(config.clone()).expect("sink");

    let plain = Message::new(&topic, br#"{"order": 7}"#.to_vec())
        .with_key("o-7")
        .with_type("OrderPlaced")
        .with_content_type("application/json")
        .with_source("shop");
    let ready = serde_json::json!({
        "id": "5d0c5f7e-0000-4000-8000-000000000001", "name": "UserCreated",
        "data": {"user": 1}, "timestamp": "2026-02-01T12:00:00.000000Z",
        "source": "users", "metadata": {"trace": "t1"}
    });
    let wrapped = Message::new(&topic, serde_json::to_vec(&ready).unwrap())
        .with_type("UserCreated")
        .with_content_type("application/json");
    let results = sink.publish(&[plain.clone(), wrapped.clone()]).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");

    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 2);
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "id": plain.id.to_string(), "name": "OrderPlaced", "data": {"order": 7},
            "timestamp": relaybox::message::micros_rfc3339::format(&plain.created_at),
            "source": "shop", "metadata": {}
        })
    );
    assert_eq!(got[0].header("event_name").as_deref(), Some("OrderPlaced"));
    assert_eq!(got[0].header("event_id"), Some(plain.id.to_string()));
    assert_eq!(got[0].header("event_source").as_deref(), Some("shop"));
    assert_eq!(
        Got::prop(got[0].properties.correlation_id()).as_deref(),
        Some("o-7")
    );
    assert_eq!(
        Got::prop(got[0].properties.content_type()).as_deref(),
        Some("application/json")
    );
    assert_eq!(got[0].properties.delivery_mode(), &Some(2));
    // A payload that already is an envelope travels unchanged.
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).expect("JSON body");
    assert_eq!(body, ready);
    assert_eq!(
        got[1].header("event_id").as_deref(),
        Some("5d0c5f7e-0000-4000-8000-000000000001")
    );
    assert_eq!(got[1].header("event_source").as_deref(), Some("users"));
    delete(&ch, &[&queue], &[&config.exchange]).await;
}

// ---- publisher confirms: unroutable and refused messages ----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_nacked_messages_fail_retryably_and_keep_key_order() {
    let config = config();
    let topic = format!("nowhere-{}", suffix());
    let sink = RabbitMqSink::new(config.clone()).expect("sink");
    let (_conn, ch) = raw(&url()).await;

    // No queue is bound for the topic: mandatory publishing reports it.
    let m = Message::new(&topic, b"lost?".to_vec()).with_key("k");
    let results = sink.publish(std::slice::from_ref(&m)).await;
    match &results[0] {
        Err(e @ Error::Transport { message, .. }) => {
            assert!(e.retryable(), "{e}");
            assert_eq!(e.message_id(), Some(m.id));
            assert!(message.contains("unroutable"), "{message}");
            assert!(message.contains(&topic), "{message}");
        }
        other => panic!("expected an unroutable transport error, got {other:?}"),
    }
    // Without `mandatory` the broker confirms and drops it.
    let lenient = RabbitMqSink::new(RabbitMqConfig {
        mandatory: false,
        ..config.clone()
    })
    .expect("sink");
    let results = lenient.publish(std::slice::from_ref(&m)).await;
    assert!(results[0].is_ok(), "{results:?}");

    // A queue that takes one message and rejects the rest: the broker nacks them.
    let queue = format!("it-full-{}", suffix());
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
    );
    bind_queue(&ch, &config.exchange, &queue, &topic, args).await;
    let batch: Vec<Message> = vec![
        Message::new(&topic, b"a1".to_vec()).with_key("a"),
        Message::new(&topic, b"a2".to_vec()).with_key("a"),
        Message::new(&topic, b"b1".to_vec()).with_key("b"),
    ];
    let results = sink.publish(&batch).await;
    assert!(results[0].is_ok(), "the first fits: {results:?}");
    for r in &results[1..] {
        let e = r.as_ref().expect_err("the queue is full");
        assert!(e.retryable(), "{e}");
        assert!(e.to_string().contains("nack"), "{e}");
    }
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"a1");

    // Same key: once a message failed, the later ones of its key fail too,
    // though the broker took them; other keys are not held back.
    let routed = format!("routed-{}", suffix());
    let routed_queue = format!("it-routed-{}", suffix());
    bind_queue(
        &ch,
        &config.exchange,
        &routed_queue,
        &routed,
        FieldTable::default(),
    )
    .await;
    let batch: Vec<Message> = vec![
        Message::new(format!("nowhere-{}", suffix()), b"k1".to_vec()).with_key("k"),
        Message::new(&routed, b"k2".to_vec()).with_key("k"),
        Message::new(&routed, b"z1".to_vec()).with_key("z"),
    ];
    let results = sink.publish(&batch).await;
    assert!(
        results[0]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unroutable")),
        "{results:?}"
    );
    let held = results[1].as_ref().expect_err("held back behind its key");
    assert!(
        held.retryable() && held.to_string().contains("same key"),
        "{held}"
    );
    assert!(results[2].is_ok(), "{results:?}");
    delete(&ch, &[&routed_queue], &[]).await;
    delete(&ch, &[&queue], &[&config.exchange]).await;
}

/// The numbers in the bodies of `got`, in queue order.
fn numbers(got: &[Got]) -> Vec<usize> {
    got.iter()
        .map(|g| {
            String::from_utf8_lossy(&g.body)
                .parse()
                .expect("a numbered body")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_bound_while_a_batch_is_published_never_gets_a_key_without_its_first_messages() {
    // A consumer group's first queue can appear at any moment of a batch: what
    // reaches it must begin with the key's first message, or be nothing.
    let config = config();
    let sink = RabbitMqSink::new(config.clone()).expect("sink");
    sink.connect().await.expect("connect");
    let (_conn, ch) = raw(&url()).await;
    for round in 0..12u64 {
        let topic = format!("late-{}", suffix());
        let queue = format!("it-late-{}", suffix());
        let batch: Vec<Message> = (0..2000)
            .map(|n| Message::new(&topic, n.to_string().into_bytes()).with_key("k"))
            .collect();
        let binder = {
            let (exchange, queue, topic) = (config.exchange.clone(), queue.clone(), topic.clone());
            tokio::spawn(async move {
                let (_conn, ch) = raw(&url()).await;
                tokio::time::sleep(Duration::from_millis(round)).await;
                bind_queue(&ch, &exchange, &queue, &topic, FieldTable::default()).await;
            })
        };
        let results = sink.publish(&batch).await;
        binder.await.expect("bound");
        let got = numbers(&drain(&ch, &queue).await);
        let delivered = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            got.iter().enumerate().all(|(i, n)| i == *n),
            "round {round}: the queue holds the key from its first message on, yet got {} \
             messages from {:?} to {:?}",
            got.len(),
            got.first(),
            got.last()
        );
        assert_eq!(
            delivered,
            got.len(),
            "round {round}: {:?}",
            results.iter().find(|r| r.is_err())
        );
        delete(&ch, &[&queue], &[]).await;
    }
    delete(&ch, &[], &[&config.exchange]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_failed_is_not_published_again_until_its_batch_is_settled() {
    let config = config();
    let topic = format!("late-{}", suffix());
    let queue = format!("it-late-{}", suffix());
    let sink = RabbitMqSink::new(config.clone()).expect("sink");
    let (_conn, ch) = raw(&url()).await;
    let m: Vec<Message> = (0..3)
        .map(|n| Message::new(&topic, n.to_string().into_bytes()).with_key("k"))
        .collect();
    let other = Message::new(&topic, b"100".to_vec()).with_key("other");

    // No queue yet: the first batch fails, and its acknowledgements are
    // still outstanding when the queue appears and the next batch is sent.
    let first = sink.send(&m[..2]).await;
    bind_queue(&ch, &config.exchange, &queue, &topic, FieldTable::default()).await;
    let second = sink.send(&[m[2].clone(), other.clone()]).await.await;
    let held = second[0]
        .as_ref()
        .expect_err("k waits behind its failed message");
    assert!(
        held.retryable() && held.to_string().contains("same key"),
        "{held}"
    );
    assert!(second[1].is_ok(), "another key goes on: {second:?}");
    let first = first.await;
    assert!(
        first[0]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unroutable")),
        "{first:?}"
    );
    assert!(first[1].is_err(), "{first:?}");

    // Once the failed batch is settled, the retry goes through in key order.
    let retry = sink.publish(&m).await;
    assert!(retry.iter().all(|r| r.is_ok()), "{retry:?}");
    assert_eq!(numbers(&drain(&ch, &queue).await), vec![100, 0, 1, 2]);
    delete(&ch, &[&queue], &[&config.exchange]).await;
}

// ---- the consumer ---------------------------------------------------------------

fn consumer_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 50,
        concurrency: 4,
        max_retries: 3,
        retry_delay: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        poll_interval: Duration::from_millis(100),
        ..ConsumerConfig::new(group)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_handles_each_message_once_in_key_order_across_a_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = RabbitMqConfig {
        prefetch: 20,
        ..config()
    };
    let transport = TransportConfig::from_json(serde_json::json!({"rabbitmq": {
        "url": config.url, "exchange": config.exchange, "prefetch": 20
    }}))
    .expect("transport config");
    let topic = format!("work-{}", suffix());
    let group = format!("g-{}", suffix());
    let source = RabbitMqSource::new(RabbitMqSourceConfig::new(config.clone(), &topic, &group))
        .expect("source");
    source.connect().await.expect("declares the group's queue");
    let queue = source.config().queue();
    assert_eq!(queue, format!("{group}.{topic}"));
    drop(source);

    let sink = RabbitMqSink::new(config.clone()).expect("sink");
    let relay = Relay::start(db.store.clone(), Arc::new(sink), relay_config()).expect("relay");
    let messages = messages(&topic, 200, 8);
    enqueue_all(&db.store, &messages, 20).await;
    wait_until_drained(&db.store, WAIT, None).await;
    relay.shutdown().await.expect("relay shutdown");

    // The first consumer stops midway; what it did not acknowledge comes back.
    let first = Recorder::new(&db).delay(Duration::from_millis(15)).arc();
    let consumer = start_consumer(
        &db,
        &transport,
        &topic,
        consumer_config(&group),
        first.clone(),
    );
    wait_for("some messages handled", WAIT, async || {
        let n = first.handled_count();
        if n >= 40 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    consumer.shutdown().await.expect("first consumer shutdown");
    assert!(first.handled_count() < 200, "stopped midway");

    let second = Recorder::new(&db).arc();
    let consumer = start_consumer(
        &db,
        &transport,
        &topic,
        consumer_config(&group),
        second.clone(),
    );
    wait_for("every message handled", WAIT, async || {
        let n = first.handled_count() + second.handled_count();
        if n >= 200 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    consumer.shutdown().await.expect("second consumer shutdown");
    // The first consumer acknowledged all it processed before it stopped.
    let s = consumer.stats();
    assert_eq!(
        (s.processed, s.duplicates),
        (200 - first.handled_count() as u64, 0),
        "{s:?}"
    );
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&first, &second], &ids).await;
    // Per key, handling order is publishing order.
    let handled: Vec<Message> = first
        .handled()
        .into_iter()
        .chain(second.handled())
        .collect();
    assert_eq!(
        per_key(handled.iter().map(|m| (m.key.clone(), m.id))),
        per_key(messages.iter().map(|m| (m.key.clone(), m.id))),
        "order per key"
    );
    // Nothing left unacknowledged: the consumer's channel is closed, so any
    // unacknowledged message would be back in the queue.
    let (_conn, ch) = raw(&url()).await;
    assert_eq!(queue_depth(&ch, &queue).await, 0);
    let dlq = format!("{queue}.dlq");
    delete(
        &ch,
        &[&queue, &dlq],
        &[&config.exchange, &config.dead_letter_exchange()],
    )
    .await;
    db.cleanup().await;
}

// ---- configuration and secrets -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_settings_a_queue_cannot_take_name_their_field() {
    let c = RabbitMqConfig::new(url());
    let long_group = "g".repeat(300);
    match RabbitMqSource::new(RabbitMqSourceConfig::new(c.clone(), "t", long_group)) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "queue"),
        other => panic!("expected a config error, got {other:?}"),
    }
    match RabbitMqSource::new(RabbitMqSourceConfig::new(c, "t", "")) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "group"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// The form errors and `Debug` give the broker's URL: named, with the
/// password masked as `***` (the sink's and the source's own `Debug` too,
/// which the conformance suite's secret scenario does not see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_broker_with_its_password_masked() {
    // A refused login on the real node, and a port nobody listens on.
    let base = url();
    let host = base.split('@').nth(1).unwrap_or("127.0.0.1:5672/%2f");
    for url in [
        format!("amqp://guest:Wr0ngPa55word@{host}"),
        "amqp://relay:Wr0ngPa55word@127.0.0.1:1/%2f".to_string(),
    ] {
        let config = RabbitMqConfig {
            connect_timeout: Duration::from_secs(3),
            ..RabbitMqConfig::new(&url)
        };
        let sink = RabbitMqSink::new(config.clone()).expect("sink");
        let shown = format!("{sink:?} {config:?}");
        assert!(!shown.contains("Wr0ngPa55word"), "{shown}");
        assert!(shown.contains(":***@"), "{shown}");
        let m = Message::new("t", b"x".to_vec());
        let results = sink.publish(std::slice::from_ref(&m)).await;
        let e = results[0].as_ref().expect_err("cannot connect");
        assert!(e.retryable(), "{e}");
        assert_eq!(e.message_id(), Some(m.id));
        let text = format!("{e} {e:?}");
        assert!(
            text.contains("connecting to amqp://"),
            "names the broker: {text}"
        );
        assert!(text.contains(":***@"), "{text}");
        assert_eq!(
            text.matches("transport rabbitmq failed").count(),
            1,
            "{text}"
        );
        let source =
            RabbitMqSource::new(RabbitMqSourceConfig::new(config, "t", "g")).expect("source");
        let e = relaybox::Source::fetch(&*source, 10, Duration::from_millis(100))
            .await
            .expect_err("cannot connect");
        assert!(e.retryable(), "{e}");
        let text = format!("{e} {e:?} {source:?}");
        assert!(!text.contains("Wr0ngPa55word"), "{text}");
    }
}
