//! The message envelope: what the outbox stores, the relay publishes and the
//! consumer hands to its handler. Its canonical JSON form is the format the
//! shared fixtures in `tests/fixtures/` are written in.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::validate::Limits;

/// Content type of payloads given as raw bytes.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Content type of JSON payloads.
pub const APPLICATION_JSON: &str = "application/json";
/// Header that carries the producing service's name.
pub const SOURCE_HEADER: &str = "source";

/// One event: an immutable envelope around an opaque payload.
///
/// Timestamps are kept to the microsecond, the precision of both stores, so a
/// message read back from the database equals the one that was written.
///
/// In canonical JSON the payload is base64 (standard alphabet, padded) and
/// timestamps are RFC 3339 UTC with exactly six fractional digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// UUID v7: unique, time-ordered, the idempotency key on the consumer side.
    pub id: Uuid,
    /// Destination topic (Kafka topic, log category, ...).
    pub topic: String,
    /// Partition key: messages with the same key are delivered in order.
    pub key: Option<String>,
    /// Event name, e.g. `"OrderPlaced"`. May be empty.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Opaque payload bytes.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
    /// String headers: trace context, source, idempotency keys, user headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// When the message was created.
    #[serde(with = "micros_rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Earliest time the relay may deliver it (delayed delivery); equals `created_at` by default.
    #[serde(with = "micros_rfc3339")]
    pub available_at: DateTime<Utc>,
    /// The producer's idempotency key: enqueueing a second message with the
    /// same key on the same topic writes nothing and returns the first
    /// message's id, for as long as the store keeps the key (see
    /// [`crate::Store::purge_idempotency_keys`]). Not sent to brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Message {
    /// A message with a new UUID v7, raw bytes as payload and the current time.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        let now = now_micros();
        Message {
            id: Uuid::now_v7(),
            topic: topic.into(),
            key: None,
            event_type: String::new(),
            payload: payload.into(),
            content_type: OCTET_STREAM.to_string(),
            headers: BTreeMap::new(),
            created_at: now,
            available_at: now,
            idempotency_key: None,
        }
    }

    /// A message whose payload is `value` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|e| crate::Error::InvalidMessage {
            field: "payload",
            reason: format!("not serialisable as JSON: {e}"),
        })?;
        Ok(Message::new(topic, payload).with_content_type(APPLICATION_JSON))
    }

    /// Sets the partition key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the producer's idempotency key (see [`Message::idempotency_key`]).
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the event type.
    pub fn with_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// Sets the payload's content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Adds (or replaces) a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the `source` header: the name of the producing service.
    pub fn with_source(self, source: impl Into<String>) -> Self {
        self.with_header(SOURCE_HEADER, source)
    }

    /// Delays delivery until `at` (rounded to the microsecond).
    pub fn available_at(mut self, at: DateTime<Utc>) -> Self {
        self.available_at = at.trunc_subsecs(6);
        self
    }

    /// Delays delivery by `delay` from the message's creation.
    pub fn delayed_by(self, delay: std::time::Duration) -> Self {
        let at =
            self.created_at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.available_at(at)
    }

    /// The `source` header, if set.
    pub fn source(&self) -> Option<&str> {
        self.headers.get(SOURCE_HEADER).map(String::as_str)
    }

    /// Checks the message against `limits`; see [`Limits::check`].
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        limits.check(self)
    }

    /// The canonical JSON form (see the type's documentation).
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a message always serialises")
    }

    /// Parses the canonical JSON form.
    pub fn from_canonical_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| crate::Error::InvalidMessage {
            field: "json",
            reason: e.to_string(),
        })
    }
}

/// The current time truncated to microseconds.
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Microseconds since the Unix epoch, the timestamp encoding of the SQLite store.
pub(crate) fn to_unix_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Inverse of [`to_unix_micros`].
pub(crate) fn from_unix_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 in UTC with exactly six fractional digits, e.g. `2026-01-02T03:04:05.000006Z`.
pub mod micros_rfc3339 {
    use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a timestamp the canonical way.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Serialises a timestamp the canonical way.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Parses any RFC 3339 timestamp, truncated to microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_time_ordered() {
        let a = Message::new("t", b"1".to_vec());
        let b = Message::new("t", b"2".to_vec());
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
    }

    #[test]
    fn canonical_json_round_trips() {
        let m = Message::new("orders", b"\x00\xffhello".to_vec())
            .with_key("customer-1")
            .with_type("OrderPlaced")
            .with_header("traceparent", "00-abc-def-01");
        let text = m.to_canonical_json();
        assert!(text.contains("\"type\":\"OrderPlaced\""));
        assert_eq!(Message::from_canonical_json(&text).unwrap(), m);
    }
}
