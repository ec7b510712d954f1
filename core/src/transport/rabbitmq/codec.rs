//! Message ⇄ AMQP message: body, properties and headers, in the two codecs.
//!
//! Both codecs set the same properties: `message_id` = relaybox id, `type` =
//! event type, `correlation_id` = key, `content_type`, `timestamp` (seconds),
//! `delivery_mode` = 2 (persistent), and the headers `relaybox-id`,
//! `relaybox-type`, `relaybox-created-at` (RFC 3339, microseconds) plus every
//! user header under its own name. A key or type longer than an AMQP short
//! string (255 bytes) travels only in the `relaybox-key` / `relaybox-type`
//! header. With the `cloudevents` option the CloudEvents attributes go in
//! the headers too, twice: under the AMQP binding's `cloudEvents_` prefix
//! and under the RabbitMQ binding's `ce-` prefix.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::DateTime;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{micros_rfc3339, Message, APPLICATION_JSON, OCTET_STREAM, SOURCE_HEADER};
use crate::transport::cloudevents::{self, CloudEvents, AMQP_PREFIX, RABBITMQ_PREFIX};

/// Header carrying the message id (UUID text).
pub const HEADER_ID: &str = "relaybox-id";
/// Header carrying the event type.
pub const HEADER_TYPE: &str = "relaybox-type";
/// Header carrying the key when it does not fit `correlation_id`.
pub const HEADER_KEY: &str = "relaybox-key";
/// Header carrying the creation time (RFC 3339, microseconds).
pub const HEADER_CREATED_AT: &str = "relaybox-created-at";
/// Header set on dead letters: the last handler error.
pub const HEADER_ERROR: &str = "relaybox-error";
/// Header set on dead letters: the topic the message was consumed from.
pub const HEADER_ORIGINAL_TOPIC: &str = "relaybox-original-topic";
/// Header set on dead letters: the queue the message was consumed from.
pub const HEADER_ORIGINAL_QUEUE: &str = "relaybox-original-queue";

/// How a message becomes an AMQP body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// The payload bytes untouched; the envelope is in properties and headers.
    #[default]
    Relaybox,
    /// The JSON event envelope `{"id", "name", "data", "timestamp", "source",
    /// "metadata"}` with the headers `event_name`, `event_id`, `event_source`.
    /// A payload that already is such an envelope (as the `core.messaging`
    /// façades write) is sent unchanged; any other payload becomes `data`
    /// (parsed JSON, else UTF-8 text, else base64 text).
    Envelope,
}

fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s).ok()
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The body and properties of `m` in `codec`, with the CloudEvents headers
/// of the AMQP and the RabbitMQ bindings when `ce` is on (both bindings'
/// content type is the `content_type` property). Fails (not retryable) only for a header
/// name longer than 255 bytes.
pub(crate) fn encode(
    m: &Message,
    codec: Codec,
    ce: &CloudEvents,
) -> Result<(Vec<u8>, BasicProperties)> {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: &str| -> Result<()> {
        let key = short(name).ok_or_else(|| Error::InvalidHeader {
            name: name.chars().take(40).collect(),
            reason: "AMQP header names are at most 255 bytes".into(),
        })?;
        headers.insert(key, long(value));
        Ok(())
    };
    put(HEADER_ID, &m.id.to_string())?;
    put(HEADER_TYPE, &m.event_type)?;
    put(HEADER_CREATED_AT, &micros_rfc3339::format(&m.created_at))?;
    let key_short = m.key.as_deref().and_then(short);
    if let (Some(key), None) = (&m.key, &key_short) {
        put(HEADER_KEY, key)?;
    }
    let attributes = ce.attributes(m);
    let ce_headers: Vec<(String, &str)> = attributes
        .as_ref()
        .map(|a| {
            let mut named = a.named(AMQP_PREFIX);
            named.extend(a.named(RABBITMQ_PREFIX));
            named
        })
        .unwrap_or_default();
    for (name, value) in &ce_headers {
        put(name, value)?;
    }
    for (k, v) in &m.headers {
        if ![HEADER_ID, HEADER_TYPE, HEADER_CREATED_AT, HEADER_KEY].contains(&k.as_str())
            && !ce_headers.iter().any(|(n, _)| n == k)
        {
            put(k, v)?;
        }
    }
    let (body, content_type) = match codec {
        Codec::Relaybox => (m.payload.clone(), m.content_type.as_str()),
        Codec::Envelope => {
            let envelope = envelope_of(m);
            put("event_name", &m.event_type)?;
            put(
                "event_id",
                envelope_id(&envelope).unwrap_or(&m.id.to_string()),
            )?;
            put(
                "event_source",
                envelope
                    .get("source")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default(),
            )?;
            (
                serde_json::to_vec(&envelope).expect("a JSON value serializes"),
                APPLICATION_JSON,
            )
        }
    };
    let mut props = BasicProperties::default()
        .with_message_id(m.id.to_string().into())
        .with_delivery_mode(2)
        .with_timestamp(m.created_at.timestamp().max(0) as u64)
        .with_headers(headers);
    if let Some(ct) = short(content_type) {
        props = props.with_content_type(ct);
    }
    if let Some(t) = short(&m.event_type) {
        props = props.with_type(t);
    }
    if let Some(key) = key_short {
        props = props.with_correlation_id(key);
    }
    Ok((body, props))
}

fn envelope_id(envelope: &serde_json::Value) -> Option<&str> {
    envelope.get("id").and_then(|v| v.as_str())
}

/// The 002 envelope of `m`: its payload when that already is one, else a new one.
fn envelope_of(m: &Message) -> serde_json::Value {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&m.payload).ok();
    if let Some(serde_json::Value::Object(o)) = &parsed {
        if ["id", "name", "data"].iter().all(|k| o.contains_key(*k)) {
            return parsed.expect("checked above");
        }
    }
    let data = match parsed {
        Some(v) => v,
        None => match std::str::from_utf8(&m.payload) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::Value::String(
                base64::engine::general_purpose::STANDARD.encode(&m.payload),
            ),
        },
    };
    serde_json::json!({
        "id": m.id.to_string(),
        "name": m.event_type,
        "data": data,
        "timestamp": micros_rfc3339::format(&m.created_at),
        "source": m.headers.get(SOURCE_HEADER).cloned().unwrap_or_default(),
        "metadata": {},
    })
}

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Rebuilds a message from any AMQP delivery (topic = routing key). The body
/// becomes the payload as it is, in both codecs. Messages not written by
/// relaybox get an id derived from routing key, correlation id and body, so
/// the inbox deduplicates their redeliveries too. The CloudEvents
/// properties of a message relaybox wrote repeat its envelope and are left
/// out of the headers.
pub fn message_from_delivery(
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) -> Message {
    let mut headers = BTreeMap::new();
    let (mut id, mut event_type, mut key, mut created) = (None, None, None, None);
    if let Some(table) = properties.headers() {
        let skip_ce = cloudevents::written_by_relaybox(
            table.inner().keys().map(|k| k.as_str()),
            HEADER_ID,
            AMQP_PREFIX,
        );
        for (name, value) in table.inner() {
            if skip_ce
                && (cloudevents::is_attribute(name.as_str(), AMQP_PREFIX)
                    || cloudevents::is_attribute(name.as_str(), RABBITMQ_PREFIX))
            {
                continue;
            }
            let text = value_text(value);
            match name.as_str() {
                HEADER_ID => id = Uuid::parse_str(&text).ok(),
                HEADER_TYPE => event_type = Some(text),
                HEADER_KEY => key = Some(text),
                HEADER_CREATED_AT => {
                    created = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.to_utc())
                }
                n => {
                    headers.insert(n.to_string(), text);
                }
            }
        }
    }
    let id = id
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .and_then(|m| Uuid::parse_str(m.as_str()).ok())
        })
        .unwrap_or_else(|| {
            let mut name = format!("rabbitmq:{routing_key}/");
            if let Some(c) = properties.correlation_id() {
                name.push_str(c.as_str());
            }
            name.push('/');
            let mut bytes = name.into_bytes();
            bytes.extend_from_slice(body);
            Uuid::new_v5(&Uuid::NAMESPACE_URL, &bytes)
        });
    let key = key.or_else(|| {
        properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string())
    });
    let event_type = event_type
        .or_else(|| properties.kind().as_ref().map(|t| t.as_str().to_string()))
        .unwrap_or_default();
    let created_at = created
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|s| DateTime::from_timestamp(s as i64, 0))
        })
        .unwrap_or_else(crate::message::now_micros);
    Message {
        id,
        topic: routing_key.to_string(),
        key,
        event_type,
        payload: body.to_vec(),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| OCTET_STREAM.to_string()),
        headers,
        created_at,
        available_at: created_at,
        idempotency_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut m = Message::new("orders", b"{\"n\":1}".to_vec());
        m.key = Some("k1".into());
        m.event_type = "OrderPlaced".into();
        m.content_type = APPLICATION_JSON.into();
        m.headers.insert("source".into(), "shop".into());
        let (body, props) = encode(&m, Codec::Relaybox, &CloudEvents::off()).unwrap();
        assert_eq!(body, m.payload);
        assert_eq!(props.delivery_mode(), &Some(2));
        let back = message_from_delivery("orders", &props, &body);
        assert_eq!(back, m);
    }

    #[test]
    fn envelope_wraps_or_passes_through() {
        let mut m = Message::new("orders", b"{\"n\":1}".to_vec());
        m.event_type = "OrderPlaced".into();
        m.headers.insert("source".into(), "shop".into());
        let (body, props) = encode(&m, Codec::Envelope, &CloudEvents::off()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["name"], "OrderPlaced");
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["source"], "shop");
        assert_eq!(v["id"], m.id.to_string());
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            APPLICATION_JSON
        );
        let ready = serde_json::json!({"id": "e1", "name": "X", "data": {}, "timestamp": "t",
            "source": "s", "metadata": {}});
        let m2 = Message::new("orders", serde_json::to_vec(&ready).unwrap());
        let (body2, _) = encode(&m2, Codec::Envelope, &CloudEvents::off()).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body2).unwrap(),
            ready
        );
    }

    fn header(props: &BasicProperties, name: &str) -> Option<String> {
        props
            .headers()
            .as_ref()
            .and_then(|t| t.inner().get(name).map(value_text))
    }

    #[test]
    fn cloudevents_application_properties() {
        let mut m = Message::new("orders", b"{\"n\":1}".to_vec());
        m.event_type = "OrderPlaced".into();
        m.content_type = APPLICATION_JSON.into();
        m.headers
            .insert("traceparent".into(), "00-abc-def-01".into());
        let (body, props) =
            encode(&m, Codec::Relaybox, &CloudEvents::with_source("/shop")).unwrap();
        assert_eq!(header(&props, "cloudEvents_id"), Some(m.id.to_string()));
        assert_eq!(
            header(&props, "cloudEvents_source").as_deref(),
            Some("/shop")
        );
        assert_eq!(
            header(&props, "cloudEvents_type").as_deref(),
            Some("OrderPlaced")
        );
        assert_eq!(
            header(&props, "cloudEvents_specversion").as_deref(),
            Some("1.0")
        );
        assert_eq!(
            header(&props, "cloudEvents_time"),
            Some(micros_rfc3339::format(&m.created_at))
        );
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some(APPLICATION_JSON)
        );
        assert_eq!(header(&props, HEADER_ID), Some(m.id.to_string()));
        assert_eq!(header(&props, "ce-id"), Some(m.id.to_string()));
        assert_eq!(header(&props, "ce-source").as_deref(), Some("/shop"));
        assert_eq!(header(&props, "ce-specversion").as_deref(), Some("1.0"));
        let back = message_from_delivery("orders", &props, &body);
        assert_eq!(back, m);

        let (_, plain) = encode(&m, Codec::Relaybox, &CloudEvents::off()).unwrap();
        assert_eq!(header(&plain, "cloudEvents_specversion"), None);
    }
}
