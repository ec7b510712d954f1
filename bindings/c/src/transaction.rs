//! `relaybox_tx`: an open database transaction holding the caller's business
//! writes and the events enqueued with them; or, inside a consumer handler,
//! the transaction that also holds the message's inbox row.

use std::ffi::c_char;
use std::sync::Mutex;

use relaybox::{Message, MessageSpec, Transaction};

use crate::convert::{block_on, handle, optional_text, out, owned_string, params, rows_json, text};
use crate::error::{guard, relaybox_status, Failure};

/// An open transaction. Opaque; created by `relaybox_outbox_begin` (owned by
/// the caller) or handed to a consumer handler (borrowed for the call).
pub struct relaybox_tx {
    tx: Transaction,
    /// Handed to a consumer handler: the consumer commits it.
    borrowed: bool,
    /// Why the handler failed, as recorded with the dead letter.
    failure_reason: Mutex<Option<String>>,
}

impl relaybox_tx {
    /// A new caller-owned handle.
    pub(crate) fn owned(tx: Transaction) -> *mut relaybox_tx {
        Box::into_raw(Box::new(relaybox_tx {
            tx,
            borrowed: false,
            failure_reason: Mutex::new(None),
        }))
    }

    /// A handle lent to a consumer handler for one call.
    pub(crate) fn borrowed(tx: Transaction) -> relaybox_tx {
        relaybox_tx {
            tx,
            borrowed: true,
            failure_reason: Mutex::new(None),
        }
    }

    /// The reason the handler gave with `relaybox_tx_set_failure_reason`.
    pub(crate) fn take_failure_reason(&self) -> Option<String> {
        self.failure_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn owned_only(&self, what: &str) -> Result<(), Failure> {
        if self.borrowed {
            return Err(Failure::Misuse(format!(
                "a consumer handler must not {what} its transaction: return \
                 RELAYBOX_HANDLER_ACK to commit it, anything else to roll it back"
            )));
        }
        Ok(())
    }
}

fn message(spec_json: &str) -> Result<Message, Failure> {
    Ok(MessageSpec::from_json_str(spec_json)?.into_message()?)
}

/// Runs a statement with parameters (`$1`, `$2`, ... on PostgreSQL; `?` on
/// SQLite) given as a JSON array (`params_json`, or NULL for none; see the
/// parameter rules in the header's introduction). Stores the number of rows
/// affected in `*out_rows` (may be NULL).
///
/// Blocks. Thread safety: any thread; calls on one transaction run one at a
/// time.
///
/// # Safety
/// `tx` is a live handle; `sql` and `params_json` are NUL-terminated strings
/// (or NULL where allowed); `out_rows` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_execute(
    tx: *const relaybox_tx,
    sql: *const c_char,
    params_json: *const c_char,
    out_rows: *mut u64,
) -> relaybox_status {
    guard(|| {
        let tx = unsafe { handle(tx, "tx") }?;
        let sql = unsafe { text(sql, "sql") }?;
        let params = params(unsafe { optional_text(params_json, "params_json") }?)?;
        let affected = block_on(tx.tx.execute(sql, &params))?;
        if let Some(slot) = unsafe { out_rows.as_mut() } {
            *slot = affected;
        }
        Ok(())
    })
}

/// Runs a query; stores its rows in `*out_json` as a JSON array of objects,
/// column name to value (free it with `relaybox_string_free`).
///
/// Blocks. Thread safety: any thread; calls on one transaction run one at a
/// time.
///
/// # Safety
/// As for `relaybox_tx_execute`; `out_json` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_query(
    tx: *const relaybox_tx,
    sql: *const c_char,
    params_json: *const c_char,
    out_json: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_json, "out_json", std::ptr::null_mut()) }?;
        let tx = unsafe { handle(tx, "tx") }?;
        let sql = unsafe { text(sql, "sql") }?;
        let params = params(unsafe { optional_text(params_json, "params_json") }?)?;
        let rows = block_on(tx.tx.query(sql, &params))?;
        *slot = owned_string(rows_json(rows))?;
        Ok(())
    })
}

/// Writes one message into the outbox, in this transaction. `spec_json` is a
/// message spec: `{"topic": "orders", "key": "order-1", "type":
/// "OrderPlaced", "payload": {...}, "headers": {...}}` (see docs/c.md).
/// Stores the new message id (a UUID string) in `*out_id` unless `out_id`
/// is NULL (free it with `relaybox_string_free`). An invalid spec writes
/// nothing.
///
/// Blocks. Thread safety: any thread; calls on one transaction run one at a
/// time.
///
/// # Safety
/// `tx` is a live handle; `spec_json` is a NUL-terminated string; `out_id`
/// is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_enqueue(
    tx: *const relaybox_tx,
    spec_json: *const c_char,
    out_id: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        if let Some(slot) = unsafe { out_id.as_mut() } {
            *slot = std::ptr::null_mut();
        }
        let tx = unsafe { handle(tx, "tx") }?;
        let message = message(unsafe { text(spec_json, "spec_json") }?)?;
        let id = block_on(tx.tx.enqueue(message))?;
        if let Some(slot) = unsafe { out_id.as_mut() } {
            *slot = owned_string(id.to_string())?;
        }
        Ok(())
    })
}

/// Writes several messages (a JSON array of message specs) in one
/// statement: all or none. Stores their ids as a JSON array of strings in
/// `*out_ids_json` unless it is NULL (free it with `relaybox_string_free`).
///
/// Blocks. Thread safety: any thread; calls on one transaction run one at a
/// time.
///
/// # Safety
/// As for `relaybox_tx_enqueue`.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_enqueue_batch(
    tx: *const relaybox_tx,
    specs_json: *const c_char,
    out_ids_json: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        if let Some(slot) = unsafe { out_ids_json.as_mut() } {
            *slot = std::ptr::null_mut();
        }
        let tx = unsafe { handle(tx, "tx") }?;
        let messages =
            MessageSpec::batch_from_json_str(unsafe { text(specs_json, "specs_json") }?)?
                .into_iter()
                .map(MessageSpec::into_message)
                .collect::<relaybox::Result<Vec<_>>>()?;
        let ids = block_on(tx.tx.enqueue_batch(&messages))?;
        if let Some(slot) = unsafe { out_ids_json.as_mut() } {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            *slot = owned_string(serde_json::Value::from(ids).to_string())?;
        }
        Ok(())
    })
}

/// Commits: the business writes and the enqueued messages become visible
/// together, and relays are woken. Not allowed on a handler's transaction
/// (`RELAYBOX_MISUSE`). The handle must still be freed.
///
/// Blocks. Thread safety: any thread.
///
/// # Safety
/// `tx` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_commit(tx: *const relaybox_tx) -> relaybox_status {
    guard(|| {
        let tx = unsafe { handle(tx, "tx") }?;
        tx.owned_only("commit")?;
        block_on(tx.tx.commit())
    })
}

/// Rolls back: nothing written in the transaction remains. Not allowed on a
/// handler's transaction (`RELAYBOX_MISUSE`). The handle must still be freed.
///
/// Blocks. Thread safety: any thread.
///
/// # Safety
/// `tx` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_rollback(tx: *const relaybox_tx) -> relaybox_status {
    guard(|| {
        let tx = unsafe { handle(tx, "tx") }?;
        tx.owned_only("roll back")?;
        block_on(tx.tx.rollback())
    })
}

/// Inside a consumer handler: records why the handler is about to fail, so
/// that the retry log and the dead letter carry it instead of the bare
/// return code. Not allowed on a caller-owned transaction.
///
/// Thread safety: the handler's own thread, during the handler call.
///
/// # Safety
/// `tx` is the handle the handler was given; `reason` is a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_set_failure_reason(
    tx: *const relaybox_tx,
    reason: *const c_char,
) -> relaybox_status {
    guard(|| {
        let tx = unsafe { handle(tx, "tx") }?;
        let reason = unsafe { text(reason, "reason") }?;
        if !tx.borrowed {
            return Err(Failure::Misuse(
                "only a consumer handler's transaction carries a failure reason".into(),
            ));
        }
        *tx.failure_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        Ok(())
    })
}

/// Releases a caller-owned transaction; one neither committed nor rolled
/// back is rolled back. NULL is ignored. A handler's transaction must not be
/// freed (`RELAYBOX_MISUSE`).
///
/// Thread safety: no other thread may use this handle during or after the
/// call.
///
/// # Safety
/// `tx` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn relaybox_tx_free(tx: *mut relaybox_tx) -> relaybox_status {
    guard(|| {
        let Some(borrowed) = (unsafe { tx.as_ref() }) else {
            return Ok(());
        };
        borrowed.owned_only("free")?;
        crate::drop_in_runtime(unsafe { Box::from_raw(tx) });
        Ok(())
    })
}
