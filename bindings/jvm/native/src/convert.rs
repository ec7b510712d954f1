//! The values that cross to the JVM: `MessageSpec` (what to enqueue, turned
//! into the core's JSON message spec so every binding builds identical
//! messages), `Message` (what a handler receives), and SQL values and rows.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine;
use chrono::{DateTime, Utc};
use relaybox::{Error, Value};
use serde_json::{json, Map};

/// One message to enqueue. Give the payload in exactly one way:
/// `payloadJson` (JSON text, sent as `application/json`), `payloadBytes`
/// (raw bytes, `application/octet-stream`) or `payloadText` (UTF-8 text).
/// The rules are those of the core's JSON message spec.
#[derive(Clone, Debug, uniffi::Record)]
pub struct MessageSpec {
    /// Destination topic (`[A-Za-z0-9._-]`).
    pub topic: String,
    /// Partition key: messages with the same key are delivered in order.
    #[uniffi(default = None)]
    pub key: Option<String>,
    /// Event name, e.g. `"OrderPlaced"`.
    #[uniffi(default = None)]
    pub event_type: Option<String>,
    /// Payload as JSON text.
    #[uniffi(default = None)]
    pub payload_json: Option<String>,
    /// Payload as raw bytes.
    #[uniffi(default = None)]
    pub payload_bytes: Option<Vec<u8>>,
    /// Payload as UTF-8 text.
    #[uniffi(default = None)]
    pub payload_text: Option<String>,
    /// Overrides the content type detected from the payload form.
    #[uniffi(default = None)]
    pub content_type: Option<String>,
    /// String headers.
    #[uniffi(default)]
    pub headers: HashMap<String, String>,
    /// Deliver no earlier than this many milliseconds after now.
    #[uniffi(default = None)]
    pub delay_millis: Option<u64>,
    /// Deliver no earlier than this instant.
    #[uniffi(default = None)]
    pub available_at: Option<SystemTime>,
    /// The message id (a UUID); a new UUID v7 when absent.
    #[uniffi(default = None)]
    pub id: Option<String>,
    /// The producer's idempotency key: a second enqueue with the same key on
    /// the same topic writes nothing and returns the first message's id.
    #[uniffi(default = None)]
    pub idempotency_key: Option<String>,
}

impl MessageSpec {
    /// The core message this spec describes, through `relaybox::MessageSpec`.
    pub fn into_message(self) -> relaybox::Result<relaybox::Message> {
        let mut spec = Map::new();
        spec.insert("topic".into(), json!(self.topic));
        if let Some(key) = self.key {
            spec.insert("key".into(), json!(key));
        }
        if let Some(event_type) = self.event_type {
            spec.insert("type".into(), json!(event_type));
        }
        if let Some(text) = self.payload_json {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::InvalidMessage {
                    field: "payload",
                    reason: format!("payloadJson is not valid JSON: {e}"),
                })?;
            spec.insert("payload".into(), value);
        }
        if let Some(bytes) = self.payload_bytes {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            spec.insert("payload_base64".into(), json!(encoded));
        }
        if let Some(text) = self.payload_text {
            spec.insert("payload_text".into(), json!(text));
        }
        if let Some(content_type) = self.content_type {
            spec.insert("content_type".into(), json!(content_type));
        }
        if !self.headers.is_empty() {
            spec.insert("headers".into(), json!(self.headers));
        }
        if let Some(delay) = self.delay_millis {
            spec.insert("delay".into(), json!(delay));
        }
        if let Some(at) = self.available_at {
            spec.insert(
                "available_at".into(),
                json!(DateTime::<Utc>::from(at).to_rfc3339()),
            );
        }
        if let Some(id) = self.id {
            spec.insert("id".into(), json!(id));
        }
        if let Some(key) = self.idempotency_key {
            spec.insert("idempotency_key".into(), json!(key));
        }
        relaybox::MessageSpec::from_json(serde_json::Value::Object(spec))?.into_message()
    }
}

/// A message as a consumer handler receives it.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Message {
    /// The message id (UUID v7): the idempotency key of the inbox.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Partition key.
    pub key: Option<String>,
    /// Event name (may be empty).
    pub event_type: String,
    /// The payload bytes, untouched.
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
    /// String headers.
    pub headers: HashMap<String, String>,
    /// When the message was created.
    pub created_at: SystemTime,
    /// Earliest time it could be delivered.
    pub available_at: SystemTime,
}

impl From<relaybox::Message> for Message {
    fn from(m: relaybox::Message) -> Self {
        Message {
            id: m.id.to_string(),
            topic: m.topic,
            key: m.key,
            event_type: m.event_type,
            payload: m.payload,
            content_type: m.content_type,
            headers: m.headers.into_iter().collect(),
            created_at: m.created_at.into(),
            available_at: m.available_at.into(),
        }
    }
}

/// A SQL parameter or column value. On PostgreSQL parameters are sent typed
/// (`Int` as `int8`, `Text` as `text`, `Json` as `jsonb`, ...); `Null` fits
/// any column.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool { value: bool },
    /// A 64-bit integer.
    Int { value: i64 },
    /// A 64-bit float.
    Float { value: f64 },
    /// Text.
    Text { value: String },
    /// Raw bytes.
    Bytes { value: Vec<u8> },
    /// A JSON document, as JSON text.
    Json { json: String },
    /// A UUID, as text.
    Uuid { value: String },
    /// A point in time.
    Timestamp { value: SystemTime },
}

impl SqlValue {
    /// The core value; JSON text and UUIDs are parsed here.
    pub fn into_value(self) -> relaybox::Result<Value> {
        Ok(match self {
            SqlValue::Null => Value::Null,
            SqlValue::Bool { value } => Value::Bool(value),
            SqlValue::Int { value } => Value::Int(value),
            SqlValue::Float { value } => Value::Float(value),
            SqlValue::Text { value } => Value::Text(value),
            SqlValue::Bytes { value } => Value::Bytes(value),
            SqlValue::Json { json } => {
                Value::Json(
                    serde_json::from_str(&json).map_err(|e| Error::InvalidValue {
                        reason: format!("SqlValue.Json is not valid JSON: {e}"),
                    })?,
                )
            }
            SqlValue::Uuid { value } => Value::Uuid(uuid::Uuid::parse_str(&value).map_err(
                |e| Error::InvalidValue {
                    reason: format!("{value:?} is not a UUID: {e}"),
                },
            )?),
            SqlValue::Timestamp { value } => Value::Timestamp(value.into()),
        })
    }
}

impl From<Value> for SqlValue {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => SqlValue::Null,
            Value::Bool(value) => SqlValue::Bool { value },
            Value::Int(value) => SqlValue::Int { value },
            Value::Float(value) => SqlValue::Float { value },
            Value::Text(value) => SqlValue::Text { value },
            Value::Bytes(value) => SqlValue::Bytes { value },
            Value::Json(json) => SqlValue::Json {
                json: json.to_string(),
            },
            Value::Uuid(value) => SqlValue::Uuid {
                value: value.to_string(),
            },
            Value::Timestamp(value) => SqlValue::Timestamp {
                value: value.into(),
            },
        }
    }
}

/// Converts call parameters.
pub fn params(params: Vec<SqlValue>) -> relaybox::Result<Vec<Value>> {
    params.into_iter().map(SqlValue::into_value).collect()
}

/// One result row: column names in select order and their values.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Row {
    /// Column names, in select order.
    pub columns: Vec<String>,
    /// Values, one per column.
    pub values: Vec<SqlValue>,
}

impl From<relaybox::Row> for Row {
    fn from(row: relaybox::Row) -> Self {
        Row {
            columns: row.columns,
            values: row.values.into_iter().map(SqlValue::from).collect(),
        }
    }
}

/// Parses a JSON configuration argument.
pub fn parse_json(what: &str, text: &str) -> relaybox::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::InvalidConfig {
        field: what.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topic: &str) -> MessageSpec {
        MessageSpec {
            topic: topic.into(),
            key: None,
            event_type: None,
            payload_json: None,
            payload_bytes: None,
            payload_text: None,
            content_type: None,
            headers: HashMap::new(),
            delay_millis: None,
            available_at: None,
            id: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn specs_follow_the_core_json_spec() {
        let mut s = spec("orders");
        s.key = Some("k".into());
        s.event_type = Some("OrderPlaced".into());
        s.payload_json = Some(r#"{"id": 1}"#.into());
        s.headers.insert("source".into(), "shop".into());
        s.delay_millis = Some(5_000);
        let m = s.into_message().unwrap();
        assert_eq!(m.payload, br#"{"id":1}"#);
        assert_eq!(m.content_type, "application/json");
        assert_eq!(m.event_type, "OrderPlaced");
        assert_eq!(m.headers.get("source").map(String::as_str), Some("shop"));
        assert!(m.available_at > m.created_at);

        let mut bytes = spec("t");
        bytes.payload_bytes = Some(vec![0, 255]);
        let m = bytes.into_message().unwrap();
        assert_eq!(
            (m.payload, m.content_type.as_str()),
            (vec![0, 255], "application/octet-stream")
        );
    }

    #[test]
    fn bad_specs_are_invalid_messages() {
        let mut two = spec("t");
        two.payload_text = Some("a".into());
        two.payload_json = Some("1".into());
        assert_eq!(two.into_message().unwrap_err().code(), "invalid_message");

        let mut json = spec("t");
        json.payload_json = Some("{nope".into());
        assert_eq!(json.into_message().unwrap_err().code(), "invalid_message");

        let mut id = spec("t");
        id.id = Some("not-a-uuid".into());
        assert!(id.into_message().unwrap_err().is_invalid_input());
    }

    #[test]
    fn sql_values_round_trip() {
        let now = SystemTime::now();
        for v in [
            SqlValue::Null,
            SqlValue::Int { value: 7 },
            SqlValue::Text { value: "x".into() },
            SqlValue::Json {
                json: r#"{"a":1}"#.into(),
            },
            SqlValue::Uuid {
                value: "0192f0c1-7a3b-7c4d-8e9f-0a1b2c3d4e5f".into(),
            },
        ] {
            assert_eq!(SqlValue::from(v.clone().into_value().unwrap()), v);
        }
        let t = SqlValue::Timestamp { value: now }.into_value().unwrap();
        assert!(matches!(t, Value::Timestamp(_)));
        let bad = SqlValue::Json { json: "{".into() }.into_value();
        assert_eq!(bad.unwrap_err().code(), "invalid_value");
    }
}
