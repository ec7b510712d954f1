//! The core's log records delivered to a JavaScript function
//! (`setLogger` in `lib/logging.js`).
//!
//! The layer and bounded channel are the core's (`relaybox::log_forward`):
//! a core thread only copies a record into the channel and never waits. The
//! `relaybox-log` thread turns each batch into one JSON array and queues it
//! on a thread-safe function without blocking (at most [`MAX_QUEUED`]
//! batches wait for the JavaScript thread; more are dropped and counted,
//! and a later warning record reports them). The function is weak: it never
//! keeps Node's event loop alive.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Result, Status};
use napi_derive::napi;
use relaybox::log_forward::{self, Record, Value};
use serde_json::json;

use crate::bridge::guard;

/// Batches waiting for the JavaScript thread, at most.
const MAX_QUEUED: usize = 16;

/// `(recordsJson) => void`, weak, with a bounded queue.
type LogFunction = ThreadsafeFunction<String, (), String, Status, false, true, MAX_QUEUED>;

/// The function batches go to, if any.
static TARGET: Mutex<Option<Arc<LogFunction>>> = Mutex::new(None);

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Str(s) => json!(s),
        Value::I64(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Bool(b) => json!(b),
    }
}

fn record_json(record: &Record) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|(name, value)| ((*name).to_string(), value_json(value)))
        .collect();
    let millis = record
        .time
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    json!({
        "level": record.level_name(),
        "target": record.target,
        "message": record.message,
        "text": record.rendered(),
        "fields": fields,
        "file": record.file,
        "line": record.line,
        "time": millis,
        "thread": record.thread,
    })
}

/// Runs on the `relaybox-log` thread: queues a batch for JavaScript.
fn deliver(batch: Vec<Record>) {
    let function = TARGET
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(function) = function else { return };
    let count = batch.len() as u64;
    let records: Vec<serde_json::Value> = batch.iter().map(record_json).collect();
    let text = serde_json::Value::Array(records).to_string();
    let status = function.call(text, ThreadsafeFunctionCallMode::NonBlocking);
    if status != Status::Ok {
        log_forward::count_dropped(count);
    }
}

/// Sends the core's log records at `level` (`"error"` ... `"trace"`) and
/// above to `callback(recordsJson)`, a JSON array of
/// `{level, target, message, text, fields, file, line, time, thread}`,
/// replacing any function set before; `null` turns forwarding off.
#[napi(catch_unwind)]
pub fn set_log_callback(callback: Option<Function<'_, String, ()>>, level: String) -> Result<()> {
    let function = match callback {
        Some(callback) => Some(Arc::new(
            callback
                .build_threadsafe_function::<String>()
                .callee_handled::<false>()
                .weak::<true>()
                .max_queue_size::<MAX_QUEUED>()
                .build()?,
        )),
        None => None,
    };
    guard(|| {
        let parsed =
            log_forward::parse_level(&level).ok_or_else(|| relaybox::Error::InvalidValue {
                reason: format!(
                    "unknown log level {level:?}: use error, warn, info, debug, trace or off"
                ),
            })?;
        log_forward::install(deliver).map_err(|err| relaybox::Error::Internal {
            message: err.to_string(),
        })?;
        let on = function.is_some();
        *TARGET.lock().unwrap_or_else(PoisonError::into_inner) = function;
        log_forward::set_level(if on { parsed } else { None });
        Ok(())
    })
}

/// `{queued, dropped}`: records queued for the logger and records dropped
/// because it did not keep up, since the process started.
#[napi(object)]
pub struct LogStats {
    pub queued: f64,
    pub dropped: f64,
}

/// The forwarding counters.
#[napi(catch_unwind)]
pub fn log_stats() -> LogStats {
    let stats = log_forward::stats();
    LogStats {
        queued: stats.queued as f64,
        dropped: stats.dropped as f64,
    }
}

/// Emits `count` core records at `level` with target `relaybox::testing`
/// and fields `n`, `flag`, `ratio` and `text`, for tests: one on the
/// calling thread, more from a new native thread (the call returns at once).
/// A test hook: in the addon only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[napi(catch_unwind)]
pub fn log_for_tests(level: String, message: String, count: u32) -> Result<()> {
    guard(|| {
        let Some(Some(level)) = log_forward::parse_level(&level) else {
            return Err(relaybox::Error::InvalidValue {
                reason: format!("unknown log level {level:?}"),
            });
        };
        if count <= 1 {
            log_forward::emit_for_tests(level, &message, u64::from(count));
        } else {
            std::thread::Builder::new()
                .name("relaybox-test-emitter".into())
                .spawn(move || log_forward::emit_for_tests(level, &message, u64::from(count)))
                .map_err(|e| relaybox::Error::Internal {
                    message: e.to_string(),
                })?;
        }
        Ok(())
    })
}
