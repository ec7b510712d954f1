//! Message ⇄ Kafka record: key, value and headers.

use std::collections::BTreeMap;

use chrono::DateTime;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

use crate::message::{micros_rfc3339, Message, OCTET_STREAM};

/// Header carrying the message id (UUID text).
pub const HEADER_ID: &str = "relaybox-id";
/// Header carrying the event type.
pub const HEADER_TYPE: &str = "relaybox-type";
/// Header carrying the payload's MIME type.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header carrying the creation time (RFC 3339, microseconds).
pub const HEADER_CREATED_AT: &str = "relaybox-created-at";
/// Header set on dead-letter records: the last handler error.
pub const HEADER_ERROR: &str = "relaybox-error";

/// The envelope headers, written from the message's own fields; a user header
/// of one of these names is not written a second time.
pub(crate) const ENVELOPE: [&str; 4] = [
    HEADER_ID,
    HEADER_TYPE,
    HEADER_CONTENT_TYPE,
    HEADER_CREATED_AT,
];

/// The record headers of a message.
pub(crate) fn headers_of(m: &Message) -> OwnedHeaders {
    let id = m.id.to_string();
    let created = micros_rfc3339::format(&m.created_at);
    let mut h = OwnedHeaders::new_with_capacity(4 + m.headers.len())
        .insert(Header {
            key: HEADER_ID,
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: HEADER_TYPE,
            value: Some(m.event_type.as_str()),
        })
        .insert(Header {
            key: HEADER_CONTENT_TYPE,
            value: Some(m.content_type.as_str()),
        })
        .insert(Header {
            key: HEADER_CREATED_AT,
            value: Some(created.as_str()),
        });
    for (k, v) in &m.headers {
        if !ENVELOPE.contains(&k.as_str()) {
            h = h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_str()),
            });
        }
    }
    h
}

/// Rebuilds a message from any Kafka record. Records not written by relaybox
/// get a stable id derived from topic, partition and offset, so the inbox
/// deduplicates their redeliveries too.
pub fn message_from_record<M: rdkafka::message::Message>(record: &M) -> Message {
    let mut headers = BTreeMap::new();
    let (mut id, mut event_type, mut content_type, mut created) = (None, String::new(), None, None);
    if let Some(hs) = record.headers() {
        for h in hs.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            match h.key {
                HEADER_ID => id = Uuid::parse_str(&value).ok(),
                HEADER_TYPE => event_type = value,
                HEADER_CONTENT_TYPE => content_type = Some(value),
                HEADER_CREATED_AT => {
                    created = DateTime::parse_from_rfc3339(&value)
                        .ok()
                        .map(|t| t.to_utc())
                }
                key => {
                    headers.insert(key.to_string(), value);
                }
            }
        }
    }
    let created_at = created
        .or_else(|| {
            record
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis)
        })
        .unwrap_or_else(crate::message::now_micros);
    let id = id.unwrap_or_else(|| {
        let name = format!(
            "kafka:{}/{}/{}",
            record.topic(),
            record.partition(),
            record.offset()
        );
        Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
    });
    Message {
        id,
        topic: record.topic().to_string(),
        key: record
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        event_type,
        payload: record.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        content_type: content_type.unwrap_or_else(|| OCTET_STREAM.to_string()),
        headers,
        created_at,
        available_at: created_at,
        idempotency_key: None,
    }
}
