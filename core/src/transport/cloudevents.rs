//! CloudEvents binary content mode: the context attributes of a message, as
//! the `cloudevents` option of the Kafka, RabbitMQ, SNS and SQS transports
//! puts them on the wire beside relaybox's own envelope headers.
//!
//! One place maps a [`Message`] to its attributes ([`Attributes::of`]); each
//! transport writes them in its native way under the names of its binding:
//!
//! | attribute         | from                                         |
//! |-------------------|----------------------------------------------|
//! | `id`              | the message id (UUID text)                   |
//! | `source`          | the `source` header, else the default source |
//! | `type`            | the event type, else the topic               |
//! | `specversion`     | `1.0`                                        |
//! | `time`            | `created_at`, RFC 3339 UTC, microseconds     |
//! | `datacontenttype` | the payload's content type                   |
//!
//! The default source is the option's value when it is a string, else
//! [`DEFAULT_SOURCE`]. `datacontenttype` travels as the transport's own
//! content type (the Kafka `content-type` header, the AMQP `content_type`
//! property, the `content-type` message attribute on SNS/SQS).

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::message::{micros_rfc3339, Message, SOURCE_HEADER};

/// The CloudEvents version written as `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// The source of messages without a `source` header when the option is `true`.
pub const DEFAULT_SOURCE: &str = "relaybox";
/// The attribute names before their binding's prefix, in the order written.
pub const ATTRIBUTES: [&str; 5] = ["id", "source", "type", "specversion", "time"];
/// Prefix of the Kafka protocol binding's headers (`ce_id`, ...); also used
/// for SNS/SQS message attributes, which have no official binding.
pub const KAFKA_PREFIX: &str = "ce_";
/// Prefix of the AMQP protocol binding's application properties
/// (`cloudEvents_id`, ...): the binding allows `cloudEvents_` and
/// `cloudEvents:` and prefers `_`, which JMS clients and selectors accept.
/// RabbitMQ hands AMQP 0-9-1 headers to AMQP 1.0 consumers as application
/// properties.
pub const AMQP_PREFIX: &str = "cloudEvents_";
/// Prefix of the RabbitMQ protocol binding's headers (`ce-id`, ...), the
/// AMQP 0-9-1 binding of Knative's eventing-rabbitmq that the CloudEvents
/// SDKs' RabbitMQ modules read.
pub const RABBITMQ_PREFIX: &str = "ce-";
/// Environment variable turning the option on (`true`/`1`) or off (`false`/`0`).
pub const ENV_ENABLED: &str = "RELAYBOX_CLOUDEVENTS";
/// Environment variable naming the default source (and turning the option on).
pub const ENV_SOURCE: &str = "RELAYBOX_CLOUDEVENTS_SOURCE";

/// The `cloudevents` option of a transport: `false` (the default), `true`
/// (default source [`DEFAULT_SOURCE`]), or a string, the default source
/// itself. Any other value is kept as written and rejected by
/// [`CloudEvents::validate`] as an invalid `cloudevents` setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudEvents(Setting);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Setting {
    #[default]
    Off,
    On(Option<String>),
    Invalid(String),
}

impl CloudEvents {
    /// No CloudEvents attributes (the default).
    pub fn off() -> Self {
        CloudEvents(Setting::Off)
    }

    /// CloudEvents attributes with [`DEFAULT_SOURCE`] as the default source.
    pub fn on() -> Self {
        CloudEvents(Setting::On(None))
    }

    /// CloudEvents attributes with `source` as the default source.
    pub fn with_source(source: impl Into<String>) -> Self {
        CloudEvents(Setting::On(Some(source.into())))
    }

    /// Whether the attributes are written.
    pub fn is_on(&self) -> bool {
        matches!(self.0, Setting::On(_))
    }

    /// Whether `name` is an attribute this option writes under `prefix`.
    pub fn writes(&self, name: &str, prefix: &str) -> bool {
        self.is_on() && is_attribute(name, prefix)
    }

    /// The `source` of messages without a `source` header.
    pub fn default_source(&self) -> &str {
        match &self.0 {
            Setting::On(Some(s)) => s,
            _ => DEFAULT_SOURCE,
        }
    }

    /// Rejects a value that is neither a boolean nor a usable source, as an
    /// invalid `cloudevents` setting.
    pub fn validate(&self) -> Result<()> {
        match &self.0 {
            Setting::Off | Setting::On(None) => Ok(()),
            Setting::On(Some(source)) => check_source(source),
            Setting::Invalid(shown) => Err(Error::config(
                "cloudevents",
                format!("{shown} is not true, false or a source (a URI-reference string)"),
            )),
        }
    }

    /// From `RELAYBOX_CLOUDEVENTS` (`true`/`1` on, `false`/`0`/empty off)
    /// and `RELAYBOX_CLOUDEVENTS_SOURCE` (the default source; setting it
    /// turns the option on unless `RELAYBOX_CLOUDEVENTS` turns it off).
    pub fn from_env() -> Result<Self> {
        let get = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string());
        Self::from_values(get(ENV_ENABLED).as_deref(), get(ENV_SOURCE).as_deref())
    }

    fn from_values(enabled: Option<&str>, source: Option<&str>) -> Result<Self> {
        let source = source.filter(|s| !s.is_empty());
        let enabled =
            match enabled.map(str::to_ascii_lowercase).as_deref() {
                None => source.is_some(),
                Some("true" | "1") => true,
                Some("false" | "0" | "") => false,
                Some(_) => return Err(Error::config(
                    ENV_ENABLED,
                    "must be true, false, 1 or 0 (name the source in RELAYBOX_CLOUDEVENTS_SOURCE)",
                )),
            };
        let config = match (enabled, source) {
            (false, _) => CloudEvents::off(),
            (true, None) => CloudEvents::on(),
            (true, Some(s)) => CloudEvents::with_source(s),
        };
        if let Setting::On(Some(s)) = &config.0 {
            check_source(s).map_err(|e| match e {
                Error::InvalidConfig { reason, .. } => Error::config(ENV_SOURCE, reason),
                other => other,
            })?;
        }
        Ok(config)
    }

    /// The attributes of `m`, or `None` when the option is off.
    pub fn attributes(&self, m: &Message) -> Option<Attributes> {
        self.is_on()
            .then(|| Attributes::of(m, self.default_source()))
    }
}

/// A source is a non-empty URI-reference: no whitespace or control characters.
fn check_source(source: &str) -> Result<()> {
    if source.is_empty() {
        return Err(Error::config(
            "cloudevents",
            "a source must not be empty (use true for the default source \"relaybox\")",
        ));
    }
    if source.len() > 1024 {
        return Err(Error::config(
            "cloudevents",
            "a source must be at most 1024 bytes",
        ));
    }
    if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::config(
            "cloudevents",
            format!(
                "{source:?} is not a URI-reference (it contains whitespace or control characters)"
            ),
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for CloudEvents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(false) | serde_json::Value::Null => CloudEvents::off(),
            serde_json::Value::Bool(true) => CloudEvents::on(),
            serde_json::Value::String(s) => CloudEvents::with_source(s),
            other => CloudEvents(Setting::Invalid(shown(&other))),
        })
    }
}

/// A short rendering of a rejected value.
fn shown(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// The context attributes of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `id`: the message id.
    pub id: String,
    /// `source`: the `source` header, else the default source.
    pub source: String,
    /// `type`: the event type, else the topic (CloudEvents requires one).
    pub event_type: String,
    /// `specversion`: [`SPEC_VERSION`].
    pub specversion: &'static str,
    /// `time`: `created_at` in RFC 3339 UTC with microseconds.
    pub time: String,
    /// `datacontenttype`: the payload's content type.
    pub datacontenttype: String,
}

impl Attributes {
    /// The attributes of `m`; `default_source` stands in for a missing or
    /// empty `source` header.
    pub fn of(m: &Message, default_source: &str) -> Self {
        let source = m
            .headers
            .get(SOURCE_HEADER)
            .filter(|s| !s.is_empty())
            .map_or(default_source, String::as_str);
        let event_type = if m.event_type.is_empty() {
            &m.topic
        } else {
            &m.event_type
        };
        Attributes {
            id: m.id.to_string(),
            source: source.to_string(),
            event_type: event_type.clone(),
            specversion: SPEC_VERSION,
            time: micros_rfc3339::format(&m.created_at),
            datacontenttype: m.content_type.clone(),
        }
    }

    /// The attributes but `datacontenttype` (which each binding carries as
    /// its own content type), named with `prefix`, in [`ATTRIBUTES`] order.
    pub fn named(&self, prefix: &str) -> Vec<(String, &str)> {
        let values = [
            self.id.as_str(),
            self.source.as_str(),
            self.event_type.as_str(),
            self.specversion,
            self.time.as_str(),
        ];
        ATTRIBUTES
            .iter()
            .zip(values)
            .map(|(name, value)| (format!("{prefix}{name}"), value))
            .collect()
    }
}

/// Whether `name` is one of the attributes written under `prefix`.
pub fn is_attribute(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| ATTRIBUTES.contains(&rest))
}

/// Whether a record relaybox wrote (it carries relaybox's id header) also
/// carries CloudEvents attributes under `prefix`: then those attributes
/// repeat the envelope and are not the message's headers.
pub fn written_by_relaybox<'a>(
    names: impl Iterator<Item = &'a str>,
    id_header: &str,
    prefix: &str,
) -> bool {
    let specversion = format!("{prefix}specversion");
    let (mut id, mut ce) = (false, false);
    for name in names {
        id |= name == id_header;
        ce |= name == specversion;
        if id && ce {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn message() -> Message {
        let mut m = Message::new("orders", br#"{"n":1}"#.to_vec())
            .with_type("OrderPlaced")
            .with_content_type("application/json");
        m.created_at = chrono::Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap()
            + chrono::Duration::microseconds(123_456);
        m
    }

    #[test]
    fn maps_id_source_type_time_and_content_type() {
        let m = message().with_header("source", "urn:shop");
        let a = CloudEvents::on().attributes(&m).unwrap();
        assert_eq!(a.id, m.id.to_string());
        assert_eq!(a.source, "urn:shop");
        assert_eq!(a.event_type, "OrderPlaced");
        assert_eq!(a.specversion, "1.0");
        assert_eq!(a.time, "2026-03-04T05:06:07.123456Z");
        assert_eq!(a.datacontenttype, "application/json");
        assert_eq!(
            a.named("ce_"),
            vec![
                ("ce_id".to_string(), m.id.to_string().as_str()),
                ("ce_source".to_string(), "urn:shop"),
                ("ce_type".to_string(), "OrderPlaced"),
                ("ce_specversion".to_string(), "1.0"),
                ("ce_time".to_string(), "2026-03-04T05:06:07.123456Z"),
            ]
        );
    }

    #[test]
    fn default_source_and_type() {
        let mut m = message();
        m.event_type.clear();
        let a = CloudEvents::on().attributes(&m).unwrap();
        assert_eq!(
            (a.source.as_str(), a.event_type.as_str()),
            ("relaybox", "orders")
        );
        let m = m.with_header("source", "");
        let a = CloudEvents::with_source("/billing").attributes(&m).unwrap();
        assert_eq!(a.source, "/billing");
        assert!(CloudEvents::off().attributes(&m).is_none());
    }

    #[test]
    fn option_from_json() {
        let parse = |v: serde_json::Value| serde_json::from_value::<CloudEvents>(v).unwrap();
        assert_eq!(parse(serde_json::json!(true)), CloudEvents::on());
        assert_eq!(parse(serde_json::json!(false)), CloudEvents::off());
        assert_eq!(
            parse(serde_json::json!("urn:shop")),
            CloudEvents::with_source("urn:shop")
        );
        let field = |c: CloudEvents| match c.validate() {
            Err(Error::InvalidConfig { field, reason }) => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        };
        let (f, reason) = field(parse(serde_json::json!(3)));
        assert_eq!(f, "cloudevents");
        assert!(
            reason.contains("3 is not true, false or a source"),
            "{reason}"
        );
        assert_eq!(field(parse(serde_json::json!(""))).0, "cloudevents");
        assert_eq!(field(parse(serde_json::json!("a b"))).0, "cloudevents");
        assert_eq!(
            field(parse(serde_json::json!({"source": "x"}))).0,
            "cloudevents"
        );
        assert!(parse(serde_json::json!("https://shop.example/orders"))
            .validate()
            .is_ok());
    }

    #[test]
    fn option_from_environment_values() {
        let v = CloudEvents::from_values;
        assert_eq!(v(None, None).unwrap(), CloudEvents::off());
        assert_eq!(v(Some("true"), None).unwrap(), CloudEvents::on());
        assert_eq!(v(Some("0"), Some("urn:x")).unwrap(), CloudEvents::off());
        assert_eq!(
            v(None, Some("urn:x")).unwrap(),
            CloudEvents::with_source("urn:x")
        );
        assert_eq!(v(Some("1"), Some("")).unwrap(), CloudEvents::on());
        match v(Some("yes"), None) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, ENV_ENABLED),
            other => panic!("{other:?}"),
        }
        match v(Some("true"), Some("a b")) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, ENV_SOURCE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attribute_names() {
        assert!(is_attribute("ce_id", KAFKA_PREFIX));
        assert!(is_attribute("cloudEvents_time", AMQP_PREFIX));
        assert!(!is_attribute("ce_partitionkey", KAFKA_PREFIX));
        assert!(!is_attribute("id", KAFKA_PREFIX));
        let names = ["relaybox-id", "ce_id", "ce_specversion"];
        assert!(written_by_relaybox(names.into_iter(), "relaybox-id", "ce_"));
        assert!(!written_by_relaybox(
            names[1..].iter().copied(),
            "relaybox-id",
            "ce_"
        ));
    }
}
