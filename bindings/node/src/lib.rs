//! `relaybox-node`: the thin napi-rs layer under the `relaybox` npm package.
//! It converts values, maps errors for `lib/errors.js` and runs the core's
//! async calls on the core runtime behind Promises; all delivery logic is in
//! the `relaybox` crate. Every export catches panics (`catch_unwind`), so a
//! bug surfaces as an `InternalError` instead of aborting Node.

mod bridge;
mod consumer;
mod convert;
mod error;
mod logging;
mod relay;
mod store;
mod transaction;

use napi::Result;
use napi_derive::napi;

use crate::bridge::guard;

pub use consumer::{ConsumerStats, NativeConsumer};
#[cfg(feature = "test-hooks")]
pub use logging::log_for_tests;
pub use logging::{log_stats, set_log_callback, LogStats};
pub use relay::{NativeRelay, RelayStats};
pub use store::NativeStore;
pub use transaction::NativeTransaction;

/// The version of the native addon (the crate version).
#[napi(catch_unwind)]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The schema of `dialect` (`"postgres"` or `"sqlite"`) as plain SQL, for
/// users who apply migrations with their own tool (knex, Prisma, ...).
#[napi(catch_unwind)]
pub fn schema_sql(dialect: String, table_prefix: String, partitions: u32) -> Result<String> {
    guard(|| {
        let dialect: relaybox::Dialect = dialect.parse()?;
        relaybox::schema::schema_sql(dialect, &table_prefix, partitions)
    })
}

/// The message a spec (JSON) describes, validated against the default
/// limits, in canonical JSON (what `enqueue` would store).
#[napi(catch_unwind)]
pub fn canonical_json_of(spec_json: String) -> Result<String> {
    guard(|| {
        let message = convert::message(&spec_json)?;
        message.validate(&relaybox::Limits::default())?;
        Ok(message.to_canonical_json())
    })
}

/// The outbox partition of a message key among `partitions` (CRC-32 of the
/// key, modulo the count), as every relaybox language computes it.
#[napi(catch_unwind)]
pub fn partition_for_key(key: String, partitions: u32) -> Result<u32> {
    guard(|| {
        if partitions == 0 {
            return Err(relaybox::Error::InvalidValue {
                reason: "partitions must be at least 1".into(),
            });
        }
        Ok(relaybox::partition::partition_for(
            Some(&key),
            &uuid::Uuid::nil(),
            partitions,
        ))
    })
}

/// Panics inside the binding, for tests that check a panic reaches Node as
/// `InternalError`: in the synchronous body, or in a Promise's work when
/// `asynchronous`. A test hook: in the addon only when built with the
/// `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[napi(catch_unwind)]
pub async fn panic_for_tests(message: String, asynchronous: bool) -> Result<()> {
    if asynchronous {
        crate::bridge::run(async move {
            if !message.is_empty() {
                panic!("{message}");
            }
            Ok(())
        })
        .await
    } else {
        guard(|| {
            if !message.is_empty() {
                panic!("{message}");
            }
            Ok(())
        })
    }
}
