//! The core's log records delivered to Elixir's `Logger`.
//!
//! The layer and bounded channel are the core's (`relaybox::log_forward`):
//! a core thread only copies a record into the channel and never waits. The
//! `relaybox-log` thread (not a BEAM scheduler) sends each batch as
//! `{:relaybox_log, [record]}` to the registered forwarder process
//! (`Relaybox.LogForwarder`), which calls `Logger`. At most
//! [`MAX_IN_FLIGHT`] batches wait in that process's mailbox: the process
//! acknowledges each one (`log_forward_ack/0`), and while the limit is
//! reached the thread waits, the channel fills and further records are
//! dropped and counted (reported later as a warning record).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use relaybox::log_forward::{self, Record, Value};
use rustler::types::atom::Atom;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};
use tracing::Level;

rustler::atoms! {
    relaybox_log,
    level,
    target,
    message,
    text,
    fields,
    file,
    line,
    time,
    thread,
    error,
    warning,
    info,
    debug,
}

/// Batches sent to the forwarder process and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 8;

/// Where batches go, and how many wait in that process's mailbox.
struct Destination {
    pid: Option<LocalPid>,
    in_flight: usize,
}

static DEST: Mutex<Destination> = Mutex::new(Destination {
    pid: None,
    in_flight: 0,
});
static DEST_CHANGED: Condvar = Condvar::new();

fn dest() -> MutexGuard<'static, Destination> {
    DEST.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `Logger` level atom of a `tracing` level (`trace` becomes `:debug`).
fn logger_level(level: &Level) -> Atom {
    match *level {
        Level::ERROR => error(),
        Level::WARN => warning(),
        Level::INFO => info(),
        _ => debug(),
    }
}

fn value_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Str(s) => s.encode(env),
        Value::I64(n) => n.encode(env),
        Value::U64(n) => n.encode(env),
        Value::F64(n) => n.encode(env),
        Value::Bool(b) => b.encode(env),
    }
}

/// `%{level:, target:, message:, text:, fields:, file:, line:, time:, thread:}`
/// (`time` in microseconds since the epoch, `fields` with atom keys).
fn record_term<'a>(env: Env<'a>, record: &Record) -> Term<'a> {
    let mut field_map = Term::map_new(env);
    for (name, value) in &record.fields {
        if let Ok(key) = Atom::from_str(env, name) {
            if let Ok(map) = field_map.map_put(key, value_term(env, value)) {
                field_map = map;
            }
        }
    }
    let micros = record
        .time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let pairs: [(Term<'a>, Term<'a>); 9] = [
        (level().encode(env), logger_level(&record.level).encode(env)),
        (target().encode(env), record.target.encode(env)),
        (message().encode(env), record.message.encode(env)),
        (text().encode(env), record.rendered().encode(env)),
        (fields().encode(env), field_map),
        (file().encode(env), record.file.encode(env)),
        (line().encode(env), record.line.encode(env)),
        (time().encode(env), micros.encode(env)),
        (thread().encode(env), record.thread.encode(env)),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| record.rendered().encode(env))
}

/// Runs on the `relaybox-log` thread: sends a batch to the forwarder process.
fn deliver(batch: Vec<Record>) {
    let pid = {
        let mut guard = dest();
        loop {
            match guard.pid {
                None => return,
                Some(_) if guard.in_flight >= MAX_IN_FLIGHT => {
                    guard = DEST_CHANGED
                        .wait_timeout(guard, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                Some(pid) => {
                    guard.in_flight += 1;
                    break pid;
                }
            }
        }
    };
    let sent = OwnedEnv::new().send_and_clear(&pid, |env| {
        let records: Vec<Term<'_>> = batch.iter().map(|r| record_term(env, r)).collect();
        (relaybox_log(), records).encode(env)
    });
    if sent.is_err() {
        // The process is gone: forget it until another one registers.
        let mut guard = dest();
        if guard.pid == Some(pid) {
            guard.pid = None;
            guard.in_flight = 0;
        }
    }
}

/// Makes the calling process the destination of the core's log records at
/// `level` (`"error"` ... `"trace"`, or `"off"`), installing the forwarder on
/// first use. `{:error, reason}` when the process already has another global
/// `tracing` subscriber.
#[rustler::nif]
fn log_forward_start<'a>(env: Env<'a>, level_name: String) -> Term<'a> {
    let Some(level) = log_forward::parse_level(&level_name) else {
        return (
            crate::error(),
            format!(
                "unknown log level {level_name:?}: use error, warning, info, debug, trace or off"
            ),
        )
            .encode(env);
    };
    if let Err(err) = log_forward::install(deliver) {
        return (crate::error(), err.to_string()).encode(env);
    }
    {
        let mut guard = dest();
        guard.pid = Some(env.pid());
        guard.in_flight = 0;
    }
    DEST_CHANGED.notify_all();
    log_forward::set_level(level);
    crate::ok().encode(env)
}

/// Sets the level of the records forwarded (`"off"`: none).
#[rustler::nif]
fn log_forward_set_level<'a>(env: Env<'a>, level_name: String) -> Term<'a> {
    match log_forward::parse_level(&level_name) {
        Some(level) => {
            log_forward::set_level(level);
            crate::ok().encode(env)
        }
        None => (crate::error(), format!("unknown log level {level_name:?}")).encode(env),
    }
}

/// Stops forwarding to the calling process (when it is the destination).
#[rustler::nif]
fn log_forward_stop(env: Env<'_>) -> Atom {
    let mut guard = dest();
    if guard.pid == Some(env.pid()) {
        guard.pid = None;
        guard.in_flight = 0;
        log_forward::set_level(None);
    }
    drop(guard);
    DEST_CHANGED.notify_all();
    crate::ok()
}

/// The forwarder process has handled one batch.
#[rustler::nif]
fn log_forward_ack() -> Atom {
    {
        let mut guard = dest();
        guard.in_flight = guard.in_flight.saturating_sub(1);
    }
    DEST_CHANGED.notify_all();
    crate::ok()
}

/// `%{queued:, dropped:}`: records queued for the forwarding thread and
/// records dropped because the forwarder did not keep up.
#[rustler::nif]
fn log_forward_stats(env: Env<'_>) -> Term<'_> {
    let stats = log_forward::stats();
    let pairs = [
        ("queued".encode(env), stats.queued.encode(env)),
        ("dropped".encode(env), stats.dropped.encode(env)),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| crate::nil().encode(env))
}

/// Emits `count` core records at `level` with target `relaybox::testing`
/// and fields `n`, `flag`, `ratio` and `text`, for tests: one on the calling
/// thread, more from a new native thread (the call returns at once). A test
/// hook: in the NIF only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[rustler::nif]
fn log_for_tests<'a>(env: Env<'a>, level_name: String, text_: String, count: u64) -> Term<'a> {
    match log_forward::parse_level(&level_name) {
        Some(Some(level)) if count <= 1 => {
            log_forward::emit_for_tests(level, &text_, count);
            crate::ok().encode(env)
        }
        Some(Some(level)) => {
            let spawned = std::thread::Builder::new()
                .name("relaybox-test-emitter".into())
                .spawn(move || log_forward::emit_for_tests(level, &text_, count));
            match spawned {
                Ok(_) => crate::ok().encode(env),
                Err(e) => (crate::error(), e.to_string()).encode(env),
            }
        }
        _ => (crate::error(), format!("unknown log level {level_name:?}")).encode(env),
    }
}
