//! Exactly-once publishing into Kafka (`transactional_id`) against a real
//! broker and PostgreSQL, read back by kcat with `isolation.level =
//! read_committed`: a relay taking over a partition whose last transaction
//! committed before its rows were recorded publishes none of them again, a
//! fenced relay commits nothing, and routes refuse a transactional sink.
//! The scenarios every transport shares run for this configuration in
//! kafka_conformance.rs (`exactly_once`); relays killed with SIGKILL are
//! the chaos suite's `relay-kill-exactly-once`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_KAFKA_BOOTSTRAP`
//! (`dev/services start postgres kafka && eval "$(dev/services env)"`).
#![cfg(feature = "kafka")]

mod common;
mod kafka_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use kafka_common::*;
use relaybox::partition::partition_for;
use relaybox::transport::kafka::{KafkaConfig, KafkaSink};
use relaybox::{Error, Message, Relay, RelayConfig, Route, RoutedSink, Sink, Topics};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn exactly_once(bootstrap: &str, id: &str) -> KafkaConfig {
    KafkaConfig {
        create_topics: true,
        topic_partitions: 4,
        transactional_id: Some(id.to_string()),
        ..KafkaConfig::new(bootstrap)
    }
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..RelayConfig::default()
    }
}

fn keyed(topic: &str, n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(topic, format!("m{i}").into_bytes()).with_key(format!("k{}", i % keys))
        })
        .collect()
}

/// Every record of `topic` a committed reader sees: ids per key, each key
/// checked to live in one partition.
async fn committed_ids(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_records(bootstrap, topic).await
}

/// Asserts that a committed reader sees each of `messages` exactly once,
/// in enqueue order per key.
fn assert_exactly_once(records: &[Record], messages: &[Message]) {
    let mut seen = HashSet::new();
    let repeated: Vec<Uuid> = records
        .iter()
        .map(Record::id)
        .filter(|id| !seen.insert(*id))
        .collect();
    assert!(
        repeated.is_empty(),
        "{} records published twice, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(3)]
    );
    let expected = {
        let mut out = std::collections::HashMap::<String, Vec<Uuid>>::new();
        for m in messages {
            out.entry(m.key.clone().unwrap()).or_default().push(m.id);
        }
        out
    };
    assert_eq!(assert_order_per_key(&ids_per_key(records), &expected), 0);
    assert_eq!(records.len(), messages.len());
}

async fn drained(db: &TestDb) {
    common::wait_until_drained(&db.store, WAIT, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_does_not_publish_again_what_the_last_holder_committed() {
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("eos_takeover");
    let id = format!("eos-takeover-{}", suffix());
    let messages = keyed(&topic, 600, 12);
    db.enqueue_committed(&messages).await;
    let partitions = db.store.partitions().await.unwrap();
    let mut by_partition: BTreeMap<u32, Vec<Message>> = BTreeMap::new();
    for m in &messages {
        by_partition
            .entry(partition_for(m.key.as_deref(), &m.id, partitions))
            .or_default()
            .push(m.clone());
    }

    // A relay that committed the first half of every partition's messages
    // to Kafka and died before recording any of them.
    let crashed = KafkaSink::new(exactly_once(&bootstrap, &id)).unwrap();
    let tx = crashed.transactional().expect("a transactional sink");
    let mut committed = 0;
    for (p, batch) in &by_partition {
        assert_eq!(tx.adopt(*p, partitions).await.unwrap(), Vec::<Uuid>::new());
        let half = &batch[..batch.len() / 2];
        let ids: Vec<Uuid> = half.iter().map(|m| m.id).collect();
        let results = tx.publish_partition(*p, half, &ids).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        committed += half.len();
    }
    assert!(committed > 0);
    assert_eq!(db.store.pending_count().await.unwrap(), 600);

    // Another relay takes every partition over and drains the outbox.
    let sink: Arc<dyn Sink> = Arc::new(KafkaSink::new(exactly_once(&bootstrap, &id)).unwrap());
    let relay = Relay::start(db.store.clone(), sink, relay_config()).unwrap();
    drained(&db).await;
    // Counters are final once the relay stopped.
    relay.shutdown().await.unwrap();
    let stats = relay.stats();
    assert_eq!(stats.delivered, 600, "every row recorded as delivered");

    let records = committed_ids(&bootstrap, &topic).await;
    assert_exactly_once(&records, &messages);

    // The crashed relay's producers were fenced: nothing it publishes now
    // is committed.
    let (p, batch) = by_partition.iter().next().unwrap();
    let late =
        vec![Message::new(&topic, b"zombie".to_vec()).with_key(batch[0].key.clone().unwrap())];
    let results = tx.publish_partition(*p, &late, &[late[0].id]).await;
    assert!(
        results.iter().all(Result::is_err),
        "a fenced producer committed: {results:?}"
    );
    let after = committed_ids(&bootstrap, &topic).await;
    assert!(
        !after.iter().any(|r| r.id() == late[0].id),
        "the zombie's record is visible"
    );
    assert_eq!(after.len(), 600);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_sharing_an_outbox_publish_each_message_once() {
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("eos_shared");
    let id = format!("eos-shared-{}", suffix());
    let start = |n: usize| {
        let sink: Arc<dyn Sink> = Arc::new(KafkaSink::new(exactly_once(&bootstrap, &id)).unwrap());
        Relay::start(
            db.store.clone(),
            sink,
            RelayConfig {
                instance_id: Some(format!("eos-relay-{n}")),
                ..relay_config()
            },
        )
        .unwrap()
    };
    let first = start(1);
    let second = start(2);
    let messages = keyed(&topic, 2000, 40);
    for chunk in messages.chunks(50) {
        db.enqueue_committed(chunk).await;
    }
    drained(&db).await;
    // Stopping one hands its partitions to the other, which adopts them.
    first.shutdown().await.unwrap();
    let more = keyed(&topic, 400, 40);
    db.enqueue_committed(&more).await;
    drained(&db).await;
    second.shutdown().await.unwrap();

    let all: Vec<Message> = messages.into_iter().chain(more).collect();
    assert_exactly_once(&committed_ids(&bootstrap, &topic).await, &all);
    // The record topic: one partition per outbox partition.
    let partitions = db.store.partitions().await.unwrap() as usize;
    assert_eq!(
        topics(&bootstrap)
            .await
            .get(&format!("{id}.relaybox-published")),
        Some(&partitions)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn routes_refuse_a_transactional_sink() {
    let sink: Arc<dyn Sink> =
        Arc::new(KafkaSink::new(exactly_once("127.0.0.1:1", "eos-routes")).unwrap());
    let topics = Topics::parse(&["orders.*".to_string()]).unwrap();
    match RoutedSink::new(vec![Route::new(topics, sink)]) {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "routes");
            assert!(reason.contains("transactional_id"), "{reason}");
        }
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("routes took a transactional sink"),
    }
}
