//! The core's `tracing` events (and `log` records of its libraries, such as
//! librdkafka's) delivered to Python's standard `logging`.
//!
//! `pyo3-log` was not used: it calls into Python (taking the GIL) on the
//! thread that logs, and the core logs on tokio workers and librdkafka's
//! threads, which must never wait for the GIL. Instead a `tracing-subscriber`
//! [`Layer`] filters each event against a snapshot of the `relaybox` logger
//! tree, formats only what passes, and hands it to a bounded channel without
//! blocking; one forwarding thread takes the GIL and calls
//! `relaybox._logging._emit` with a batch. A full channel drops the event and
//! counts it; the count is reported in a later warning.
//!
//! Loggers: target `relaybox::relay` → `relaybox.relay`; targets of the core's
//! libraries go under `relaybox.deps` (`librdkafka` → `relaybox.deps.librdkafka`)
//! and pass at WARNING and above unless a level is set on `relaybox.deps` or
//! below. Levels: ERROR 40, WARN 30, INFO 20, DEBUG 10, TRACE 5.
//!
//! The snapshot is re-read by the forwarding thread every second and
//! synchronously when an outbox is opened or a relay or consumer started.
//! Interpreter exit: an `atexit` hook flushes what is queued and closes a gate
//! the thread passes before every attach, so it never calls into a finalizing
//! interpreter. `fork()`: the forwarder (channel, locks, thread) belongs to the
//! process that made it; a child replaces it on first use and starts its own
//! thread, never touching the parent's locks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Events waiting for the forwarding thread; more are dropped and counted.
const CAPACITY: usize = 4096;
/// Events handed to Python per GIL acquisition.
const BATCH: usize = 256;
/// How often the forwarding thread re-reads the logger levels.
const REFRESH: Duration = Duration::from_secs(1);
/// Targets whose threshold is cached; others are resolved per event.
const MAX_CACHED: usize = 1024;
/// How long interpreter exit waits for the forwarding thread to flush.
const EXIT_WAIT: Duration = Duration::from_secs(3);
/// A threshold no event reaches (a disabled logger).
const OFF: i32 = i32::MAX;
/// Python's `logging.WARNING`: the default floor of `relaybox.deps`.
const WARNING: i32 = 30;
/// The logger of the core; the parent of every logger this module uses.
const ROOT: &str = "relaybox";
/// The parent of the loggers of the core's libraries.
const DEPS: &str = "relaybox.deps";

/// `relaybox._logging._emit` and `_snapshot`, imported when the module loads.
static HOOKS: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// Whether the `log` crate's records come through here (this module set
/// its global logger), so the module may lower `log`'s max level.
static LOG_BRIDGED: AtomicBool = AtomicBool::new(false);

/// The forwarder of this process (leaked, never freed: a child of `fork()`
/// replaces it and the parent's stays valid for anything still holding it).
static CURRENT: AtomicPtr<Forwarder> = AtomicPtr::new(std::ptr::null_mut());

/// The Python level of a `tracing` level.
fn py_level(level: &Level) -> i32 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        _ => 5,
    }
}

/// Whether `target` is the core's own (`relaybox` or `relaybox::...`).
fn is_core(target: &str) -> bool {
    target
        .strip_prefix(ROOT)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The Python logger name of a `tracing` or `log` target.
fn logger_name(target: &str) -> String {
    let dotted = target.replace("::", ".");
    if is_core(target) {
        dotted
    } else if dotted.is_empty() {
        DEPS.to_string()
    } else {
        format!("{DEPS}.{dotted}")
    }
}

/// Whether logger `name` is `relaybox.deps` or below it.
fn is_deps(name: &str) -> bool {
    name.strip_prefix(DEPS)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// What Python's logging configuration says about the `relaybox` loggers.
#[derive(Default)]
struct Snapshot {
    /// The root logger's level (what `relaybox` inherits when it has none).
    root_level: i32,
    /// `logging.disable(level)`: events at or below it are off.
    disable: i32,
    /// `(level, disabled)` of each existing logger under `relaybox`.
    loggers: HashMap<String, (i32, bool)>,
}

impl Snapshot {
    /// The lowest Python level that logger `name` lets through, computed as
    /// `Logger.isEnabledFor` would, without creating the logger.
    fn threshold(&self, name: &str) -> i32 {
        if self
            .loggers
            .get(name)
            .is_some_and(|&(_, disabled)| disabled)
        {
            return OFF;
        }
        let mut probe = name;
        let mut set_at = None;
        loop {
            if let Some(&(level, _)) = self.loggers.get(probe) {
                if level > 0 {
                    set_at = Some((probe, level));
                    break;
                }
            }
            match probe.rfind('.') {
                Some(dot) => probe = &probe[..dot],
                None => break,
            }
        }
        let mut level = set_at.map_or(self.root_level, |(_, level)| level);
        if is_deps(name) && !set_at.is_some_and(|(at, _)| is_deps(at)) {
            level = level.max(WARNING);
        }
        level.max(self.disable.saturating_add(1))
    }

    /// A level no logger under `relaybox` lets anything below through.
    fn floor(&self) -> i32 {
        let explicit = self
            .loggers
            .values()
            .filter(|&&(level, disabled)| level > 0 && !disabled)
            .map(|&(level, _)| level);
        explicit
            .fold(self.threshold(ROOT), i32::min)
            .max(self.disable.saturating_add(1))
    }
}

/// The snapshot and the thresholds resolved from it so far.
#[derive(Default)]
struct Levels {
    snapshot: Snapshot,
    by_target: HashMap<String, i32>,
}

/// A field value of an event, as it reaches Python.
enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
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

impl<'py> IntoPyObject<'py> for &Value {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Value::Str(s) => s.into_pyobject(py)?.into_any(),
            Value::I64(n) => n.into_pyobject(py)?.into_any(),
            Value::U64(n) => n.into_pyobject(py)?.into_any(),
            Value::F64(n) => n.into_pyobject(py)?.into_any(),
            Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        })
    }
}

/// One event on its way to Python.
struct Record {
    target: Cow<'static, str>,
    level: i32,
    message: String,
    fields: Vec<(&'static str, Value)>,
    file: Option<Cow<'static, str>>,
    line: Option<u32>,
    /// Seconds since the epoch, when the event happened.
    created: f64,
    /// The logging thread's name (`relaybox` for the runtime's workers,
    /// `native` for a thread without a Rust name).
    thread: Option<String>,
}

impl Record {
    /// The message with the fields appended: `text key=value key=value`.
    fn rendered(&self) -> String {
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

    /// The `relaybox._logging.Event` tuple of this record.
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let fields = PyDict::new(py);
        for (name, value) in &self.fields {
            fields.set_item(*name, value)?;
        }
        (
            logger_name(&self.target),
            self.level,
            self.rendered(),
            fields,
            self.file.as_deref().unwrap_or("<relaybox>"),
            self.line.unwrap_or(0),
            self.created,
            self.thread.as_deref(),
        )
            .into_pyobject(py)
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

/// What travels through the channel.
enum Msg {
    Event(Box<Record>),
    /// Wakes the thread (at exit) without an event.
    Wake,
}

/// The forwarding thread's passage into Python, closed at interpreter exit.
#[derive(Default)]
struct Gate {
    /// The thread is attached to (or attaching to) the interpreter.
    busy: bool,
    /// No attaching any more: the interpreter is finalizing.
    closed: bool,
    /// The thread has flushed and ended.
    exited: bool,
}

/// The channel, level cache and thread of one process.
struct Forwarder {
    pid: u32,
    tx: SyncSender<Msg>,
    rx: Mutex<Option<Receiver<Msg>>>,
    started: AtomicBool,
    closing: AtomicBool,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    /// No event below this level passes (a quick reject before any lookup).
    floor: AtomicI32,
    /// The threshold of `relaybox`, used when the cache cannot be read.
    root: AtomicI32,
    levels: RwLock<Levels>,
    queued: AtomicU64,
    emitted: AtomicU64,
    dropped: AtomicU64,
    unreported: AtomicU64,
}

impl Forwarder {
    fn new(pid: u32, floor: i32, root: i32) -> Self {
        let (tx, rx) = sync_channel(CAPACITY);
        Forwarder {
            pid,
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            gate: Mutex::default(),
            gate_changed: Condvar::new(),
            floor: AtomicI32::new(floor),
            root: AtomicI32::new(root),
            levels: RwLock::default(),
            queued: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// Whether an event of `level` from `target` would be logged. Never
    /// blocks: a lock another thread holds means "use the `relaybox` level".
    fn enabled(&self, target: &str, level: i32) -> bool {
        if level < self.floor.load(Ordering::Relaxed) || self.closing.load(Ordering::Relaxed) {
            return false;
        }
        let threshold = match self.levels.try_read() {
            Ok(levels) => match levels.by_target.get(target) {
                Some(&threshold) => threshold,
                None => {
                    let threshold = levels.snapshot.threshold(&logger_name(target));
                    drop(levels);
                    if let Ok(mut levels) = self.levels.try_write() {
                        if levels.by_target.len() < MAX_CACHED {
                            levels.by_target.insert(target.to_string(), threshold);
                        }
                    }
                    threshold
                }
            },
            Err(_) => self.root.load(Ordering::Relaxed),
        };
        level >= threshold
    }

    /// Re-reads the logger levels from Python (GIL held).
    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        let Some((_, snapshot_fn)) = HOOKS.get(py) else {
            return Ok(());
        };
        let (root_level, disable, loggers): (i32, i32, Vec<(String, i32, bool)>) =
            snapshot_fn.call0(py)?.extract(py)?;
        let snapshot = Snapshot {
            root_level,
            disable,
            loggers: loggers
                .into_iter()
                .map(|(name, level, disabled)| (name, (level, disabled)))
                .collect(),
        };
        let targets: Vec<String> = match self.levels.read() {
            Ok(levels) => levels.by_target.keys().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().by_target.keys().cloned().collect(),
        };
        let by_target = targets
            .into_iter()
            .map(|target| {
                let threshold = snapshot.threshold(&logger_name(&target));
                (target, threshold)
            })
            .collect();
        let floor = snapshot.floor();
        let root = snapshot.threshold(ROOT);
        *self.levels.write().unwrap_or_else(PoisonError::into_inner) = Levels {
            snapshot,
            by_target,
        };
        self.root.store(root, Ordering::Relaxed);
        self.floor.store(floor, Ordering::Relaxed);
        if LOG_BRIDGED.load(Ordering::Relaxed) {
            // `log` macros below the floor then stop at one atomic load.
            log::set_max_level(match floor {
                ..=5 => log::LevelFilter::Trace,
                6..=10 => log::LevelFilter::Debug,
                11..=20 => log::LevelFilter::Info,
                21..=30 => log::LevelFilter::Warn,
                31..=40 => log::LevelFilter::Error,
                _ => log::LevelFilter::Off,
            });
        }
        Ok(())
    }

    /// Formats `event` and queues it; drops it (counted) when the queue is full.
    fn forward(&'static self, event: &Event<'_>) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut record = Record {
            target: match &normalized {
                Some(meta) => Cow::Owned(meta.target().to_string()),
                None => Cow::Borrowed(event.metadata().target()),
            },
            level: py_level(meta.level()),
            message: String::new(),
            fields: Vec::new(),
            file: match &normalized {
                Some(meta) => meta.file().map(|f| Cow::Owned(f.to_string())),
                None => event.metadata().file().map(Cow::Borrowed),
            },
            line: meta.line(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            thread: Some(
                std::thread::current()
                    .name()
                    .unwrap_or("native")
                    .to_string(),
            ),
        };
        event.record(&mut Fields(&mut record));
        self.ensure_thread();
        match self.tx.try_send(Msg::Event(Box::new(record))) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.unreported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts the forwarding thread unless it runs.
    fn ensure_thread(&'static self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(rx) = rx else { return };
        // Without a thread (the system refused one) the receiver is gone with
        // the closure: every later event is counted as dropped.
        let _ = std::thread::Builder::new()
            .name("relaybox-log".into())
            .spawn(move || self.run(rx));
    }

    /// Enters the gate before attaching; `false` once the interpreter is finalizing.
    fn enter(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.closed {
            return false;
        }
        gate.busy = true;
        true
    }

    fn leave(&self, exited: bool) {
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        gate.busy = false;
        gate.exited |= exited;
        self.gate_changed.notify_all();
    }

    /// The forwarding thread: batches events into Python, re-reads the
    /// levels every [`REFRESH`], and flushes and ends at interpreter exit.
    fn run(&'static self, rx: Receiver<Msg>) {
        let mut next_refresh = Instant::now();
        loop {
            let mut batch = Vec::new();
            let wait = next_refresh.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Event(record)) => batch.push(record),
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let closing = self.closing.load(Ordering::Acquire);
            while closing || batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Msg::Event(record)) => batch.push(record),
                    Ok(Msg::Wake) => {}
                    Err(_) => break,
                }
            }
            let refresh = Instant::now() >= next_refresh;
            let unreported = self.unreported.load(Ordering::Relaxed) > 0;
            if batch.is_empty() && !refresh && !unreported && !closing {
                continue;
            }
            if !self.enter() {
                return;
            }
            let attached = std::panic::catch_unwind(AssertUnwindSafe(|| {
                Python::try_attach(|py| {
                    if refresh {
                        if let Err(err) = self.refresh(py) {
                            err.write_unraisable(py, None);
                        }
                    }
                    self.emit(py, &batch);
                })
            }));
            let gone = matches!(attached, Ok(None));
            self.leave(closing || gone);
            if closing || gone {
                return;
            }
            if refresh {
                next_refresh = Instant::now() + REFRESH;
            }
        }
    }

    /// Calls `relaybox._logging._emit` with `batch`, then reports drops.
    fn emit(&self, py: Python<'_>, batch: &[Box<Record>]) {
        let Some((emit_fn, _)) = HOOKS.get(py) else {
            return;
        };
        let mut events = Vec::with_capacity(batch.len() + 1);
        for record in batch {
            match record.to_py(py) {
                Ok(event) => events.push(event),
                Err(err) => err.write_unraisable(py, None),
            }
        }
        let dropped = self.unreported.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let report = Record {
                target: Cow::Borrowed("relaybox"),
                level: WARNING,
                message: "relaybox log events dropped: the queue to Python logging was full"
                    .to_string(),
                fields: vec![("dropped", Value::U64(dropped))],
                file: None,
                line: None,
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                thread: Some("relaybox-log".to_string()),
            };
            match report.to_py(py) {
                Ok(event) => events.push(event),
                Err(err) => err.write_unraisable(py, None),
            }
        }
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        let called = PyList::new(py, events).and_then(|list| emit_fn.call1(py, (list,)));
        match called {
            Ok(_) => {
                self.emitted.fetch_add(count, Ordering::Relaxed);
            }
            Err(err) => err.write_unraisable(py, None),
        }
    }

    /// At interpreter exit (GIL released): lets the thread flush what is
    /// queued, then closes the gate so it never attaches again.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.tx.try_send(Msg::Wake);
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if self.started.load(Ordering::Acquire) {
            gate = self.wait_gate(gate, EXIT_WAIT, |g| !g.exited);
        }
        gate.closed = true;
        // Still inside Python past the deadline (a handler that blocks): give
        // it a last moment; the exit goes on either way.
        drop(self.wait_gate(gate, Duration::from_secs(1), |g| g.busy));
    }

    /// Waits on the gate while `waiting` holds, for at most `limit`.
    fn wait_gate<'a>(
        &self,
        mut gate: MutexGuard<'a, Gate>,
        limit: Duration,
        waiting: impl Fn(&Gate) -> bool,
    ) -> MutexGuard<'a, Gate> {
        let deadline = Instant::now() + limit;
        while waiting(&gate) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            gate = match self.gate_changed.wait_timeout(gate, left) {
                Ok((gate, _)) => gate,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        gate
    }
}

/// The forwarder, if the module has been loaded.
fn current() -> Option<&'static Forwarder> {
    // SAFETY: CURRENT only ever holds null or a pointer from `Box::into_raw`
    // that is never freed, so the reference is valid for 'static.
    unsafe { CURRENT.load(Ordering::Acquire).as_ref() }
}

/// The forwarder of this process: after `fork()`, a new one for the child
/// (the parent's thread does not exist here and its locks may be held).
fn for_this_process() -> Option<&'static Forwarder> {
    let current = current()?;
    let pid = std::process::id();
    if current.pid == pid {
        return Some(current);
    }
    let fresh = Box::into_raw(Box::new(Forwarder::new(
        pid,
        current.floor.load(Ordering::Relaxed),
        current.root.load(Ordering::Relaxed),
    )));
    let old = std::ptr::from_ref(current).cast_mut();
    match CURRENT.compare_exchange(old, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `fresh` came from `Box::into_raw` and is now never freed.
        Ok(_) => Some(unsafe { &*fresh }),
        Err(other) => {
            // SAFETY: `fresh` was never shared; `other` is a leaked forwarder.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { other.as_ref() }
        }
    }
}

/// The layer that feeds the forwarder.
struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_span() {
            Interest::never()
        } else {
            // Decided per event: levels change while callsites stay registered.
            Interest::sometimes()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        metadata.is_event()
            && current().is_some_and(|f| f.enabled(metadata.target(), py_level(metadata.level())))
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if let Some(forwarder) = for_this_process() {
            forwarder.forward(event);
        }
    }
}

/// Writes a note to the `relaybox` logger (GIL held; failures are ignored).
fn note(py: Python<'_>, level: &str, text: &str) {
    let _ = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", (ROOT,)))
        .and_then(|logger| logger.call_method1(level, (text,)));
}

/// Installs the bridge: called once when `relaybox._native` is imported.
/// Another global `tracing` subscriber or `log` logger already in place is
/// noted on the `relaybox` logger and left alone.
pub fn install(module: &Bound<'_, PyModule>) -> PyResult<()> {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let py = module.py();
    let helpers = py.import("relaybox._logging")?;
    let hooks = (
        helpers.getattr("_emit")?.unbind(),
        helpers.getattr("_snapshot")?.unbind(),
    );
    let _ = HOOKS.set(py, hooks);
    let forwarder = Forwarder::new(std::process::id(), OFF, OFF);
    CURRENT.store(Box::into_raw(Box::new(forwarder)), Ordering::Release);
    let subscriber = tracing_subscriber::registry().with(ForwardLayer);
    if let Err(err) = tracing::subscriber::set_global_default(subscriber) {
        note(
            py,
            "info",
            &format!("relaybox: core logs are not forwarded to Python logging ({err})"),
        );
    }
    match tracing_log::LogTracer::init() {
        Ok(()) => LOG_BRIDGED.store(true, Ordering::Relaxed),
        Err(err) => note(
            py,
            "debug",
            &format!("relaybox: `log` records of the core's libraries are not forwarded ({err})"),
        ),
    }
    if let Some(forwarder) = current() {
        forwarder.refresh(py)?;
    }
    py.import("atexit")?
        .call_method1("register", (module.getattr("_logging_shutdown")?,))?;
    Ok(())
}

/// Re-reads the logger levels now and makes sure the forwarding thread runs:
/// called where core work starts (opening an outbox, starting a relay or a
/// consumer), so a logging configuration made just before takes effect.
pub fn refresh(py: Python<'_>) {
    if let Some(forwarder) = for_this_process() {
        if let Err(err) = forwarder.refresh(py) {
            err.write_unraisable(py, None);
        }
        forwarder.ensure_thread();
    }
}

/// `atexit` hook: flushes queued events and stops the forwarding thread
/// before the interpreter finalizes.
#[pyfunction]
pub fn _logging_shutdown(py: Python<'_>) {
    if let Some(forwarder) = current() {
        if forwarder.pid == std::process::id() {
            py.detach(|| forwarder.close());
        } else {
            forwarder.closing.store(true, Ordering::Release);
        }
    }
}

/// Counters of the bridge in this process: `queued`, `emitted` (handed to
/// Python) and `dropped` events.
#[pyfunction]
pub fn _logging_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let stats = PyDict::new(py);
    if let Some(f) = for_this_process() {
        stats.set_item("queued", f.queued.load(Ordering::Relaxed))?;
        stats.set_item("emitted", f.emitted.load(Ordering::Relaxed))?;
        stats.set_item("dropped", f.dropped.load(Ordering::Relaxed))?;
    }
    Ok(stats)
}

/// Emits `count` core events at `level` (`"error"` ... `"trace"`) with target
/// `relaybox::testing` and fields `n`, `flag`, `ratio`, `text`, `maybe`, for
/// tests. `dependency` sends a `log` record of target
/// `relaybox_test_dep::module` instead; `background` emits from a new native
/// thread and returns at once; otherwise they are emitted on this thread
/// with the GIL held. `refresh` re-reads the logger levels first. A test
/// hook: in the module only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[pyfunction]
#[pyo3(signature = (level, message, count=1, dependency=false, background=false, refresh=true))]
pub fn _log_for_tests(
    py: Python<'_>,
    level: &str,
    message: String,
    count: u64,
    dependency: bool,
    background: bool,
    refresh: bool,
) -> PyResult<()> {
    let level: Level = level
        .parse()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("no level {level:?}")))?;
    if refresh {
        self::refresh(py);
    }
    let emit = move || {
        for n in 0..count {
            if dependency {
                log::log!(target: "relaybox_test_dep::module", tracing_log::AsLog::as_log(&level), "{message} n={n}");
                continue;
            }
            macro_rules! at {
                ($level:expr) => {
                    tracing::event!(target: "relaybox::testing", $level, n, flag = true, ratio = 0.5, text = "two words", maybe = ?Some(n), "{message}")
                };
            }
            match level {
                Level::ERROR => at!(Level::ERROR),
                Level::WARN => at!(Level::WARN),
                Level::INFO => at!(Level::INFO),
                Level::DEBUG => at!(Level::DEBUG),
                _ => at!(Level::TRACE),
            }
        }
    };
    if background {
        std::thread::Builder::new()
            .name("relaybox-test-emitter".into())
            .spawn(emit)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    } else {
        emit();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(root_level: i32, loggers: &[(&str, i32, bool)]) -> Snapshot {
        Snapshot {
            root_level,
            disable: 0,
            loggers: loggers
                .iter()
                .map(|&(name, level, disabled)| (name.to_string(), (level, disabled)))
                .collect(),
        }
    }

    #[test]
    fn logger_names() {
        assert_eq!(logger_name("relaybox"), "relaybox");
        assert_eq!(logger_name("relaybox::relay"), "relaybox.relay");
        assert_eq!(
            logger_name("relaybox::transport::kafka::sink"),
            "relaybox.transport.kafka.sink"
        );
        assert_eq!(logger_name("relayboxer"), "relaybox.deps.relayboxer");
        assert_eq!(logger_name("librdkafka"), "relaybox.deps.librdkafka");
        assert_eq!(logger_name("sqlx::query"), "relaybox.deps.sqlx.query");
    }

    #[test]
    fn thresholds_follow_python_inheritance() {
        let s = snapshot(
            30,
            &[("relaybox", 20, false), ("relaybox.relay", 10, false)],
        );
        assert_eq!(s.threshold("relaybox"), 20);
        assert_eq!(s.threshold("relaybox.relay"), 10);
        assert_eq!(s.threshold("relaybox.relay.inner"), 10);
        assert_eq!(s.threshold("relaybox.consumer"), 20);
        // Libraries: WARNING at least, unless set under relaybox.deps.
        assert_eq!(s.threshold("relaybox.deps.librdkafka"), 30);
        let s = snapshot(30, &[("relaybox.deps", 10, false)]);
        assert_eq!(s.threshold("relaybox.deps.librdkafka"), 10);
        assert_eq!(s.threshold("relaybox.relay"), 30);
        assert_eq!(s.floor(), 10);
        let s = snapshot(30, &[("relaybox.relay", 0, true)]);
        assert_eq!(s.threshold("relaybox.relay"), OFF);
        assert_eq!(s.threshold("relaybox.relay.x"), 30);
        let mut s = snapshot(0, &[]);
        assert_eq!(s.threshold("relaybox"), 1);
        s.disable = 20;
        assert_eq!(s.threshold("relaybox"), 21);
        assert_eq!(s.floor(), 21);
    }
}
