//! How a relaybox message maps onto a Message DB style message and back:
//! stream names, JSON data, metadata carrying the envelope, and the
//! expected version. Shared by the Message DB and EventoDB transports.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{Message, APPLICATION_JSON};
use crate::validate::check_topic;

/// The metadata entry holding relaybox's envelope fields.
pub const METADATA_ENVELOPE: &str = "relaybox";
/// Default name of the header whose value is the expected stream version.
pub const DEFAULT_EXPECTED_VERSION_HEADER: &str = "expected_version";

/// Checks that `topic` can be a Message DB category: a relaybox topic
/// without `-` (the separator between category and stream id) or `+`.
pub fn check_category(topic: &str) -> Result<()> {
    check_topic(topic)?;
    if topic.contains('-') || topic.contains('+') {
        return Err(Error::InvalidTopic {
            topic: topic.to_string(),
            reason: "a Message DB / EventoDB category must not contain `-` or `+`".into(),
        });
    }
    Ok(())
}

/// The category of a stream name: the part before the first `-`.
pub fn category_of(stream_name: &str) -> &str {
    stream_name.split_once('-').map_or(stream_name, |(c, _)| c)
}

/// The id of a stream name: the part after the first `-` (None for a category).
pub fn stream_id_of(stream_name: &str) -> Option<&str> {
    stream_name.split_once('-').map(|(_, id)| id)
}

/// The cardinal id of a stream name: its id up to the first `+`.
pub fn cardinal_id_of(stream_name: &str) -> Option<&str> {
    stream_id_of(stream_name).map(|id| id.split_once('+').map_or(id, |(c, _)| c))
}

/// A message as a store writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// `<category>-<key>`, or `<category>-<message id>` without a key.
    pub stream_name: String,
    /// The message type (the relaybox event type).
    pub message_type: String,
    /// The payload, parsed as JSON.
    pub data: Json,
    /// User headers plus the envelope under `relaybox`.
    pub metadata: Json,
    /// The expected stream version, from the expected-version header.
    pub expected_version: Option<i64>,
}

/// A permanent (not retryable) transport error about `message`.
pub fn permanent(transport: &str, message: &Message, reason: impl Into<String>) -> Error {
    Error::Transport {
        transport: transport.to_string(),
        message: reason.into(),
        retryable: false,
        message_id: Some(message.id),
    }
}

/// Maps `message` for writing; errors are permanent: the payload is not
/// JSON, the topic is no category, or the expected version is no integer.
pub fn outgoing(
    transport: &str,
    message: &Message,
    expected_version_header: &str,
) -> Result<Outgoing> {
    check_category(&message.topic).map_err(|e| permanent(transport, message, e.to_string()))?;
    let data: Json = serde_json::from_slice(&message.payload).map_err(|e| {
        permanent(
            transport,
            message,
            format!(
                "the payload is not JSON ({e}); {transport} stores message data as JSON, \
                 so publish JSON payloads to this transport"
            ),
        )
    })?;
    let id = match message.key.as_deref() {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => message.id.to_string(),
    };
    let expected_version = match message.headers.get(expected_version_header) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= -1)
                .ok_or_else(|| {
                    permanent(
                        transport,
                        message,
                        format!(
                            "header {expected_version_header:?} must be a stream version \
                     (an integer >= -1), not {v:?}"
                        ),
                    )
                })?,
        ),
    };
    let mut metadata = Map::new();
    for (name, value) in &message.headers {
        if name != expected_version_header && name != METADATA_ENVELOPE {
            metadata.insert(name.clone(), Json::String(value.clone()));
        }
    }
    metadata.insert(
        METADATA_ENVELOPE.into(),
        serde_json::json!({
            "key": message.key,
            "contentType": message.content_type,
            "createdAt": crate::message::micros_rfc3339::format(&message.created_at),
        }),
    );
    Ok(Outgoing {
        stream_name: format!("{}-{}", message.topic, id),
        message_type: message.event_type.clone(),
        data,
        metadata: Json::Object(metadata),
        expected_version,
    })
}

/// A message as a store returns it.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Message id.
    pub id: Uuid,
    /// Full stream name.
    pub stream_name: String,
    /// Message type.
    pub message_type: String,
    /// Data (JSON).
    pub data: Json,
    /// Metadata (JSON object or null).
    pub metadata: Json,
    /// When the store wrote it.
    pub time: DateTime<Utc>,
}

/// Rebuilds the relaybox message: topic = category, type, payload = the
/// data as JSON, headers = the string metadata entries; key, content type
/// and creation time from the envelope, or (for messages written by other
/// clients) the stream id, `application/json` and the store's time.
pub fn incoming(m: Incoming) -> Message {
    let mut headers = BTreeMap::new();
    let mut envelope = None;
    if let Json::Object(map) = m.metadata {
        for (name, value) in map {
            match (name.as_str(), value) {
                (METADATA_ENVELOPE, Json::Object(e)) => envelope = Some(e),
                (_, Json::String(s)) => {
                    headers.insert(name, s);
                }
                (_, Json::Null) => {}
                (_, other) => {
                    headers.insert(name, other.to_string());
                }
            }
        }
    }
    let (key, content_type, created_at) = match &envelope {
        Some(e) => (
            e.get("key").and_then(Json::as_str).map(str::to_string),
            e.get("contentType")
                .and_then(Json::as_str)
                .unwrap_or(APPLICATION_JSON)
                .to_string(),
            e.get("createdAt")
                .and_then(Json::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map_or(m.time, |t| t.with_timezone(&Utc)),
        ),
        None => (
            stream_id_of(&m.stream_name).map(str::to_string),
            APPLICATION_JSON.to_string(),
            m.time,
        ),
    };
    let created_at = created_at.trunc_subsecs(6);
    Message {
        id: m.id,
        topic: category_of(&m.stream_name).to_string(),
        key,
        event_type: m.message_type,
        payload: serde_json::to_vec(&m.data).unwrap_or_default(),
        content_type,
        headers,
        created_at,
        available_at: created_at,
        idempotency_key: None,
    }
}

/// The ordering lane of a stream: its messages are processed in order.
pub fn lane_of(stream_name: &str) -> u64 {
    u64::from(crc32fast::hash(stream_name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert_eq!(category_of("account-123+retry"), "account");
        assert_eq!(stream_id_of("account-123+retry"), Some("123+retry"));
        assert_eq!(cardinal_id_of("account-123+retry"), Some("123"));
        assert_eq!(cardinal_id_of("account"), None);
        assert!(check_category("orders").is_ok());
        assert!(check_category("orders-eu").is_err());
    }

    #[test]
    fn round_trip() {
        let m = Message::json("orders", &serde_json::json!({"n": 1}))
            .unwrap()
            .with_key("o-1")
            .with_type("Placed")
            .with_header("traceparent", "00-abc")
            .with_header("expected_version", "4");
        let out = outgoing("message_db", &m, DEFAULT_EXPECTED_VERSION_HEADER).unwrap();
        assert_eq!(out.stream_name, "orders-o-1");
        assert_eq!(out.expected_version, Some(4));
        assert_eq!(out.metadata["traceparent"], "00-abc");
        assert!(out.metadata.get("expected_version").is_none());
        let back = incoming(Incoming {
            id: m.id,
            stream_name: out.stream_name,
            message_type: out.message_type,
            data: out.data,
            metadata: out.metadata,
            time: Utc::now(),
        });
        assert_eq!(back.key.as_deref(), Some("o-1"));
        assert_eq!(back.topic, "orders");
        assert_eq!(back.event_type, "Placed");
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.created_at, m.created_at);
        assert_eq!(
            back.headers.get("traceparent").map(String::as_str),
            Some("00-abc")
        );
    }

    #[test]
    fn rejects_what_cannot_be_written() {
        let raw = Message::new("orders", b"\xffnot json".to_vec());
        let e = outgoing("message_db", &raw, "expected_version").unwrap_err();
        assert!(!e.retryable());
        assert!(e.to_string().contains("not JSON"), "{e}");
        let bad = Message::json("orders", &1)
            .unwrap()
            .with_header("expected_version", "soon");
        assert!(outgoing("message_db", &bad, "expected_version").is_err());
        let keyless = Message::json("orders", &1).unwrap();
        let out = outgoing("message_db", &keyless, "expected_version").unwrap();
        assert_eq!(out.stream_name, format!("orders-{}", keyless.id));
    }
}
