//! `relaybox_uniffi`: the thin uniffi layer under the JVM package. It
//! converts values, maps errors to the `RelayboxException` hierarchy and
//! bridges the core's async calls to Kotlin `suspend` functions (run on the
//! core's one runtime) and blocking variants for Java; all delivery logic is
//! in the `relaybox` crate. The Kotlin is generated from this library by the
//! crate's own `uniffi-bindgen`.

mod admin;
mod bridge;
mod consumer;
mod convert;
mod error;
mod host;
mod logging;
mod outbox;
mod relay;
mod transaction;

pub use admin::{DeadLetter, LeaseOwner, OutboxStatus, ParkedKey, TopicBacklog};
pub use consumer::{Consumer, ConsumerStats, MessageHandler, SuspendMessageHandler};
pub use convert::{Message, MessageSpec, Row, SqlValue};
pub use error::RelayboxError;
pub use host::{HostMessageHandler, HostResult, HostStatement};
pub use logging::{LogField, LogRecord, LogSink};
pub use outbox::Outbox;
pub use relay::{Relay, RelayStats};
pub use transaction::Transaction;

uniffi::setup_scaffolding!("relaybox");

/// The version of the native library.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The schema of `dialect` (`"postgres"` or `"sqlite"`) as plain SQL, for
/// applying migrations with your own tool (Flyway, Liquibase).
#[uniffi::export]
pub fn schema_sql(
    dialect: String,
    table_prefix: String,
    partitions: i32,
) -> Result<String, RelayboxError> {
    bridge::guard(|| {
        let dialect: relaybox::Dialect = dialect.parse()?;
        let partitions = u32::try_from(partitions).map_err(|_| relaybox::Error::InvalidConfig {
            field: "partitions".into(),
            reason: "must be between 1 and 4096".into(),
        })?;
        relaybox::schema::schema_sql(dialect, &table_prefix, partitions)
    })
}

/// Panics inside the core runtime, for tests that check a panic reaches the
/// JVM as `RelayboxException.Internal`; `suspend` variant below. A test
/// hook: in the library only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[uniffi::export]
pub fn panic_for_tests_blocking(message: String) -> Result<(), RelayboxError> {
    bridge::blocking(async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    })
}

/// `panicForTestsBlocking`, suspending (a test hook, as that one).
#[cfg(feature = "test-hooks")]
#[uniffi::export]
pub async fn panic_for_tests(message: String) -> Result<(), RelayboxError> {
    bridge::run(async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    })
    .await
}
