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
    /// Redis Streams.
    #[cfg(feature = "redis")]
    Redis(crate::transport::redis::RedisConfig),
    /// RabbitMQ.
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(crate::transport::rabbitmq::RabbitMqConfig),
}

impl TransportConfig {
    /// From JSON: `"database"` or `{"kafka": {"bootstrap_servers": "..."}}`.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: TransportConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("transport", crate::redact::redact_url(&e.to_string())))?;
        #[cfg(feature = "kafka")]
        if let TransportConfig::Kafka(k) = &config {
            k.validate()?;
        }
        #[cfg(feature = "redis")]
        if let TransportConfig::Redis(r) = &config {
            r.validate()?;
        }
        #[cfg(feature = "rabbitmq")]
        if let TransportConfig::Rabbitmq(r) = &config {
            r.validate()?;
        }
        Ok(config)
    }

    /// From the environment: `RELAYBOX_TRANSPORT` = `database` (default) or
    /// `kafka`, with `RELAYBOX_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`), or
    /// `rabbitmq`, with `RELAYBOX_RABBITMQ_URL`, else `RABBITMQ_URL` (default
    /// `amqp://127.0.0.1:5672/%2f`).
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
            #[cfg(feature = "redis")]
            "redis" => {
                // `RELAYBOX_REDIS_URL`, else `REDIS_URL`, else the local default.
                let mut redis = crate::transport::redis::RedisConfig::default();
                if let Some(url) = ["RELAYBOX_REDIS_URL", "REDIS_URL"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
                {
                    redis.url = url;
                }
                redis.validate()?;
                Ok(TransportConfig::Redis(redis))
            }
            #[cfg(feature = "rabbitmq")]
            "rabbitmq" => Ok(TransportConfig::Rabbitmq(
                crate::transport::rabbitmq::RabbitMqConfig::from_env()?,
            )),
            other => Err(Error::config(
                "RELAYBOX_TRANSPORT",
                format!("unknown transport {other:?}; use database, kafka, redis or rabbitmq"),
            )),
        }
    }

    /// A short name: `database` or `kafka`.
    pub fn name(&self) -> &'static str {
        match self {
            TransportConfig::Database => "database",
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(_) => "kafka",
            #[cfg(feature = "redis")]
            TransportConfig::Redis(_) => "redis",
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(_) => "rabbitmq",
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
            #[cfg(feature = "redis")]
            TransportConfig::Redis(r) => {
                Arc::new(crate::transport::redis::RedisSink::new(r.clone())?)
            }
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(r) => {
                Arc::new(crate::transport::rabbitmq::RabbitMqSink::new(r.clone())?)
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
            #[cfg(feature = "redis")]
            TransportConfig::Redis(r) => crate::transport::redis::RedisSource::new(
                crate::transport::redis::RedisSourceConfig::new(r.clone(), topic, group),
            )?,
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(r) => crate::transport::rabbitmq::RabbitMqSource::new(
                crate::transport::rabbitmq::RabbitMqSourceConfig::new(r.clone(), topic, group),
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
        #[cfg(feature = "rabbitmq")]
        {
            let t = TransportConfig::from_json(serde_json::json!({"rabbitmq": {
                "url": "amqp://u:secret@127.0.0.1:5672/%2f", "exchange": "relaybox", "codec": "envelope"
            }}))
            .unwrap();
            assert_eq!(t.name(), "rabbitmq");
            assert!(!format!("{t:?}").contains("secret"));
            let bad = TransportConfig::from_json(serde_json::json!({"rabbitmq": {"prefetch": 0}}));
            assert!(matches!(bad, Err(Error::InvalidConfig { field, .. }) if field == "prefetch"));
        }
        assert!(TransportConfig::from_json(serde_json::json!("carrier-pigeon")).is_err());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_from_json() {
        let t = TransportConfig::from_json(
            serde_json::json!({"redis": {"url": "redis://:pw@r:6379", "maxlen": 500}}),
        )
        .unwrap();
        assert_eq!(t.name(), "redis");
        let shown = format!("{t:?}");
        assert!(
            shown.contains("maxlen: Some(500)") && !shown.contains("pw@"),
            "{shown}"
        );
        match TransportConfig::from_json(serde_json::json!({"redis": {"maxlen": 0}})) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "maxlen"),
            other => panic!("{other:?}"),
        }
        let err = TransportConfig::from_json(
            serde_json::json!({"redis": {"url": "redis://:pw@r", "bogus": 1}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
