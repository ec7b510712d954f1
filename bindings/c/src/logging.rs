//! The core's log records delivered to a C callback
//! (`relaybox_set_log_callback`).
//!
//! The layer and bounded channel are the core's (`relaybox::log_forward`):
//! a core thread only copies a record into the channel and never waits. The
//! library's `relaybox-log` thread calls the callback for each record, one
//! at a time, holding the lock that `relaybox_set_log_callback` takes, so
//! once that call returns the previous callback is neither running nor
//! called again.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use relaybox::log_forward::{self, Record, Value};
use tracing::Level;

use crate::error::{guard, Failure};
use crate::relaybox_status;

/// A log level, most severe first; a callback set at a level receives the
/// records of that level and the more severe ones.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum relaybox_log_level {
    /// No records (forwarding off).
    RELAYBOX_LOG_OFF = 0,
    /// Errors.
    RELAYBOX_LOG_ERROR = 1,
    /// Warnings (a dead-lettered message, a failed batch, a lost connection).
    RELAYBOX_LOG_WARN = 2,
    /// Information (a relay or consumer started or stopped, a migration applied).
    RELAYBOX_LOG_INFO = 3,
    /// Debugging detail.
    RELAYBOX_LOG_DEBUG = 4,
    /// Finest detail.
    RELAYBOX_LOG_TRACE = 5,
}

impl relaybox_log_level {
    fn of(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::RELAYBOX_LOG_ERROR,
            Level::WARN => Self::RELAYBOX_LOG_WARN,
            Level::INFO => Self::RELAYBOX_LOG_INFO,
            Level::DEBUG => Self::RELAYBOX_LOG_DEBUG,
            _ => Self::RELAYBOX_LOG_TRACE,
        }
    }

    /// The level of a `c_int` from C; an error when out of range.
    fn from_c(value: c_int) -> Result<Self, Failure> {
        Ok(match value {
            0 => Self::RELAYBOX_LOG_OFF,
            1 => Self::RELAYBOX_LOG_ERROR,
            2 => Self::RELAYBOX_LOG_WARN,
            3 => Self::RELAYBOX_LOG_INFO,
            4 => Self::RELAYBOX_LOG_DEBUG,
            5 => Self::RELAYBOX_LOG_TRACE,
            _ => {
                return Err(Failure::Core(relaybox::Error::InvalidConfig {
                    field: "min_level".into(),
                    reason: format!("{value} is not a relaybox_log_level (0 to 5)"),
                }))
            }
        })
    }

    fn filter(self) -> Option<Level> {
        match self {
            Self::RELAYBOX_LOG_OFF => None,
            Self::RELAYBOX_LOG_ERROR => Some(Level::ERROR),
            Self::RELAYBOX_LOG_WARN => Some(Level::WARN),
            Self::RELAYBOX_LOG_INFO => Some(Level::INFO),
            Self::RELAYBOX_LOG_DEBUG => Some(Level::DEBUG),
            Self::RELAYBOX_LOG_TRACE => Some(Level::TRACE),
        }
    }
}

/// One log record of the core, valid only during the callback (copy what
/// you keep). Strings are NUL-terminated UTF-8 and never NULL, except `file`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct relaybox_log_record {
    /// The level.
    pub level: relaybox_log_level,
    /// The core's module (`"relaybox::relay"`) or, for a record of one of
    /// its libraries, that library (`"librdkafka"`).
    pub target: *const c_char,
    /// The message without the fields.
    pub message: *const c_char,
    /// The message followed by the fields: `"text key=value key=value"`.
    pub text: *const c_char,
    /// The fields as a JSON object (`{"id": "...", "attempts": 1, ...}`).
    pub fields_json: *const c_char,
    /// The source file of the event, or NULL when unknown.
    pub file: *const c_char,
    /// The source line of the event, or 0 when unknown.
    pub line: u32,
    /// When the event happened, in microseconds since the Unix epoch.
    pub time_unix_micros: i64,
    /// The name of the thread that logged it.
    pub thread: *const c_char,
}

/// Receives the core's log records (see `relaybox_set_log_callback`).
#[allow(non_camel_case_types)]
pub type relaybox_log_callback =
    Option<unsafe extern "C" fn(record: *const relaybox_log_record, user_data: *mut c_void)>;

/// The callback and its `user_data`, which the header's contract makes usable
/// from the library's log thread.
struct Target {
    callback: unsafe extern "C" fn(*const relaybox_log_record, *mut c_void),
    user_data: *mut c_void,
}
// SAFETY: the caller promises in the header that the callback and user_data
// may be used from the library's log thread.
unsafe impl Send for Target {}

static TARGET: Mutex<Option<Target>> = Mutex::new(None);

/// A C string of `s` (an interior NUL becomes a space).
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn fields_json(record: &Record) -> String {
    let map: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|(name, value)| {
            let json = match value {
                Value::Str(s) => serde_json::json!(s),
                Value::I64(n) => serde_json::json!(n),
                Value::U64(n) => serde_json::json!(n),
                Value::F64(n) => serde_json::json!(n),
                Value::Bool(b) => serde_json::json!(b),
            };
            ((*name).to_string(), json)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Runs on the `relaybox-log` thread: calls the callback with each record.
fn deliver(batch: Vec<Record>) {
    let guard = TARGET.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(target) = guard.as_ref() else { return };
    for record in &batch {
        let strings = [
            c_string(&record.target),
            c_string(&record.message),
            c_string(&record.rendered()),
            c_string(&fields_json(record)),
            c_string(&record.thread),
        ];
        let file = record.file.as_deref().map(c_string);
        let micros = record
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let c_record = relaybox_log_record {
            level: relaybox_log_level::of(&record.level),
            target: strings[0].as_ptr(),
            message: strings[1].as_ptr(),
            text: strings[2].as_ptr(),
            fields_json: strings[3].as_ptr(),
            file: file.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            line: record.line.unwrap_or(0),
            time_unix_micros: micros,
            thread: strings[4].as_ptr(),
        };
        // SAFETY: the caller promised the callback follows the
        // relaybox_log_callback contract; the record outlives the call.
        unsafe { (target.callback)(&c_record, target.user_data) };
    }
}

/// Sends the core's log records at `min_level` (a `relaybox_log_level`;
/// another value gives `RELAYBOX_INVALID_CONFIG`, nothing changed) and
/// above to `callback`, replacing the callback set before; a NULL
/// `callback` or `RELAYBOX_LOG_OFF` turns forwarding off. Records of the core's
/// libraries (librdkafka) pass at `RELAYBOX_LOG_WARN` and above only. By
/// default nothing is forwarded.
///
/// The callback runs on the library's own log thread (named
/// `relaybox-log`), never on the thread that logged, with one record at a
/// time; the record and its strings are valid only during the call. The
/// core never waits for the callback: records wait in a bounded queue
/// (4096), and while the callback is slow, further records are dropped and
/// counted, then reported by a warning record `relaybox log records
/// dropped` (field `dropped`). So the callback should return quickly; it
/// must not unwind, and must not call `relaybox_set_log_callback` (that
/// waits for the callback to return). When this function returns, the
/// previous callback is neither running nor called again.
///
/// Thread safety: any thread; one callback per process.
///
/// # Safety
/// `callback` is NULL or a function that, with `user_data`, may be called
/// from the library's log thread until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn relaybox_set_log_callback(
    callback: relaybox_log_callback,
    user_data: *mut c_void,
    min_level: c_int,
) -> relaybox_status {
    guard(|| {
        let min_level = relaybox_log_level::from_c(min_level)?;
        log_forward::install(deliver).map_err(|err| {
            Failure::Core(relaybox::Error::Internal {
                message: err.to_string(),
            })
        })?;
        let target = callback.map(|callback| Target {
            callback,
            user_data,
        });
        let on = target.is_some();
        *TARGET.lock().unwrap_or_else(PoisonError::into_inner) = target;
        log_forward::set_level(if on { min_level.filter() } else { None });
        Ok(())
    })
}

/// Emits `count` core records at `level` with target `relaybox::testing`
/// and fields `n`, `flag`, `ratio` and `text`, on the calling thread, for
/// the test suite. Not part of the supported API: a test hook, in the
/// library only when built with the `test-hooks` feature.
///
/// # Safety
/// `message` is a NUL-terminated string.
#[cfg(feature = "test-hooks")]
#[no_mangle]
pub unsafe extern "C" fn relaybox__log_for_tests(
    level: c_int,
    message: *const c_char,
    count: u64,
) -> relaybox_status {
    guard(|| {
        let level = relaybox_log_level::from_c(level)?;
        let message = unsafe { crate::convert::text(message, "message") }?;
        if let Some(level) = level.filter() {
            log_forward::emit_for_tests(level, message, count);
        }
        Ok(())
    })
}
