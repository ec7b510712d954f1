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

use conformance::Broker;
use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};
use relaybox::transport::rabbitmq::{RabbitMqConfig, RabbitMqSource, RabbitMqSourceConfig};
use relaybox::{Source, Store, TransportConfig};
use uuid::Uuid;

/// The node of `dev/services`, with an exchange of this test's own.
struct RabbitMq {
    config: RabbitMqConfig,
}

impl RabbitMq {
    fn new() -> RabbitMq {
        let url = match std::env::var("RELAYBOX_RABBITMQ_URL") {
            Ok(u) if !u.trim().is_empty() => u,
            _ => panic!(
                "RELAYBOX_RABBITMQ_URL is not set: start RabbitMQ with \
                 `dev/services start rabbitmq && eval \"$(dev/services env)\"`"
            ),
        };
        RabbitMq {
            config: RabbitMqConfig {
                exchange: format!("relaybox-conf-{:08x}", rand::random::<u32>()),
                ..RabbitMqConfig::new(url)
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

    async fn dead_lettered(&self, topic: &str, group: &str) -> Option<Vec<Uuid>> {
        let conn = Connection::connect(&self.config.url, ConnectionProperties::default())
            .await
            .expect("AMQP connection");
        let ch = conn.create_channel().await.expect("channel");
        let dlq = format!("{group}.{topic}.dlq");
        let mut ids = Vec::new();
        while let Some(m) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let id = m
                .delivery
                .properties
                .message_id()
                .clone()
                .expect("message_id");
            ids.push(Uuid::parse_str(id.as_str()).expect("message_id is a UUID"));
        }
        let _ = conn.close(200, "done".into()).await;
        Some(ids)
    }

    fn service(&self) -> &'static str {
        "rabbitmq"
    }
}

conformance_tests!(RabbitMq::new(), outage);
