//! A relay's readiness (`Relay::health`) and metrics as an application
//! embedding the relay sees them: the application installs its own
//! Prometheus recorder (metrics-exporter-prometheus) and renders it.
//!
//! The relay publishes to a redis-server this test starts on a free port
//! and stops and restarts; the store is the PostgreSQL test database
//! (`RELAYBOX_TEST_DATABASE_URL`). Needs the `redis-server` binary
//! (`dev/services start redis` installs it); the test fails, never skips,
//! without it. The broker sinks' checks run against the Kafka and RabbitMQ
//! servers of `dev/services` (`RELAYBOX_KAFKA_BOOTSTRAP`, `RELAYBOX_RABBITMQ_URL`).
#![cfg(feature = "redis")]

mod common;
#[path = "support/private_redis.rs"]
mod private_redis;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{messages, relay_config, wait_for, Backend, TestDb, WAIT};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use private_redis::PrivateRedis;
use relaybox::transport::redis::{RedisConfig, RedisSink};
use relaybox::{Relay, RelayConfig};

/// The process's recorder, as an application would install it.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder")
    })
}

/// The value of the sample `name{labels}` in the rendered metrics, if any.
fn sample(name: &str, labels: &str) -> Option<f64> {
    let text = recorder().render();
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the sample `name{labels}` is `want`.
async fn wait_sample(name: &str, labels: &str, want: f64) {
    wait_for(
        &format!("{name}{labels} = {want}"),
        WAIT,
        async || match sample(name, labels) {
            Some(n) if (n - want).abs() < f64::EPSILON => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_and_the_metrics_reach_the_applications_recorder() {
    recorder();
    let mut redis = PrivateRedis::start();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = format!("health-{}", db.prefix.trim_end_matches('_'));
    let sink = RedisSink::new(RedisConfig {
        command_timeout: Duration::from_millis(500),
        ..RedisConfig::new(redis.url())
    })
    .unwrap();
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(sink),
        RelayConfig {
            metrics_interval: Duration::from_millis(100),
            ..relay_config()
        },
    )
    .unwrap();

    // Ready: database, leases and the broker.
    let health = wait_for("the relay to be ready", WAIT, async || {
        let h = relay.health().await;
        if h.is_ready() {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    assert!(
        health.database && health.leases && health.transport,
        "{health:?}"
    );
    assert!(health.partitions_held > 0, "{health:?}");
    assert_eq!(health.reason(), None);

    let labels = format!("{{topic=\"{topic}\"}}");
    db.enqueue_committed(&messages(&topic, 20, 4)).await;
    wait_sample("relaybox_delivered_total", &labels, 20.0).await;
    let text = recorder().render();
    for name in [
        "relaybox_leases_held",
        "relaybox_last_publish_timestamp_seconds",
        "relaybox_publish_latency_seconds",
        "relaybox_batch_size",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    // The broker goes away: not ready, naming the transport; the relay's
    // attempts meanwhile count as retries.
    redis.kill();
    let health = wait_for("the relay to be unready", WAIT, async || {
        let h = relay.health().await;
        if h.is_ready() {
            Err(format!("{h:?}"))
        } else {
            Ok(h)
        }
    })
    .await;
    assert!(!health.transport && health.database, "{health:?}");
    let reason = health.reason().unwrap();
    assert!(reason.contains("transport redis"), "{reason}");
    db.enqueue_committed(&messages(&topic, 5, 5)).await;
    wait_for("retries in the metrics", WAIT, async || {
        match sample("relaybox_retried_total", &labels) {
            Some(n) if n > 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_sample("relaybox_backlog_messages", &labels, 5.0).await;

    // Back: ready again, and the backlog drains.
    redis.restart();
    wait_for("the relay to be ready again", WAIT, async || {
        let h = relay.health().await;
        if h.is_ready() {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    wait_sample("relaybox_delivered_total", &labels, 25.0).await;
    wait_sample("relaybox_backlog_messages", &labels, 0.0).await;

    relay.shutdown().await.unwrap();
    let health = relay.health().await;
    assert!(!health.running && !health.is_ready(), "{health:?}");
    db.cleanup().await;
}

/// `name` from the environment; fails the test loudly when it is not set.
fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| {
            panic!("{name} is not set: run `dev/services start kafka rabbitmq && eval \"$(dev/services env)\"`")
        })
}

/// Each broker sink's check answers Ok against a running broker and an
/// error naming the transport against an address where nothing listens.
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sinks_check_their_connection() {
    use relaybox::transport::kafka::{KafkaConfig, KafkaSink};
    use relaybox::transport::rabbitmq::{RabbitMqConfig, RabbitMqSink};
    use relaybox::{Error, Sink};

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let is_transport_error = |e: &Error, name: &str| matches!(e, Error::Transport { transport, .. } if transport == name);

    let kafka = KafkaSink::new(KafkaConfig::new(env("RELAYBOX_KAFKA_BOOTSTRAP"))).unwrap();
    kafka.check().await.expect("Kafka check");
    let e = KafkaSink::new(KafkaConfig::new(&closed))
        .unwrap()
        .check()
        .await
        .expect_err("Kafka check with no broker");
    assert!(is_transport_error(&e, "kafka"), "{e:?}");

    let rabbit = RabbitMqSink::new(RabbitMqConfig::new(env("RELAYBOX_RABBITMQ_URL"))).unwrap();
    rabbit.check().await.expect("RabbitMQ check");
    let url = format!("amqp://guest:s3cret@{closed}/%2f");
    let e = RabbitMqSink::new(RabbitMqConfig::new(url))
        .unwrap()
        .check()
        .await
        .expect_err("RabbitMQ check with no broker");
    assert!(is_transport_error(&e, "rabbitmq"), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
}
