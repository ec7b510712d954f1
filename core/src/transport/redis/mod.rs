//! The Redis Streams transport: a [`RedisSink`] for the relay and a
//! [`RedisSource`] for the idempotent consumer.
//!
//! On the wire a relaybox message is one stream entry that any client can
//! read with `XRANGE` or `XREADGROUP`. The stream is named after the topic
//! (a configurable template) and the entry's fields are, in this order:
//! `data` (the payload bytes, untouched), `key` (the message key; an empty
//! string when the message has none), `headers` (a JSON object of the user
//! headers, `{}` when there are none), then the envelope: `id` (the message
//! UUID), `type` (the event type), `content_type`, `created_at` (RFC 3339,
//! microseconds) and `topic`. Dead-letter entries add `error`,
//! `original_stream` and `original_id`.

mod codec;
mod config;
mod connection;
mod sink;
mod source;

pub use codec::{
    message_from_entry, FIELD_CONTENT_TYPE, FIELD_CREATED_AT, FIELD_DATA, FIELD_ERROR,
    FIELD_HEADERS, FIELD_ID, FIELD_KEY, FIELD_ORIGINAL_ID, FIELD_ORIGINAL_STREAM, FIELD_TOPIC,
    FIELD_TYPE,
};
pub use config::RedisConfig;
pub use sink::RedisSink;
pub use source::{RedisSource, RedisSourceConfig};

use crate::error::Error;

/// Server error codes that a later attempt may not meet again.
const RETRYABLE_CODES: [&str; 7] = [
    "OOM",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
    "READONLY",
];

/// A Redis error as a relaybox transport error. `secret` (the URL's
/// password, if any) is cut out of the text.
pub(crate) fn redis_error(
    err: &redis::RedisError,
    secret: Option<&str>,
    message_id: Option<uuid::Uuid>,
) -> Error {
    let retryable = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || !matches!(err.retry_method(), redis::RetryMethod::NoRetry)
        || err.code().is_some_and(|c| RETRYABLE_CODES.contains(&c));
    Error::Transport {
        transport: "redis".into(),
        message: scrub(&err.to_string(), secret),
        retryable,
        message_id,
    }
}

/// `text` with every occurrence of `secret` replaced by `***`.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}
