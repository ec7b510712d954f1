//! `relaybox-ffi`: the C ABI of relaybox. Opaque handles for the outbox,
//! transactions, relays and consumers; every function returns a
//! `relaybox_status` and leaves a message for `relaybox_last_error()`;
//! structured input is JSON parsed by the core (`MessageSpec`, the configs'
//! `from_json`); consumer handlers are C callbacks. No panic crosses the
//! boundary. `include/relaybox.h` is generated from this crate by cbindgen.

// The C names of the handles are the ABI; safety contracts are in the header.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

mod consumer;
mod convert;
mod error;
mod host;
mod logging;
mod outbox;
mod relay;
mod transaction;

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use consumer::{
    relaybox_consumer, relaybox_consumer_stats, relaybox_handler, relaybox_handler_result,
};
pub use error::relaybox_status;
pub use host::{relaybox_host_handler, relaybox_host_outcome, relaybox_host_reason};
pub use logging::{relaybox_log_callback, relaybox_log_level, relaybox_log_record};
pub use outbox::relaybox_outbox;
pub use relay::{relaybox_relay, relaybox_relay_stats};
pub use transaction::relaybox_tx;

use crate::convert::{out, owned_string, text};
use crate::error::{guard, Failure};

/// Drops a handle with the runtime entered, so that pools and connections it
/// releases can hand their clean-up to the runtime.
pub(crate) fn drop_in_runtime<T>(value: T) {
    let runtime = relaybox::runtime::runtime();
    let _entered = runtime.enter();
    drop(value);
}

/// The message of the last failing relaybox call on this thread, or "" when
/// the last call succeeded. Owned by the library: valid until the next
/// relaybox call on this thread returns (so it may be passed to that call);
/// do not free it. Never NULL.
///
/// Thread safety: per thread (each thread sees its own last error).
#[no_mangle]
pub extern "C" fn relaybox_last_error() -> *const c_char {
    catch_unwind(error::last_error_ptr).unwrap_or(c"".as_ptr())
}

/// Whether the last failing call on this thread may succeed if tried again
/// (connection loss, serialization failure, broker unavailable, timeout).
///
/// Thread safety: per thread.
#[no_mangle]
pub extern "C" fn relaybox_last_error_retryable() -> bool {
    catch_unwind(error::last_error_retryable).unwrap_or(false)
}

/// The stable lower-case name of a status (`"ok"`, `"database"`, ...), a
/// static string (never NULL, do not free). Thread safety: any thread.
#[no_mangle]
pub extern "C" fn relaybox_status_name(status: relaybox_status) -> *const c_char {
    catch_unwind(|| status.name().as_ptr()).unwrap_or(c"internal".as_ptr())
}

/// The library version (`"0.1.0"`), a static string (do not free). Thread
/// safety: any thread.
#[no_mangle]
pub extern "C" fn relaybox_version() -> *const c_char {
    static VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// Frees a string the library returned through an out-pointer (JSON results,
/// message ids). NULL is ignored. Thread safety: any thread; each string is
/// freed once.
///
/// # Safety
/// `text` is NULL or a string returned by relaybox and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn relaybox_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: the string came from CString::into_raw in this library.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(unsafe { CString::from_raw(text) })
        }));
    }
}

/// Stores the relaybox schema of `dialect` (`"postgres"` or `"sqlite"`) as
/// plain SQL in `*out_sql` (free it with `relaybox_string_free`), for
/// applying migrations with your own tool. Does not block. Thread safety:
/// any thread.
///
/// # Safety
/// The strings are NUL-terminated; `out_sql` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_schema_sql(
    dialect: *const c_char,
    table_prefix: *const c_char,
    partitions: u32,
    out_sql: *mut *mut c_char,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_sql, "out_sql", std::ptr::null_mut()) }?;
        let dialect: relaybox::Dialect = unsafe { text(dialect, "dialect") }?
            .parse()
            .map_err(Failure::Core)?;
        let prefix = unsafe { text(table_prefix, "table_prefix") }?;
        let sql = relaybox::schema::schema_sql(dialect, prefix, partitions)?;
        *slot = owned_string(sql)?;
        Ok(())
    })
}

/// Panics inside a guarded call, so that the test suite can check that a
/// panic comes back as `RELAYBOX_INTERNAL` instead of unwinding into C. Not
/// part of the supported API: a test hook, in the library only when built
/// with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[no_mangle]
pub extern "C" fn relaybox__panic_for_tests() -> relaybox_status {
    guard(|| panic!("relaybox__panic_for_tests"))
}
