//! The producer side of the host-transaction protocol: outbox rows written by
//! the application's own driver inside its own transaction, with the
//! statements [`Store::insert_batch_statement`] generates, then relayed.
//! The generated SQL runs here through sqlx on PostgreSQL and SQLite.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use relaybox::sqlx::{self, AssertSqlSafe};
use relaybox::store::HOST_BATCH_MAX;
use relaybox::{InsertStatement, Message, Placeholders, RelayConfig, Value};
use tokio::time::Instant;

dialect_tests!(
    batch_statement_commits_with_the_host_transaction,
    commit_wakes_a_relay_before_its_poll,
    batch_statement_refuses_bad_batches,
);

fn bind_pg<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    params: &[Value],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(Option::<String>::None),
            Value::Int(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            other => panic!("host statements pass text, integers, bytes and null, not {other:?}"),
        };
    }
    q
}

fn bind_sqlite<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    params: &[Value],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for p in params {
        q = match p.clone() {
            Value::Null => q.bind(Option::<String>::None),
            Value::Int(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            other => panic!("host statements pass text, integers, bytes and null, not {other:?}"),
        };
    }
    q
}

/// Runs a business INSERT, `stmt` and its wake-up in one transaction of the
/// application's own (a sqlx transaction on the pool), then commits or rolls back.
async fn run_in_host_tx(db: &TestDb, order: &str, stmt: &InsertStatement, commit: bool) {
    let insert_order = format!(
        "INSERT INTO {} (id, note) VALUES ({}, 'host')",
        db.t("orders"),
        db.ph(1)
    );
    match db.backend {
        Backend::Postgres => {
            let mut tx = db.store.pg_pool().unwrap().begin().await.unwrap();
            sqlx::query(AssertSqlSafe(insert_order))
                .bind(order.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            bind_pg(sqlx::query(AssertSqlSafe(stmt.sql.clone())), &stmt.params)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("executing {}: {e}", stmt.sql));
            let wake = stmt.wake.clone().expect("a wake-up on PostgreSQL");
            sqlx::query(AssertSqlSafe(wake))
                .execute(&mut *tx)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
        }
        Backend::Sqlite => {
            assert_eq!(
                stmt.wake, None,
                "SQLite relays poll or hear the commit hook"
            );
            let mut tx = db.store.sqlite_pool().unwrap().begin().await.unwrap();
            sqlx::query(AssertSqlSafe(insert_order))
                .bind(order.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            bind_sqlite(sqlx::query(AssertSqlSafe(stmt.sql.clone())), &stmt.params)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("executing {}: {e}", stmt.sql));
            if commit {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
        }
    }
}

async fn batch_statement_commits_with_the_host_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "host-batch";
    let committed: Vec<Message> = (0..25)
        .map(|i| {
            Message::json(topic, &serde_json::json!({ "n": i }))
                .unwrap()
                .with_key(format!("acct-{}", i % 4))
                .with_type("AccountCredited")
                .with_header("source", "billing")
        })
        .collect();
    let rolled_back: Vec<Message> = (0..3)
        .map(|i| Message::new(topic, format!("never {i}").into_bytes()).with_key("acct-0"))
        .collect();
    // The styles sqlx takes: `$n` on PostgreSQL, `?` and `$n` on SQLite
    // (the other styles are run by the Python binding's tests).
    let styles: &[Placeholders] = match backend {
        Backend::Postgres => &[Placeholders::Dollar],
        Backend::Sqlite => &[Placeholders::Question, Placeholders::Dollar],
    };
    let chunk = committed.len().div_ceil(styles.len());
    for (i, (part, style)) in committed.chunks(chunk).zip(styles).enumerate() {
        let stmt = db.store.insert_batch_statement(part, *style).await.unwrap();
        assert_eq!(stmt.params.len(), part.len() * 10);
        assert_eq!(
            stmt.message_ids,
            part.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        assert_eq!(
            stmt.sql.matches("), (").count(),
            part.len() - 1,
            "one statement"
        );
        run_in_host_tx(&db, &format!("order-{i}"), &stmt, true).await;
    }
    let stmt = db
        .store
        .insert_batch_statement(&rolled_back, styles[0])
        .await
        .unwrap();
    run_in_host_tx(&db, "order-rolled-back", &stmt, false).await;

    assert_eq!(
        db.store.pending_count().await.unwrap(),
        committed.len() as i64
    );
    assert_eq!(db.count("orders").await, styles.len() as i64);

    let relay = start_db_relay(&db.store, relay_config());
    let log = wait_in_log(&db.store, topic, &committed, WAIT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), committed.len(), "each committed message once");
    for entry in &log {
        let sent = committed
            .iter()
            .find(|m| m.id == entry.message.id)
            .expect("only committed messages are relayed");
        assert_eq!(
            &entry.message, sent,
            "the message arrives as it was written"
        );
    }
    assert_order_per_key(&log, &committed);
    db.cleanup().await;
}

async fn commit_wakes_a_relay_before_its_poll(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "host-wake";
    // On PostgreSQL the relay runs on a store of its own, as in another
    // process: only the NOTIFY committed with the rows can wake it.
    let relay_store = match backend {
        Backend::Postgres => db.open_store().await,
        Backend::Sqlite => db.store.clone(),
    };
    let config = RelayConfig {
        poll_interval: Duration::from_secs(30),
        ..relay_config()
    };
    let relay = start_db_relay(&relay_store, config);
    // Let the relay take its leases and go idle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let messages = vec![
        Message::new(topic, b"one".to_vec()).with_key("a"),
        Message::new(topic, b"two".to_vec()).with_key("b"),
    ];
    let style = match backend {
        Backend::Postgres => Placeholders::Dollar,
        Backend::Sqlite => Placeholders::Question,
    };
    let stmt = db
        .store
        .insert_batch_statement(&messages, style)
        .await
        .unwrap();
    if backend == Backend::Postgres {
        let mut partitions: Vec<u32> = messages
            .iter()
            .map(|m| {
                relaybox::partition::partition_for(m.key.as_deref(), &m.id, db.options.partitions)
            })
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
        assert_eq!(
            stmt.wake.as_deref(),
            Some(format!("NOTIFY {}outbox, '{}'", db.prefix, list.join(",")).as_str())
        );
    }
    let committed_at = Instant::now();
    run_in_host_tx(&db, "order-wake", &stmt, true).await;
    let log = wait_in_log(&db.store, topic, &messages, Duration::from_secs(10)).await;
    let took = committed_at.elapsed();
    relay.shutdown().await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(
        took < Duration::from_secs(10),
        "delivered {took:?} after the commit, with a 30 s poll interval"
    );
    db.cleanup().await;
}

async fn batch_statement_refuses_bad_batches(backend: Backend) {
    let db = TestDb::new(backend).await;
    let style = Placeholders::Named;
    let err = db
        .store
        .insert_batch_statement(&[], style)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_value", "{err}");
    let too_many: Vec<Message> = (0..=HOST_BATCH_MAX)
        .map(|_| Message::new("t", b"x".to_vec()))
        .collect();
    let err = db
        .store
        .insert_batch_statement(&too_many, style)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1000"), "{err}");
    let err = db
        .store
        .insert_batch_statement(
            &[
                Message::new("fine", b"x".to_vec()),
                Message::new("bad topic", b"x".to_vec()),
            ],
            style,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_topic", "{err}");

    // Named styles list the parameter names in order.
    let stmt = db
        .store
        .insert_batch_statement(&too_many[..2], Placeholders::Pyformat)
        .await
        .unwrap();
    let expected: Vec<String> = (1..=20).map(|n| format!("p{n}")).collect();
    assert_eq!(stmt.names, expected);
    assert!(stmt.sql.contains("%(p20)s"), "{}", stmt.sql);
    let positional = db
        .store
        .insert_batch_statement(&too_many[..2], Placeholders::Percent)
        .await
        .unwrap();
    assert!(positional.names.is_empty());
    assert_eq!(
        db.store.pending_count().await.unwrap(),
        0,
        "nothing written"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_split_into_statements_validated_first() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut messages: Vec<Message> = (0..HOST_BATCH_MAX + 1)
        .map(|_| Message::new("split", b"x".to_vec()))
        .collect();
    let statements = db
        .store
        .insert_batch_statements(&messages, Placeholders::Question)
        .await
        .unwrap();
    let sizes: Vec<usize> = statements.iter().map(|s| s.message_ids.len()).collect();
    assert_eq!(sizes, [HOST_BATCH_MAX, 1]);
    messages.push(Message::new("bad topic", b"x".to_vec()));
    let err = db
        .store
        .insert_batch_statements(&messages, Placeholders::Question)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_topic");
    assert!(db
        .store
        .insert_batch_statements(&[], Placeholders::Question)
        .await
        .unwrap()
        .is_empty());
    db.cleanup().await;
}
