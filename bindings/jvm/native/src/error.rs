//! `RelayboxException` on the JVM: one subclass per core error code, each
//! carrying the redacted message, whether a retry may succeed and the message
//! concerned. Panics and failing callbacks become `Internal`.

use relaybox::Error;

/// An error from relaybox. In Kotlin this is the sealed class
/// `RelayboxException`; each variant is a subclass named after the core error
/// code, with `reason` (the error's text, also its `message`), `retryable`
/// and `messageId`. Nothing in it ever contains credentials.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum RelayboxError {
    /// The topic is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("{reason}")]
    InvalidTopic {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// The payload is larger than the configured limit.
    #[error("{reason}")]
    PayloadTooLarge {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// A header name or value is invalid.
    #[error("{reason}")]
    InvalidHeader {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// Another message field (key, type, payload, content type, timestamps) is invalid.
    #[error("{reason}")]
    InvalidMessage {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// A configuration value is missing, of the wrong type or out of range.
    #[error("{reason}")]
    InvalidConfig {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// A SQL parameter could not be bound or a column could not be decoded.
    #[error("{reason}")]
    InvalidValue {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// The outbox, transaction, relay or consumer was already closed.
    #[error("{reason}")]
    Closed {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// The schema has not been migrated (or was migrated by a newer relaybox).
    #[error("{reason}")]
    Schema {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// The database refused or failed an operation.
    #[error("{reason}")]
    Database {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// The broker (or the database transport) failed to take a message.
    #[error("{reason}")]
    Transport {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// A consumer's handler failed.
    #[error("{reason}")]
    Handler {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// An operation did not finish in time.
    #[error("{reason}")]
    Timeout {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// Something that should exist does not.
    #[error("{reason}")]
    NotFound {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// A bug, a caught panic or a callback that failed in an unexpected way.
    #[error("{reason}")]
    Internal {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
    /// Thrown by a consumer handler: the message can never be handled, so it
    /// goes to dead letters at once, without retries, with `reason` recorded.
    #[error("{reason}")]
    Rejected {
        reason: String,
        retryable: bool,
        message_id: Option<String>,
    },
}

impl From<Error> for RelayboxError {
    fn from(err: Error) -> Self {
        let reason = err.to_string();
        let retryable = err.retryable();
        let message_id = err.message_id().map(|id| id.to_string());
        macro_rules! variant {
            ($name:ident) => {
                RelayboxError::$name {
                    reason,
                    retryable,
                    message_id,
                }
            };
        }
        match err.code() {
            "invalid_topic" => variant!(InvalidTopic),
            "payload_too_large" => variant!(PayloadTooLarge),
            "invalid_header" => variant!(InvalidHeader),
            "invalid_message" => variant!(InvalidMessage),
            "invalid_config" => variant!(InvalidConfig),
            "invalid_value" => variant!(InvalidValue),
            "closed" => variant!(Closed),
            "schema" => variant!(Schema),
            "database" => variant!(Database),
            "transport" => variant!(Transport),
            "handler" => variant!(Handler),
            "timeout" => variant!(Timeout),
            "not_found" => variant!(NotFound),
            _ => variant!(Internal),
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for RelayboxError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        RelayboxError::Internal {
            reason: format!(
                "internal error: callback failed: {}",
                err.reason.lines().next().unwrap_or_default()
            ),
            retryable: false,
            message_id: None,
        }
    }
}

impl RelayboxError {
    /// The stable error code, as every relaybox binding reports it.
    pub fn code(&self) -> &'static str {
        match self {
            RelayboxError::InvalidTopic { .. } => "invalid_topic",
            RelayboxError::PayloadTooLarge { .. } => "payload_too_large",
            RelayboxError::InvalidHeader { .. } => "invalid_header",
            RelayboxError::InvalidMessage { .. } => "invalid_message",
            RelayboxError::InvalidConfig { .. } => "invalid_config",
            RelayboxError::InvalidValue { .. } => "invalid_value",
            RelayboxError::Closed { .. } => "closed",
            RelayboxError::Schema { .. } => "schema",
            RelayboxError::Database { .. } => "database",
            RelayboxError::Transport { .. } => "transport",
            RelayboxError::Handler { .. } => "handler",
            RelayboxError::Timeout { .. } => "timeout",
            RelayboxError::NotFound { .. } => "not_found",
            RelayboxError::Internal { .. } => "internal",
            RelayboxError::Rejected { .. } => "rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_code_has_its_variant() {
        let cases = [
            Error::InvalidTopic {
                topic: "a b".into(),
                reason: "space".into(),
            },
            Error::PayloadTooLarge { size: 2, limit: 1 },
            Error::Closed { what: "store" },
            Error::Database {
                message: "gone".into(),
                sql_code: None,
                retryable: true,
            },
            Error::Handler {
                message_id: uuid::Uuid::nil(),
                message: "boom".into(),
            },
            Error::Internal {
                message: "bug".into(),
            },
        ];
        for err in cases {
            let (code, retryable, id) = (err.code(), err.retryable(), err.message_id());
            let text = err.to_string();
            let mapped = RelayboxError::from(err);
            assert_eq!(mapped.code(), code);
            assert_eq!(mapped.to_string(), text);
            match mapped {
                RelayboxError::Database { retryable: r, .. } => assert!(r && retryable),
                RelayboxError::Handler { message_id, .. } => {
                    assert_eq!(message_id, id.map(|id| id.to_string()))
                }
                _ => {}
            }
        }
    }

    #[test]
    fn failed_callbacks_are_internal_and_short() {
        let err = RelayboxError::from(uniffi::UnexpectedUniFFICallbackError {
            reason: "java.lang.IllegalStateException: boom\n\tat Foo.bar(Foo.kt:1)".into(),
        });
        assert_eq!(err.code(), "internal");
        assert!(err
            .to_string()
            .ends_with("java.lang.IllegalStateException: boom"));
    }
}
