//! Forwarding the core's `tracing` events (and the `log` records of its
//! libraries, such as librdkafka's) to a host language's logging: the part
//! every binding shares (feature `log-forward`).
//!
//! [`install`] sets a global `tracing` subscriber whose only layer filters
//! each event against a level held in an atomic, copies what passes into a
//! [`Record`] and hands it to a bounded channel without blocking: a core
//! thread (a tokio worker, librdkafka's threads) never waits for the host.
//! A full channel drops the record and counts it; the count arrives later as
//! a warning record of its own. One thread, `relaybox-log`, takes records
//! from the channel and passes them in batches to the binding's delivery
//! function, which hands them to the host (a message to a BEAM process, a
//! JavaScript callback, a C function pointer, a JVM callback).
//!
//! Levels: [`set_level`] sets the most verbose level forwarded for the
//! core's own targets (`relaybox` and `relaybox::...`); records of the core's
//! libraries pass at [`Level::WARN`] and above only. Nothing is forwarded
//! until a level is set.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records waiting for the forwarding thread; more are dropped and counted.
pub const CAPACITY: usize = 4096;
/// Records handed to the delivery function per call, at most.
pub const BATCH: usize = 256;
/// The target of the core's own records.
const ROOT: &str = "relaybox";

/// The level filter: 0 forwards nothing, 1 `ERROR` ... 5 `TRACE`.
static LEVEL: AtomicU8 = AtomicU8::new(0);
/// The channel into the forwarding thread, once installed.
static SENDER: OnceLock<SyncSender<Record>> = OnceLock::new();
/// Records dropped (channel full) since the process started.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Dropped records not yet reported in a warning record.
static UNREPORTED: AtomicU64 = AtomicU64::new(0);
/// Records queued for the forwarding thread since the process started.
static QUEUED: AtomicU64 = AtomicU64::new(0);
/// Whether `log` records come through here (this module set `log`'s logger).
static LOG_BRIDGED: AtomicBool = AtomicBool::new(false);

/// The filter rank of a level: `ERROR` 1 ... `TRACE` 5.
fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

/// Whether `target` is the core's own (`relaybox` or `relaybox::...`).
pub fn is_core(target: &str) -> bool {
    target
        .strip_prefix(ROOT)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Whether a record of `level` from `target` passes the current filter.
fn passes(target: &str, level: &Level) -> bool {
    let max = LEVEL.load(Ordering::Relaxed);
    let limit = if is_core(target) { max } else { max.min(2) };
    rank(level) <= limit
}

/// Sets the most verbose level forwarded (`None`: nothing is forwarded).
/// Takes effect at once, for records of every thread.
pub fn set_level(level: Option<Level>) {
    let value = level.as_ref().map_or(0, rank);
    LEVEL.store(value, Ordering::Relaxed);
    if LOG_BRIDGED.load(Ordering::Relaxed) {
        // Libraries' `log` records never pass below WARN: keep `log` from
        // even formatting them.
        log::set_max_level(match value.min(2) {
            0 => log::LevelFilter::Off,
            1 => log::LevelFilter::Error,
            _ => log::LevelFilter::Warn,
        });
    }
}

/// The level set by [`set_level`].
pub fn level() -> Option<Level> {
    match LEVEL.load(Ordering::Relaxed) {
        0 => None,
        1 => Some(Level::ERROR),
        2 => Some(Level::WARN),
        3 => Some(Level::INFO),
        4 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    }
}

/// Parses a level name (`"error"`, `"warn"` or `"warning"`, `"info"`,
/// `"debug"`, `"trace"`, any case); `"off"` or `"none"` is `Some(None)`.
pub fn parse_level(name: &str) -> Option<Option<Level>> {
    match name.to_ascii_lowercase().as_str() {
        "off" | "none" => Some(None),
        "error" => Some(Some(Level::ERROR)),
        "warn" | "warning" => Some(Some(Level::WARN)),
        "info" => Some(Some(Level::INFO)),
        "debug" => Some(Some(Level::DEBUG)),
        "trace" => Some(Some(Level::TRACE)),
        _ => None,
    }
}

/// Counters of the forwarder: records queued for the forwarding thread and
/// records dropped because the host did not keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Records queued since the process started.
    pub queued: u64,
    /// Records dropped since the process started.
    pub dropped: u64,
}

/// The forwarder's counters.
pub fn stats() -> Stats {
    Stats {
        queued: QUEUED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
    }
}

/// Counts `count` records the binding could not hand to the host (its own
/// queue to the host was full); they are reported with the core's drops.
pub fn count_dropped(count: u64) {
    DROPPED.fetch_add(count, Ordering::Relaxed);
    UNREPORTED.fetch_add(count, Ordering::Relaxed);
}

/// A field value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text, and every value recorded with `%` or `?`.
    Str(String),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A floating-point number.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::I64(n) => write!(f, "{n}"),
            Value::U64(n) => write!(f, "{n}"),
            Value::F64(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One log record on its way to the host.
#[derive(Debug, Clone)]
pub struct Record {
    /// The `tracing` target (`relaybox::relay`) or the `log` target of a
    /// library (`librdkafka`).
    pub target: String,
    /// The level.
    pub level: Level,
    /// The message, without the fields.
    pub message: String,
    /// The structured fields, in the order they were recorded.
    pub fields: Vec<(&'static str, Value)>,
    /// The source file of the event, when known.
    pub file: Option<String>,
    /// The source line of the event, when known.
    pub line: Option<u32>,
    /// When the event happened.
    pub time: SystemTime,
    /// The name of the thread that logged (`native` for a thread without one).
    pub thread: String,
}

impl Record {
    /// The message with the fields appended: `text key=value key=value`.
    pub fn rendered(&self) -> String {
        use std::fmt::Write as _;
        let mut text = self.message.clone();
        for (name, value) in &self.fields {
            if !text.is_empty() {
                text.push(' ');
            }
            let _ = write!(text, "{name}={value}");
        }
        text
    }

    /// The lowercase name of the level: `error`, `warn`, `info`, `debug`, `trace`.
    pub fn level_name(&self) -> &'static str {
        match self.level {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            _ => "trace",
        }
    }
}

/// Collects an event's message and fields.
struct Fields<'a>(&'a mut Record);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.0.message = value.to_string(),
            // The `log` crate's metadata, already in the record's target, file and line.
            name if name.starts_with("log.") => {}
            name => self.0.fields.push((name, value)),
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
}

/// The layer that feeds the channel.
struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_span() {
            Interest::never()
        } else {
            // Decided per event: the level changes while callsites stay registered.
            Interest::sometimes()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        // `log` records arrive with target `log` and are judged in `on_event`.
        metadata.is_event()
            && (metadata.target() == "log" || passes(metadata.target(), metadata.level()))
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(tx) = SENDER.get() else { return };
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if !passes(meta.target(), meta.level()) {
            return;
        }
        let mut record = Record {
            target: meta.target().to_string(),
            level: *meta.level(),
            message: String::new(),
            fields: Vec::new(),
            file: meta.file().map(str::to_string),
            line: meta.line(),
            time: SystemTime::now(),
            thread: std::thread::current()
                .name()
                .unwrap_or("native")
                .to_string(),
        };
        event.record(&mut Fields(&mut record));
        match tx.try_send(record) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                UNREPORTED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Why [`install`] did not install the forwarder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// Another global `tracing` subscriber is in place (the application set
    /// its own): the core's events go there.
    #[error("another global tracing subscriber is already set: {0}")]
    SubscriberTaken(String),
    /// The forwarding thread could not be started.
    #[error("the relaybox-log thread could not be started: {0}")]
    Thread(String),
}

/// Installs the forwarder once per process: the global `tracing`
/// subscriber, the bridge of `log` records (unless the process already has
/// a `log` logger) and the `relaybox-log` thread, which calls `deliver`
/// with batches of at most [`BATCH`] records. `deliver` runs only on that
/// thread; while it runs, new records wait in the channel (up to
/// [`CAPACITY`], then they are dropped and counted). Nothing is forwarded
/// until [`set_level`] is called. A later call changes nothing and
/// returns the outcome of the first (its `deliver` is dropped).
pub fn install<F>(deliver: F) -> Result<(), InstallError>
where
    F: FnMut(Vec<Record>) + Send + 'static,
{
    static INSTALLED: OnceLock<Result<(), InstallError>> = OnceLock::new();
    INSTALLED.get_or_init(|| install_now(deliver)).clone()
}

fn install_now<F>(deliver: F) -> Result<(), InstallError>
where
    F: FnMut(Vec<Record>) + Send + 'static,
{
    let subscriber = tracing_subscriber::registry().with(ForwardLayer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| InstallError::SubscriberTaken(e.to_string()))?;
    let (tx, rx) = sync_channel(CAPACITY);
    std::thread::Builder::new()
        .name("relaybox-log".into())
        .spawn(move || run(rx, deliver))
        .map_err(|e| InstallError::Thread(e.to_string()))?;
    let _ = SENDER.set(tx);
    if tracing_log::LogTracer::init().is_ok() {
        LOG_BRIDGED.store(true, Ordering::Relaxed);
        set_level(level());
    }
    Ok(())
}

/// The forwarding thread: batches records into `deliver` and reports drops.
fn run<F: FnMut(Vec<Record>)>(rx: Receiver<Record>, mut deliver: F) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let dropped = UNREPORTED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(Record {
                target: ROOT.to_string(),
                level: Level::WARN,
                message: "relaybox log records dropped: the host's logging did not keep up"
                    .to_string(),
                fields: vec![("dropped", Value::U64(dropped))],
                file: None,
                line: None,
                time: SystemTime::now(),
                thread: "relaybox-log".to_string(),
            });
        }
        // A panicking host callback must not end the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver(batch)));
    }
}

/// Emits `count` records at `level` with target `relaybox::testing` and
/// fields `n`, `flag`, `ratio` and `text`, for the bindings' tests.
pub fn emit_for_tests(level: Level, message: &str, count: u64) {
    macro_rules! at {
        ($level:expr, $n:expr) => {
            tracing::event!(target: "relaybox::testing", $level, n = $n, flag = true, ratio = 0.5, text = "two words", "{message}")
        };
    }
    for n in 0..count {
        match level {
            Level::ERROR => at!(Level::ERROR, n),
            Level::WARN => at!(Level::WARN, n),
            Level::INFO => at!(Level::INFO, n),
            Level::DEBUG => at!(Level::DEBUG, n),
            _ => at!(Level::TRACE, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_targets_follow_the_level_and_libraries_stop_at_warn() {
        assert!(is_core("relaybox"));
        assert!(is_core("relaybox::relay"));
        assert!(!is_core("relayboxer"));
        assert!(!is_core("librdkafka"));
        set_level(Some(Level::DEBUG));
        assert!(passes("relaybox::relay", &Level::DEBUG));
        assert!(!passes("relaybox::relay", &Level::TRACE));
        assert!(passes("librdkafka", &Level::WARN));
        assert!(!passes("librdkafka", &Level::INFO));
        set_level(None);
        assert!(!passes("relaybox::relay", &Level::ERROR));
        assert_eq!(level(), None);
        assert_eq!(parse_level("WARNING"), Some(Some(Level::WARN)));
        assert_eq!(parse_level("off"), Some(None));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn rendered_appends_the_fields() {
        let record = Record {
            target: "relaybox::relay".into(),
            level: Level::WARN,
            message: "relaybox message dead-lettered".into(),
            fields: vec![("id", Value::Str("x".into())), ("attempts", Value::U64(1))],
            file: None,
            line: None,
            time: SystemTime::now(),
            thread: "t".into(),
        };
        assert_eq!(
            record.rendered(),
            "relaybox message dead-lettered id=x attempts=1"
        );
        assert_eq!(record.level_name(), "warn");
    }
}
