//! The core's log records delivered to the JVM (SLF4J, through
//! `Slf4jLogging` in the Kotlin layer).
//!
//! The layer and bounded channel are the core's (`relaybox::log_forward`):
//! a core thread only copies a record into the channel and never waits. The
//! library's `relaybox-log` thread hands each batch to the registered
//! [`LogSink`], one batch at a time; while the sink is slow, further records
//! are dropped and counted, and a later warning record reports them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use relaybox::log_forward::{self, Record};

use crate::bridge::guard;
use crate::error::RelayboxError;

/// One field of a log record: its name and its value as text.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LogField {
    /// The field's name (`id`, `attempts`, `error`, ...).
    pub name: String,
    /// The field's value as text.
    pub value: String,
}

/// One log record of the core.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LogRecord {
    /// `"error"`, `"warn"`, `"info"`, `"debug"` or `"trace"`.
    pub level: String,
    /// The core's module (`"relaybox::relay"`) or, for a record of one of its
    /// libraries, that library (`"librdkafka"`).
    pub target: String,
    /// The message without the fields.
    pub message: String,
    /// The message followed by the fields: `"text key=value key=value"`.
    pub text: String,
    /// The structured fields, in the order the core recorded them.
    pub fields: Vec<LogField>,
    /// The source file of the event, when known.
    pub file: Option<String>,
    /// The source line of the event, when known.
    pub line: Option<u32>,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub time_millis: i64,
    /// The name of the native thread that logged it.
    pub thread: String,
}

/// Receives batches of the core's log records on the library's log thread
/// (`relaybox-log`). Should return quickly; an exception is ignored.
#[uniffi::export(callback_interface)]
pub trait LogSink: Send + Sync {
    /// Handles `records`, oldest first.
    fn log(&self, records: Vec<LogRecord>);
}

static SINK: Mutex<Option<Arc<dyn LogSink>>> = Mutex::new(None);

fn record(r: &Record) -> LogRecord {
    LogRecord {
        level: r.level_name().to_string(),
        target: r.target.clone(),
        message: r.message.clone(),
        text: r.rendered(),
        fields: r
            .fields
            .iter()
            .map(|(name, value)| LogField {
                name: (*name).to_string(),
                value: value.to_string(),
            })
            .collect(),
        file: r.file.clone(),
        line: r.line,
        time_millis: r
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        thread: r.thread.clone(),
    }
}

/// Runs on the `relaybox-log` thread: hands a batch to the sink.
fn deliver(batch: Vec<Record>) {
    let sink = SINK.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(sink) = sink {
        sink.log(batch.iter().map(record).collect());
    }
}

/// Sends the core's log records at `level` (`"error"`, `"warn"`, `"info"`,
/// `"debug"`, `"trace"` or `"off"`) and above to `sink`, replacing the sink
/// set before; a null `sink` turns forwarding off. Records of the core's
/// libraries (librdkafka) pass at `"warn"` and above only.
#[uniffi::export]
pub fn set_log_sink(sink: Option<Box<dyn LogSink>>, level: String) -> Result<(), RelayboxError> {
    guard(|| {
        let parsed =
            log_forward::parse_level(&level).ok_or_else(|| relaybox::Error::InvalidConfig {
                field: "level".into(),
                reason: format!(
                    "unknown log level {level:?}: use error, warn, info, debug, trace or off"
                ),
            })?;
        log_forward::install(deliver).map_err(|err| relaybox::Error::Internal {
            message: err.to_string(),
        })?;
        let sink: Option<Arc<dyn LogSink>> = sink.map(Arc::from);
        let on = sink.is_some();
        *SINK.lock().unwrap_or_else(PoisonError::into_inner) = sink;
        log_forward::set_level(if on { parsed } else { None });
        Ok(())
    })
}

/// Records dropped because the sink did not keep up, since the process started.
#[uniffi::export]
pub fn log_records_dropped() -> u64 {
    log_forward::stats().dropped
}

/// Emits `count` core records at `level` with target `relaybox::testing`
/// and fields `n`, `flag`, `ratio` and `text`, for tests. A test hook: in
/// the library only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[uniffi::export]
pub fn log_for_tests(level: String, message: String, count: u32) -> Result<(), RelayboxError> {
    guard(|| {
        let Some(Some(level)) = log_forward::parse_level(&level) else {
            return Err(relaybox::Error::InvalidConfig {
                field: "level".into(),
                reason: format!("unknown log level {level:?}"),
            });
        };
        log_forward::emit_for_tests(level, &message, u64::from(count));
        Ok(())
    })
}
