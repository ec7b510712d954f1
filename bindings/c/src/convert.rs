//! Arguments in and results out: C strings to `&str` (NULL and invalid UTF-8
//! are errors), JSON text to core values, and results to buffers the caller
//! frees with `relaybox_string_free`.

use std::ffi::{c_char, CStr, CString};
use std::future::Future;

use relaybox::{Error, Row, Value};

use crate::error::Failure;

/// A required string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::Null(name));
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::Utf8(name))
}

/// An optional string argument (NULL means absent).
///
/// # Safety
/// As for [`text`].
pub(crate) unsafe fn optional_text<'a>(
    ptr: *const c_char,
    name: &'static str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        Ok(None)
    } else {
        unsafe { text(ptr, name) }.map(Some)
    }
}

/// A handle argument.
///
/// # Safety
/// `ptr` is NULL or a live handle of type `T` returned by relaybox.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, name: &'static str) -> Result<&'a T, Failure> {
    unsafe { ptr.as_ref() }.ok_or(Failure::Null(name))
}

/// Checks an out-pointer argument and resets what it points to.
///
/// # Safety
/// `out` is NULL or valid for writing one `T`.
pub(crate) unsafe fn out<'a, T>(
    out: *mut T,
    name: &'static str,
    empty: T,
) -> Result<&'a mut T, Failure> {
    let slot = unsafe { out.as_mut() }.ok_or(Failure::Null(name))?;
    *slot = empty;
    Ok(slot)
}

/// A string result handed to C; freed with `relaybox_string_free`.
pub(crate) fn owned_string(text: String) -> Result<*mut c_char, Failure> {
    CString::new(text)
        .map(CString::into_raw)
        .map_err(|_| Failure::Core(Error::internal_message("a result contained a NUL byte")))
}

/// Parses a JSON configuration argument.
pub(crate) fn parse_config(what: &str, text: &str) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        Failure::Core(Error::InvalidConfig {
            field: what.to_string(),
            reason: e.to_string(),
        })
    })
}

/// SQL parameters from a JSON array: `null`, booleans, integers (as `int8`),
/// other numbers (`float8`), strings (`text`; cast in SQL for other types,
/// e.g. `$1::uuid`), objects and arrays (`jsonb`). NULL means no parameters.
pub(crate) fn params(json: Option<&str>) -> Result<Vec<Value>, Failure> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| Failure::Core(Error::InvalidValue { reason });
    let parsed: serde_json::Value =
        serde_json::from_str(json).map_err(|e| invalid(format!("params are not JSON: {e}")))?;
    let serde_json::Value::Array(items) = parsed else {
        return Err(invalid("params must be a JSON array".into()));
    };
    Ok(items.into_iter().map(param).collect())
}

fn param(item: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match item {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s),
        other => Value::Json(other),
    }
}

/// Rows as a JSON array of objects, column name to value (bytes as an array
/// of numbers, timestamps as RFC 3339 text, UUIDs as text).
pub(crate) fn rows_json(rows: Vec<Row>) -> String {
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|row| {
            let object: serde_json::Map<String, serde_json::Value> = row
                .columns
                .into_iter()
                .zip(row.values.iter().map(Value::to_json))
                .collect();
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Any serialisable report as JSON text.
pub(crate) fn report<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value)
        .map_err(|e| Failure::Core(Error::internal_message(format!("report: {e}"))))
}

/// Runs a core future to completion on the process runtime, blocking the
/// calling thread.
pub(crate) fn block_on<T>(future: impl Future<Output = relaybox::Result<T>>) -> Result<T, Failure> {
    relaybox::runtime::block_on(future).map_err(Failure::Core)
}

/// Extension of the core error for messages built here.
pub(crate) trait InternalMessage {
    /// An internal error with `message`.
    fn internal_message(message: impl Into<String>) -> Error;
}

impl InternalMessage for Error {
    fn internal_message(message: impl Into<String>) -> Error {
        Error::Internal {
            message: message.into(),
        }
    }
}
