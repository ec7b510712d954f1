//! The conformance suite against the real RabbitMQ node of `dev/services`,
//! including a broker outage (this binary stops and restarts the node with
//! `dev/services`; cargo runs test binaries one after another).
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_RABBITMQ_URL`
//! (`dev/services start postgres rabbitmq && eval "$(dev/services env)"`).
#![cfg(feature = "rabbitmq")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;
#[path = "support/amqp.rs"]
mod amqp;

use std::time::Duration;

use conformance::{Broker, SECRET};
use relaybox::transport::rabbitmq::{RabbitMqConfig, RabbitMqSource, RabbitMqSourceConfig};
use relaybox::{Message, Source, Store, TransportConfig};
use uuid::Uuid;

/// The node of `dev/services`, with an exchange of this test's own.
struct RabbitMq {
    config: RabbitMqConfig,
}

impl RabbitMq {
    fn new() -> RabbitMq {
        RabbitMq {
            config: RabbitMqConfig {
                exchange: format!("relaybox-conf-{:08x}", rand::random::<u32>()),
                ..RabbitMqConfig::new(amqp::url())
            },
        }
    }
}

#[async_trait::async_trait]
impl Broker for RabbitMq {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Rabbitmq(self.config.clone())
    }

    /// Declares the group's queue and its binding, as the source does when
    /// it starts, so that nothing published before is unroutable.
    async fn prepare(&self, _store: &Store, topic: &str, group: &str) {
        let source =
            RabbitMqSource::new(RabbitMqSourceConfig::new(self.config.clone(), topic, group))
                .expect("rabbitmq source");
        source.connect().await.expect("declare the group's queue");
        source.close().await.expect("close");
    }

    /// Drains the group's dead-letter queue; the poison message's copy
    /// carries its body, its key as the correlation id, its headers and the
    /// error, original topic and original queue as `relaybox-*` headers, and
    /// the original queue holds nothing more.
    async fn dead_lettered(&self, topic: &str, group: &str, poison: &Message) -> Option<Vec<Uuid>> {
        let (conn, ch) = amqp::raw(&amqp::url()).await;
        let queue = format!("{group}.{topic}");
        let got = amqp::drain(&ch, &format!("{queue}.dlq")).await;
        if let Some(d) = got.iter().find(|d| d.message_id() == poison.id) {
            assert_eq!(d.body, poison.payload);
            assert_eq!(d.exchange, self.config.dead_letter_exchange());
            let error = d.header("relaybox-error").expect("relaybox-error header");
            assert!(error.contains(&poison.id.to_string()), "{error}");
            assert_eq!(d.header("relaybox-original-topic").as_deref(), Some(topic));
            assert_eq!(
                d.header("relaybox-original-queue").as_deref(),
                Some(queue.as_str())
            );
            assert_eq!(d.header("x-step"), poison.headers.get("x-step").cloned());
            assert_eq!(
                amqp::Got::prop(d.properties.correlation_id()),
                poison.key.clone()
            );
            assert_eq!(
                amqp::queue_depth(&ch, &queue).await,
                0,
                "the original is acknowledged"
            );
        }
        let _ = conn.close(200, "done".into()).await;
        Some(got.iter().map(amqp::Got::message_id).collect())
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        vec![
            (json!({"rabbitmq": {"url": "redis://127.0.0.1"}}), "url"),
            (json!({"rabbitmq": {"url": "amqp://[::1"}}), "url"),
            (json!({"rabbitmq": {"exchange": ""}}), "exchange"),
            (json!({"rabbitmq": {"prefetch": 0}}), "prefetch"),
            (
                json!({"rabbitmq": {"confirm_timeout": "1ms"}}),
                "confirm_timeout",
            ),
            (json!({"rabbitmq": {"codec": "xml"}}), "transport"),
            (json!({"rabbitmq": {"exchagne": "x"}}), "transport"),
        ]
    }

    /// A login the node refuses, and a port nobody listens on.
    fn secret_configs(&self) -> Vec<TransportConfig> {
        let host = self
            .config
            .url
            .split('@')
            .nth(1)
            .unwrap_or("127.0.0.1:5672/%2f");
        [
            format!("amqp://guest:{SECRET}@{host}"),
            format!("amqp://relay:{SECRET}@127.0.0.1:1/%2f"),
        ]
        .into_iter()
        .map(|url| {
            TransportConfig::Rabbitmq(RabbitMqConfig {
                connect_timeout: Duration::from_secs(3),
                ..RabbitMqConfig::new(url)
            })
        })
        .collect()
    }

    fn service(&self) -> &'static str {
        "rabbitmq"
    }
}

conformance_tests!(RabbitMq::new(), outage);
