//! Status codes, the thread-local last error, and the guard every exported
//! function runs its body in: it clears the last error, catches panics and
//! turns any failure into a `relaybox_status` plus a message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use relaybox::Error;

/// The result of every relaybox function. `RELAYBOX_OK` is zero; every other
/// value is a failure whose message `relaybox_last_error()` returns.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum relaybox_status {
    /// Success.
    RELAYBOX_OK = 0,
    /// A required pointer argument was NULL.
    RELAYBOX_NULL_POINTER = 1,
    /// A string argument was not valid UTF-8.
    RELAYBOX_INVALID_UTF8 = 2,
    /// The call is not allowed on this handle (e.g. committing the
    /// transaction a consumer handler was given).
    RELAYBOX_MISUSE = 3,
    /// The topic is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    RELAYBOX_INVALID_TOPIC = 10,
    /// The payload is larger than the store's limit.
    RELAYBOX_PAYLOAD_TOO_LARGE = 11,
    /// A header name or value is invalid.
    RELAYBOX_INVALID_HEADER = 12,
    /// The message JSON is malformed or a field of it is invalid.
    RELAYBOX_INVALID_MESSAGE = 13,
    /// A configuration JSON is malformed, has unknown keys or bad values.
    RELAYBOX_INVALID_CONFIG = 14,
    /// A SQL parameter could not be bound or a column could not be decoded.
    RELAYBOX_INVALID_VALUE = 15,
    /// The outbox, transaction, relay or consumer is closed or finished.
    RELAYBOX_CLOSED = 20,
    /// The schema is not migrated (or was migrated by a newer relaybox).
    RELAYBOX_SCHEMA = 21,
    /// The database refused or failed the operation.
    RELAYBOX_DATABASE = 22,
    /// The broker failed to take a message.
    RELAYBOX_TRANSPORT = 23,
    /// A handler failed.
    RELAYBOX_HANDLER = 24,
    /// An operation timed out.
    RELAYBOX_TIMEOUT = 25,
    /// The requested item does not exist.
    RELAYBOX_NOT_FOUND = 26,
    /// A bug in relaybox (including a caught panic).
    RELAYBOX_INTERNAL = 99,
}

impl relaybox_status {
    /// The status of a core error code.
    fn of(err: &Error) -> Self {
        use relaybox_status::*;
        match err.code() {
            "invalid_topic" => RELAYBOX_INVALID_TOPIC,
            "payload_too_large" => RELAYBOX_PAYLOAD_TOO_LARGE,
            "invalid_header" => RELAYBOX_INVALID_HEADER,
            "invalid_message" => RELAYBOX_INVALID_MESSAGE,
            "invalid_config" => RELAYBOX_INVALID_CONFIG,
            "invalid_value" => RELAYBOX_INVALID_VALUE,
            "closed" => RELAYBOX_CLOSED,
            "schema" => RELAYBOX_SCHEMA,
            "database" => RELAYBOX_DATABASE,
            "transport" => RELAYBOX_TRANSPORT,
            "handler" => RELAYBOX_HANDLER,
            "timeout" => RELAYBOX_TIMEOUT,
            "not_found" => RELAYBOX_NOT_FOUND,
            _ => RELAYBOX_INTERNAL,
        }
    }

    /// The stable lower-case name of the status (`"database"`, ...).
    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        use relaybox_status::*;
        match self {
            RELAYBOX_OK => c"ok",
            RELAYBOX_NULL_POINTER => c"null_pointer",
            RELAYBOX_INVALID_UTF8 => c"invalid_utf8",
            RELAYBOX_MISUSE => c"misuse",
            RELAYBOX_INVALID_TOPIC => c"invalid_topic",
            RELAYBOX_PAYLOAD_TOO_LARGE => c"payload_too_large",
            RELAYBOX_INVALID_HEADER => c"invalid_header",
            RELAYBOX_INVALID_MESSAGE => c"invalid_message",
            RELAYBOX_INVALID_CONFIG => c"invalid_config",
            RELAYBOX_INVALID_VALUE => c"invalid_value",
            RELAYBOX_CLOSED => c"closed",
            RELAYBOX_SCHEMA => c"schema",
            RELAYBOX_DATABASE => c"database",
            RELAYBOX_TRANSPORT => c"transport",
            RELAYBOX_HANDLER => c"handler",
            RELAYBOX_TIMEOUT => c"timeout",
            RELAYBOX_NOT_FOUND => c"not_found",
            RELAYBOX_INTERNAL => c"internal",
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An error of the core.
    Core(Error),
    /// A required pointer argument was NULL.
    Null(&'static str),
    /// A string argument was not UTF-8.
    Utf8(&'static str),
    /// The call is not allowed on this handle.
    Misuse(String),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Core(err)
    }
}

impl Failure {
    fn status(&self) -> relaybox_status {
        match self {
            Failure::Core(err) => relaybox_status::of(err),
            Failure::Null(_) => relaybox_status::RELAYBOX_NULL_POINTER,
            Failure::Utf8(_) => relaybox_status::RELAYBOX_INVALID_UTF8,
            Failure::Misuse(_) => relaybox_status::RELAYBOX_MISUSE,
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Core(err) => err.to_string(),
            Failure::Null(arg) => format!("`{arg}` must not be NULL"),
            Failure::Utf8(arg) => format!("`{arg}` is not valid UTF-8"),
            Failure::Misuse(why) => why.clone(),
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Failure::Core(err) if err.retryable())
    }
}

/// The last failure of this thread: its message (NUL-terminated) and whether
/// retrying may succeed.
#[derive(Default)]
struct LastError {
    message: CString,
    retryable: bool,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError::default());
}

/// Replaces this thread's last error, returning the previous one (nothing
/// while the thread's locals are being destroyed).
fn replace_last_error(error: LastError) -> Option<LastError> {
    LAST_ERROR
        .try_with(|slot| std::mem::replace(&mut *slot.borrow_mut(), error))
        .ok()
}

/// The message of this thread's last failure ("" after a success).
pub(crate) fn last_error_ptr() -> *const c_char {
    // The CString lives in the thread-local until the next call on this thread.
    LAST_ERROR
        .try_with(|slot| slot.borrow().message.as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Whether this thread's last failure may succeed if retried.
pub(crate) fn last_error_retryable() -> bool {
    LAST_ERROR
        .try_with(|slot| slot.borrow().retryable)
        .unwrap_or(false)
}

/// Runs the body of an exported function: clears the last error, catches a
/// panic, and records a failure's message for `relaybox_last_error()`.
///
/// The previous message stays allocated until the call returns, so that it
/// may be passed as an argument (`relaybox_tx_set_failure_reason(tx,
/// relaybox_last_error())`).
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> relaybox_status {
    let _previous = replace_last_error(LastError::default());
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return relaybox_status::RELAYBOX_OK,
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::Core(Error::from_panic(panic)),
    };
    let message = CString::new(failure.message().replace('\0', "\\0")).unwrap_or_default();
    replace_last_error(LastError {
        message,
        retryable: failure.retryable(),
    });
    failure.status()
}
