//! Retention of what relaybox keeps, on PostgreSQL and SQLite: the database
//! transport's log (by age, and only what every group member that has read
//! the topic has passed), dead letters (by age) and the inbox (by age); and
//! the relay runs the log and dead-letter purges in the background.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::{DatabaseSink, Message, Relay, RelayConfig, Sink};

dialect_tests!(
    the_log_keeps_what_a_group_has_not_read,
    old_dead_letters_and_inbox_rows_are_purged,
    the_relay_purges_the_log_in_the_background,
);

fn messages(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(topic, format!("{i}").into_bytes()).with_key(format!("k{i}")))
        .collect()
}

async fn log_positions(db: &TestDb, topic: &str) -> Vec<i64> {
    db.store
        .read_log(topic, 0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect()
}

async fn the_log_keeps_what_a_group_has_not_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.store.append_log(&messages("read", 6)).await.unwrap();
    db.store.append_log(&messages("unread", 2)).await.unwrap();
    db.store.append_log(&messages("read_x", 1)).await.unwrap();
    let read = log_positions(&db, "read").await;
    // Two members of group a, one of group b: the lowest position wins.
    let source = |m: u32, n: u32| format!("log:read:{m}/{n}");
    db.store
        .set_position("a", &source(0, 2), read[4])
        .await
        .unwrap();
    db.store
        .set_position("a", &source(1, 2), read[3])
        .await
        .unwrap();
    db.store
        .set_position("b", &source(0, 1), read[5])
        .await
        .unwrap();
    // Younger than the retention: nothing goes.
    assert_eq!(
        db.store
            .purge_log(Duration::from_secs(3600), true, 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Rows up to the lowest position of the topic go, a batch at a time.
    assert_eq!(
        db.store.purge_log(Duration::ZERO, true, 3).await.unwrap(),
        3
    );
    assert_eq!(
        db.store.purge_log(Duration::ZERO, true, 100).await.unwrap(),
        1
    );
    assert_eq!(log_positions(&db, "read").await, read[4..].to_vec());
    // A topic no group has read keeps its rows (`read_x` is not `read`).
    assert_eq!(log_positions(&db, "unread").await.len(), 2);
    assert_eq!(log_positions(&db, "read_x").await.len(), 1);
    // Without keep_unread, age alone decides.
    assert_eq!(
        db.store
            .purge_log(Duration::ZERO, false, 100)
            .await
            .unwrap(),
        5
    );
    assert_eq!(db.count("log").await, 0);
    db.cleanup().await;
}

async fn old_dead_letters_and_inbox_rows_are_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sent = messages("poison", 3);
    db.enqueue_committed(&sent).await;
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(RefusingSink),
        RelayConfig {
            poll_interval: Duration::from_millis(20),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    wait_for("3 dead letters", Duration::from_secs(20), async || {
        let n = relay.stats().dead_lettered;
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} dead-lettered"))
        }
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        db.store
            .purge_old_dead_letters(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        db.store
            .purge_old_dead_letters(Duration::ZERO, 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(db.store.dead_letters(100).await.unwrap().len(), 1);

    // The inbox: rows older than the retention go.
    let tx = db.store.begin().await.unwrap();
    for m in &sent {
        tx.execute(
            &format!(
                "INSERT INTO {} (consumer_group, message_id, processed_at) VALUES ({}, {}, {})",
                db.t("inbox"),
                db.ph(1),
                db.ph(2),
                match backend {
                    Backend::Postgres => "now()",
                    Backend::Sqlite =>
                        "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
                }
            ),
            &["g".into(), relaybox::Value::Uuid(m.id)],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    // Processed just now: a day's retention keeps them.
    assert_eq!(
        db.store
            .purge_inbox(Duration::from_secs(86_400))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        db.store
            .purge_inbox(Duration::from_millis(1))
            .await
            .unwrap(),
        3
    );
    assert_eq!(db.count("inbox").await, 0);
    db.cleanup().await;
}

async fn the_relay_purges_the_log_in_the_background(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.enqueue_committed(&messages("kept_short", 4)).await;
    let relay = log_purging_relay(&db);
    wait_for("4 delivered", Duration::from_secs(20), async || {
        let n = relay.stats().delivered;
        if n >= 4 {
            Ok(())
        } else {
            Err(format!("{n} delivered"))
        }
    })
    .await;
    relay.shutdown().await.unwrap();
    // The purge runs when a relay starts and every minute after: a second
    // relay's start removes what the first appended.
    let again = log_purging_relay(&db);
    wait_for("the log purged", Duration::from_secs(20), async || {
        let n = db.count("log").await;
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} log rows"))
        }
    })
    .await;
    again.shutdown().await.unwrap();
    db.cleanup().await;
}

/// A relay to the database transport whose log rows may go 1 ms after
/// they are appended, read or not.
fn log_purging_relay(db: &TestDb) -> Relay {
    Relay::start(
        db.store.clone(),
        Arc::new(DatabaseSink::new(db.store.clone())),
        RelayConfig {
            poll_interval: Duration::from_millis(20),
            log_retention: Some(Duration::from_millis(1)),
            log_keep_unread: false,
            ..RelayConfig::default()
        },
    )
    .unwrap()
}

/// A sink that refuses every message for good.
struct RefusingSink;

#[async_trait::async_trait]
impl Sink for RefusingSink {
    fn name(&self) -> &str {
        "refusing"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        batch
            .iter()
            .map(|m| {
                Err(relaybox::Error::Transport {
                    transport: "refusing".into(),
                    message: "refused for good".into(),
                    retryable: false,
                    message_id: Some(m.id),
                })
            })
            .collect()
    }
}
