//! Choosing a transport with one setting: `"database"` (the default) or
//! `{"kafka": {...}}`, from JSON or from the environment.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::source::Source;
use crate::store::Store;
use crate::transport::database::{DatabaseSink, DatabaseSource, DatabaseSourceConfig};

/// Which broker the relay publishes to and consumers read from.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransportConfig {
    /// The store's own log table (no broker).
    #[default]
    Database,
    /// Apache Kafka.
    #[cfg(feature = "kafka")]
    Kafka(crate::transport::kafka::KafkaConfig),
}

impl TransportConfig {
    /// From JSON: `"database"` or `{"kafka": {"bootstrap_servers": "..."}}`.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: TransportConfig =
            serde_json::from_value(value).map_err(|e| Error::config("transport", e.to_string()))?;
        #[cfg(feature = "kafka")]
        if let TransportConfig::Kafka(k) = &config {
            k.validate()?;
        }
        Ok(config)
    }

    /// From the environment: `RELAYBOX_TRANSPORT` = `database` (default) or
    /// `kafka`, with `RELAYBOX_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`).
    pub fn from_env() -> Result<Self> {
        let kind = std::env::var("RELAYBOX_TRANSPORT").unwrap_or_else(|_| "database".into());
        match kind.as_str() {
            "" | "database" => Ok(TransportConfig::Database),
            #[cfg(feature = "kafka")]
            "kafka" => {
                let mut kafka = crate::transport::kafka::KafkaConfig::default();
                if let Ok(servers) = std::env::var("RELAYBOX_KAFKA_BOOTSTRAP") {
                    kafka.bootstrap_servers = servers;
                }
                kafka.create_topics = true;
                kafka.validate()?;
                Ok(TransportConfig::Kafka(kafka))
            }
            other => Err(Error::config(
                "RELAYBOX_TRANSPORT",
                format!("unknown transport {other:?}; use database or kafka"),
            )),
        }
    }

    /// A short name: `database` or `kafka`.
    pub fn name(&self) -> &'static str {
        match self {
            TransportConfig::Database => "database",
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(_) => "kafka",
        }
    }

    /// The sink the relay publishes to.
    pub fn sink(&self, store: &Store) -> Result<Arc<dyn Sink>> {
        Ok(match self {
            TransportConfig::Database => Arc::new(DatabaseSink::new(store.clone())),
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(k) => {
                Arc::new(crate::transport::kafka::KafkaSink::new(k.clone())?)
            }
        })
    }

    /// A source reading `topic` as consumer group `group`. Call inside a tokio runtime.
    pub fn source(&self, store: &Store, topic: &str, group: &str) -> Result<Arc<dyn Source>> {
        Ok(match self {
            TransportConfig::Database => {
                DatabaseSource::new(store.clone(), DatabaseSourceConfig::new(topic, group))?
            }
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(k) => crate::transport::kafka::KafkaSource::new(
                crate::transport::kafka::KafkaSourceConfig::new(k.clone(), topic, group),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json() {
        assert!(matches!(
            TransportConfig::from_json(serde_json::json!("database")).unwrap(),
            TransportConfig::Database
        ));
        #[cfg(feature = "kafka")]
        {
            let t = TransportConfig::from_json(
                serde_json::json!({"kafka": {"bootstrap_servers": "k:9092"}}),
            )
            .unwrap();
            assert_eq!(t.name(), "kafka");
        }
        assert!(TransportConfig::from_json(serde_json::json!("carrier-pigeon")).is_err());
    }
}
