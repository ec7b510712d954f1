//! The Kafka transport against a real Apache Kafka broker and PostgreSQL:
//! what the relay writes is checked with kcat, a third-party client, and the
//! consumer is driven through `KafkaSource`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_KAFKA_BOOTSTRAP`
//! (`dev/services start postgres kafka && eval "$(dev/services env)"`); the
//! tests fail, never skip, without them. Every test uses its own topics,
//! consumer groups and table prefix, so they run in parallel.
#![cfg(feature = "kafka")]

mod common;
mod kafka_common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use relaybox::transport::kafka::{KafkaConfig, KafkaSink, KafkaSource, KafkaSourceConfig};
use relaybox::{
    BoxError, Consumer, ConsumerConfig, Error, Handler, Message, Relay, RelayConfig, Sink, Store,
    Transaction, TransportConfig, Value,
};
use uuid::Uuid;

/// Bound of the waits for deliveries and processing.
const WAIT: Duration = Duration::from_secs(45);

fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 200,
        poll_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        ..RelayConfig::default()
    }
}

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

/// Ids per key in `messages` order.
fn expected_per_key(messages: &[Message]) -> HashMap<String, Vec<Uuid>> {
    let mut out: HashMap<String, Vec<Uuid>> = HashMap::new();
    for m in messages {
        out.entry(m.key.clone().expect("keyed message"))
            .or_default()
            .push(m.id);
    }
    out
}

/// Publishes `messages` straight to Kafka with relaybox's sink (creating the topic).
async fn produce(bootstrap: &str, messages: &[Message]) {
    let sink = KafkaSink::new(kafka_config(bootstrap)).expect("kafka sink");
    let results = sink.publish(messages).await;
    assert_eq!(results.len(), messages.len());
    for (m, r) in messages.iter().zip(results) {
        r.unwrap_or_else(|e| panic!("publishing {} failed: {e}", m.id));
    }
}

/// A handler that counts calls per message and writes one business row
/// (`<prefix>handled`) per message through the consumer's transaction;
/// it refuses (always) the message `poison`.
struct Recorder {
    table: String,
    run: i32,
    poison: Option<Uuid>,
    calls: Mutex<HashMap<Uuid, u32>>,
    handled: Mutex<Vec<Uuid>>,
}

impl Recorder {
    fn new(db: &TestDb, run: i32, poison: Option<Uuid>) -> Arc<Recorder> {
        Arc::new(Recorder {
            table: db.t("handled"),
            run,
            poison,
            calls: Mutex::new(HashMap::new()),
            handled: Mutex::new(Vec::new()),
        })
    }

    fn refusal(id: Uuid) -> String {
        format!("test handler refuses poison message {id}")
    }

    fn calls(&self) -> HashMap<Uuid, u32> {
        self.calls.lock().unwrap().clone()
    }

    fn handled(&self) -> Vec<Uuid> {
        self.handled.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        *self.calls.lock().unwrap().entry(message.id).or_default() += 1;
        if self.poison == Some(message.id) {
            return Err(Recorder::refusal(message.id).into());
        }
        tx.execute(
            &format!(
                "INSERT INTO {} (message_id, topic, msg_key, member) VALUES ($1, $2, $3, $4)",
                self.table
            ),
            &[
                Value::from(message.id.to_string()),
                Value::from(message.topic.clone()),
                Value::from(message.key.clone()),
                Value::from(i64::from(self.run)),
            ],
        )
        .await?;
        self.handled.lock().unwrap().push(message.id);
        Ok(())
    }
}

fn start_kafka_consumer(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    config: ConsumerConfig,
    handler: Arc<Recorder>,
) -> Consumer {
    let source = KafkaSource::new(KafkaSourceConfig::new(
        KafkaConfig::new(bootstrap),
        topic,
        config.group.clone(),
    ))
    .expect("kafka source");
    Consumer::start(db.store.clone(), source, handler, config).expect("consumer start")
}

// ---- 1. relay → Kafka, read by a third party --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka_is_read_by_kcat_with_payload_key_headers_and_order() {
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("relay");
    let sink = KafkaSink::new(kafka_config(&bootstrap)).expect("kafka sink");
    let relay = Relay::start(db.store.clone(), Arc::new(sink), relay_config()).expect("relay");

    // Binary payloads: NUL, bytes that are not UTF-8, a comma, a quote and a
    // newline, so nothing survives by accident of a text encoding.
    let messages: Vec<Message> = (0..300u32)
        .map(|i| {
            let mut payload = format!("m{i}:").into_bytes();
            payload.extend_from_slice(&[0x00, 0xff, 0xfe, i as u8, b',', b'"', b'\n', 0x80, 0xc3]);
            Message::new(&topic, payload)
                .with_key(format!("key-{}", i % 10))
                .with_type("OrderPlaced")
                .with_content_type("application/x-relaybox-test")
                .with_source("kafka-it")
                .with_header(
                    "traceparent",
                    format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
                )
                .with_header("x-tenant", format!("tenant-{}", i % 3))
        })
        .collect();
    enqueue_all(&db.store, &messages, 10).await;
    wait_until_drained(&db.store, WAIT, None).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.expect("relay shutdown");
    let stats = relay.stats();
    assert_eq!(stats.delivered, 300, "relay stats {stats:?}");
    assert_eq!(stats.dead_lettered, 0, "relay stats {stats:?}");

    let records = read_records(&bootstrap, &topic).await;
    let raw = read_raw(&bootstrap, &topic).await;
    assert_eq!(
        topics(&bootstrap).await.get(&topic),
        Some(&3),
        "create_topics makes the topic with topic_partitions (3) partitions"
    );
    assert_eq!(
        records.len(),
        300,
        "kcat reads every message exactly once (no loss, no duplicate)"
    );
    assert_eq!(raw.len(), 300, "kcat's raw read sees the same records");
    let mut by_id: HashMap<Uuid, &Record> = HashMap::new();
    for r in &records {
        assert!(by_id.insert(r.id(), r).is_none(), "duplicate record {r:?}");
    }
    for m in &messages {
        let r = by_id
            .get(&m.id)
            .unwrap_or_else(|| panic!("message {} is not in Kafka", m.id));
        assert_eq!(r.key.as_deref(), m.key.as_deref(), "key of {}", m.id);
        let created = r
            .header("relaybox-created-at")
            .unwrap_or_else(|| panic!("no relaybox-created-at on {r:?}"));
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339"),
            m.created_at,
            "relaybox-created-at of {}",
            m.id
        );
        let mut want: Vec<(String, String)> = vec![
            ("relaybox-id".into(), m.id.to_string()),
            ("relaybox-type".into(), "OrderPlaced".into()),
            ("content-type".into(), "application/x-relaybox-test".into()),
            ("relaybox-created-at".into(), created.to_string()),
        ];
        want.extend(m.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut got = r.headers.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "headers of {}", m.id);
        assert!(r.header("source") == Some("kafka-it") && r.header("traceparent").is_some());
        assert_eq!(
            r.ts,
            m.created_at.timestamp_millis(),
            "record timestamp of {}",
            m.id
        );
        assert_eq!(
            r.payload.as_deref(),
            Some(String::from_utf8_lossy(&m.payload).as_ref()),
            "payload of {} as kcat's JSON shows it",
            m.id
        );
        let exact = &raw[&(r.partition, r.offset)];
        assert_eq!(
            exact.payload.as_deref(),
            Some(&m.payload[..]),
            "payload bytes of {}",
            m.id
        );
        assert_eq!(
            exact.key.as_deref(),
            m.key.as_deref().map(str::as_bytes),
            "key bytes of {}",
            m.id
        );
    }
    // Per key: one partition, offsets increasing in enqueue order.
    let duplicates = assert_order_per_key(&ids_per_key(&records), &expected_per_key(&messages));
    assert_eq!(duplicates, 0);

    delete_topics(&bootstrap, &[&topic]).await;
    db.cleanup().await;
}

// ---- 2. missing topic, create_topics = false -------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_without_create_topics_is_a_transport_error_naming_it() {
    let bootstrap = bootstrap();
    let topic = topic("missing");
    let sink = KafkaSink::new(KafkaConfig::new(&bootstrap)).expect("kafka sink");
    assert!(!sink.config().create_topics);

    let batch: Vec<Message> = (0..3)
        .map(|i| Message::new(&topic, format!("p{i}")).with_key(format!("k{i}")))
        .collect();
    let results = sink.publish(&batch).await;
    assert_eq!(results.len(), batch.len());
    for (m, r) in batch.iter().zip(results) {
        match &r {
            Err(
                e @ Error::Transport {
                    transport,
                    message,
                    message_id,
                    ..
                },
            ) => {
                assert_eq!(transport, "kafka");
                assert!(
                    message.contains(&topic),
                    "the error names the topic {topic}: {message}"
                );
                assert_eq!(*message_id, Some(m.id));
                assert!(e.to_string().contains(&topic), "{e}");
            }
            other => panic!("expected a transport error naming {topic}, got {other:?}"),
        }
    }

    // Through the relay: retried, then dead-lettered with the error.
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(sink.clone()),
        RelayConfig {
            max_attempts: 2,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..relay_config()
        },
    )
    .expect("relay");
    let m = Message::new(&topic, "order 1").with_key("k");
    enqueue_all(&db.store, std::slice::from_ref(&m), 1).await;
    let dead = wait_for("the message in dead_letters", WAIT, async || {
        let dl = db.store.dead_letters(10).await.map_err(|e| e.to_string())?;
        match dl.into_iter().find(|d| d.message.id == m.id) {
            Some(d) => Ok(d),
            None => Err(format!(
                "not yet; relay stats {:?}, pending {:?}",
                relay.stats(),
                db.store.pending_count().await
            )),
        }
    })
    .await;
    relay.shutdown().await.expect("relay shutdown");
    assert_eq!(dead.origin, "relay");
    assert_eq!(dead.attempts, 2);
    assert!(
        dead.last_error.contains(&topic),
        "last_error names the topic {topic}: {}",
        dead.last_error
    );
    assert_eq!(db.store.pending_count().await.unwrap(), 0);
    assert!(
        !topics(&bootstrap).await.contains_key(&topic),
        "the topic was created although create_topics is false"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_relay_did_not_record_is_not_produced_again() {
    // The relay takes an acknowledged record as not delivered when an
    // earlier message of its key failed, and sends it again after that one.
    // The record is in Kafka already, behind the earlier one: the sink
    // acknowledges the repeat without producing a second copy.
    let bootstrap = bootstrap();
    let topic = topic("unrecorded");
    let sink = KafkaSink::new(KafkaConfig {
        create_topics: true,
        ..KafkaConfig::new(&bootstrap)
    })
    .expect("kafka sink");
    let batch: Vec<Message> = (0..4)
        .map(|i| Message::new(&topic, format!("p{i}")).with_key("k"))
        .collect();
    let results = sink.publish(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let unrecorded: Vec<&Message> = batch[2..].iter().collect();
    sink.unrecorded(&unrecorded);
    let again = sink.publish(&batch).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");

    let ids: Vec<Uuid> = read_records(&bootstrap, &topic)
        .await
        .iter()
        .map(Record::id)
        .collect();
    let want: Vec<Uuid> = batch.iter().chain(&batch[..2]).map(|m| m.id).collect();
    assert_eq!(
        ids, want,
        "the unrecorded records were produced again, or the others were not"
    );
    delete_topics(&bootstrap, &[&topic]).await;
}

// ---- 3. consumer redelivery --------------------------------------------------

/// Committed offsets of `group` on `topic` per partition, and the high
/// watermarks; then, when `rewind`, commits offset 0 for every partition.
fn group_offsets(
    bootstrap: &str,
    topic: &str,
    group: &str,
    rewind: bool,
) -> (Vec<(i32, Offset)>, Vec<i64>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("admin consumer");
    let timeout = Duration::from_secs(10);
    let metadata = c.fetch_metadata(Some(topic), timeout).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    if rewind {
        let mut zero = TopicPartitionList::new();
        for p in &partitions {
            zero.add_partition_offset(topic, *p, Offset::Offset(0))
                .expect("tpl");
        }
        c.assign(&zero).expect("assign");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The group must be empty (the consumer left it) for a standalone commit.
        while let Err(e) = c.commit(&zero, CommitMode::Sync) {
            assert!(
                std::time::Instant::now() < deadline,
                "could not rewind group {group}: {e}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let committed = c
        .committed_offsets(tpl, timeout)
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    let highs = partitions
        .iter()
        .map(|p| {
            c.fetch_watermarks(topic, *p, timeout)
                .expect("watermarks")
                .1
        })
        .collect();
    (committed, highs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_redelivery_after_rewind_is_skipped_by_the_inbox() {
    const N: usize = 120;
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("redeliver");
    let group = group("redeliver");
    let messages: Vec<Message> = (0..N)
        .map(|i| {
            Message::new(&topic, format!("{{\"n\":{i}}}"))
                .with_key(format!("key-{}", i % 12))
                .with_type("Counted")
        })
        .collect();
    produce(&bootstrap, &messages).await;

    let first = Recorder::new(&db, 1, None);
    let consumer = start_kafka_consumer(
        &db,
        &bootstrap,
        &topic,
        consumer_config(&group),
        first.clone(),
    );
    wait_for("every message processed", WAIT, async || {
        let s = consumer.stats();
        if s.processed as usize >= N {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.expect("consumer shutdown");
    let s = consumer.stats();
    assert_eq!((s.processed, s.duplicates), (N as u64, 0), "{s:?}");
    drop(consumer);

    // Graceful shutdown committed everything; then rewind the group.
    let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let (committed, highs) = tokio::task::spawn_blocking(move || group_offsets(&b, &t, &g, false))
        .await
        .unwrap();
    let committed_offsets: Vec<Offset> = committed.iter().map(|(_, o)| *o).collect();
    let want: Vec<Offset> = highs.iter().map(|h| Offset::Offset(*h)).collect();
    assert_eq!(
        committed_offsets, want,
        "after a graceful shutdown the group's committed offsets are the end of each partition"
    );
    let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let (rewound, _) = tokio::task::spawn_blocking(move || group_offsets(&b, &t, &g, true))
        .await
        .unwrap();
    assert!(
        rewound.iter().all(|(_, o)| *o == Offset::Offset(0)),
        "rewind did not take: {rewound:?}"
    );

    // Every message comes again; the inbox skips all of them.
    let second = Recorder::new(&db, 2, None);
    let consumer = start_kafka_consumer(
        &db,
        &bootstrap,
        &topic,
        consumer_config(&group),
        second.clone(),
    );
    wait_for("every redelivery seen as a duplicate", WAIT, async || {
        let s = consumer.stats();
        if s.duplicates as usize >= N {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    consumer.shutdown().await.expect("consumer shutdown");
    let s = consumer.stats();
    assert_eq!((s.processed, s.duplicates), (0, N as u64), "{s:?}");
    assert!(
        second.calls().is_empty(),
        "the handler ran again for redelivered messages: {:?}",
        second.calls().len()
    );
    let calls = first.calls();
    assert_eq!(calls.len(), N);
    assert!(calls.values().all(|n| *n == 1), "handler calls {calls:?}");
    let rows = db.handled_rows().await;
    assert_eq!(
        rows.len(),
        N,
        "business rows for {} of {N} messages",
        rows.len()
    );
    for m in &messages {
        assert_eq!(rows.get(&m.id), Some(&1), "business rows of {}", m.id);
    }
    delete_topics(&bootstrap, &[&topic]).await;
    db.cleanup().await;
}

// ---- 4. poison message on the consumer side ----------------------------------

// ---- 4b. poison messages on the relay side -------------------------------------

/// Creates `topic` (3 partitions) with the topic-level `max.message.bytes`.
async fn create_topic_with_limit(bootstrap: &str, topic: &str, max_message_bytes: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let limit = max_message_bytes.to_string();
    let new = NewTopic::new(topic, 3, TopicReplication::Fixed(1)).set("max.message.bytes", &limit);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics([&new], &options)
        .await
        .expect("create topic")
    {
        result.unwrap_or_else(|(name, code)| panic!("creating {name} failed: {code}"));
    }
}

/// Relays a key's stream with a poison message (`poison_bytes` of payload)
/// third in it, between other keys' messages, and checks what a third party
/// reads: the poison in dead letters after one attempt with `refusal` in its
/// error, every other message in Kafka once, in order per key.
async fn relay_a_poison(topic: &str, poison_bytes: usize, refusal: &str) {
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let sink = KafkaSink::new(kafka_config(&bootstrap)).expect("kafka sink");
    let mut messages: Vec<Message> = Vec::new();
    for i in 0..12 {
        messages
            .push(Message::new(topic, format!("other {i}")).with_key(format!("other-{}", i % 3)));
        let payload = if i == 2 {
            vec![b'x'; poison_bytes]
        } else {
            format!("victim {i}").into_bytes()
        };
        messages.push(Message::new(topic, payload).with_key("victim"));
    }
    let poison = messages[5].clone();
    assert_eq!(poison.payload.len(), poison_bytes);
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(sink),
        RelayConfig {
            max_attempts: 5,
            // The victim's later messages go on without the poison.
            park_keys: false,
            ..relay_config()
        },
    )
    .expect("relay");
    // One transaction: the whole stream in one claim, so the messages after
    // the poison are in its batch.
    enqueue_all(&db.store, &messages, messages.len()).await;
    wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.expect("relay shutdown");
    let stats = relay.stats();

    let dead = db.store.dead_letters(10).await.expect("dead letters");
    let dead_ids: Vec<Uuid> = dead.iter().map(|d| d.message.id).collect();
    assert_eq!(dead_ids, [poison.id], "only the poison is dead-lettered");
    let dead = &dead[0];
    assert_eq!(
        dead.attempts, 1,
        "a record that can never be sent is dead-lettered at once, not retried: {}",
        dead.last_error
    );
    assert!(
        dead.last_error.contains(refusal),
        "the error says who refused it ({refusal:?}): {}",
        dead.last_error
    );
    let records = read_records(&bootstrap, topic).await;
    let delivered: Vec<Message> = messages
        .iter()
        .filter(|m| m.id != poison.id)
        .cloned()
        .collect();
    let duplicates = assert_order_per_key(&ids_per_key(&records), &expected_per_key(&delivered));
    assert_eq!(
        duplicates, 0,
        "no message of the poison's key reached Kafka before it was refused, so none is sent \
         twice; relay stats {stats:?}"
    );
    assert_eq!(records.len(), delivered.len());
    delete_topics(&bootstrap, &[topic]).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_over_the_clients_limit_is_dead_lettered_at_once_and_holds_back_its_key() {
    // Under relaybox's 1 MiB payload limit, over librdkafka's default
    // message.max.bytes (1,000,000): refused at hand-over.
    relay_a_poison(
        &topic("client-poison"),
        1_000_100,
        "the Kafka client refused the record before sending it",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_over_the_brokers_limit_is_dead_lettered_at_once_and_holds_back_its_key() {
    let bootstrap = bootstrap();
    let topic = topic("broker-poison");
    create_topic_with_limit(&bootstrap, &topic, 200_000).await;
    relay_a_poison(
        &topic,
        300_000,
        "the broker refuses records over the topic's max.message.bytes (200000 bytes)",
    )
    .await;
}

// ---- 5. three relays, 10,000 messages ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_deliver_10000_messages_without_loss_in_order_per_key() {
    const N: usize = 10_000;
    const KEYS: usize = 100;
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("three");
    let tag = suffix();
    let mut relays = Vec::new();
    for i in 0..3 {
        // Each relay as its own process would be: own pool, own producer.
        let store = Store::connect_with(&db.url, db.store.options().clone())
            .await
            .expect("store");
        let sink = KafkaSink::new(kafka_config(&bootstrap)).expect("kafka sink");
        relays.push(
            Relay::start(
                store,
                Arc::new(sink),
                RelayConfig {
                    batch_size: 500,
                    lease_ttl: Duration::from_secs(6),
                    publish_timeout: Some(Duration::from_secs(5)),
                    instance_id: Some(format!("relay-{i}-{tag}")),
                    ..relay_config()
                },
            )
            .expect("relay"),
        );
    }
    let owners: HashSet<String> = relays.iter().map(|r| r.owner().to_string()).collect();
    wait_for("3 relays holding leases", WAIT, async || {
        let status = db.store.status().await.map_err(|e| e.to_string())?;
        let holding: HashSet<String> = status
            .lease_owners
            .iter()
            .filter(|o| o.partitions > 0)
            .map(|o| o.owner.clone())
            .collect();
        if holding == owners {
            Ok(())
        } else {
            Err(format!("lease owners {:?}", status.lease_owners))
        }
    })
    .await;

    let messages: Vec<Message> = (0..N)
        .map(|i| {
            Message::new(&topic, format!("{{\"n\":{i}}}"))
                .with_key(format!("key-{}", i % KEYS))
                .with_type("Tick")
        })
        .collect();
    for chunk in messages.chunks(1000) {
        let tx = db.store.begin().await.expect("begin");
        tx.enqueue_batch(chunk).await.expect("enqueue_batch");
        tx.commit().await.expect("commit");
    }
    wait_until_drained(&db.store, Duration::from_secs(90), None).await;
    for r in &relays {
        r.shutdown().await.expect("relay shutdown");
    }
    let stats: Vec<_> = relays.iter().map(Relay::stats).collect();

    let records = read_records(&bootstrap, &topic).await;
    let duplicates = assert_order_per_key(&ids_per_key(&records), &expected_per_key(&messages));
    eprintln!(
        "three relays: {} records for {N} messages ({duplicates} redelivered); relay stats {stats:?}",
        records.len()
    );
    for (r, s) in relays.iter().zip(&stats) {
        assert!(
            s.delivered > 0,
            "relay {} delivered nothing: {s:?}",
            r.owner()
        );
        assert_eq!(s.dead_lettered, 0, "{s:?}");
    }
    assert!(stats.iter().map(|s| s.delivered).sum::<u64>() >= N as u64);
    delete_topics(&bootstrap, &[&topic]).await;
    db.cleanup().await;
}

// ---- 6. choosing Kafka with one setting ----------------------------------------

#[test]
fn transport_config_from_json_selects_kafka() {
    let t = TransportConfig::from_json(serde_json::json!({"kafka": {
        "bootstrap_servers": "broker-a:9092,broker-b:9092",
        "create_topics": true,
        "topic_partitions": 6,
        "delivery_timeout": "3s",
        "properties": {"compression.type": "zstd"}
    }}))
    .expect("kafka transport from JSON");
    assert_eq!(t.name(), "kafka");
    let TransportConfig::Kafka(k) = &t else {
        panic!("expected the Kafka transport, got {t:?}")
    };
    assert_eq!(k.bootstrap_servers, "broker-a:9092,broker-b:9092");
    assert!(k.create_topics);
    assert_eq!(k.topic_partitions, 6);
    assert_eq!(k.delivery_timeout, Duration::from_secs(3));
    assert_eq!(k.properties["compression.type"], "zstd");

    let defaults = TransportConfig::from_json(serde_json::json!({"kafka": {}})).unwrap();
    let TransportConfig::Kafka(k) = &defaults else {
        panic!("expected the Kafka transport, got {defaults:?}")
    };
    assert_eq!(k.bootstrap_servers, "127.0.0.1:9092");

    for bad in [
        serde_json::json!({"kafka": {"bootstrap": "x:1"}}),
        serde_json::json!({"kafka": {"topic_partitions": 0}}),
        serde_json::json!({"kafka": {"bootstrap_servers": " "}}),
        serde_json::json!({"kafka": {"delivery_timeout": "10ms"}}),
        serde_json::json!("carrier-pigeon"),
    ] {
        let e = TransportConfig::from_json(bad.clone()).expect_err(&bad.to_string());
        assert_eq!(e.code(), "invalid_config", "{bad}: {e}");
    }
}

/// Set in the child process that runs [`transport_switch_from_env`] with a
/// prepared environment (so no test changes this process's environment).
const CHILD_CASE: &str = "RELAYBOX_KAFKA_TEST_CHILD_CASE";

/// `RELAYBOX_TRANSPORT=kafka` (the quickstart's switch) gives the Kafka
/// transport at `RELAYBOX_KAFKA_BOOTSTRAP`, and its sink and source carry a
/// message from the outbox through Kafka to a consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_switch_from_env() {
    if let Ok(case) = std::env::var(CHILD_CASE) {
        return child_case(&case).await;
    }
    let bootstrap = bootstrap();
    let exe = std::env::current_exe().expect("test binary");
    for (case, transport) in [
        ("kafka", Some("kafka")),
        ("unset", None),
        ("database", Some("database")),
        ("unknown", Some("carrier-pigeon")),
    ] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "transport_switch_from_env",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_CASE, case)
        .env(KAFKA_ENV, &bootstrap);
        match transport {
            Some(t) => cmd.env("RELAYBOX_TRANSPORT", t),
            None => cmd.env_remove("RELAYBOX_TRANSPORT"),
        };
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "case {case} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn child_case(case: &str) {
    match case {
        "unset" | "database" => {
            let t = TransportConfig::from_env().expect("from_env");
            assert_eq!(t.name(), "database");
        }
        "unknown" => {
            let e = TransportConfig::from_env().expect_err("unknown transport");
            assert_eq!(e.code(), "invalid_config");
            assert!(e.to_string().contains("carrier-pigeon"), "{e}");
        }
        "kafka" => {
            let bootstrap = bootstrap();
            let t = TransportConfig::from_env().expect("from_env");
            assert_eq!(t.name(), "kafka");
            let TransportConfig::Kafka(k) = &t else {
                panic!("expected the Kafka transport, got {t:?}")
            };
            assert_eq!(k.bootstrap_servers, bootstrap);
            assert!(k.create_topics, "the quickstart switch creates topics");

            // The switch's sink and source, end to end.
            let db = TestDb::new(Backend::Postgres).await;
            let topic = topic("switch");
            let group = group("switch");
            let relay =
                Relay::start(db.store.clone(), t.sink(&db.store).unwrap(), relay_config()).unwrap();
            let messages: Vec<Message> = (0..5)
                .map(|i| Message::new(&topic, format!("hello {i}")).with_key("k"))
                .collect();
            enqueue_all(&db.store, &messages, 5).await;
            wait_until_drained(&db.store, WAIT, None).await;
            relay.shutdown().await.unwrap();
            let source = t.source(&db.store, &topic, &group).unwrap();
            assert_eq!(source.name(), "kafka");
            let recorder = Recorder::new(&db, 1, None);
            let consumer = Consumer::start(
                db.store.clone(),
                source,
                recorder.clone(),
                consumer_config(&group),
            )
            .unwrap();
            wait_for("5 messages consumed", WAIT, async || {
                let s = consumer.stats();
                if s.processed >= 5 {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            })
            .await;
            consumer.shutdown().await.unwrap();
            let want: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
            assert_eq!(recorder.handled(), want);
            delete_topics(&bootstrap, &[&topic]).await;
            db.cleanup().await;
        }
        other => panic!("unknown child case {other}"),
    }
}
