//! A Kafka broker outage under a running relay: the application keeps
//! enqueuing while the broker is down, and once it is back every message
//! reaches Kafka once, in order per key, without any manual step.
//!
//! This stops and restarts the shared broker with `dev/services`, so it lives
//! in a test binary of its own (cargo runs test binaries one after another;
//! the other Kafka tests are not running meanwhile). The broker is restarted
//! even when the test fails.
#![cfg(feature = "kafka")]

mod common;
mod kafka_common;

use std::collections::{HashMap, HashSet};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kafka_common::*;
use relaybox::transport::kafka::{KafkaConfig, KafkaSink};
use relaybox::{Message, Relay, RelayConfig, Store};
use tokio::time::Instant;
use uuid::Uuid;

fn services_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("dev")
        .join("services")
}

/// Runs `dev/services <action> kafka`; returns whether it succeeded, with its output.
fn services(action: &str) -> (bool, String) {
    match Command::new(services_script())
        .args([action, "kafka"])
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (
            false,
            format!("cannot run {}: {e}", services_script().display()),
        ),
    }
}

/// Restarts the broker when dropped, unless it was restarted already, so a
/// failing test never leaves the machine without Kafka.
struct BrokerGuard {
    stopped: bool,
}

impl BrokerGuard {
    async fn stop(&mut self, bootstrap: &str) {
        self.stopped = true;
        let (ok, out) = tokio::task::spawn_blocking(|| services("stop"))
            .await
            .unwrap();
        assert!(ok, "dev/services stop kafka failed: {out}");
        let addr = bootstrap
            .split(',')
            .next()
            .and_then(|a| a.to_socket_addrs().ok()?.next())
            .unwrap_or_else(|| panic!("cannot resolve the broker address {bootstrap}"));
        let down = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err();
        assert!(
            down,
            "the broker at {bootstrap} still answers after `dev/services stop kafka`: it was \
             started by another checkout's dev/services, whose broker this checkout does not \
             stop; stop it there (`dev/services stop kafka`) and run the test again"
        );
    }

    async fn start(&mut self) {
        let (ok, out) = tokio::task::spawn_blocking(|| services("start"))
            .await
            .unwrap();
        assert!(ok, "dev/services start kafka failed: {out}");
        self.stopped = false;
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("restarting the Kafka broker after a failed outage test");
            let (ok, out) = services("start");
            if !ok {
                eprintln!("dev/services start kafka failed: {out}");
            }
        }
    }
}

async fn enqueue(store: &Store, messages: &[Message]) -> relaybox::Result<()> {
    let tx = store.begin().await?;
    for m in messages {
        tx.enqueue(m.clone()).await?;
    }
    tx.commit().await
}

fn batch(topic: &str, from: usize, n: usize) -> Vec<Message> {
    (from..from + n)
        .map(|i| {
            Message::new(topic, format!("{{\"n\":{i}}}"))
                .with_key(format!("key-{}", i % 7))
                .with_type("Outage")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_broker_outage_without_losing_messages() {
    let bootstrap = bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = topic("outage");
    let mut broker = BrokerGuard { stopped: false };

    let sink = KafkaSink::new(KafkaConfig {
        create_topics: true,
        delivery_timeout: Duration::from_secs(2),
        ..KafkaConfig::new(&bootstrap)
    })
    .expect("kafka sink");
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(sink),
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(10),
            max_attempts: 1000,
            // Retries wait longer than a report: most records queued during
            // the outage are delivered while no attempt waits for them.
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3),
            ..RelayConfig::default()
        },
    )
    .expect("relay");

    // Before: delivered as usual.
    let mut messages = batch(&topic, 0, 20);
    enqueue(&db.store, &messages).await.expect("enqueue");
    wait_pending(
        &db.store,
        0,
        "the first messages delivered",
        Duration::from_secs(30),
        Some(&relay),
    )
    .await;
    let before = read_records(&bootstrap, &topic).await;
    let ids: HashSet<Uuid> = before.iter().map(Record::id).collect();
    assert!(
        messages.iter().all(|m| ids.contains(&m.id)),
        "first batch not in Kafka"
    );

    // The broker goes away; the application keeps writing for ~5 s.
    broker.stop(&bootstrap).await;
    let outage_started = Instant::now();
    let mut enqueued_during = 0;
    while outage_started.elapsed() < Duration::from_secs(5) {
        let more = batch(&topic, messages.len(), 10);
        enqueue(&db.store, &more)
            .await
            .unwrap_or_else(|e| panic!("enqueue failed while Kafka was down: {e}"));
        enqueued_during += more.len();
        messages.extend(more);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = db.store.pending_count().await.expect("pending_count");
    let during = relay.stats();
    assert!(
        pending > 0,
        "nothing can be delivered while the broker is down, yet nothing is pending"
    );
    assert!(relay.is_running(), "the relay stopped during the outage");

    // The broker comes back: everything drains by itself.
    broker.start().await;
    let restarted = Instant::now();
    wait_pending(
        &db.store,
        0,
        "the backlog delivered after the broker restart",
        Duration::from_secs(90),
        Some(&relay),
    )
    .await;
    let drain_time = restarted.elapsed();
    relay.shutdown().await.expect("relay shutdown");
    let after = relay.stats();

    let records = read_records(&bootstrap, &topic).await;
    let mut per_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for m in &messages {
        per_key
            .entry(m.key.clone().unwrap())
            .or_default()
            .push(m.id);
    }
    let duplicates = assert_order_per_key(&ids_per_key(&records), &per_key);
    eprintln!(
        "outage: {} messages ({enqueued_during} enqueued while Kafka was down, {pending} pending \
         at restart), {} records in Kafka ({duplicates} redelivered), drained {drain_time:?} \
         after the restart; relay stats during {during:?}, after {after:?}",
        messages.len(),
        records.len()
    );
    assert_eq!(
        duplicates, 0,
        "an outage costs no duplicates: a record delivered after the relay stopped waiting \
         for its report is not produced again by the retry"
    );
    assert_eq!(after.dead_lettered, 0, "{after:?}");
    assert!(db.store.dead_letters(10).await.unwrap().is_empty());
    delete_topics(&bootstrap, &[&topic]).await;
    db.cleanup().await;
}
