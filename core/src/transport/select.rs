//! Choosing a transport with one setting: `"database"` (the default),
//! `{"kafka": {...}}`, `{"rabbitmq": {...}}`, `{"redis": {...}}`,
//! `{"sns": {...}}`, `{"sqs": {...}}`, `{"message_db": {...}}` or
//! `{"eventodb": {...}}`, from JSON or from the environment; or routes,
//! `{"routes": [{"topics": ["orders.*"], "transport": {...}}, ...]}`, each
//! topic to the transport of the first route whose topics match it.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::route::{Route, RoutedSink, Topics};
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
    /// Message DB in PostgreSQL.
    #[cfg(feature = "message-db")]
    MessageDb(crate::transport::message_db::MessageDbConfig),
    /// EventoDB over its HTTP RPC API.
    #[cfg(feature = "eventodb")]
    #[serde(rename = "eventodb")]
    EventoDb(crate::transport::eventodb::EventoDbConfig),
    /// RabbitMQ.
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(crate::transport::rabbitmq::RabbitMqConfig),
    /// Redis Streams.
    #[cfg(feature = "redis")]
    Redis(crate::transport::redis::RedisConfig),
    /// AWS SNS (publish), read through an SQS queue per consumer group.
    #[cfg(feature = "aws")]
    Sns(crate::transport::aws::SnsConfig),
    /// AWS SQS (send to and read the queue named by the topic).
    #[cfg(feature = "aws")]
    Sqs(crate::transport::aws::SqsConfig),
    /// Each topic to the transport of the first route whose topics match
    /// it; a relay publishing through routes claims only their topics.
    Routes(Vec<RouteConfig>),
}

/// One route of [`TransportConfig::Routes`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Topic patterns: names, or globs with `*` (`orders.*`).
    pub topics: Vec<String>,
    /// Where the route's messages go (not routes again).
    pub transport: TransportConfig,
    /// The name messages are published under, `{topic}` standing for the
    /// outbox topic (`prod.{topic}`); default: the outbox topic.
    #[serde(default)]
    pub destination: Option<String>,
}

impl RouteConfig {
    /// The route, with its transport's sink.
    fn route(&self, store: &Store) -> Result<Route> {
        let route = Route::new(Topics::parse(&self.topics)?, self.transport.sink(store)?);
        match &self.destination {
            Some(template) => route.with_destination(template),
            None => Ok(route),
        }
    }
}

impl TransportConfig {
    /// From JSON: `"database"` or `{"kafka": {"bootstrap_servers": "..."}}`.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        if let Some(error) = names_in(&value).into_iter().find_map(not_compiled_in) {
            return Err(error);
        }
        let config: TransportConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("transport", crate::redact::redact_url(&e.to_string())))?;
        config.checked()
    }

    /// Validates the settings (filling in defaults where a transport has them).
    fn checked(self) -> Result<Self> {
        let config = match self {
            TransportConfig::Routes(routes) => return TransportConfig::routes(routes),
            other => other,
        };
        #[cfg(feature = "kafka")]
        if let TransportConfig::Kafka(k) = &config {
            k.validate()?;
        }
        #[cfg(feature = "message-db")]
        if let TransportConfig::MessageDb(m) = &config {
            m.validate()?;
        }
        #[cfg(feature = "eventodb")]
        if let TransportConfig::EventoDb(e) = &config {
            e.validate()?;
        }
        #[cfg(feature = "rabbitmq")]
        if let TransportConfig::Rabbitmq(r) = &config {
            r.validate()?;
        }
        #[cfg(feature = "redis")]
        if let TransportConfig::Redis(r) = &config {
            r.validate()?;
        }
        #[cfg(feature = "aws")]
        let config = match config {
            TransportConfig::Sns(mut c) => {
                c.fill_defaults();
                c.validate()?;
                TransportConfig::Sns(c)
            }
            TransportConfig::Sqs(mut c) => {
                c.fill_defaults();
                c.validate()?;
                TransportConfig::Sqs(c)
            }
            other => other,
        };
        Ok(config)
    }

    /// Routes, each checked with its transport: each topic goes to the
    /// transport of the first route whose topics match it.
    pub fn routes(routes: Vec<RouteConfig>) -> Result<Self> {
        if routes.is_empty() {
            return Err(Error::config("routes", "name at least one route"));
        }
        let mut checked = Vec::with_capacity(routes.len());
        for route in routes {
            Topics::parse(&route.topics)?;
            if let Some(template) = &route.destination {
                crate::route::check_destination(template)?;
            }
            if matches!(route.transport, TransportConfig::Routes(_)) {
                return Err(Error::config(
                    "routes",
                    "a route's transport cannot be routes",
                ));
            }
            checked.push(RouteConfig {
                transport: route.transport.checked()?,
                ..route
            });
        }
        Ok(TransportConfig::Routes(checked))
    }

    /// From the environment: `RELAYBOX_TRANSPORT` = `database` (default) or
    /// `kafka`, with `RELAYBOX_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`), or
    /// `rabbitmq`, with `RELAYBOX_RABBITMQ_URL`, else `RABBITMQ_URL` (default
    /// `amqp://127.0.0.1:5672/%2f`), or `redis`, with `RELAYBOX_REDIS_URL`,
    /// else `REDIS_URL` (default `redis://127.0.0.1:6379`), or `sns` / `sqs`,
    /// with `RELAYBOX_AWS_ENDPOINT_URL` (else `AWS_ENDPOINT_URL`) and
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`), creating topics and queues,
    /// or `message_db`, with `RELAYBOX_MESSAGE_DB_URL` (default the store's
    /// database), or `eventodb`, with `RELAYBOX_EVENTODB_URL` and
    /// `RELAYBOX_EVENTODB_TOKEN`. Kafka, RabbitMQ, SNS and SQS take their
    /// `cloudevents` option from `RELAYBOX_CLOUDEVENTS` and
    /// `RELAYBOX_CLOUDEVENTS_SOURCE` (see
    /// [`CloudEvents::from_env`](crate::transport::cloudevents::CloudEvents::from_env)).
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
                kafka.cloudevents = crate::transport::cloudevents::CloudEvents::from_env()?;
                kafka.validate()?;
                Ok(TransportConfig::Kafka(kafka))
            }
            #[cfg(feature = "message-db")]
            "message_db" => {
                let mut config = crate::transport::message_db::MessageDbConfig::default();
                if let Ok(url) = std::env::var("RELAYBOX_MESSAGE_DB_URL") {
                    if !url.trim().is_empty() {
                        config.url = Some(crate::redact::DatabaseUrl::new(url));
                    }
                }
                config.validate()?;
                Ok(TransportConfig::MessageDb(config))
            }
            #[cfg(feature = "eventodb")]
            "eventodb" => {
                let mut config = crate::transport::eventodb::EventoDbConfig::default();
                if let Ok(url) = std::env::var("RELAYBOX_EVENTODB_URL") {
                    config.url = url;
                }
                if let Ok(token) = std::env::var("RELAYBOX_EVENTODB_TOKEN") {
                    if !token.is_empty() {
                        config.token = Some(crate::transport::eventodb::Token::new(token));
                    }
                }
                config.validate()?;
                Ok(TransportConfig::EventoDb(config))
            }
            #[cfg(feature = "rabbitmq")]
            "rabbitmq" => {
                let mut rabbitmq = crate::transport::rabbitmq::RabbitMqConfig::from_env()?;
                rabbitmq.cloudevents = crate::transport::cloudevents::CloudEvents::from_env()?;
                Ok(TransportConfig::Rabbitmq(rabbitmq))
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
            #[cfg(feature = "aws")]
            "sns" => {
                let mut sns = crate::transport::aws::SnsConfig::from_env()?;
                sns.cloudevents = crate::transport::cloudevents::CloudEvents::from_env()?;
                Ok(TransportConfig::Sns(sns))
            }
            #[cfg(feature = "aws")]
            "sqs" => {
                let mut sqs = crate::transport::aws::SqsConfig::from_env()?;
                sqs.cloudevents = crate::transport::cloudevents::CloudEvents::from_env()?;
                Ok(TransportConfig::Sqs(sqs))
            }
            other => Err(not_compiled_in(other).unwrap_or_else(|| {
                Error::config(
                    "RELAYBOX_TRANSPORT",
                    format!(
                        "unknown transport {other:?}; use database, kafka, rabbitmq, redis, sns, \
                     sqs, message_db or eventodb"
                    ),
                )
            })),
        }
    }

    /// A short name: `database`, `kafka`, `rabbitmq`, `redis`, `sns`, `sqs`,
    /// `message_db` or `eventodb`.
    pub fn name(&self) -> &'static str {
        match self {
            TransportConfig::Database => "database",
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(_) => "kafka",
            #[cfg(feature = "message-db")]
            TransportConfig::MessageDb(_) => "message_db",
            #[cfg(feature = "eventodb")]
            TransportConfig::EventoDb(_) => "eventodb",
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(_) => "rabbitmq",
            #[cfg(feature = "redis")]
            TransportConfig::Redis(_) => "redis",
            #[cfg(feature = "aws")]
            TransportConfig::Sns(_) => "sns",
            #[cfg(feature = "aws")]
            TransportConfig::Sqs(_) => "sqs",
            TransportConfig::Routes(_) => "routes",
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
            #[cfg(feature = "message-db")]
            TransportConfig::MessageDb(m) => Arc::new(
                crate::transport::message_db::MessageDbSink::new(m.clone(), store)?,
            ),
            #[cfg(feature = "eventodb")]
            TransportConfig::EventoDb(e) => {
                Arc::new(crate::transport::eventodb::EventoDbSink::new(e.clone())?)
            }
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(r) => {
                Arc::new(crate::transport::rabbitmq::RabbitMqSink::new(r.clone())?)
            }
            #[cfg(feature = "redis")]
            TransportConfig::Redis(r) => {
                Arc::new(crate::transport::redis::RedisSink::new(r.clone())?)
            }
            #[cfg(feature = "aws")]
            TransportConfig::Sns(c) => Arc::new(crate::transport::aws::SnsSink::new(c.clone())?),
            #[cfg(feature = "aws")]
            TransportConfig::Sqs(c) => Arc::new(crate::transport::aws::SqsSink::new(c.clone())?),
            TransportConfig::Routes(routes) => Arc::new(RoutedSink::new(
                routes
                    .iter()
                    .map(|r| r.route(store))
                    .collect::<Result<Vec<_>>>()?,
            )?),
        })
    }

    /// A source reading `topic` as consumer group `group`. Call inside a tokio
    /// runtime. With routes, the source of the route serving `topic`, reading
    /// the name it is published under.
    pub fn source(&self, store: &Store, topic: &str, group: &str) -> Result<Arc<dyn Source>> {
        Ok(match self {
            TransportConfig::Routes(routes) => {
                let route = routes
                    .iter()
                    .find(|r| Topics::parse(&r.topics).is_ok_and(|t| t.matches(topic)))
                    .ok_or_else(|| {
                        Error::config("topic", format!("no route serves topic {topic:?}"))
                    })?;
                let name = crate::route::destination(route.destination.as_deref(), topic);
                return route.transport.source(store, &name, group);
            }
            TransportConfig::Database => {
                DatabaseSource::new(store.clone(), DatabaseSourceConfig::new(topic, group))?
            }
            #[cfg(feature = "kafka")]
            TransportConfig::Kafka(k) => crate::transport::kafka::KafkaSource::new(
                crate::transport::kafka::KafkaSourceConfig::new(k.clone(), topic, group),
            )?,
            #[cfg(feature = "message-db")]
            TransportConfig::MessageDb(m) => {
                crate::transport::message_db::MessageDbSource::new(m.clone(), store, topic, group)?
            }
            #[cfg(feature = "eventodb")]
            TransportConfig::EventoDb(e) => {
                crate::transport::eventodb::EventoDbSource::new(e.clone(), store, topic, group)?
            }
            #[cfg(feature = "rabbitmq")]
            TransportConfig::Rabbitmq(r) => crate::transport::rabbitmq::RabbitMqSource::new(
                crate::transport::rabbitmq::RabbitMqSourceConfig::new(r.clone(), topic, group),
            )?,
            #[cfg(feature = "redis")]
            TransportConfig::Redis(r) => crate::transport::redis::RedisSource::new(
                crate::transport::redis::RedisSourceConfig::new(r.clone(), topic, group),
            )?,
            #[cfg(feature = "aws")]
            TransportConfig::Sns(c) => crate::transport::aws::SqsSource::new(
                crate::transport::aws::SqsSourceConfig::Sns {
                    config: c.clone(),
                    topic: topic.into(),
                    group: group.into(),
                },
            )?,
            #[cfg(feature = "aws")]
            TransportConfig::Sqs(c) => crate::transport::aws::SqsSource::new(
                crate::transport::aws::SqsSourceConfig::Sqs {
                    config: c.clone(),
                    topic: topic.into(),
                },
            )?,
        })
    }
}

/// The transports that are cargo features of this crate: setting name,
/// feature, and whether this build has it.
const FEATURE_TRANSPORTS: [(&str, &str, bool); 7] = [
    ("kafka", "kafka", cfg!(feature = "kafka")),
    ("rabbitmq", "rabbitmq", cfg!(feature = "rabbitmq")),
    ("redis", "redis", cfg!(feature = "redis")),
    ("sns", "aws", cfg!(feature = "aws")),
    ("sqs", "aws", cfg!(feature = "aws")),
    ("message_db", "message-db", cfg!(feature = "message-db")),
    ("eventodb", "eventodb", cfg!(feature = "eventodb")),
];

/// The error for a transport this build was compiled without, naming the
/// feature that adds it; `None` for a compiled-in or unknown name.
fn not_compiled_in(name: &str) -> Option<Error> {
    FEATURE_TRANSPORTS
        .iter()
        .find(|(setting, _, compiled)| *setting == name && !compiled)
        .map(|(setting, feature, _)| {
            Error::config(
                "transport",
                format!(
                    "the {setting} transport is not compiled into this build of relaybox; \
                     enable the crate's `{feature}` feature (or `full` for every transport)"
                ),
            )
        })
}

/// The transport names a JSON setting uses: its own, and each route's.
fn names_in(value: &serde_json::Value) -> Vec<&str> {
    let name = match value {
        serde_json::Value::String(name) => Some(name.as_str()),
        serde_json::Value::Object(map) if map.len() == 1 => map.keys().next().map(String::as_str),
        _ => None,
    };
    let mut names: Vec<&str> = name.into_iter().collect();
    if let Some(serde_json::Value::Array(routes)) = value.get("routes") {
        for route in routes {
            if let Some(transport) = route.get("transport") {
                names.extend(names_in(transport));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_reads_the_setting_and_each_route() {
        let value = serde_json::json!({"routes": [
            {"topics": ["a"], "transport": {"kafka": {}}},
            {"topics": ["b"], "transport": "database"},
        ]});
        assert_eq!(names_in(&value), vec!["routes", "kafka", "database"]);
    }

    #[test]
    fn a_transport_left_out_of_the_build_names_its_feature() {
        for (setting, feature, compiled) in FEATURE_TRANSPORTS {
            match not_compiled_in(setting) {
                Some(error) => {
                    assert!(!compiled);
                    assert!(
                        error.to_string().contains(&format!("`{feature}` feature")),
                        "{error}"
                    );
                }
                None => assert!(compiled, "{setting}"),
            }
        }
        assert!(not_compiled_in("database").is_none());
        assert!(not_compiled_in("carrier-pigeon").is_none());
    }

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
        #[cfg(feature = "aws")]
        {
            let t = TransportConfig::from_json(serde_json::json!({"sns": {
                "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000",
                "topic_arn": "arn:aws:sns:eu-west-1:123456789012:events",
                "secret_access_key": "s3cret", "access_key_id": "AKIA1"
            }}))
            .unwrap();
            assert_eq!(t.name(), "sns");
            assert!(!format!("{t:?}").contains("s3cret"));
            let t = TransportConfig::from_json(serde_json::json!({"sqs": {"create_queues": true}}))
                .unwrap();
            assert_eq!(t.name(), "sqs");
            match TransportConfig::from_json(serde_json::json!({"sns": {"topic_arn": "events"}})) {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "topic_arn"),
                other => panic!("expected a topic_arn error, got {other:?}"),
            }
            assert!(
                TransportConfig::from_json(serde_json::json!({"sqs": {"queue": "x"}})).is_err()
            );
        }
    }

    #[test]
    #[cfg(all(feature = "kafka", feature = "rabbitmq", feature = "aws"))]
    fn cloudevents_option_of_each_transport() {
        for name in ["kafka", "rabbitmq", "sns", "sqs"] {
            let ok = serde_json::json!({ name: {"cloudevents": "urn:shop"} });
            assert_eq!(TransportConfig::from_json(ok).unwrap().name(), name);
            for bad in [
                serde_json::json!(2),
                serde_json::json!(""),
                serde_json::json!("a b"),
            ] {
                let routed = serde_json::json!({"routes": [
                    {"topics": ["*"], "transport": { name: {"cloudevents": bad} }}
                ]});
                match TransportConfig::from_json(routed) {
                    Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "cloudevents"),
                    other => panic!("{name} {bad}: expected a cloudevents error, got {other:?}"),
                }
            }
        }
    }

    #[test]
    #[cfg(feature = "message-db")]
    fn message_db_from_json() {
        let t = TransportConfig::from_json(serde_json::json!({"message_db": {
            "url": "postgres://u:hunter2@h/message_store", "consumer_group_size": 2
        }}))
        .unwrap();
        assert_eq!(t.name(), "message_db");
        assert!(!format!("{t:?}").contains("hunter2"));
        let e = TransportConfig::from_json(serde_json::json!({"message_db": {
            "consumer_group_member": 3, "consumer_group_size": 2
        }}))
        .unwrap_err();
        assert!(e.to_string().contains("consumer_group_member"), "{e}");
    }

    #[test]
    #[cfg(feature = "eventodb")]
    fn eventodb_from_json() {
        let t = TransportConfig::from_json(serde_json::json!({"eventodb": {
            "url": "http://127.0.0.1:8080", "token": "ns_c2VjcmV0_hunter2"
        }}))
        .unwrap();
        assert_eq!(t.name(), "eventodb");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(
            TransportConfig::from_json(serde_json::json!({"eventodb": {"url": "ftp://x"}}))
                .is_err()
        );
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
