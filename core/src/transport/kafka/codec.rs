//! Message ⇄ Kafka record: key, value and headers.

use std::collections::BTreeMap;

use chrono::DateTime;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

use crate::message::{micros_rfc3339, Message, OCTET_STREAM};
use crate::transport::cloudevents::{self, CloudEvents, KAFKA_PREFIX};

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

/// The record headers of a message: the envelope, then, with `ce` on, the
/// CloudEvents headers of the Kafka protocol binding (`ce_id`, `ce_source`,
/// `ce_type`, `ce_specversion`, `ce_time`; `content-type` is the envelope's),
/// then the user headers, but those the envelope or CloudEvents already wrote.
pub(crate) fn headers_of(m: &Message, ce: &CloudEvents) -> OwnedHeaders {
    let id = m.id.to_string();
    let created = micros_rfc3339::format(&m.created_at);
    let attributes = ce.attributes(m);
    let ce_headers = attributes
        .as_ref()
        .map(|a| a.named(KAFKA_PREFIX))
        .unwrap_or_default();
    let mut h = OwnedHeaders::new_with_capacity(4 + ce_headers.len() + m.headers.len())
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
    for (key, value) in &ce_headers {
        h = h.insert(Header {
            key: key.as_str(),
            value: Some(*value),
        });
    }
    for (k, v) in &m.headers {
        if !ENVELOPE.contains(&k.as_str()) && !ce_headers.iter().any(|(n, _)| n == k) {
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
/// deduplicates their redeliveries too. The CloudEvents headers of a record
/// relaybox wrote repeat its envelope and are left out of the headers.
pub fn message_from_record<M: rdkafka::message::Message>(record: &M) -> Message {
    let mut headers = BTreeMap::new();
    let (mut id, mut event_type, mut content_type, mut created) = (None, String::new(), None, None);
    if let Some(hs) = record.headers() {
        let skip_ce =
            cloudevents::written_by_relaybox(hs.iter().map(|h| h.key), HEADER_ID, KAFKA_PREFIX);
        for h in hs.iter() {
            if skip_ce && cloudevents::is_attribute(h.key, KAFKA_PREFIX) {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message as _, OwnedMessage, Timestamp};

    fn record(m: &Message, ce: &CloudEvents) -> OwnedMessage {
        OwnedMessage::new(
            Some(m.payload.clone()),
            m.key.as_ref().map(|k| k.clone().into_bytes()),
            m.topic.clone(),
            Timestamp::CreateTime(m.created_at.timestamp_millis()),
            0,
            7,
            Some(headers_of(m, ce)),
        )
    }

    fn header_map(r: &OwnedMessage) -> BTreeMap<String, String> {
        r.headers()
            .expect("headers")
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                (h.key.to_string(), v)
            })
            .collect()
    }

    #[test]
    fn cloudevents_headers_beside_the_envelope() {
        let m = Message::new("orders", b"{}".to_vec())
            .with_type("OrderPlaced")
            .with_content_type("application/json")
            .with_key("k1")
            .with_header("source", "urn:shop")
            .with_header("ce_id", "a user's value");
        let r = record(&m, &CloudEvents::on());
        let h = header_map(&r);
        assert_eq!(h["ce_id"], m.id.to_string());
        assert_eq!(h["ce_source"], "urn:shop");
        assert_eq!(h["ce_type"], "OrderPlaced");
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_time"], micros_rfc3339::format(&m.created_at));
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h[HEADER_ID], m.id.to_string());
        assert_eq!(h[HEADER_TYPE], "OrderPlaced");
        let ids = r
            .headers()
            .unwrap()
            .iter()
            .filter(|x| x.key == "ce_id")
            .count();
        assert_eq!(ids, 1, "the attribute is written once");

        let plain = record(&m, &CloudEvents::off());
        let h = header_map(&plain);
        assert!(!h.contains_key("ce_specversion"));
        assert_eq!(h["ce_id"], "a user's value");
    }

    #[test]
    fn consumer_reads_the_same_message_with_or_without_cloudevents() {
        let m = Message::new("orders", b"{}".to_vec())
            .with_type("OrderPlaced")
            .with_header("source", "urn:shop")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            );
        let with = message_from_record(&record(&m, &CloudEvents::on()));
        let without = message_from_record(&record(&m, &CloudEvents::off()));
        assert_eq!(with, without);
        assert_eq!(with.id, m.id);
        assert_eq!(with.headers, m.headers);
        assert_eq!(with.created_at, m.created_at);
    }
}
