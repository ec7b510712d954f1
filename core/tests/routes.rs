//! Relays that serve some topics only, on PostgreSQL and SQLite: relays with
//! disjoint routes share one outbox, each claiming only its topics and
//! publishing each to its route's destination, in order per key; a topic no
//! running relay serves stays pending and `Store::status` says so; relays of
//! one lane share its partitions.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::{DatabaseSink, Message, Relay, Route, RoutedSink, Sink, Topics, TransportConfig};

dialect_tests!(
    disjoint_routes_share_one_outbox,
    relays_of_one_lane_share_its_partitions,
);

/// A relay whose routes send `topics` to the log under `prefix.{topic}`.
fn routed_relay(db: &TestDb, topics: &[&str], prefix: &str, id: &str) -> Relay {
    let route = Route::new(
        Topics::parse(topics).unwrap(),
        Arc::new(DatabaseSink::new(db.store.clone())),
    )
    .with_destination(&format!("{prefix}.{{topic}}"))
    .unwrap();
    let sink: Arc<dyn Sink> = Arc::new(RoutedSink::new(vec![route]).unwrap());
    let config = relaybox::RelayConfig {
        instance_id: Some(id.into()),
        ..relay_config()
    };
    Relay::start(db.store.clone(), sink, config).unwrap()
}

fn keyed(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(topic, format!("{i}").into_bytes()).with_key(format!("k{}", i % 5)))
        .collect()
}

/// The payloads of `topic` in the log, per key, in log order.
async fn per_key(db: &TestDb, topic: &str) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for entry in read_all_log(&db.store, topic).await {
        let n: usize = String::from_utf8(entry.message.payload)
            .unwrap()
            .parse()
            .unwrap();
        out.entry(entry.message.key.unwrap()).or_default().push(n);
    }
    out
}

async fn disjoint_routes_share_one_outbox(backend: Backend) {
    let db = TestDb::new(backend).await;
    let orders = routed_relay(&db, &["orders.*"], "a", "relay-orders");
    let billing = routed_relay(&db, &["billing"], "b", "relay-billing");
    let mut batch = keyed("orders.created", 60);
    batch.extend(keyed("billing", 40));
    batch.extend(keyed("audit", 7));
    db.enqueue_committed(&batch).await;

    // Everything but the unrouted topic is delivered, each to its route only.
    wait_pending(
        &db.store,
        7,
        "only `audit` left pending",
        Duration::from_secs(30),
        None,
    )
    .await;
    for (topic, expected) in [("a.orders.created", 60), ("b.billing", 40)] {
        let keys = per_key(&db, topic).await;
        let total: usize = keys.values().map(Vec::len).sum();
        assert_eq!(total, expected, "{topic}");
        for (key, seen) in keys {
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(seen, sorted, "{topic} key {key} out of order");
        }
    }
    for topic in [
        "b.orders.created",
        "a.billing",
        "orders.created",
        "billing",
        "a.audit",
        "b.audit",
    ] {
        assert!(read_all_log(&db.store, topic).await.is_empty(), "{topic}");
    }

    // Status: the unrouted topic is pending and served by nobody.
    let status = db.store.status().await.unwrap();
    let audit = status.topics.iter().find(|t| t.topic == "audit").unwrap();
    assert_eq!(audit.pending, 7);
    assert!(!audit.served);
    let owners: Vec<&str> = status
        .lease_owners
        .iter()
        .map(|o| o.owner.as_str())
        .collect();
    assert_eq!(owners, ["relay-billing", "relay-orders"]);
    // A topic a relay serves shows as served while its rows wait.
    db.enqueue_committed(&keyed("billing", 1)).await;
    let served = db.store.status().await.unwrap();
    if let Some(b) = served.topics.iter().find(|t| t.topic == "billing") {
        assert!(b.served);
    }

    // A relay that serves the topic picks the rows up.
    let audit_relay = routed_relay(&db, &["audit"], "c", "relay-audit");
    wait_until_drained(&db.store, Duration::from_secs(30), None).await;
    assert_eq!(read_all_log(&db.store, "c.audit").await.len(), 7);
    for relay in [orders, billing, audit_relay] {
        relay.shutdown().await.unwrap();
    }
    // Once they are gone, nothing is served.
    db.enqueue_committed(&keyed("billing", 1)).await;
    let status = db.store.status().await.unwrap();
    assert!(status.topics.iter().all(|t| !t.served), "{status:?}");
    db.cleanup().await;
}

async fn relays_of_one_lane_share_its_partitions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = routed_relay(&db, &["orders.*", "billing"], "x", "lane-1");
    let second = routed_relay(&db, &["billing", "orders.*"], "x", "lane-2");
    let partitions = db.store.partitions().await.unwrap() as i64;
    // The two relays split the lane's partitions between them.
    wait_for(
        "the lane's partitions shared by both",
        Duration::from_secs(30),
        async || {
            let status = db.store.status().await.map_err(|e| e.to_string())?;
            let held: Vec<i64> = status.lease_owners.iter().map(|o| o.partitions).collect();
            if held.len() == 2
                && held.iter().sum::<i64>() == partitions
                && held.iter().all(|n| *n > 0)
            {
                Ok(())
            } else {
                Err(format!("{:?}", status.lease_owners))
            }
        },
    )
    .await;
    db.enqueue_committed(&keyed("orders.paid", 50)).await;
    wait_until_drained(&db.store, Duration::from_secs(30), None).await;
    assert_eq!(read_all_log(&db.store, "x.orders.paid").await.len(), 50);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    db.cleanup().await;
}

#[test]
fn routes_from_json_are_checked() {
    let ok = TransportConfig::from_json(serde_json::json!({"routes": [
        {"topics": ["orders.*"], "transport": "database", "destination": "prod.{topic}"},
        {"topics": ["billing"], "transport": "database"}
    ]}))
    .unwrap();
    assert_eq!(ok.name(), "routes");
    for (bad, field) in [
        (serde_json::json!({"routes": []}), "routes"),
        (
            serde_json::json!({"routes": [{"topics": [], "transport": "database"}]}),
            "topics",
        ),
        (
            serde_json::json!({"routes": [{"topics": ["a b"], "transport": "database"}]}),
            "topics",
        ),
        (
            serde_json::json!({"routes": [{"topics": ["a"], "transport": "database", "destination": "x/y"}]}),
            "destination",
        ),
        (
            serde_json::json!({"routes": [{"topics": ["a"], "transport": {"routes": [{"topics": ["a"], "transport": "database"}]}}]}),
            "routes",
        ),
    ] {
        match TransportConfig::from_json(bad.clone()) {
            Err(relaybox::Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{bad}"),
            other => panic!("{bad}: expected a config error on {field}, got {other:?}"),
        }
    }
}
