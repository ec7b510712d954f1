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
///
/// A transaction the server aborted (`EXECABORT`: a command was refused
/// while queued, say with `LOADING` while a restarted server reads its
/// append-only file) is retryable when every refusal is, and its text names
/// each distinct refusal once.
pub(crate) fn redis_error(
    err: &redis::RedisError,
    secret: Option<&str>,
    message_id: Option<uuid::Uuid>,
) -> Error {
    let (retryable, text) = match server_errors(err) {
        Some(errs) => (
            errs.iter()
                .all(|(_, e)| RETRYABLE_CODES.contains(&e.code())),
            aborted_text(&errs),
        ),
        None => (
            err.is_io_error()
                || err.is_timeout()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
                || !matches!(err.retry_method(), redis::RetryMethod::NoRetry)
                || err.code().is_some_and(|c| RETRYABLE_CODES.contains(&c)),
            match crate::store::tls::rustls_cause(err) {
                Some(tls) => crate::store::tls::describe_rustls(tls, None, "tls_ca_file"),
                None => err.to_string(),
            },
        ),
    };
    Error::Transport {
        transport: "redis".into(),
        message: scrub(&text, secret),
        retryable,
        message_id,
    }
}

/// The refusals behind an aborted transaction or a failed pipeline, when
/// `err` is one (and names at least one refusal).
fn server_errors(err: &redis::RedisError) -> Option<std::sync::Arc<[(usize, redis::ServerError)]>> {
    if !matches!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
    ) && err.code() != Some("EXECABORT")
    {
        return None;
    }
    err.clone()
        .into_server_errors()
        .filter(|errs| !errs.is_empty())
}

/// "transaction aborted: LOADING Redis is loading ... (100 commands)", one
/// part per distinct refusal.
fn aborted_text(errs: &[(usize, redis::ServerError)]) -> String {
    let mut parts: Vec<(String, usize)> = Vec::new();
    for (_, e) in errs {
        let text = match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_string(),
        };
        match parts.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += 1,
            None => parts.push((text, 1)),
        }
    }
    let parts: Vec<String> = parts
        .into_iter()
        .map(|(t, n)| match n {
            1 => format!("{t} (1 command)"),
            n => format!("{t} ({n} commands)"),
        })
        .collect();
    format!("transaction aborted by the server: {}", parts.join("; "))
}

/// `text` with every occurrence of `secret` replaced by `***`.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}
