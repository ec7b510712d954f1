//! The conformance suite against the real Apache Kafka broker, including a
//! broker outage (this binary stops and restarts the shared broker with
//! `dev/services`; cargo runs test binaries one after another), twice: at
//! least once (the default), and exactly once (`transactional_id`, in
//! `exactly_once`).
#![cfg(feature = "kafka")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;
mod kafka_common;

use std::time::Duration;

use conformance::{Broker, SECRET};
use relaybox::transport::kafka::KafkaConfig;
use relaybox::{Message, TransportConfig};
use uuid::Uuid;

struct Kafka {
    bootstrap: String,
    /// Publish exactly once, each scene with a transactional id of its own.
    exactly_once: bool,
}

impl Kafka {
    fn new() -> Kafka {
        Kafka {
            bootstrap: kafka_common::bootstrap(),
            exactly_once: false,
        }
    }

    fn exactly_once() -> Kafka {
        Kafka {
            exactly_once: true,
            ..Kafka::new()
        }
    }
}

#[async_trait::async_trait]
impl Broker for Kafka {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Kafka(KafkaConfig {
            create_topics: true,
            transactional_id: self
                .exactly_once
                .then(|| format!("conformance-{}", kafka_common::suffix())),
            ..KafkaConfig::new(&self.bootstrap)
        })
    }

    /// Reads the dead-letter topic `<topic>.dlq` as any client sees it: the
    /// poison message's record keeps its key, payload bytes, type and
    /// headers, and carries the handler's error and the original topic.
    async fn dead_lettered(
        &self,
        topic: &str,
        _group: &str,
        poison: &Message,
    ) -> Option<Vec<Uuid>> {
        let dlq = format!("{topic}.dlq");
        let records = kafka_common::read_records(&self.bootstrap, &dlq).await;
        if let Some(r) = records.iter().find(|r| r.id() == poison.id) {
            assert_eq!(r.key, poison.key);
            let error = r
                .header("relaybox-error")
                .unwrap_or_else(|| panic!("no relaybox-error header: {r:?}"));
            assert!(
                error.contains(&format!("refuses message {}", poison.id)),
                "relaybox-error {error:?} lacks the handler's error text"
            );
            assert_eq!(r.header("relaybox-original-topic"), Some(topic));
            assert_eq!(r.header("relaybox-type"), Some(poison.event_type.as_str()));
            assert_eq!(
                r.header("x-step"),
                poison.headers.get("x-step").map(String::as_str)
            );
            let raw = kafka_common::read_raw(&self.bootstrap, &dlq).await;
            assert_eq!(
                raw[&(r.partition, r.offset)].payload.as_deref(),
                Some(&poison.payload[..]),
                "the DLQ record carries the original payload bytes"
            );
        }
        Some(records.iter().map(kafka_common::Record::id).collect())
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        vec![
            (
                json!({"kafka": {"bootstrap_servers": ""}}),
                "bootstrap_servers",
            ),
            (
                json!({"kafka": {"topic_partitions": 0}}),
                "topic_partitions",
            ),
            (
                json!({"kafka": {"topic_replication": 0}}),
                "topic_replication",
            ),
            (
                json!({"kafka": {"delivery_timeout": "10ms"}}),
                "delivery_timeout",
            ),
            (json!({"kafka": {"cloudevents": 1}}), "cloudevents"),
            (
                json!({"kafka": {"transactional_id": "orders relay"}}),
                "transactional_id",
            ),
            (
                json!({"kafka": {"offsets_topic": "published"}}),
                "offsets_topic",
            ),
            (json!({"kafka": {"bootstrap": "x:9092"}}), "transport"),
        ]
    }

    /// SASL with the secret as its password, at an address nobody answers on.
    fn secret_configs(&self) -> Vec<TransportConfig> {
        let mut config = KafkaConfig {
            delivery_timeout: Duration::from_secs(3),
            transactional_id: self.exactly_once.then(|| "conformance-secret".to_string()),
            ..KafkaConfig::new("127.0.0.1:1")
        };
        for (k, v) in [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "relay"),
            ("sasl.password", SECRET),
        ] {
            config.properties.insert(k.into(), v.into());
        }
        vec![TransportConfig::Kafka(config)]
    }

    fn service(&self) -> &'static str {
        "kafka"
    }
}

conformance_tests!(Kafka::new(), outage);

mod exactly_once {
    conformance_tests!(super::Kafka::exactly_once(), outage);
}
