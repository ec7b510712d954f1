//! Message ⇄ SNS/SQS message: body text and String message attributes.
//!
//! The body is the payload as text when it is UTF-8 that SQS accepts, else
//! its base64 with the attribute `relaybox-encoding: base64`. Attributes:
//! `relaybox-id`, `relaybox-type` and `relaybox-key` (when not empty),
//! `content-type` (unless `application/octet-stream`), then every header whose
//! name is a valid attribute name and whose value is not empty, under its own
//! name (`entityName`, `publisherName`, `eventName`, `traceparent`, ...).
//! SNS and SQS carry at most 10 attributes per message. With the
//! `cloudevents` option the CloudEvents attributes (`ce_id`, `ce_source`,
//! `ce_type`, `ce_specversion`, `ce_time`) come after the envelope and
//! `content-type` is always written.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::DateTime;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{Message, OCTET_STREAM};
use crate::transport::cloudevents::{self, CloudEvents, KAFKA_PREFIX as CE_PREFIX};

/// Attribute carrying the message id (UUID text).
pub const ATTR_ID: &str = "relaybox-id";
/// Attribute carrying the event type.
pub const ATTR_TYPE: &str = "relaybox-type";
/// Attribute carrying the key (also the FIFO `MessageGroupId`).
pub const ATTR_KEY: &str = "relaybox-key";
/// Attribute carrying the payload's MIME type.
pub const ATTR_CONTENT_TYPE: &str = "content-type";
/// Attribute set when the body is the payload in base64.
pub const ATTR_ENCODING: &str = "relaybox-encoding";
/// Attribute set on dead-lettered messages: the last handler error.
pub const ATTR_ERROR: &str = "relaybox-error";
/// The most message attributes SNS and SQS accept on one message.
pub const MAX_ATTRIBUTES: usize = 10;

const ENVELOPE: [&str; 5] = [
    ATTR_ID,
    ATTR_TYPE,
    ATTR_KEY,
    ATTR_CONTENT_TYPE,
    ATTR_ENCODING,
];

/// A message as SNS/SQS carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub body: String,
    pub attributes: Vec<(String, String)>,
}

/// Whether `name` is accepted as a message attribute name by SNS and SQS:
/// 1–256 of `A-Za-z0-9_-.`, no leading, trailing or double period, not
/// starting with `AWS.` or `Amazon.`.
pub fn is_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// Whether SQS accepts `text` as a message body (XML 1.0 characters).
fn sqs_safe(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    })
}

/// Body and attributes of `m`, with the CloudEvents attributes when `ce` is
/// on. Fails naming the attributes when there are more than
/// [`MAX_ATTRIBUTES`].
pub(crate) fn encode(m: &Message, transport: &str, ce: &CloudEvents) -> Result<Encoded> {
    let mut attributes: Vec<(String, String)> = vec![(ATTR_ID.into(), m.id.to_string())];
    if !m.event_type.is_empty() {
        attributes.push((ATTR_TYPE.into(), m.event_type.clone()));
    }
    if let Some(k) = m.key.as_ref().filter(|k| !k.is_empty()) {
        attributes.push((ATTR_KEY.into(), k.clone()));
    }
    if !m.content_type.is_empty() && (m.content_type != OCTET_STREAM || ce.is_on()) {
        attributes.push((ATTR_CONTENT_TYPE.into(), m.content_type.clone()));
    }
    let body = match std::str::from_utf8(&m.payload) {
        Ok(text) if sqs_safe(text) => text.to_string(),
        _ => {
            attributes.push((ATTR_ENCODING.into(), "base64".into()));
            base64::engine::general_purpose::STANDARD.encode(&m.payload)
        }
    };
    let ce_attributes = ce.attributes(m);
    let ce_named = ce_attributes
        .as_ref()
        .map(|a| a.named(CE_PREFIX))
        .unwrap_or_default();
    attributes.extend(ce_named.iter().map(|(k, v)| (k.clone(), v.to_string())));
    for (k, v) in &m.headers {
        if !ENVELOPE.contains(&k.as_str())
            && !ce_named.iter().any(|(n, _)| n == k)
            && !v.is_empty()
            && is_attribute_name(k)
        {
            attributes.push((k.clone(), v.clone()));
        }
    }
    if attributes.len() > MAX_ATTRIBUTES {
        let names: Vec<&str> = attributes.iter().map(|(k, _)| k.as_str()).collect();
        return Err(Error::Transport {
            transport: transport.into(),
            message: format!(
                "message has {} attributes but SNS and SQS accept at most {MAX_ATTRIBUTES} \
                 ({}); drop headers so that at most {} remain besides relaybox's",
                attributes.len(),
                names.join(", "),
                MAX_ATTRIBUTES - (attributes.len() - headers_kept(&attributes, ce)),
            ),
            retryable: false,
            message_id: Some(m.id),
        });
    }
    Ok(Encoded { body, attributes })
}

fn headers_kept(attributes: &[(String, String)], ce: &CloudEvents) -> usize {
    attributes
        .iter()
        .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()) && !ce.writes(k, CE_PREFIX))
        .count()
}

/// Like [`encode`] for a dead-letter copy, without CloudEvents attributes:
/// the error goes first and attributes beyond the limit are left out, so the
/// copy is always accepted.
pub(crate) fn encode_dead_letter(m: &Message, error: &str, transport: &str) -> Encoded {
    let mut error = error.to_string();
    if error.len() > 4096 {
        let mut cut = 4096;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let mut trimmed = m.clone();
    trimmed.headers.clear();
    let mut enc = encode(&trimmed, transport, &CloudEvents::off())
        .expect("the envelope fits the attribute limit");
    enc.attributes.insert(0, (ATTR_ERROR.into(), error));
    for (k, v) in &m.headers {
        if enc.attributes.len() >= MAX_ATTRIBUTES {
            break;
        }
        if !ENVELOPE.contains(&k.as_str())
            && k != ATTR_ERROR
            && !v.is_empty()
            && is_attribute_name(k)
        {
            enc.attributes.push((k.clone(), v.clone()));
        }
    }
    enc
}

/// What the source read from SQS, before it is a [`Message`].
pub(crate) struct Received<'a> {
    pub queue: &'a str,
    pub topic: &'a str,
    pub message_id: Option<&'a str>,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub group_id: Option<String>,
    pub sent_timestamp_ms: Option<i64>,
}

/// Rebuilds a message from an SQS message. An SNS notification (raw delivery
/// off) is unwrapped: its `Message` is the body and its `MessageAttributes`
/// the attributes. Messages not written by relaybox get a stable id derived
/// from the queue and the SQS message id, so redeliveries are deduplicated.
/// The CloudEvents attributes of a message relaybox wrote repeat its
/// envelope and are left out of the headers.
pub(crate) fn decode(mut r: Received<'_>) -> Message {
    if !r.attributes.contains_key(ATTR_ID) {
        if let Some((body, attrs)) = unwrap_notification(&r.body) {
            r.body = body;
            r.attributes.extend(attrs);
        }
    }
    let mut attrs = r.attributes;
    if cloudevents::written_by_relaybox(attrs.keys().map(String::as_str), ATTR_ID, CE_PREFIX) {
        attrs.retain(|k, _| !cloudevents::is_attribute(k, CE_PREFIX));
    }
    let id = attrs
        .remove(ATTR_ID)
        .and_then(|v| Uuid::parse_str(&v).ok())
        .unwrap_or_else(|| {
            let name = format!("sqs:{}/{}", r.queue, r.message_id.unwrap_or_default());
            Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
        });
    let event_type = attrs.remove(ATTR_TYPE).unwrap_or_default();
    let key = attrs.remove(ATTR_KEY).or(r.group_id);
    let content_type = attrs
        .remove(ATTR_CONTENT_TYPE)
        .unwrap_or_else(|| OCTET_STREAM.to_string());
    let payload = match attrs.remove(ATTR_ENCODING).as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(r.body.as_bytes())
            .unwrap_or_else(|_| r.body.clone().into_bytes()),
        _ => r.body.into_bytes(),
    };
    let created_at = r
        .sent_timestamp_ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(crate::message::now_micros);
    Message {
        id,
        topic: r.topic.to_string(),
        key,
        event_type,
        payload,
        content_type,
        headers: attrs,
        created_at,
        available_at: created_at,
        idempotency_key: None,
    }
}

/// Body and String attributes of an SNS notification envelope, if `body` is one.
fn unwrap_notification(body: &str) -> Option<(String, BTreeMap<String, String>)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object()?;
    if obj.get("Type")?.as_str()? != "Notification" || !obj.contains_key("TopicArn") {
        return None;
    }
    let message = obj.get("Message")?.as_str()?.to_string();
    let mut attrs = BTreeMap::new();
    if let Some(m) = obj.get("MessageAttributes").and_then(|m| m.as_object()) {
        for (k, a) in m {
            if let Some(value) = a.get("Value").and_then(|v| v.as_str()) {
                attrs.insert(k.clone(), value.to_string());
            }
        }
    }
    Some((message, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names() {
        for ok in ["entityName", "relaybox-id", "a.b", "x_y"] {
            assert!(is_attribute_name(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "AWS.x", "amazon.y", "a b", "a:b"] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }

    #[test]
    fn round_trip_text_and_binary() {
        let m = Message::new("t", "héllo")
            .with_key("k")
            .with_type("Ev")
            .with_header("entityName", "Order")
            .with_header("bad name", "dropped");
        let e = encode(&m, "sns", &CloudEvents::off()).unwrap();
        assert_eq!(e.body, "héllo");
        assert!(e
            .attributes
            .contains(&("entityName".into(), "Order".into())));
        assert!(!e.attributes.iter().any(|(k, _)| k == "bad name"));
        let back = decode(Received {
            queue: "q",
            topic: "t",
            message_id: None,
            body: e.body,
            attributes: e.attributes.into_iter().collect(),
            group_id: None,
            sent_timestamp_ms: Some(1),
        });
        assert_eq!((back.id, back.key.as_deref()), (m.id, Some("k")));
        assert_eq!(back.event_type, "Ev");
        assert_eq!(back.payload, m.payload);

        let bin = Message::new("t", vec![0u8, 0xff, 0x01]);
        let e = encode(&bin, "sqs", &CloudEvents::off()).unwrap();
        let back = decode(Received {
            queue: "q",
            topic: "t",
            message_id: None,
            body: e.body,
            attributes: e.attributes.into_iter().collect(),
            group_id: None,
            sent_timestamp_ms: None,
        });
        assert_eq!(back.payload, vec![0u8, 0xff, 0x01]);
    }

    #[test]
    fn too_many_attributes_is_a_clear_error() {
        let mut m = Message::new("t", "x");
        for i in 0..10 {
            m = m.with_header(format!("h{i}"), "v");
        }
        let e = encode(&m, "sns", &CloudEvents::off()).unwrap_err();
        assert!(!e.retryable());
        assert_eq!(e.message_id(), Some(m.id));
        assert!(e.to_string().contains("at most 10"), "{e}");
        let dl = encode_dead_letter(&m, "boom", "sns");
        assert_eq!(dl.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(
            dl.attributes[0],
            (ATTR_ERROR.to_string(), "boom".to_string())
        );
    }

    #[test]
    fn unwraps_sns_notifications() {
        let body = serde_json::json!({
            "Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": "{\"a\":1}",
            "MessageAttributes": {"eventName": {"Type": "String", "Value": "Created"}}
        })
        .to_string();
        let m = decode(Received {
            queue: "q",
            topic: "t",
            message_id: Some("m1"),
            body,
            attributes: BTreeMap::new(),
            group_id: None,
            sent_timestamp_ms: None,
        });
        assert_eq!(m.payload, b"{\"a\":1}");
        assert_eq!(
            m.headers.get("eventName").map(String::as_str),
            Some("Created")
        );
    }

    #[test]
    fn cloudevents_attributes() {
        let m = Message::new("orders", "{}")
            .with_type("OrderPlaced")
            .with_key("k1")
            .with_header("traceparent", "00-abc-def-01");
        let e = encode(&m, "sqs", &CloudEvents::on()).unwrap();
        let attrs: BTreeMap<String, String> = e.attributes.iter().cloned().collect();
        assert_eq!(attrs["ce_id"], m.id.to_string());
        assert_eq!(attrs["ce_source"], "relaybox");
        assert_eq!(attrs["ce_type"], "OrderPlaced");
        assert_eq!(attrs["ce_specversion"], "1.0");
        assert_eq!(
            attrs["ce_time"],
            crate::message::micros_rfc3339::format(&m.created_at)
        );
        assert_eq!(attrs[ATTR_CONTENT_TYPE], OCTET_STREAM);
        assert_eq!(attrs[ATTR_ID], m.id.to_string());
        assert_eq!(e.attributes.len(), 10);
        let back = decode(Received {
            queue: "q",
            topic: "orders",
            message_id: None,
            body: e.body,
            attributes: attrs,
            group_id: None,
            sent_timestamp_ms: None,
        });
        assert_eq!(back.headers, m.headers);
        assert_eq!((back.id, back.event_type.as_str()), (m.id, "OrderPlaced"));

        let over = m.with_header("source", "urn:shop");
        let err = encode(&over, "sqs", &CloudEvents::on()).unwrap_err();
        assert!(err.to_string().contains("at most 1 remain"), "{err}");
    }
}
