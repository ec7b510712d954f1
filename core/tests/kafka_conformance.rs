//! The conformance suite against the real Apache Kafka broker, including a
//! broker outage (this binary stops and restarts the shared broker with
//! `dev/services`; cargo runs test binaries one after another).
#![cfg(feature = "kafka")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;
mod kafka_common;

use conformance::Broker;
use relaybox::transport::kafka::KafkaConfig;
use relaybox::TransportConfig;
use uuid::Uuid;

struct Kafka {
    bootstrap: String,
}

impl Kafka {
    fn new() -> Kafka {
        Kafka {
            bootstrap: kafka_common::bootstrap(),
        }
    }
}

#[async_trait::async_trait]
impl Broker for Kafka {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Kafka(KafkaConfig {
            create_topics: true,
            ..KafkaConfig::new(&self.bootstrap)
        })
    }

    async fn dead_lettered(&self, topic: &str, _group: &str) -> Option<Vec<Uuid>> {
        let dlq = format!("{topic}.dlq");
        let records = kafka_common::read_records(&self.bootstrap, &dlq).await;
        Some(records.iter().map(kafka_common::Record::id).collect())
    }

    fn service(&self) -> &'static str {
        "kafka"
    }
}

conformance_tests!(Kafka::new(), outage);
