//! Maps relaybox's one error type to a Node error that the JavaScript layer
//! (`lib/errors.js`) turns into the matching `RelayboxError` subclass: the
//! machine-readable fields (`code`, `retryable`, `messageId`) travel as JSON
//! after a fixed marker in the error's reason.

use napi::Status;
use relaybox::Error;

/// Marker that starts the reason of every error produced by this module.
pub const MARKER: &str = "relaybox-error:";

/// The Node error for a relaybox error.
pub fn to_napi(err: Error) -> napi::Error {
    let fields = serde_json::json!({
        "code": err.code(),
        "retryable": err.retryable(),
        "messageId": err.message_id().map(|id| id.to_string()),
        "message": err.to_string(),
    });
    napi::Error::new(Status::GenericFailure, format!("{MARKER}{fields}"))
}
