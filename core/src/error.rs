//! The one error type of relaybox, with machine-readable fields that every
//! binding maps to its host language (exception classes, error codes, tuples).

use std::time::Duration;

use uuid::Uuid;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error returned by user code (handlers) and converted into [`Error::Handler`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in relaybox.
///
/// Every variant has a stable [`code`](Error::code), tells whether retrying the
/// same call may succeed ([`retryable`](Error::retryable)) and, where one
/// message is concerned, which one ([`message_id`](Error::message_id)).
/// Messages never contain credentials: database URLs are redacted before they
/// reach an error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic is empty, too long or contains characters outside `[A-Za-z0-9._-]`.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the rejected payload in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A header name is empty, too long or not an HTTP token; or a value is invalid.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The rejected header name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Another field of a message (key, type, content type, timestamps) is invalid.
    #[error("invalid message field `{field}`: {reason}")]
    InvalidMessage {
        /// The field name.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A configuration value is missing, of the wrong type or out of range.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The configuration key.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A SQL parameter could not be bound or a column could not be decoded.
    #[error("invalid SQL value: {reason}")]
    InvalidValue {
        /// What was wrong.
        reason: String,
    },
    /// The store, transaction, relay or consumer was already closed.
    #[error("{what} is closed")]
    Closed {
        /// Which handle was closed ("store", "transaction", ...).
        what: &'static str,
    },
    /// The schema has not been migrated (or was migrated by a newer relaybox).
    #[error("schema not ready: {reason}")]
    Schema {
        /// What is missing or unexpected.
        reason: String,
    },
    /// The database refused or failed an operation.
    #[error("database error: {message}")]
    Database {
        /// The database's own message (never contains the connection URL).
        message: String,
        /// SQLSTATE (PostgreSQL) or extended result code (SQLite), when known.
        sql_code: Option<String>,
        /// Whether retrying may succeed (connection loss, serialization failure, busy).
        retryable: bool,
    },
    /// The broker (or the database transport) failed to take a message.
    #[error("transport {transport} failed{}: {message}", .message_id.map(|id| format!(" for message {id}")).unwrap_or_default())]
    Transport {
        /// Transport name ("database", "kafka", ...).
        transport: String,
        /// What went wrong.
        message: String,
        /// Whether retrying may succeed.
        retryable: bool,
        /// The message concerned, when one is.
        message_id: Option<Uuid>,
    },
    /// A consumer's handler returned an error or panicked.
    #[error("handler failed for message {message_id}: {message}")]
    Handler {
        /// The message being handled.
        message_id: Uuid,
        /// The handler's error, rendered.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out{}", .after.map(|d| format!(" after {d:?}")).unwrap_or_default())]
    Timeout {
        /// What timed out.
        what: String,
        /// The limit that was exceeded, when known.
        after: Option<Duration>,
    },
    /// Something that should exist does not (a dead letter, a topic).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A bug or a caught panic; reported instead of crashing the host process.
    #[error("internal error: {message}")]
    Internal {
        /// Details.
        message: String,
    },
}

impl Error {
    /// A stable, machine-readable code such as `"invalid_topic"`; bindings expose it unchanged.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTopic { .. } => "invalid_topic",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::InvalidHeader { .. } => "invalid_header",
            Error::InvalidMessage { .. } => "invalid_message",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::InvalidValue { .. } => "invalid_value",
            Error::Closed { .. } => "closed",
            Error::Schema { .. } => "schema",
            Error::Database { .. } => "database",
            Error::Transport { .. } => "transport",
            Error::Handler { .. } => "handler",
            Error::Timeout { .. } => "timeout",
            Error::NotFound { .. } => "not_found",
            Error::Internal { .. } => "internal",
        }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Database { retryable, .. } | Error::Transport { retryable, .. } => *retryable,
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The id of the message this error concerns, if any.
    pub fn message_id(&self) -> Option<Uuid> {
        match self {
            Error::Transport { message_id, .. } => *message_id,
            Error::Handler { message_id, .. } => Some(*message_id),
            _ => None,
        }
    }

    /// True for errors caused by the caller's input (validation, configuration).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidTopic { .. }
                | Error::PayloadTooLarge { .. }
                | Error::InvalidHeader { .. }
                | Error::InvalidMessage { .. }
                | Error::InvalidConfig { .. }
                | Error::InvalidValue { .. }
        )
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    /// Converts a caught panic payload into [`Error::Internal`].
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        Error::internal(format!("panic: {message}"))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match err {
            E::PoolClosed => Error::Closed { what: "store" },
            E::PoolTimedOut => Error::Timeout {
                what: "waiting for a database connection (connect_timeout)".into(),
                after: None,
            },
            E::Database(db) => {
                let code = db.code().map(|c| c.into_owned());
                let retryable = code.as_deref().is_some_and(is_retryable_sql_code);
                Error::Database {
                    message: db.message().to_string(),
                    sql_code: code,
                    retryable,
                }
            }
            E::Io(io) => Error::Database {
                message: match crate::store::tls::rustls_cause(&io) {
                    Some(tls) => crate::store::tls::describe_rustls(tls, None, "sslrootcert"),
                    None => format!("connection failed: {io}"),
                },
                sql_code: None,
                retryable: true,
            },
            E::Tls(tls) => Error::Database {
                message: match crate::store::tls::rustls_cause(tls.as_ref()) {
                    Some(cause) => crate::store::tls::describe_rustls(cause, None, "sslrootcert"),
                    None => format!("TLS failed: {tls}"),
                },
                sql_code: None,
                retryable: true,
            },
            E::Protocol(msg) => Error::Database {
                message: format!("protocol error: {msg}"),
                sql_code: None,
                retryable: true,
            },
            E::ColumnDecode { index, source } => Error::InvalidValue {
                reason: format!("column {index}: {source}"),
            },
            E::Encode(source) => Error::InvalidValue {
                reason: source.to_string(),
            },
            // Configuration errors may echo the URL; never pass their text on.
            E::Configuration(_) => Error::config("url", "the database URL could not be parsed"),
            other => Error::Database {
                message: other.to_string(),
                sql_code: None,
                retryable: false,
            },
        }
    }
}

/// SQLSTATE classes (PostgreSQL) and result codes (SQLite) worth retrying.
fn is_retryable_sql_code(code: &str) -> bool {
    // 40001 serialization_failure, 40P01 deadlock, 08xxx connection, 57P0x shutdown,
    // 53300 too_many_connections; SQLite 5 BUSY, 6 LOCKED and their extended codes.
    code.starts_with("40")
        || code.starts_with("08")
        || code.starts_with("57P0")
        || code == "53300"
        || matches!(code.parse::<i32>(), Ok(c) if c & 0xff == 5 || c & 0xff == 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(Error::Closed { what: "store" }.code(), "closed");
        let e = Error::PayloadTooLarge { size: 2, limit: 1 };
        assert_eq!(e.code(), "payload_too_large");
        assert!(e.is_invalid_input());
        assert!(!e.retryable());
    }

    #[test]
    fn retryable_codes() {
        assert!(is_retryable_sql_code("40001"));
        assert!(is_retryable_sql_code("08006"));
        assert!(is_retryable_sql_code("5"));
        assert!(is_retryable_sql_code("517"));
        assert!(!is_retryable_sql_code("23505"));
    }

    #[test]
    fn panic_payloads_become_internal_errors() {
        let e = Error::from_panic(Box::new("boom"));
        assert_eq!(e.code(), "internal");
        assert!(e.to_string().contains("boom"));
    }
}
