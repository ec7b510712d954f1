//! Kafka connection settings, shared by the sink and the source, with
//! secret-bearing properties redacted wherever they are shown.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::transport::cloudevents::CloudEvents;

/// Settings of a Kafka client.
///
/// `properties` are librdkafka properties passed through to both the producer
/// and the consumer (`security.protocol`, `sasl.mechanism`, `sasl.username`,
/// `sasl.password`, `ssl.ca.location`, `compression.type`, ...);
/// `producer_properties` / `consumer_properties` apply to one side only and
/// win over `properties`. Values of properties whose name mentions a
/// password, secret, token, key or JAAS config never appear in `Debug`, logs
/// or errors.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]` (default `127.0.0.1:9092`).
    pub bootstrap_servers: String,
    /// librdkafka properties for producer and consumer.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer_properties: BTreeMap<String, String>,
    /// Create missing topics through the admin API instead of failing (default false).
    pub create_topics: bool,
    /// Partitions of topics created by relaybox (default 3).
    pub topic_partitions: i32,
    /// Replication factor of topics created by relaybox (default 1).
    pub topic_replication: i32,
    /// How long the sink waits for a record's delivery report before the
    /// relay counts the attempt as failed and retries it (default 5 s; keep
    /// it below the relay's `publish_timeout`). The record itself stays in
    /// the producer, which keeps trying until the broker has it (the sink's
    /// librdkafka `message.timeout.ms` is 0, no limit): a timed-out record
    /// would leave a gap that later records of its key could pass. The
    /// dead-letter producer of a source gives up after this long.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub delivery_timeout: Duration,
    /// Write CloudEvents binary-mode headers (`ce_id`, `ce_source`,
    /// `ce_type`, `ce_specversion`, `ce_time`) beside the envelope headers:
    /// `true`, or the default source as a string (default false; see
    /// [`CloudEvents`]).
    pub cloudevents: CloudEvents,
    /// Publish exactly once (default off): set, the relay publishes each
    /// outbox partition's batches in Kafka transactions of a producer whose
    /// `transactional.id` is `{transactional_id}-{partition}`, each with a
    /// record of what it published in `offsets_topic`, so that a relay that
    /// crashes and is taken over publishes no record twice for consumers
    /// reading with `isolation.level=read_committed`. Letters, digits, `.`,
    /// `_` and `-`; unique per outbox among the relays of one cluster. See
    /// docs/kafka.md, "Exactly once".
    pub transactional_id: Option<String>,
    /// The compacted topic holding the records of exactly-once publishing,
    /// one partition per outbox partition, created when missing (default
    /// `{transactional_id}.relaybox-published`).
    pub offsets_topic: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            create_topics: false,
            topic_partitions: 3,
            topic_replication: 1,
            delivery_timeout: Duration::from_secs(5),
            cloudevents: CloudEvents::off(),
            transactional_id: None,
            offsets_topic: None,
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &redacted(&self.properties))
            .field("producer_properties", &redacted(&self.producer_properties))
            .field("consumer_properties", &redacted(&self.consumer_properties))
            .field("create_topics", &self.create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("cloudevents", &self.cloudevents)
            .field("transactional_id", &self.transactional_id)
            .field("offsets_topic", &self.offsets_topic)
            .finish()
    }
}

/// Whether a property's value is a secret.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "jaas"]
        .iter()
        .any(|s| n.contains(s))
        && !n.ends_with(".location")
}

fn redacted(props: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    props
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if is_secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                },
            )
        })
        .collect()
}

impl KafkaConfig {
    /// Connects to `bootstrap_servers` with default settings.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            ..KafkaConfig::default()
        }
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: KafkaConfig =
            serde_json::from_value(value).map_err(|e| Error::config("kafka", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config("bootstrap_servers", "must not be empty"));
        }
        if self.topic_partitions < 1 {
            return Err(Error::config("topic_partitions", "must be at least 1"));
        }
        if self.topic_replication < 1 {
            return Err(Error::config("topic_replication", "must be at least 1"));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(Error::config("delivery_timeout", "must be at least 100 ms"));
        }
        if let Some(id) = &self.transactional_id {
            check_name("transactional_id", id)?;
        }
        match (&self.offsets_topic, &self.transactional_id) {
            (Some(_), None) => {
                return Err(Error::config(
                    "offsets_topic",
                    "is the topic of exactly-once publishing: set transactional_id too",
                ))
            }
            (Some(topic), Some(_)) => check_name("offsets_topic", topic)?,
            _ => {}
        }
        self.cloudevents.validate()
    }

    /// The topic of exactly-once publishing's records, when it is on.
    pub(crate) fn published_topic(&self) -> Option<String> {
        let id = self.transactional_id.as_ref()?;
        Some(
            self.offsets_topic
                .clone()
                .unwrap_or_else(|| format!("{id}.relaybox-published")),
        )
    }

    /// The librdkafka configuration for one side: relaybox's defaults, then
    /// `properties`, then the side's own properties.
    pub(crate) fn client_config(
        &self,
        defaults: &[(&str, String)],
        side: &BTreeMap<String, String>,
    ) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in defaults {
            c.set(*k, v);
        }
        for (k, v) in self.properties.iter().chain(side) {
            c.set(k, v);
        }
        c
    }
}

/// A librdkafka configuration error, with secret values left out.
/// Checks a name that goes into a topic name or a transactional id: 1 to
/// 200 letters, digits, `.`, `_` or `-`.
fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 {
        return Err(Error::config(field, "must be 1 to 200 characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::config(
            field,
            format!("may hold letters, digits, '.', '_' and '-' only, not {c:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn config_error(err: rdkafka::error::KafkaError) -> Error {
    Error::config("kafka properties", err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut c = KafkaConfig::new("b:9092");
        c.properties
            .insert("sasl.password".into(), "hunter2".into());
        c.producer_properties
            .insert("sasl.jaas.config".into(), "user pass=hunter3".into());
        c.properties
            .insert("ssl.ca.location".into(), "/etc/ca.pem".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("/etc/ca.pem"));
    }

    #[test]
    fn from_json() {
        let c = KafkaConfig::from_json(
            serde_json::json!({"bootstrap_servers": "x:1", "delivery_timeout": "2s"}),
        )
        .unwrap();
        assert_eq!(c.delivery_timeout, Duration::from_secs(2));
        assert!(KafkaConfig::from_json(serde_json::json!({"bootstrap": "x"})).is_err());
    }

    #[test]
    fn exactly_once_options() {
        let c = KafkaConfig::from_json(serde_json::json!({"transactional_id": "orders"})).unwrap();
        assert_eq!(
            c.published_topic().as_deref(),
            Some("orders.relaybox-published")
        );
        assert_eq!(KafkaConfig::default().published_topic(), None);
        let field = |v| match KafkaConfig::from_json(v) {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(
            field(serde_json::json!({"transactional_id": "a b"})),
            "transactional_id"
        );
        assert_eq!(
            field(serde_json::json!({"transactional_id": ""})),
            "transactional_id"
        );
        assert_eq!(
            field(serde_json::json!({"offsets_topic": "t"})),
            "offsets_topic"
        );
        assert_eq!(
            field(serde_json::json!({"transactional_id": "a", "offsets_topic": "t/x"})),
            "offsets_topic"
        );
    }

    #[test]
    fn cloudevents_option() {
        let c = KafkaConfig::from_json(serde_json::json!({"cloudevents": "urn:shop"})).unwrap();
        assert_eq!(c.cloudevents, CloudEvents::with_source("urn:shop"));
        assert!(!KafkaConfig::default().cloudevents.is_on());
        match KafkaConfig::from_json(serde_json::json!({"cloudevents": 1})) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "cloudevents"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
