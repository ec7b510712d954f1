//! The host-transaction protocol: the outbox INSERT (and its wake-up) as SQL
//! plus typed parameters for the application's own driver, and the consumer
//! whose C callback runs the inbox statement and the handler's writes in a
//! transaction of the application's driver.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use relaybox::{
    Consumer, ConsumerConfig, HostDelivery, HostHandler, HostOutcome, InboxStatement,
    InsertStatement, Message, MessageSpec, Placeholders, TransportConfig, Value,
};

use crate::consumer::relaybox_consumer;
use crate::convert::{block_on, handle, out, owned_string, parse_config, text};
use crate::error::{guard, relaybox_status, Failure};
use crate::outbox::relaybox_outbox;

/// What a host-mode consumer callback reports for one delivery.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum relaybox_host_outcome {
    /// The inbox statement inserted its row and the application's
    /// transaction (inbox row plus the handler's writes) committed.
    RELAYBOX_HOST_PROCESSED = 0,
    /// The inbox statement inserted no row: the group processed this message
    /// before. The application rolled back; nothing was written.
    RELAYBOX_HOST_DUPLICATE = 1,
    /// The handler or the transaction failed and was rolled back: the message
    /// is retried with backoff, then dead-lettered. Any value other than 0, 1
    /// and 3 means the same.
    RELAYBOX_HOST_FAILED = 2,
    /// The message can never be handled (rolled back): dead-lettered at once.
    RELAYBOX_HOST_REJECTED = 3,
}

/// The reason of a failed or rejected delivery, set by a host-mode callback
/// with `relaybox_host_reason_set`. Opaque; valid only during the callback.
pub struct relaybox_host_reason {
    text: Mutex<Option<String>>,
}

/// A host-mode consumer callback.
///
/// `message_json` (`message_len` bytes, NUL-terminated) is the message in
/// canonical JSON, as for `relaybox_handler`. `inbox_json` (`inbox_len`
/// bytes, NUL-terminated) is the inbox statement:
/// `{"sql": "...", "params": [...]}`, parameters encoded as in
/// `relaybox_outbox_insert_statements`. Both are valid only during the call.
///
/// The callback, in one transaction of the application's driver: runs the
/// inbox statement first; when it inserted one row, runs its writes and
/// commits, then returns `RELAYBOX_HOST_PROCESSED`; when it inserted none,
/// rolls back and returns `RELAYBOX_HOST_DUPLICATE`; on any failure rolls
/// back, may describe it with `relaybox_host_reason_set(reason, ...)` and
/// returns `RELAYBOX_HOST_FAILED` or `RELAYBOX_HOST_REJECTED`.
///
/// Called on the library's worker threads (not the thread that started the
/// consumer), for several messages at once when `concurrency` is above 1
/// (one at a time per key): the function and `user_data` must be
/// thread-safe. It may block. It must not unwind, and must not stop or free
/// its own consumer.
#[allow(non_camel_case_types)]
pub type relaybox_host_handler = Option<
    unsafe extern "C" fn(
        message_json: *const c_char,
        message_len: usize,
        inbox_json: *const c_char,
        inbox_len: usize,
        reason: *mut relaybox_host_reason,
        user_data: *mut c_void,
    ) -> c_int,
>;

/// A parameter as JSON: `{"type": ..., "value": ...}` with type `null`,
/// `bool`, `int8`, `float8`, `text`, `bytes` (value in standard base64),
/// `jsonb`, `uuid` or `timestamptz` (RFC 3339 text).
fn param_json(value: &Value) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Null => json!({"type": "null", "value": null}),
        Value::Bool(b) => json!({"type": "bool", "value": b}),
        Value::Int(i) => json!({"type": "int8", "value": i}),
        Value::Float(f) => json!({"type": "float8", "value": f}),
        Value::Text(t) => json!({"type": "text", "value": t}),
        Value::Bytes(b) => json!({
            "type": "bytes",
            "value": base64::engine::general_purpose::STANDARD.encode(b),
        }),
        Value::Json(j) => json!({"type": "jsonb", "value": j.to_string()}),
        Value::Uuid(u) => json!({"type": "uuid", "value": u.to_string()}),
        Value::Timestamp(t) => json!({"type": "timestamptz", "value": t.to_rfc3339()}),
    }
}

/// The PostgreSQL type the SQL casts a text parameter of `column` to, for
/// drivers that want to bind it typed.
fn column_cast(column: &str) -> Option<&'static str> {
    match column {
        "id" => Some("uuid"),
        "headers" => Some("jsonb"),
        "created_at" | "available_at" => Some("timestamptz"),
        _ => None,
    }
}

/// The column names of an `INSERT INTO t (a, b, ...) VALUES ...`.
fn insert_columns(sql: &str) -> Vec<String> {
    let Some(open) = sql.find('(') else {
        return Vec::new();
    };
    let Some(close) = sql[open..].find(')') else {
        return Vec::new();
    };
    sql[open + 1..open + close]
        .split(',')
        .map(|c| c.trim().to_string())
        .collect()
}

fn insert_json(statement: &InsertStatement, postgres: bool) -> serde_json::Value {
    let columns = insert_columns(&statement.sql);
    let params: Vec<serde_json::Value> = statement
        .params
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let mut param = param_json(value);
            if let (Some(column), Some(object)) =
                (columns.get(i % columns.len().max(1)), param.as_object_mut())
            {
                object.insert("column".into(), column.clone().into());
                let cast = column_cast(column).filter(|_| postgres);
                object.insert("cast".into(), cast.into());
            }
            param
        })
        .collect();
    serde_json::json!({
        "sql": statement.sql,
        "params": params,
        "names": statement.names,
        "message_ids": statement.message_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "wake": statement.wake,
    })
}

fn inbox_json(statement: &InboxStatement) -> String {
    serde_json::json!({
        "sql": statement.sql,
        "params": statement.params.iter().map(param_json).collect::<Vec<_>>(),
        "names": statement.names,
    })
    .to_string()
}

fn messages(specs_json: &str) -> Result<Vec<Message>, Failure> {
    let parsed: serde_json::Value = serde_json::from_str(specs_json).map_err(|e| {
        Failure::Core(relaybox::Error::InvalidMessage {
            field: "specs_json",
            reason: format!("the message spec is not JSON: {e}"),
        })
    })?;
    let specs = match parsed {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    specs
        .into_iter()
        .map(|spec| Ok(MessageSpec::from_json(spec)?.into_message()?))
        .collect()
}

/// Stores in `*out_json` (free it with `relaybox_string_free`) the INSERT
/// statements that write the messages of `specs_json` (one message spec, or
/// a JSON array of them) to the outbox, for running in a transaction of the
/// application's own driver: a JSON array of
/// `{"sql", "params", "names", "message_ids", "wake"}`, to run in order, each
/// followed by its `wake` (a `NOTIFY` waking the relays when the transaction
/// commits; null on SQLite). `placeholders` is the driver's style:
/// `"dollar"` (`$1`), `"percent"` (`%s`), `"question"` (`?`), `"pyformat"`
/// or `"named"` (then `names` lists the parameter names).
///
/// Each parameter is `{"type", "value", "column", "cast"}`: type `null`,
/// `int8`, `text` or `bytes` (value in standard base64); `column` is the
/// outbox column it fills and `cast` (PostgreSQL) the type the SQL casts the
/// text to (`uuid`, `jsonb`, `timestamptz`) or null, so a driver may bind
/// every text parameter as text.
///
/// Every message is validated first: an invalid one is an error and no
/// statement is made. Blocks (reads the partition count once). Thread
/// safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; the strings are NUL-terminated; `out_json` is
/// valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_insert_statements(
    outbox: *const relaybox_outbox,
    specs_json: *const c_char,
    placeholders: *const c_char,
    out_json: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_json, "out_json", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let messages = messages(unsafe { text(specs_json, "specs_json") }?)?;
        let style: Placeholders = unsafe { text(placeholders, "placeholders") }?.parse()?;
        if messages.is_empty() {
            return Err(Failure::Core(relaybox::Error::InvalidMessage {
                field: "specs_json",
                reason: "no messages to write".into(),
            }));
        }
        let store = outbox.store.clone();
        let statements =
            block_on(async move { store.insert_batch_statements(&messages, style).await })?;
        let postgres = outbox.store.dialect() == relaybox::Dialect::Postgres;
        let list: Vec<serde_json::Value> = statements
            .iter()
            .map(|s| insert_json(s, postgres))
            .collect();
        *slot = owned_string(serde_json::Value::Array(list).to_string())?;
        Ok(())
    })
}

/// Stores in `*out_sql` the statement that wakes the relays of every process
/// when the transaction it runs in commits (PostgreSQL `NOTIFY`), to run after
/// writing outbox rows with your own driver; NULL on SQLite, where relays of
/// other processes poll. Free it with `relaybox_string_free`. Does not block.
/// Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `out_sql` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_wake_statement(
    outbox: *const relaybox_outbox,
    out_sql: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_sql, "out_sql", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        outbox.store.check_open()?;
        if let Some(sql) = outbox.store.wake_statement() {
            *slot = owned_string(sql)?;
        }
        Ok(())
    })
}

/// Wakes this process's relays at once (and, on PostgreSQL, those of other
/// processes), after committing outbox rows written with your own driver.
/// Does not block. Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_wake_relays(
    outbox: *const relaybox_outbox,
) -> relaybox_status {
    guard(|| {
        let outbox = unsafe { handle(outbox, "outbox") }?;
        outbox.store.wake_relays();
        Ok(())
    })
}

/// Records why a host-mode delivery failed (kept with its retries and its
/// dead letter). Callable only during the callback that received `reason`.
/// Does not block.
///
/// # Safety
/// `reason` is the handle passed to the running callback; `reason_text` is a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn relaybox_host_reason_set(
    reason: *mut relaybox_host_reason,
    reason_text: *const c_char,
) -> relaybox_status {
    guard(|| {
        let reason = unsafe { handle(reason, "reason") }?;
        let value = unsafe { text(reason_text, "reason_text") }?.to_string();
        *reason.text.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    })
}

/// The caller's `user_data`, which the header's contract makes thread-safe.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);
// SAFETY: the caller promises in the header that user_data may be used from
// any thread.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

impl UserData {
    fn get(self) -> *mut c_void {
        self.0
    }
}

type HostCallback = unsafe extern "C" fn(
    *const c_char,
    usize,
    *const c_char,
    usize,
    *mut relaybox_host_reason,
    *mut c_void,
) -> c_int;

struct CHostHandler {
    callback: HostCallback,
    user_data: UserData,
}

#[async_trait::async_trait]
impl HostHandler for CHostHandler {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        let callback = self.callback;
        let user_data = self.user_data;
        let (Ok(message), Ok(inbox)) = (
            CString::new(delivery.message.to_canonical_json()),
            CString::new(inbox_json(&delivery.inbox)),
        ) else {
            return HostOutcome::Failed("the delivery contained a NUL byte".into());
        };
        let called = tokio::task::spawn_blocking(move || {
            let mut reason = relaybox_host_reason {
                text: Mutex::new(None),
            };
            // SAFETY: the callback contract is stated in the header; the
            // strings and the reason outlive the call.
            let code = unsafe {
                callback(
                    message.as_ptr(),
                    message.as_bytes().len(),
                    inbox.as_ptr(),
                    inbox.as_bytes().len(),
                    &mut reason,
                    user_data.get(),
                )
            };
            let text = reason.text.into_inner().unwrap_or_else(|p| p.into_inner());
            (code, text)
        })
        .await;
        let (code, reason) = match called {
            Ok(result) => result,
            Err(e) => return HostOutcome::Failed(format!("the C handler did not finish: {e}")),
        };
        let reason = reason.unwrap_or_else(|| format!("the C handler returned {code}"));
        match code {
            0 => HostOutcome::Processed,
            1 => HostOutcome::Duplicate,
            3 => HostOutcome::Rejected(reason),
            _ => HostOutcome::Failed(reason),
        }
    }
}

/// Starts consuming `topic` in host-transaction mode: as
/// `relaybox_consumer_start`, but `handler` runs each delivery in a
/// transaction of the application's own driver (see
/// `relaybox_host_handler`), given the inbox statement in `placeholders`
/// style (as for `relaybox_outbox_insert_statements`). Stores the new handle
/// in `*out_consumer`; stats, stop and free are those of any consumer.
/// Returns at once.
///
/// Thread safety: any thread; the returned handle may be shared by threads.
///
/// # Safety
/// `outbox` is a live handle; the strings are NUL-terminated; `handler` and
/// `user_data` follow the `relaybox_host_handler` contract until the
/// consumer is stopped or freed; `out_consumer` is valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_start_host(
    outbox: *const relaybox_outbox,
    transport_json: *const c_char,
    topic: *const c_char,
    config_json: *const c_char,
    placeholders: *const c_char,
    handler: relaybox_host_handler,
    user_data: *mut c_void,
    out_consumer: *mut *mut relaybox_consumer,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_consumer, "out_consumer", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let transport = TransportConfig::from_json(parse_config("transport", unsafe {
            text(transport_json, "transport_json")
        }?)?)?;
        let topic = unsafe { text(topic, "topic") }?;
        let config = ConsumerConfig::from_json(parse_config("consumer config", unsafe {
            text(config_json, "config_json")
        }?)?)?;
        let style: Placeholders = unsafe { text(placeholders, "placeholders") }?.parse()?;
        let callback = handler.ok_or(Failure::Null("handler"))?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let source = transport.source(&outbox.store, topic, &config.group)?;
        let handler = Arc::new(CHostHandler {
            callback,
            user_data: UserData(user_data),
        });
        let consumer = Consumer::start_host(outbox.store.clone(), source, handler, style, config)?;
        *slot = relaybox_consumer::from_consumer(consumer);
        Ok(())
    })
}
