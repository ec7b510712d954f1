//! `relaybox_consumer`: the idempotent consumer calling a C function for each
//! message, on a blocking thread of the library's runtime so that the
//! callback may block and may call relaybox functions on its transaction.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use relaybox::{
    BoxError, Consumer, ConsumerConfig, Handler, Message, Rejected, Transaction, TransportConfig,
};

use crate::convert::{block_on, handle, out, parse_config, text};
use crate::error::{guard, relaybox_status, Failure};
use crate::outbox::relaybox_outbox;
use crate::transaction::relaybox_tx;

/// What a consumer handler returns.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum relaybox_handler_result {
    /// Handled: the handler's writes and the inbox row commit, and the
    /// message is acknowledged.
    RELAYBOX_HANDLER_ACK = 0,
    /// Failed: the handler's writes roll back and the message is retried with
    /// backoff, then dead-lettered after `max_retries`. Any value other than
    /// 0 and 2 means the same.
    RELAYBOX_HANDLER_RETRY = 1,
    /// The message can never be handled: its writes roll back and it goes to
    /// dead letters at once.
    RELAYBOX_HANDLER_REJECT = 2,
}

/// A consumer handler.
///
/// `message_json` is the message in canonical JSON (`id`, `topic`, `key`,
/// `type`, `payload` in base64, `content_type`, `headers`, `created_at`,
/// `available_at`), NUL-terminated, `len` bytes long without the NUL. It and
/// `tx` are valid only during the call: copy what you keep. Run your writes
/// through `tx` (`relaybox_tx_execute`, `relaybox_tx_query`,
/// `relaybox_tx_enqueue`) so they commit atomically with the message being
/// marked processed; never commit, roll back or free `tx`. Return a
/// `relaybox_handler_result`.
///
/// Called on the library's threads, for several messages at once when the
/// consumer's `concurrency` is above 1 (one at a time per key): the function
/// and `user_data` must be thread-safe. It must not unwind (no C++
/// exceptions, no `longjmp` out of it) and must not stop or free its own
/// consumer.
#[allow(non_camel_case_types)]
pub type relaybox_handler = Option<
    unsafe extern "C" fn(
        message_json: *const c_char,
        len: usize,
        tx: *mut relaybox_tx,
        user_data: *mut c_void,
    ) -> c_int,
>;

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

struct CHandler {
    callback: unsafe extern "C" fn(*const c_char, usize, *mut relaybox_tx, *mut c_void) -> c_int,
    user_data: UserData,
}

#[async_trait::async_trait]
impl Handler for CHandler {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        let callback = self.callback;
        let user_data = self.user_data;
        let json = CString::new(message.to_canonical_json())
            .map_err(|_| -> BoxError { "the canonical JSON contained a NUL byte".into() })?;
        let (code, reason) = tokio::task::spawn_blocking(move || {
            let mut handle = relaybox_tx::borrowed(tx);
            let len = json.as_bytes().len();
            // SAFETY: the callback contract is stated in the header; the
            // JSON and the handle outlive the call.
            let code = unsafe { callback(json.as_ptr(), len, &mut handle, user_data.get()) };
            (code, handle.take_failure_reason())
        })
        .await
        .map_err(|e| -> BoxError { format!("the C handler did not finish: {e}").into() })?;
        let reason = reason.unwrap_or_else(|| format!("the C handler returned {code}"));
        match code {
            0 => Ok(()),
            2 => Err(Box::new(Rejected::new(reason))),
            _ => Err(reason.into()),
        }
    }
}

/// Counters of a consumer, filled in by `relaybox_consumer_get_stats`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct relaybox_consumer_stats {
    /// Messages whose handler succeeded and committed.
    pub processed: u64,
    /// Deliveries skipped because the inbox had them.
    pub duplicates: u64,
    /// Handler failures that were retried.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
}

/// A running consumer. Opaque; created by `relaybox_consumer_start`, stopped
/// by `relaybox_consumer_stop`, released by `relaybox_consumer_free`.
pub struct relaybox_consumer {
    consumer: Consumer,
}

impl relaybox_consumer {
    /// A new caller-owned handle for a started consumer.
    pub(crate) fn from_consumer(consumer: Consumer) -> *mut relaybox_consumer {
        Box::into_raw(Box::new(relaybox_consumer { consumer }))
    }
}

/// Starts consuming `topic` from the transport (`transport_json`, as for
/// `relaybox_relay_start`) with the consumer settings (`config_json`: a JSON
/// object with at least `"group"`, e.g. `{"group": "billing",
/// "concurrency": 8}`), calling `handler(message_json, len, tx, user_data)`
/// for each message. Stores the new handle in `*out_consumer`. Returns at
/// once; the consumer runs on the library's threads until stopped.
///
/// Thread safety: any thread; the returned handle may be shared by threads.
///
/// # Safety
/// `outbox` is a live handle; the strings are NUL-terminated; `handler` and
/// `user_data` follow the `relaybox_handler` contract until the consumer is
/// stopped or freed; `out_consumer` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_start(
    outbox: *const relaybox_outbox,
    transport_json: *const c_char,
    topic: *const c_char,
    config_json: *const c_char,
    handler: relaybox_handler,
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
        let callback = handler.ok_or(Failure::Null("handler"))?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let source = transport.source(&outbox.store, topic, &config.group)?;
        let handler = Arc::new(CHandler {
            callback,
            user_data: UserData(user_data),
        });
        let consumer = Consumer::start(outbox.store.clone(), source, handler, config)?;
        *slot = relaybox_consumer::from_consumer(consumer);
        Ok(())
    })
}

/// Copies the consumer's counters into `*out_stats`. Does not block. Thread
/// safety: any thread.
///
/// # Safety
/// `consumer` is a live handle; `out_stats` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_get_stats(
    consumer: *const relaybox_consumer,
    out_stats: *mut relaybox_consumer_stats,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_stats, "out_stats", relaybox_consumer_stats::default()) }?;
        let s = unsafe { handle(consumer, "consumer") }?.consumer.stats();
        *slot = relaybox_consumer_stats {
            processed: s.processed,
            duplicates: s.duplicates,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
        };
        Ok(())
    })
}

/// Stores whether the consumer is still running in `*out_running`. Does not
/// block. Thread safety: any thread.
///
/// # Safety
/// `consumer` is a live handle; `out_running` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_running(
    consumer: *const relaybox_consumer,
    out_running: *mut bool,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_running, "out_running", false) }?;
        *slot = unsafe { handle(consumer, "consumer") }?
            .consumer
            .is_running();
        Ok(())
    })
}

/// Finishes and acknowledges the messages in flight, then stops; the
/// handler is not called after it returns. Idempotent. Blocks until
/// stopped. Thread safety: any thread except a handler of this consumer
/// (which would wait for itself).
///
/// # Safety
/// `consumer` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_stop(
    consumer: *const relaybox_consumer,
) -> relaybox_status {
    guard(|| {
        let consumer = unsafe { handle(consumer, "consumer") }?;
        block_on(consumer.consumer.shutdown())
    })
}

/// Releases the handle. A consumer not stopped first stops abruptly:
/// deliveries not yet acknowledged come again and the inbox skips those
/// already processed; a handler call in progress may still finish after
/// this returns, so stop first whenever `user_data` is about to be freed.
/// NULL is ignored.
///
/// Thread safety: no other thread may use this handle during or after the
/// call.
///
/// # Safety
/// `consumer` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn relaybox_consumer_free(
    consumer: *mut relaybox_consumer,
) -> relaybox_status {
    guard(|| {
        if !consumer.is_null() {
            crate::drop_in_runtime(unsafe { Box::from_raw(consumer) });
        }
        Ok(())
    })
}
