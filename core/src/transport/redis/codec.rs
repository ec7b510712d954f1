//! Message ⇄ stream entry: the field layout, and parsing of stream replies.

use std::collections::BTreeMap;

use chrono::DateTime;
use redis::Value;
use uuid::Uuid;

use crate::message::{micros_rfc3339, Message, OCTET_STREAM};

/// Field carrying the payload bytes.
pub const FIELD_DATA: &str = "data";
/// Field carrying the message key (empty when the message has none).
pub const FIELD_KEY: &str = "key";
/// Field carrying the user headers as a JSON object of strings.
pub const FIELD_HEADERS: &str = "headers";
/// Field carrying the message id (UUID text).
pub const FIELD_ID: &str = "id";
/// Field carrying the event type.
pub const FIELD_TYPE: &str = "type";
/// Field carrying the payload's MIME type.
pub const FIELD_CONTENT_TYPE: &str = "content_type";
/// Field carrying the creation time (RFC 3339, microseconds).
pub const FIELD_CREATED_AT: &str = "created_at";
/// Field carrying the relaybox topic.
pub const FIELD_TOPIC: &str = "topic";
/// Field of dead-letter entries: the last handler error.
pub const FIELD_ERROR: &str = "error";
/// Field of dead-letter entries: the stream the entry was read from.
pub const FIELD_ORIGINAL_STREAM: &str = "original_stream";
/// Field of dead-letter entries: the id of the entry it was read as.
pub const FIELD_ORIGINAL_ID: &str = "original_id";

/// The entry fields of a message, in wire order.
pub(crate) fn fields_of(m: &Message) -> Vec<(&'static str, Vec<u8>)> {
    let headers = serde_json::to_vec(&m.headers).unwrap_or_else(|_| b"{}".to_vec());
    vec![
        (FIELD_DATA, m.payload.clone()),
        (FIELD_KEY, m.key.clone().unwrap_or_default().into_bytes()),
        (FIELD_HEADERS, headers),
        (FIELD_ID, m.id.to_string().into_bytes()),
        (FIELD_TYPE, m.event_type.clone().into_bytes()),
        (FIELD_CONTENT_TYPE, m.content_type.clone().into_bytes()),
        (
            FIELD_CREATED_AT,
            micros_rfc3339::format(&m.created_at).into_bytes(),
        ),
        (FIELD_TOPIC, m.topic.clone().into_bytes()),
    ]
}

/// One stream entry as read: its id and its fields (`None` for an entry
/// still pending but already trimmed from the stream).
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Rebuilds a message from any stream entry. Entries not written by
/// relaybox get a stable id derived from stream and entry id (so the inbox
/// deduplicates their redeliveries too), `topic` as topic, and the entry
/// time as creation time.
pub fn message_from_entry(
    stream: &str,
    topic: &str,
    entry_id: &str,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Message {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut m = Message {
        id: Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("redis:{stream}/{entry_id}").as_bytes(),
        ),
        topic: topic.to_string(),
        key: None,
        event_type: String::new(),
        payload: Vec::new(),
        content_type: OCTET_STREAM.to_string(),
        headers: BTreeMap::new(),
        created_at: entry_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(crate::message::now_micros),
        available_at: DateTime::UNIX_EPOCH,
        idempotency_key: None,
    };
    for (name, value) in fields {
        match std::str::from_utf8(name).unwrap_or("") {
            FIELD_DATA => m.payload = value.clone(),
            FIELD_KEY if !value.is_empty() => m.key = Some(text(value)),
            FIELD_HEADERS => {
                if let Ok(h) = serde_json::from_slice::<BTreeMap<String, String>>(value) {
                    m.headers = h;
                }
            }
            FIELD_ID => {
                if let Ok(id) = Uuid::parse_str(&text(value)) {
                    m.id = id;
                }
            }
            FIELD_TYPE => m.event_type = text(value),
            FIELD_CONTENT_TYPE => m.content_type = text(value),
            FIELD_CREATED_AT => {
                if let Ok(t) = DateTime::parse_from_rfc3339(&text(value)) {
                    m.created_at = t.to_utc();
                }
            }
            FIELD_TOPIC if !value.is_empty() => m.topic = text(value),
            _ => {}
        }
    }
    m.available_at = m.created_at;
    m
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Entries of a list `[[id, [field, value, ...]], ...]`.
pub(crate) fn parse_entries(v: &Value) -> Vec<Entry> {
    items(v)
        .into_iter()
        .filter_map(|e| {
            let parts = items(e);
            let id = String::from_utf8(bytes(parts.first()?)?).ok()?;
            let fields = parts.get(1).and_then(|f| match f {
                Value::Nil => None,
                f => {
                    let flat = items(f);
                    Some(
                        flat.chunks(2)
                            .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                            .collect(),
                    )
                }
            });
            Some(Entry { id, fields })
        })
        .collect()
}

/// Entries of an `XREADGROUP` reply for one stream (`nil` when it timed out).
pub(crate) fn parse_read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Map(pairs) => pairs.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| {
                items(s)
                    .get(1)
                    .map(|e| parse_entries(e))
                    .unwrap_or_default()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An `XAUTOCLAIM` reply: the next cursor, the claimed entries, and the ids
/// of pending entries no longer in the stream.
pub(crate) fn parse_autoclaim_reply(v: &Value) -> (String, Vec<Entry>, Vec<String>) {
    let parts = items(v);
    let cursor = parts
        .first()
        .and_then(|c| bytes(c))
        .and_then(|c| String::from_utf8(c).ok())
        .unwrap_or_else(|| "0-0".into());
    let mut entries = parts.get(1).map(|e| parse_entries(e)).unwrap_or_default();
    let mut deleted: Vec<String> = parts
        .get(2)
        .map(|d| {
            items(d)
                .into_iter()
                .filter_map(|i| bytes(i).and_then(|b| String::from_utf8(b).ok()))
                .collect()
        })
        .unwrap_or_default();
    // Redis 6.2 lists trimmed entries among the claimed ones, without fields.
    entries.retain(|e| {
        if e.fields.is_none() {
            deleted.push(e.id.clone());
        }
        e.fields.is_some()
    });
    (cursor, entries, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message::new("orders", b"{\"n\":1}".to_vec())
            .with_type("OrderPlaced")
            .with_key("k1")
            .with_header("source", "shop");
        let fields: Vec<(Vec<u8>, Vec<u8>)> = fields_of(&m)
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect();
        let back = message_from_entry("orders", "orders", "1-0", &fields);
        assert_eq!(back.id, m.id);
        assert_eq!(back.key, m.key);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.headers, m.headers);
        assert_eq!(back.event_type, "OrderPlaced");
        assert_eq!(back.created_at, m.created_at);
    }

    #[test]
    fn foreign_entries_get_stable_ids() {
        let f = vec![(b"data".to_vec(), b"x".to_vec())];
        let a = message_from_entry("s", "t", "1700000000000-1", &f);
        let b = message_from_entry("s", "t", "1700000000000-1", &f);
        assert_eq!(a.id, b.id);
        assert_eq!(a.key, None);
        assert_eq!(a.created_at.timestamp_millis(), 1_700_000_000_000);
    }
}
