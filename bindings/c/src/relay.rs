//! `relaybox_relay`: a relay running on the library's own threads.

use std::ffi::c_char;

use relaybox::{Relay, RelayConfig, TransportConfig};

use crate::convert::{block_on, handle, optional_text, out, parse_config, text};
use crate::error::{guard, relaybox_status};
use crate::outbox::relaybox_outbox;

/// A running relay. Opaque; created by `relaybox_relay_start`, stopped by
/// `relaybox_relay_stop`, released by `relaybox_relay_free`.
pub struct relaybox_relay {
    relay: Relay,
}

/// Counters of a relay, filled in by `relaybox_relay_get_stats`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct relaybox_relay_stats {
    /// Messages the broker acknowledged.
    pub delivered: u64,
    /// Failed attempts scheduled for retry.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
    /// Batches published.
    pub batches: u64,
    /// Partitions held right now.
    pub partitions_held: u64,
    /// Claims run against the outbox, those that found nothing included.
    pub claims: u64,
}

/// Starts relaying `outbox`'s committed messages to the transport
/// (`transport_json`: `"database"` or `{"kafka": {"bootstrap_servers":
/// "host:9092", "create_topics": true}}`) with the relay settings
/// (`config_json`: NULL or a JSON object such as `{"batch_size": 500}`).
/// Stores the new handle in `*out_relay`. Returns at once; the relay runs on
/// the library's threads until stopped.
///
/// Thread safety: any thread; the returned handle may be shared by threads.
///
/// # Safety
/// `outbox` is a live handle; the strings are NUL-terminated (or NULL where
/// allowed); `out_relay` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn relaybox_relay_start(
    outbox: *const relaybox_outbox,
    transport_json: *const c_char,
    config_json: *const c_char,
    out_relay: *mut *mut relaybox_relay,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_relay, "out_relay", std::ptr::null_mut()) }?;
        let outbox = unsafe { handle(outbox, "outbox") }?;
        let transport = TransportConfig::from_json(parse_config("transport", unsafe {
            text(transport_json, "transport_json")
        }?)?)?;
        let config = match unsafe { optional_text(config_json, "config_json") }? {
            None => RelayConfig::default(),
            Some(json) => RelayConfig::from_json(parse_config("relay config", json)?)?,
        };
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let sink = transport.sink(&outbox.store)?;
        let relay = Relay::start(outbox.store.clone(), sink, config)?;
        *slot = Box::into_raw(Box::new(relaybox_relay { relay }));
        Ok(())
    })
}

/// Copies the relay's counters into `*out_stats`. Does not block. Thread
/// safety: any thread.
///
/// # Safety
/// `relay` is a live handle; `out_stats` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_relay_get_stats(
    relay: *const relaybox_relay,
    out_stats: *mut relaybox_relay_stats,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_stats, "out_stats", relaybox_relay_stats::default()) }?;
        let s = unsafe { handle(relay, "relay") }?.relay.stats();
        *slot = relaybox_relay_stats {
            delivered: s.delivered,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            batches: s.batches,
            partitions_held: s.partitions_held,
            claims: s.claims,
        };
        Ok(())
    })
}

/// Stores whether the relay is still running in `*out_running`. Does not
/// block. Thread safety: any thread.
///
/// # Safety
/// `relay` is a live handle; `out_running` is valid for writing.
#[no_mangle]
pub unsafe extern "C" fn relaybox_relay_running(
    relay: *const relaybox_relay,
    out_running: *mut bool,
) -> relaybox_status {
    guard(|| {
        let slot = unsafe { out(out_running, "out_running", false) }?;
        *slot = unsafe { handle(relay, "relay") }?.relay.is_running();
        Ok(())
    })
}

/// Finishes the batch in flight, hands the relay's partitions over and
/// stops. Idempotent. Blocks until stopped. Thread safety: any thread.
///
/// # Safety
/// `relay` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn relaybox_relay_stop(relay: *const relaybox_relay) -> relaybox_status {
    guard(|| {
        let relay = unsafe { handle(relay, "relay") }?;
        block_on(relay.relay.shutdown())
    })
}

/// Releases the handle. A relay not stopped first stops abruptly, as a crash
/// would: its partitions are taken over when their leases expire, nothing is
/// lost. NULL is ignored.
///
/// Thread safety: no other thread may use this handle during or after the
/// call.
///
/// # Safety
/// `relay` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn relaybox_relay_free(relay: *mut relaybox_relay) -> relaybox_status {
    guard(|| {
        if !relay.is_null() {
            crate::drop_in_runtime(unsafe { Box::from_raw(relay) });
        }
        Ok(())
    })
}
