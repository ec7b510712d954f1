//! Bad input: every invalid message, configuration or state gets its typed
//! error and writes nothing; secrets never appear in errors or debug output.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use relaybox::sqlx::{Connection, PgConnection, SqliteConnection};
use relaybox::{
    Consumer, ConsumerConfig, DatabaseSink, DatabaseSource, DatabaseSourceConfig, Error, Message,
    Relay, RelayConfig, Store, StoreOptions,
};
use uuid::Uuid;

dialect_tests!(
    bad_messages_get_typed_errors_and_write_nothing,
    closed_store_refuses_everything,
    invalid_configuration_is_rejected,
);

const LIMIT: usize = 1024;

struct Case {
    name: &'static str,
    message: Message,
    check: fn(&Error) -> bool,
}

fn topic_case(name: &'static str, topic: String) -> Case {
    Case {
        name,
        message: Message::new(topic, b"{}".to_vec()),
        check: |e| matches!(e, Error::InvalidTopic { .. }),
    }
}

fn header_case(name: &'static str, header: &str, value: &str) -> Case {
    Case {
        name,
        message: Message::new("orders", b"{}".to_vec()).with_header(header, value),
        check: |e| matches!(e, Error::InvalidHeader { .. }),
    }
}

fn cases() -> Vec<Case> {
    vec![
        topic_case("empty topic", String::new()),
        topic_case("topic with a space", "order events".into()),
        topic_case("topic with a slash", "orders/eu".into()),
        topic_case("topic of 250 characters", "t".repeat(250)),
        Case {
            name: "payload one byte over the limit",
            message: Message::new("orders", vec![b'x'; LIMIT + 1]),
            check: |e| {
                matches!(
                    e,
                    Error::PayloadTooLarge {
                        size: 1025,
                        limit: 1024
                    }
                )
            },
        },
        header_case("header name with a space", "trace id", "v"),
        header_case("empty header name", "", "v"),
        header_case("header name with a colon", "x-id:", "v"),
        header_case("header value with a newline", "x-note", "line1\nline2"),
        Case {
            name: "key with a control character",
            message: Message::new("orders", b"{}".to_vec()).with_key("k\u{7}"),
            check: |e| matches!(e, Error::InvalidMessage { field: "key", .. }),
        },
        Case {
            name: "empty content type",
            message: Message::new("orders", b"{}".to_vec()).with_content_type(""),
            check: |e| {
                matches!(
                    e,
                    Error::InvalidMessage {
                        field: "content_type",
                        ..
                    }
                )
            },
        },
    ]
}

/// A valid message; its payload is exactly at the limit.
fn good(i: usize) -> Message {
    Message::new("orders", vec![b'g'; LIMIT]).with_key(format!("good-{i}"))
}

fn check(case: &Case, how: &str, result: relaybox::Result<impl std::fmt::Debug>) {
    let err = match result {
        Ok(v) => panic!("{} via {how}: accepted ({v:?})", case.name),
        Err(e) => e,
    };
    assert!(
        (case.check)(&err),
        "{} via {how}: wrong error {err:?}",
        case.name
    );
    assert!(err.is_invalid_input(), "{}: {err:?}", case.name);
    assert!(!err.retryable(), "{}: {err:?}", case.name);
}

async fn outbox_ids(db: &TestDb) -> HashSet<Uuid> {
    let sql = format!("SELECT id::text FROM {}", db.t("outbox"));
    let ids: Vec<String> = match db.backend {
        Backend::Postgres => relaybox::sqlx::query_scalar(relaybox::sqlx::AssertSqlSafe(sql))
            .fetch_all(db.store.pg_pool().unwrap())
            .await
            .unwrap(),
        Backend::Sqlite => relaybox::sqlx::query_scalar(relaybox::sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {}",
            db.t("outbox")
        )))
        .fetch_all(db.store.sqlite_pool().unwrap())
        .await
        .unwrap(),
    };
    ids.iter().map(|s| Uuid::parse_str(s).unwrap()).collect()
}

async fn bad_messages_get_typed_errors_and_write_nothing(backend: Backend) {
    let db = TestDb::with_options(backend, |o| o.max_payload_bytes = LIMIT).await;
    let mut n = 0;
    let mut next_good = || {
        n += 1;
        good(n)
    };

    // Owned transaction: each bad message is refused, the transaction stays usable.
    let tx = db.store.begin().await.unwrap();
    let mut goods: HashSet<Uuid> = HashSet::new();
    for case in cases() {
        check(
            &case,
            "Transaction::enqueue",
            tx.enqueue(case.message.clone()).await,
        );
        let g = next_good();
        goods.insert(tx.enqueue(g).await.expect("a good message after a bad one"));
        let batch = [next_good(), case.message.clone(), next_good()];
        check(
            &case,
            "Transaction::enqueue_batch",
            tx.enqueue_batch(&batch).await,
        );
    }
    tx.commit().await.unwrap();
    assert_eq!(
        db.count("outbox").await as usize,
        goods.len(),
        "outbox rows = good messages"
    );
    assert_eq!(outbox_ids(&db).await, goods);

    // Store::enqueue into the caller's own sqlx transaction, which then commits.
    for case in cases() {
        check(
            &case,
            "Store::enqueue",
            db.own_tx(
                Some(&format!("single {}", case.name)),
                std::slice::from_ref(&case.message),
                true,
            )
            .await,
        );
        let batch = [next_good(), case.message.clone(), next_good()];
        check(
            &case,
            "Store::enqueue_batch",
            db.own_tx(Some(&format!("batch {}", case.name)), &batch, true)
                .await,
        );
    }
    assert_eq!(
        outbox_ids(&db).await,
        goods,
        "rejected enqueues wrote nothing"
    );
    assert_eq!(
        db.count("orders").await as usize,
        2 * cases().len(),
        "the callers' own transactions committed their own rows"
    );

    // insert_statement validates too.
    for case in cases() {
        check(
            &case,
            "Store::insert_statement",
            db.store
                .insert_statement(&case.message, relaybox::Placeholders::Dollar)
                .await
                .map(|s| s.sql),
        );
    }
    assert_eq!(
        db.store.pending_count().await.unwrap() as usize,
        goods.len()
    );
    db.cleanup().await;
}

async fn closed_store_refuses_everything(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open_store().await;
    store.close().await;
    assert!(store.is_closed());
    let closed = |r: Result<(), Error>, what: &str| match r {
        Err(Error::Closed { what: "store" }) => {}
        other => panic!("{what} on a closed store: {other:?}"),
    };
    closed(store.begin().await.map(|_| ()), "begin");
    closed(store.check_open(), "check_open");
    let m = Message::new("orders", b"x".to_vec());
    // Enqueue through a connection that does not come from the closed pool.
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            closed(
                store.enqueue(&mut conn, m.clone()).await.map(|_| ()),
                "enqueue",
            );
            closed(
                store
                    .enqueue_batch(&mut conn, &[m.clone(), m.clone()])
                    .await
                    .map(|_| ()),
                "enqueue_batch",
            );
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
            closed(
                store.enqueue(&mut conn, m.clone()).await.map(|_| ()),
                "enqueue",
            );
        }
    }
    closed(store.pending_count().await.map(|_| ()), "pending_count");
    closed(store.status().await.map(|_| ()), "status");
    closed(
        store.append_log(std::slice::from_ref(&m)).await,
        "append_log",
    );
    closed(
        Relay::start(
            store.clone(),
            std::sync::Arc::new(DatabaseSink::new(store.clone())),
            relay_config(),
        )
        .map(|_| ()),
        "Relay::start",
    );
    let source =
        DatabaseSource::new(store.clone(), DatabaseSourceConfig::new("orders", "g")).unwrap();
    closed(
        Consumer::start(
            store.clone(),
            source,
            Recorder::new(&db).arc(),
            consumer_config("g"),
        )
        .map(|_| ()),
        "Consumer::start",
    );
    // Closing one handle does not close another opened separately.
    assert!(!db.store.is_closed());
    assert_eq!(db.count("outbox").await, 0, "nothing written");
    assert_eq!(db.count("log").await, 0, "nothing written");
    db.cleanup().await;
}

fn config_field(err: Error) -> String {
    match err {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

async fn invalid_configuration_is_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = std::sync::Arc::new(DatabaseSink::new(db.store.clone()));
    let bad_relay = |f: fn(&mut RelayConfig)| {
        let mut c = relay_config();
        f(&mut c);
        c
    };
    for (config, field) in [
        (bad_relay(|c| c.batch_size = 0), "batch_size"),
        (bad_relay(|c| c.max_attempts = 0), "max_attempts"),
        (
            bad_relay(|c| c.lease_ttl = Duration::from_millis(10)),
            "lease_ttl",
        ),
        (
            bad_relay(|c| c.publish_timeout = Some(c.lease_ttl)),
            "publish_timeout",
        ),
    ] {
        let err = Relay::start(db.store.clone(), sink.clone(), config).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        assert_eq!(config_field(err), field);
    }
    let err = RelayConfig::from_json(serde_json::json!({"batch_size": 0})).unwrap_err();
    assert_eq!(config_field(err), "batch_size");
    assert_eq!(
        RelayConfig::from_json(serde_json::json!({"batchsize": 10}))
            .unwrap_err()
            .code(),
        "invalid_config"
    );

    let source =
        DatabaseSource::new(db.store.clone(), DatabaseSourceConfig::new("orders", "g")).unwrap();
    let err = Consumer::start(
        db.store.clone(),
        source.clone(),
        Recorder::new(&db).arc(),
        ConsumerConfig {
            batch_size: 0,
            ..consumer_config("g")
        },
    )
    .err()
    .expect("batch_size 0 must be refused");
    assert_eq!(config_field(err), "batch_size");
    let err = Consumer::start(
        db.store.clone(),
        source,
        Recorder::new(&db).arc(),
        ConsumerConfig::default(),
    )
    .err()
    .expect("an empty group must be refused");
    assert_eq!(config_field(err), "group");
    let err = DatabaseSource::new(
        db.store.clone(),
        DatabaseSourceConfig::new("orders", "g").member(3, 3),
    )
    .unwrap_err();
    assert_eq!(config_field(err), "group_member");
    let err = DatabaseSource::new(
        db.store.clone(),
        DatabaseSourceConfig::new("bad topic", "g"),
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid_topic");

    for (tweak, field) in [
        (
            (|o: &mut StoreOptions| o.table_prefix = "Bad-Prefix".into()) as fn(&mut StoreOptions),
            "table_prefix",
        ),
        (|o: &mut StoreOptions| o.partitions = 0, "partitions"),
        (
            |o: &mut StoreOptions| o.max_payload_bytes = 0,
            "max_payload_bytes",
        ),
    ] {
        let mut options = db.options.clone();
        tweak(&mut options);
        let err = Store::connect_with(&db.url, options).await.unwrap_err();
        assert_eq!(config_field(err), field);
    }
    let err = Store::connect("mysql://root@localhost/db")
        .await
        .unwrap_err();
    assert_eq!(config_field(err), "url");
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Secrets (PostgreSQL URLs with passwords).

const SECRET: &str = "S3cr3t-pw-5150";

/// `url` with `SECRET` as the password (the test server trusts local users,
/// so the password is accepted and ignored).
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap().to_string(), host),
        None => ("postgres".to_string(), authority),
    };
    format!("{scheme}://{user}:{SECRET}@{host}{path}")
}

fn assert_no_secret(what: &str, shown: &str) {
    assert!(
        !shown.contains(SECRET),
        "{what} shows the password: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_errors_or_debug_output() {
    let url = with_password(&pg_url());
    assert!(url.contains(SECRET));
    let options = StoreOptions {
        table_prefix: unique_prefix(),
        connect_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    };

    // The server answers with an error: unknown database.
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing_db = format!("{base}/relaybox_no_such_db_{}", &unique_prefix()[2..12]);
    let err = Store::connect_with(&missing_db, options.clone())
        .await
        .expect_err("connecting to a missing database must fail");
    let shown = format!("{err} | {err:?}");
    assert_no_secret("the missing-database error", &shown);
    assert_eq!(err.code(), "database", "{shown}");
    assert!(shown.contains("***"), "the redacted URL is named: {shown}");

    // Nothing listens: connection refused.
    let host_start = url.find('@').unwrap() + 1;
    let path_start = host_start + url[host_start..].find('/').unwrap();
    let refused = format!("{}127.0.0.1:1{}", &url[..host_start], &url[path_start..]);
    assert!(refused.contains(SECRET));
    let err = Store::connect_with(&refused, options.clone())
        .await
        .expect_err("connecting to a closed port must fail");
    assert_no_secret("the connection-refused error", &format!("{err} | {err:?}"));

    // An unparsable URL.
    let garbage = format!("{}127.0.0.1:notaport/db", &url[..host_start]);
    let err = Store::connect_with(&garbage, options.clone())
        .await
        .expect_err("an unparsable URL must fail");
    assert_no_secret("the bad-URL error", &format!("{err} | {err:?}"));
    assert_eq!(err.code(), "invalid_config");

    // A working store opened with a password.
    let store = Store::connect_with(&url, options.clone())
        .await
        .expect("the test server accepts any password");
    store.migrate().await.unwrap();
    assert_no_secret("Store Debug", &format!("{store:?}"));
    assert_no_secret("DatabaseUrl Display", &store.url().to_string());
    assert_no_secret("DatabaseUrl Debug", &format!("{:?}", store.url()));
    assert!(format!("{store:?}").contains("***"));
    assert_eq!(
        store.url().expose(),
        url,
        "the real URL is kept for connecting"
    );
    let tx = store.begin().await.unwrap();
    assert_no_secret("Transaction Debug", &format!("{tx:?}"));
    tx.rollback().await.unwrap();
    let relay = Relay::start(
        store.clone(),
        std::sync::Arc::new(DatabaseSink::new(store.clone())),
        relay_config(),
    )
    .unwrap();
    assert_no_secret("Relay Debug", &format!("{relay:?}"));
    relay.shutdown().await.unwrap();
    // A database error after connecting does not name the URL either.
    let tx = store.begin().await.unwrap();
    let err = tx
        .execute("SELECT * FROM relaybox_no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "database");
    assert_no_secret("a query error", &format!("{err} | {err:?}"));
    tx.rollback().await.unwrap();

    // Clean up this test's tables.
    drop_prefixed_tables(&pg_url(), &options.table_prefix).await;
}
