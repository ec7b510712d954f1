//! Input limits and the checks every message passes before it is written.

use crate::error::{Error, Result};
use crate::message::Message;

/// Longest topic accepted (Kafka's own limit).
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest event type / content type accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest header name accepted, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Largest total size of all header names and values, in bytes.
pub const MAX_HEADERS_BYTES: usize = 64 * 1024;
/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Limits applied to every message on enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

impl Limits {
    /// Checks a message: topic, key, type, content type, headers, payload size.
    pub fn check(&self, m: &Message) -> Result<()> {
        check_topic(&m.topic)?;
        if let Some(key) = &m.idempotency_key {
            check_text("idempotency_key", key, MAX_KEY_LEN, false)?;
        }
        if let Some(key) = &m.key {
            check_text("key", key, MAX_KEY_LEN, false)?;
        }
        check_text("type", &m.event_type, MAX_NAME_LEN, true)?;
        if m.content_type.is_empty() {
            return Err(invalid("content_type", "must not be empty"));
        }
        check_text("content_type", &m.content_type, MAX_NAME_LEN, true)?;
        let mut total = 0;
        for (name, value) in &m.headers {
            check_header(name, value)?;
            total += name.len() + value.len();
        }
        if total > MAX_HEADERS_BYTES {
            return Err(Error::InvalidHeader {
                name: "*".into(),
                reason: format!("headers total {total} bytes, more than {MAX_HEADERS_BYTES}"),
            });
        }
        if m.payload.len() > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: m.payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        if m.available_at < m.created_at {
            return Err(invalid("available_at", "is earlier than created_at"));
        }
        Ok(())
    }
}

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_topic(topic: &str) -> Result<()> {
    let reason = if topic.is_empty() {
        Some("must not be empty".to_string())
    } else if topic.len() > MAX_TOPIC_LEN {
        Some(format!("longer than {MAX_TOPIC_LEN} characters"))
    } else if topic == "." || topic == ".." {
        Some("must not be \".\" or \"..\"".to_string())
    } else {
        topic
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("contains {c:?}; allowed are letters, digits, '.', '_' and '-'"))
    };
    match reason {
        Some(reason) => Err(Error::InvalidTopic {
            topic: topic.chars().take(MAX_TOPIC_LEN + 1).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a header: the name is an HTTP token (RFC 9110) of at most 256 bytes;
/// the value contains no NUL and no line break.
pub fn check_header(name: &str, value: &str) -> Result<()> {
    let bad = |reason: String| Error::InvalidHeader {
        name: name.chars().take(MAX_HEADER_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("name must not be empty".into()));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(bad(format!("name longer than {MAX_HEADER_NAME_LEN} bytes")));
    }
    if let Some(c) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(bad(format!(
            "name contains {c:?}; allowed are letters, digits and !#$%&'*+-.^_`|~"
        )));
    }
    if value.contains(['\0', '\r', '\n']) {
        return Err(bad("value contains NUL or a line break".into()));
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_text(field: &'static str, text: &str, max: usize, allow_empty: bool) -> Result<()> {
    if !allow_empty && text.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(invalid(field, &format!("longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: &str) -> Error {
    Error::InvalidMessage {
        field,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic("orders.v1-x_y").is_ok());
        for bad in ["", ".", "..", "has space", "a/b", "ü", &"x".repeat(250)] {
            let err = check_topic(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_topic", "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        assert!(check_header("traceparent", "00-1-2-01").is_ok());
        for bad in ["", "with space", "colon:", "nl\n"] {
            assert_eq!(check_header(bad, "v").unwrap_err().code(), "invalid_header");
        }
        assert!(check_header("ok", "line\nbreak").is_err());
    }

    #[test]
    fn payload_limit() {
        let limits = Limits {
            max_payload_bytes: 4,
        };
        let m = Message::new("t", vec![0; 5]);
        assert!(matches!(
            limits.check(&m),
            Err(Error::PayloadTooLarge { size: 5, limit: 4 })
        ));
        assert!(limits.check(&Message::new("t", vec![0; 4])).is_ok());
    }
}
