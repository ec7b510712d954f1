//! `relaybox_outbox`: an open store (connection pool plus outbox tables).

use std::ffi::c_char;

use relaybox::{DeadLetterFilter, Store, StoreOptions};
use uuid::Uuid;

use crate::convert::{
    block_on, handle, optional_text, out, owned_string, parse_config, report, text,
};
use crate::error::{guard, relaybox_status, Failure};
use crate::transaction::relaybox_tx;

/// An open outbox: a PostgreSQL or SQLite connection pool plus the relaybox
/// tables. Opaque; created by `relaybox_outbox_open`, released by
/// `relaybox_outbox_free`.
pub struct relaybox_outbox {
    pub(crate) store: Store,
}

fn dead_letter_filter(ids_json: Option<&str>) -> Result<DeadLetterFilter, Failure> {
    let Some(ids_json) = ids_json else {
        return Ok(DeadLetterFilter::All);
    };
    let invalid = |reason: String| Failure::Core(relaybox::Error::InvalidValue { reason });
    let ids: Vec<String> = serde_json::from_str(ids_json)
        .map_err(|e| invalid(format!("ids must be a JSON array of strings: {e}")))?;
    ids.iter()
        .map(|id| {
            Uuid::parse_str(id).map_err(|e| invalid(format!("{id:?} is not a message id: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(DeadLetterFilter::Ids)
}

/// Connects to `url` (`postgres://...` or `sqlite:...`) and stores the new
/// handle in `*out`. `options_json` is NULL or a JSON object of store options
/// (`{"table_prefix": "app_", "partitions": 16, ...}`); with `migrate` the
/// schema is created or upgraded first.
///
/// Blocks until connected. Thread safety: callable from any thread; the
/// returned handle may be shared by threads.
///
/// # Safety
/// `url` and `options_json` are NUL-terminated strings (or NULL where
/// allowed); `out` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_open(
    url: *const c_char,
    options_json: *const c_char,
    migrate: bool,
    out_outbox: *mut *mut relaybox_outbox,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_outbox, "out_outbox", std::ptr::null_mut()) }?;
        let url = unsafe { text(url, "url") }?;
        let options = match unsafe { optional_text(options_json, "options_json") }? {
            None => StoreOptions::default(),
            Some(json) => StoreOptions::from_json(parse_config("store options", json)?)?,
        };
        let store = block_on(async move {
            let store = Store::connect_with(url, options).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(store)
        })?;
        *slot = Box::into_raw(Box::new(relaybox_outbox { store }));
        Ok(())
    })
}

/// Applies pending schema migrations. Blocks. Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_migrate(
    outbox: *const relaybox_outbox,
) -> relaybox_status {
    guard(|| {
        let outbox = unsafe { handle(outbox, "outbox") }?;
        block_on(outbox.store.migrate())
    })
}

/// Begins a transaction for business writes and enqueues; stores the new
/// handle in `*out_tx`. Finish it with `relaybox_tx_commit` or
/// `relaybox_tx_rollback`, then release it with `relaybox_tx_free`.
///
/// Blocks until a connection is free. Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `out_tx` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_begin(
    outbox: *const relaybox_outbox,
    out_tx: *mut *mut relaybox_tx,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_tx, "out_tx", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let tx = block_on(outbox.store.begin())?;
        *slot = relaybox_tx::owned(tx);
        Ok(())
    })
}

/// Stores the number of undelivered outbox rows in `*out_count`. Blocks.
/// Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `out_count` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_pending_count(
    outbox: *const relaybox_outbox,
    out_count: *mut i64,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_count, "out_count", 0) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        *slot = block_on(outbox.store.pending_count())?;
        Ok(())
    })
}

/// Stores the backlog, dead letters and lease owners as a JSON object in
/// `*out_json` (free it with `relaybox_string_free`). Blocks. Thread
/// safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `out_json` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_status_json(
    outbox: *const relaybox_outbox,
    out_json: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_json, "out_json", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let status = block_on(outbox.store.status())?;
        *slot = owned_string(report(&status)?)?;
        Ok(())
    })
}

/// Stores up to `limit` dead letters, oldest first, as a JSON array in
/// `*out_json` (free it with `relaybox_string_free`). Blocks. Thread
/// safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `out_json` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_dead_letters_json(
    outbox: *const relaybox_outbox,
    limit: u32,
    out_json: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_json, "out_json", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let letters = block_on(outbox.store.dead_letters(limit))?;
        *slot = owned_string(report(&letters)?)?;
        Ok(())
    })
}

/// Puts dead letters back into the outbox: all of them when `ids_json` is
/// NULL, else those of the JSON array of message ids. Stores how many in
/// `*out_count` (may be NULL). Blocks. Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle; `ids_json` is NULL or a NUL-terminated string;
/// `out_count` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_retry_dead_letters(
    outbox: *const relaybox_outbox,
    ids_json: *const c_char,
    out_count: *mut u64,
) -> relaybox_status {
    unsafe {
        on_dead_letters(outbox, ids_json, out_count, |store, filter| async move {
            store.retry_dead_letters(&filter).await
        })
    }
}

/// Deletes dead letters: all of them when `ids_json` is NULL, else those of
/// the JSON array of message ids. Stores how many in `*out_count` (may be
/// NULL). Blocks. Thread safety: any thread.
///
/// # Safety
/// As for `relaybox_outbox_retry_dead_letters`.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_purge_dead_letters(
    outbox: *const relaybox_outbox,
    ids_json: *const c_char,
    out_count: *mut u64,
) -> relaybox_status {
    unsafe {
        on_dead_letters(outbox, ids_json, out_count, |store, filter| async move {
            store.purge_dead_letters(&filter).await
        })
    }
}

/// Runs `op` (retry or purge) on the dead letters `ids_json` names (all when
/// NULL) and stores how many it touched in `*out_count` (may be NULL).
///
/// # Safety
/// As for `relaybox_outbox_retry_dead_letters`.
unsafe fn on_dead_letters<F, Fut>(
    outbox: *const relaybox_outbox,
    ids_json: *const c_char,
    out_count: *mut u64,
    op: F,
) -> relaybox_status
where
    F: FnOnce(Store, DeadLetterFilter) -> Fut,
    Fut: std::future::Future<Output = relaybox::Result<u64>>,
{
    guard(|| {
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let filter = dead_letter_filter(unsafe { optional_text(ids_json, "ids_json") }?)?;
        let count = block_on(op(outbox.store.clone(), filter))?;
        if let Some(slot) = unsafe { out_count.as_mut() } {
            *slot = count;
        }
        Ok(())
    })
}

/// Closes the connection pool; later calls on this outbox (and on relays,
/// consumers and transactions using it) fail with `RELAYBOX_CLOSED`. The
/// handle must still be released with `relaybox_outbox_free`. Blocks until
/// the connections are closed. Thread safety: any thread.
///
/// # Safety
/// `outbox` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_close(outbox: *const relaybox_outbox) -> relaybox_status {
    guard(|| {
        let outbox = unsafe { handle(outbox, "outbox") }?;
        block_on(async {
            outbox.store.close().await;
            Ok(())
        })
    })
}

/// Releases the handle. Relays, consumers and transactions started from it
/// keep working (they share the pool). NULL is ignored.
///
/// Thread safety: no other thread may use this handle during or after the
/// call.
///
/// # Safety
/// `outbox` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn relaybox_outbox_free(outbox: *mut relaybox_outbox) -> relaybox_status {
    guard(|| {
        if !outbox.is_null() {
            crate::drop_in_runtime(unsafe { Box::from_raw(outbox) });
        }
        Ok(())
    })
}
