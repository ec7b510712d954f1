//! The JSON message specification that bindings without native message
//! objects (C, Node, Elixir, the JVM) hand to the core: one format, parsed in
//! one place, so every language builds identical messages from the same input.
//!
//! ```json
//! {"topic": "orders", "key": "order-1", "type": "OrderPlaced",
//!  "payload": {"id": 1}, "headers": {"source": "shop"}, "delay": "5s",
//!  "idempotency_key": "order-1-placed"}
//! ```
//!
//! The payload is given in exactly one of three ways:
//!
//! - `payload`: a JSON string is sent as UTF-8 text (`text/plain; charset=utf-8`);
//!   any other JSON value (object, array, number, boolean, null) as compact JSON
//!   (`application/json`), the same choice the Python package makes;
//! - `payload_base64`: raw bytes, standard base64 (`application/octet-stream`);
//! - `payload_text`: UTF-8 text, stated explicitly.
//!
//! `content_type` overrides the detected type; `created_at` (RFC 3339, now by
//! default) is when the message was created, and `delay` counts from it.
//! Unknown fields are rejected so
//! a misspelt option fails loudly instead of being ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{Message, APPLICATION_JSON, OCTET_STREAM};

/// Content type of payloads given as text.
pub const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";

/// One message as a binding describes it; see the module documentation.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// Destination topic.
    pub topic: String,
    /// Partition key.
    #[serde(default)]
    pub key: Option<String>,
    /// The producer's idempotency key ([`Message::idempotency_key`]).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Event name.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// Payload as a JSON value (a string is sent as text).
    #[serde(default, deserialize_with = "present")]
    pub payload: Option<serde_json::Value>,
    /// Payload as standard base64 of raw bytes.
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Payload as UTF-8 text.
    #[serde(default)]
    pub payload_text: Option<String>,
    /// Overrides the content type detected from the payload form.
    #[serde(default)]
    pub content_type: Option<String>,
    /// String headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deliver no earlier than this long after now (milliseconds or `"5s"`).
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub delay: Option<Duration>,
    /// Deliver no earlier than this instant (RFC 3339).
    #[serde(default)]
    pub available_at: Option<DateTime<Utc>>,
    /// When the message was created (RFC 3339); now when absent. A `delay`
    /// counts from it.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// The message id; a new UUID v7 when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
}

/// Keeps an explicit `"payload": null` apart from a missing payload.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl MessageSpec {
    /// Parses a spec from a JSON value.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        serde_json::from_value(value).map_err(invalid_spec)
    }

    /// Parses a spec from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(invalid_spec)
    }

    /// Parses a JSON array of specs (a batch).
    pub fn batch_from_json_str(text: &str) -> Result<Vec<Self>> {
        serde_json::from_str(text).map_err(invalid_spec)
    }

    /// Builds the message. Validation against the store's limits happens on
    /// enqueue, as for every other message.
    pub fn into_message(self) -> Result<Message> {
        let (payload, detected) = self.payload_bytes()?;
        let mut message = Message::new(self.topic, payload)
            .with_content_type(self.content_type.unwrap_or_else(|| detected.to_string()));
        message.key = self.key;
        message.idempotency_key = self.idempotency_key;
        if let Some(event_type) = self.event_type {
            message.event_type = event_type;
        }
        message.headers = self.headers;
        if let Some(at) = self.created_at {
            let at = at.trunc_subsecs(6);
            message.created_at = at;
            message.available_at = at;
        }
        if let Some(delay) = self.delay {
            message = message.delayed_by(delay);
        }
        if let Some(at) = self.available_at {
            message = message.available_at(at);
        }
        if let Some(id) = self.id {
            message.id = id;
        }
        Ok(message)
    }

    fn payload_bytes(&self) -> Result<(Vec<u8>, &'static str)> {
        let given = [
            self.payload.is_some(),
            self.payload_base64.is_some(),
            self.payload_text.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(payload_error(
                    "a message needs `payload`, `payload_base64` or `payload_text`",
                ))
            }
            1 => {}
            _ => {
                return Err(payload_error(
                    "give only one of `payload`, `payload_base64` and `payload_text`",
                ))
            }
        }
        if let Some(text) = &self.payload_text {
            return Ok((text.as_bytes().to_vec(), TEXT_PLAIN_UTF8));
        }
        if let Some(encoded) = &self.payload_base64 {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| payload_error(format!("`payload_base64` is not base64: {e}")))?;
            return Ok((bytes, OCTET_STREAM));
        }
        match self.payload.as_ref().expect("one payload form is present") {
            serde_json::Value::String(text) => Ok((text.as_bytes().to_vec(), TEXT_PLAIN_UTF8)),
            value => Ok((
                serde_json::to_vec(value).expect("a JSON value always serialises"),
                APPLICATION_JSON,
            )),
        }
    }
}

impl TryFrom<MessageSpec> for Message {
    type Error = Error;

    fn try_from(spec: MessageSpec) -> Result<Message> {
        spec.into_message()
    }
}

fn invalid_spec(e: serde_json::Error) -> Error {
    Error::InvalidMessage {
        field: "spec",
        reason: e.to_string(),
    }
}

fn payload_error(reason: impl Into<String>) -> Error {
    Error::InvalidMessage {
        field: "payload",
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(value: serde_json::Value) -> Result<Message> {
        MessageSpec::from_json(value)?.into_message()
    }

    #[test]
    fn json_payload_is_compact_json() {
        let m =
            message(json!({"topic": "t", "payload": {"a": 1}, "key": "k", "type": "T"})).unwrap();
        assert_eq!(m.payload, br#"{"a":1}"#);
        assert_eq!(m.content_type, APPLICATION_JSON);
        assert_eq!(m.key.as_deref(), Some("k"));
        assert_eq!(m.event_type, "T");
    }

    #[test]
    fn string_payload_is_text_and_null_is_json() {
        let m = message(json!({"topic": "t", "payload": "héllo"})).unwrap();
        assert_eq!(m.payload, "héllo".as_bytes());
        assert_eq!(m.content_type, TEXT_PLAIN_UTF8);
        let m = message(json!({"topic": "t", "payload": null})).unwrap();
        assert_eq!(m.payload, b"null");
    }

    #[test]
    fn base64_payload_is_raw_bytes() {
        let m = message(json!({"topic": "t", "payload_base64": "AAEC/w=="})).unwrap();
        assert_eq!(m.payload, vec![0, 1, 2, 255]);
        assert_eq!(m.content_type, OCTET_STREAM);
        assert!(message(json!({"topic": "t", "payload_base64": "***"})).is_err());
    }

    #[test]
    fn payload_forms_are_exclusive_and_required() {
        assert_eq!(
            message(json!({"topic": "t"})).unwrap_err().code(),
            "invalid_message"
        );
        assert!(message(json!({"topic": "t", "payload": 1, "payload_text": "x"})).is_err());
    }

    #[test]
    fn created_at_is_kept_and_delay_counts_from_it() {
        let m = message(json!({
            "topic": "t", "payload": 1, "created_at": "2025-01-01T00:00:00.000000Z", "delay": 1000
        }))
        .unwrap();
        assert_eq!(m.created_at.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(m.available_at - m.created_at, chrono::Duration::seconds(1));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = message(json!({"topic": "t", "payload": 1, "kee": "k"})).unwrap_err();
        assert!(err.to_string().contains("kee"), "{err}");
    }

    #[test]
    fn delay_id_headers_and_content_type() {
        let id = Uuid::now_v7();
        let m = message(json!({
            "topic": "t", "payload_text": "x", "delay": "2s", "id": id.to_string(),
            "headers": {"h": "v"}, "content_type": "text/csv"
        }))
        .unwrap();
        assert_eq!(m.id, id);
        assert_eq!(m.available_at - m.created_at, chrono::Duration::seconds(2));
        assert_eq!(m.headers["h"], "v");
        assert_eq!(m.content_type, "text/csv");
    }
}
