//! TLS to every server, against the real servers of `dev/services`, which
//! present a server certificate for the name `localhost` signed by a test
//! CA (`RELAYBOX_TLS_CA`); `RELAYBOX_TLS_OTHER_CA` is an unrelated CA, and
//! connecting to `127.0.0.1` is connecting to a name the certificate does
//! not cover. With the right CA and name, messages go through (PostgreSQL,
//! Redis `rediss://`, Kafka `security.protocol=SSL`, RabbitMQ `amqps://`);
//! with the wrong CA or name, the error names the cause and never the
//! password of the URL. What the relay wrote over TLS is read back over the
//! servers' plaintext ports by a third-party client.
//!
//! Needs `dev/services start postgres redis kafka rabbitmq && eval
//! "$(dev/services env)"`; the tests fail, never skip, without them.
#![cfg(all(feature = "redis", feature = "kafka", feature = "rabbitmq"))]

#[path = "support/amqp.rs"]
mod amqp;
mod common;
mod kafka_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{messages, relay_config, unique_prefix, wait_for, Backend, TestDb, WAIT};
use lapin::types::FieldTable;
use relaybox::sqlx;
use relaybox::transport::kafka::KafkaConfig;
use relaybox::transport::rabbitmq::{RabbitMqConfig, RabbitMqSink};
use relaybox::transport::redis::{RedisConfig, RedisSink};
use relaybox::{Error, Message, Relay, Sink, Store, StoreOptions, TransportConfig};
use uuid::Uuid;

const START_HINT: &str = "start the servers with `dev/services start postgres redis kafka \
     rabbitmq && eval \"$(dev/services env)\"`";

/// A password no server expects; it must never show in an error.
const SECRET: &str = "s3cret-tls-pw";

/// The value of an environment variable `dev/services env` exports.
fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: the TLS tests run against the TLS endpoints of dev/services \
             and are never skipped; {START_HINT}"
        ),
    }
}

fn ca() -> String {
    env("RELAYBOX_TLS_CA")
}

fn other_ca() -> String {
    env("RELAYBOX_TLS_OTHER_CA")
}

/// `url` with `from` (once) replaced by `to`.
fn with(url: &str, from: &str, to: &str) -> String {
    assert!(url.contains(from), "{url} has no {from}");
    url.replacen(from, to, 1)
}

/// `scheme://user@host...` with a password added to the user.
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    match rest.split_once('@') {
        Some((user, host)) => format!("{scheme}://{user}:{SECRET}@{host}"),
        None => format!("{scheme}://:{SECRET}@{rest}"),
    }
}

/// The error's `Display` and `Debug`, checked to hold none of the password.
fn shown(e: &Error) -> String {
    let text = format!("{e} / {e:?}");
    assert!(!text.contains(SECRET), "the password shows: {text}");
    text
}

/// Connects a store to `url` under the table prefix `prefix`.
async fn connect_as(url: &str, prefix: &str) -> relaybox::Result<Store> {
    Store::connect_with(
        url,
        StoreOptions {
            table_prefix: prefix.to_string(),
            ..StoreOptions::default()
        },
    )
    .await
}

/// Connects a store to `url` (nothing created).
async fn connect(url: &str) -> relaybox::Result<Store> {
    connect_as(url, &unique_prefix()).await
}

/// Message ids per key, in order.
fn per_key(items: impl IntoIterator<Item = (Option<String>, Uuid)>) -> HashMap<String, Vec<Uuid>> {
    let mut out: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (key, id) in items {
        out.entry(key.unwrap_or_default()).or_default().push(id);
    }
    out
}

fn sent_per_key(batch: &[Message]) -> HashMap<String, Vec<Uuid>> {
    per_key(batch.iter().map(|m| (m.key.clone(), m.id)))
}

async fn connect_err(url: &str) -> String {
    let e = connect(url).await.expect_err("connecting must fail");
    assert_eq!(e.code(), "database", "{e:?}");
    shown(&e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_the_right_ca_migrates_and_relays_over_tls() {
    common::init_tracing();
    let url = env("RELAYBOX_TEST_DATABASE_TLS_URL");
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let prefix = unique_prefix();
    let store = connect_as(&url, &prefix)
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}"));
    let pool = store.pg_pool().expect("a PostgreSQL store");
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the connection is not encrypted");
    assert!(version.is_some_and(|v| v.starts_with("TLS")));

    store.migrate().await.expect("migrate over TLS");
    let topic = format!("tls-{}", &prefix[2..12]);
    let batch = messages(&topic, 20, 2);
    let tx = store.begin().await.unwrap();
    for m in &batch {
        tx.enqueue(m.clone()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let relay = common::start_db_relay(&store, relay_config());
    common::wait_in_log(&store, &topic, &batch, WAIT).await;
    relay.shutdown().await.unwrap();
    store.close().await;
    common::drop_prefixed_tables(&common::pg_url(), &prefix).await;

    // `require` encrypts without checking the certificate; `verify-ca`
    // checks the CA but not the name (127.0.0.1 is not in the certificate).
    let require = with(&url, "sslmode=verify-full", "sslmode=require");
    let require = with(&require, &format!("&sslrootcert={}", ca()), "");
    connect(&require).await.expect("sslmode=require");
    let verify_ca = with(&url, "sslmode=verify-full", "sslmode=verify-ca");
    connect(&with(&verify_ca, "@localhost:", "@127.0.0.1:"))
        .await
        .expect("sslmode=verify-ca to another name of the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_failures_name_their_cause_without_the_password() {
    common::init_tracing();
    let url = with_password(&env("RELAYBOX_TEST_DATABASE_TLS_URL"));

    let wrong_ca = connect_err(&with(&url, &ca(), &other_ca())).await;
    assert!(
        wrong_ca.contains("not signed by a trusted certificate authority")
            && wrong_ca.contains("sslrootcert"),
        "{wrong_ca}"
    );

    let wrong_host = connect_err(&with(&url, "@localhost:", "@127.0.0.1:")).await;
    assert!(
        wrong_host.contains("not valid for the host name \"127.0.0.1\""),
        "{wrong_host}"
    );

    // Without sslrootcert the system's CAs do not include the test CA.
    let no_ca = connect_err(&with(&url, &format!("&sslrootcert={}", ca()), "")).await;
    assert!(no_ca.contains("unknown issuer"), "{no_ca}");

    // PostgreSQL does not offer TLS on its Unix socket: a server without TLS.
    let socket = with_password(&env("RELAYBOX_TEST_DATABASE_SOCKET_URL"));
    let plain = connect(&socket)
        .await
        .expect("the socket without TLS (prefer)");
    plain.close().await;
    let required = connect_err(&format!("{socket}&sslmode=require")).await;
    assert!(
        required.contains("the server does not support TLS"),
        "{required}"
    );

    // Settings that cannot work are config errors naming the setting.
    for (bad, field) in [
        (
            with(&url, "sslmode=verify-full", "sslmode=verify"),
            "sslmode",
        ),
        (with(&url, &ca(), "/nonexistent/ca.pem"), "sslrootcert"),
        (format!("{url}&sslcert=/nonexistent/client.pem"), "sslcert"),
    ] {
        match connect(&bad).await {
            Err(Error::InvalidConfig {
                field: f,
                ref reason,
            }) => {
                assert_eq!(f, field, "{reason}");
                assert!(!reason.contains(SECRET), "{reason}");
            }
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
}

/// Publishes `batch` through `sink` with a relay on `db`'s store.
async fn relay_through(db: &TestDb, sink: Arc<dyn Sink>, batch: &[Message]) {
    let tx = db.store.begin().await.unwrap();
    for m in batch {
        tx.enqueue(m.clone()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let relay = Relay::start(db.store.clone(), sink, relay_config()).expect("relay");
    common::wait_until_drained(&db.store, WAIT, Some(&relay)).await;
    relay.shutdown().await.unwrap();
}

/// The first error of publishing one message through `sink`.
async fn publish_err(sink: &dyn Sink) -> Error {
    sink.publish(&messages("tls-fail", 1, 1))
        .await
        .into_iter()
        .next()
        .expect("one result")
        .expect_err("publishing must fail")
}

fn redis_config(url: &str, ca_file: &str) -> RedisConfig {
    RedisConfig {
        tls_ca_file: Some(ca_file.to_string()),
        command_timeout: Duration::from_secs(2),
        ..RedisConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rediss_with_the_ca_relays_and_wrong_ca_or_host_fail_clearly() {
    let tls_url = env("RELAYBOX_REDIS_TLS_URL");
    let plain_url = env("RELAYBOX_REDIS_URL");
    assert!(tls_url.starts_with("rediss://localhost:"), "{tls_url}");
    let topic = format!("relaybox-test-tls-{}", &unique_prefix()[2..12]);
    let batch = messages(&topic, 30, 3);
    let transport = TransportConfig::from_json(serde_json::json!({
        "redis": {"url": tls_url, "tls_ca_file": ca()}
    }))
    .expect("rediss settings");
    let db = TestDb::new(Backend::Sqlite).await;
    let sink = transport.sink(&db.store).expect("sink");
    relay_through(&db, sink, &batch).await;

    // redis-cli's protocol from the plaintext port: every message is there.
    let mut conn = redis::Client::open(plain_url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("Redis at {plain_url}: {e}; {START_HINT}"));
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&topic)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    let _: i64 = redis::cmd("DEL").arg(&topic).query(&mut conn).unwrap();
    let field = |f: &[(String, String)], name: &str| {
        f.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no field {name} in {f:?}"))
    };
    let got = per_key(entries.iter().map(|(_, f)| {
        let id = Uuid::parse_str(&field(f, "id")).unwrap();
        (Some(field(f, "key")), id)
    }));
    assert_eq!(got, sent_per_key(&batch));

    let secret_url = with_password(&tls_url);
    let wrong_ca = RedisSink::new(redis_config(&secret_url, &other_ca())).unwrap();
    let e = shown(&publish_err(&wrong_ca).await);
    assert!(
        e.contains("not signed by a trusted certificate authority") && e.contains("tls_ca_file"),
        "{e}"
    );
    let wrong_host = RedisSink::new(redis_config(
        &with(&secret_url, "@localhost:", "@127.0.0.1:"),
        &ca(),
    ))
    .unwrap();
    let e = shown(&publish_err(&wrong_host).await);
    assert!(e.contains("not valid for the host name"), "{e}");

    // TLS files without rediss:// are a config error naming the setting.
    match RedisSink::new(redis_config(&plain_url, &ca())) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "tls_ca_file"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ssl_listener_with_the_ca_relays() {
    let ssl_bootstrap = env("RELAYBOX_KAFKA_SSL_BOOTSTRAP");
    let plain_bootstrap = kafka_common::bootstrap();
    let topic = kafka_common::topic("tls");
    let batch = messages(&topic, 30, 3);
    let mut config = KafkaConfig {
        create_topics: true,
        ..KafkaConfig::new(&ssl_bootstrap)
    };
    config
        .properties
        .insert("security.protocol".into(), "SSL".into());
    config.properties.insert("ssl.ca.location".into(), ca());
    let db = TestDb::new(Backend::Sqlite).await;
    let sink = TransportConfig::Kafka(config).sink(&db.store).unwrap();
    relay_through(&db, sink, &batch).await;

    // kcat over the plaintext listener: every message, in order per key.
    let records = kafka_common::read_records(&plain_bootstrap, &topic).await;
    kafka_common::delete_topics(&plain_bootstrap, &[&topic]).await;
    assert_eq!(kafka_common::ids_per_key(&records), sent_per_key(&batch));

    // The wrong CA: the sink's check says the certificate was not verified.
    let mut wrong = KafkaConfig::new(&ssl_bootstrap);
    wrong
        .properties
        .insert("security.protocol".into(), "SSL".into());
    wrong
        .properties
        .insert("ssl.ca.location".into(), other_ca());
    let sink = TransportConfig::Kafka(wrong).sink(&db.store).unwrap();
    let err = sink.check().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().contains("certificate verify failed"),
        "the error names the cause: {err}"
    );

    // The right CA, but a name the certificate is not for.
    let mut wrong_host = KafkaConfig::new(ssl_bootstrap.replace("localhost", "127.0.0.1"));
    wrong_host
        .properties
        .insert("security.protocol".into(), "SSL".into());
    wrong_host.properties.insert("ssl.ca.location".into(), ca());
    let sink = TransportConfig::Kafka(wrong_host).sink(&db.store).unwrap();
    let err = sink.check().await.unwrap_err().to_string();
    assert!(err.contains("certificate verify failed"), "{err}");

    // A CA file librdkafka cannot load is a config error naming the property.
    let mut bad = KafkaConfig::new(&ssl_bootstrap);
    bad.properties
        .insert("security.protocol".into(), "SSL".into());
    bad.properties
        .insert("ssl.ca.location".into(), "/nonexistent/ca.pem".into());
    match relaybox::transport::kafka::KafkaSink::new(bad) {
        Err(Error::InvalidConfig { reason, .. }) => {
            assert!(reason.contains("ssl.ca.location"), "{reason}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_amqps_with_the_ca_relays_and_a_wrong_ca_or_host_fails_clearly() {
    let tls_url = env("RELAYBOX_RABBITMQ_TLS_URL");
    let plain_url = env("RELAYBOX_RABBITMQ_URL");
    let suffix = &unique_prefix()[2..12];
    let exchange = format!("relaybox-tls-{suffix}");
    let queue = format!("it-tls-{suffix}");
    let topic = format!("tls-{suffix}");

    // A third-party client on the plaintext port binds the queue and reads it.
    let (_conn, ch) = amqp::raw(&plain_url).await;
    amqp::bind_queue(&ch, &exchange, &queue, &topic, FieldTable::default()).await;

    let config = RabbitMqConfig {
        exchange: exchange.clone(),
        tls_ca_file: Some(ca()),
        ..RabbitMqConfig::new(&tls_url)
    };
    let batch = messages(&topic, 30, 3);
    let db = TestDb::new(Backend::Sqlite).await;
    relay_through(&db, Arc::new(RabbitMqSink::new(config).unwrap()), &batch).await;
    let mut got = Vec::new();
    wait_for("30 messages in the queue", WAIT, async || {
        for m in amqp::drain(&ch, &queue).await {
            let key = m
                .properties
                .correlation_id()
                .as_ref()
                .map(|k| k.to_string());
            got.push((key, m.message_id()));
        }
        if got.len() >= batch.len() {
            Ok(())
        } else {
            Err(format!("{} messages", got.len()))
        }
    })
    .await;
    amqp::delete(&ch, &[&queue], &[&exchange]).await;
    assert_eq!(per_key(got), sent_per_key(&batch));

    let secret = with(&tls_url, "guest:guest@", &format!("guest:{SECRET}@"));
    let wrong_ca = RabbitMqSink::new(RabbitMqConfig {
        tls_ca_file: Some(other_ca()),
        ..RabbitMqConfig::new(&secret)
    })
    .unwrap();
    let e = shown(&publish_err(&wrong_ca).await);
    assert!(
        e.contains("certificate could not be verified") && e.contains("tls_ca_file"),
        "{e}"
    );
    let wrong_host = RabbitMqSink::new(RabbitMqConfig {
        tls_ca_file: Some(ca()),
        ..RabbitMqConfig::new(with(&secret, "@localhost:", "@127.0.0.1:"))
    })
    .unwrap();
    let e = shown(&publish_err(&wrong_host).await);
    assert!(
        e.contains("certificate could not be verified") && e.contains("host name"),
        "{e}"
    );
}
