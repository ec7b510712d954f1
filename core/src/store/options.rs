//! Store settings: [`StoreOptions`], their defaults and validation, and
//! the pool size they give.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::partition::DEFAULT_PARTITIONS;
use crate::schema;

/// Options of a [`Store`]; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Prefix of every table name (default `relaybox_`).
    pub table_prefix: String,
    /// Number of outbox partitions created by the first migration (default 16).
    /// Fixed afterwards: it is read back from the lease table.
    pub partitions: u32,
    /// Largest payload accepted on enqueue, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Largest number of pooled connections (default 10 for PostgreSQL, 4 for SQLite).
    pub max_connections: Option<u32>,
    /// Connections the pool opens after connecting and keeps open when idle
    /// (default 0: they are opened on demand), so that the first burst after
    /// a quiet spell does not wait for new connections. At most
    /// `max_connections`.
    pub min_connections: u32,
    /// How long to wait for a connection (default 10 s).
    #[serde(deserialize_with = "crate::duration::deserialize", skip_serializing)]
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            table_prefix: schema::DEFAULT_PREFIX.to_string(),
            partitions: DEFAULT_PARTITIONS,
            max_payload_bytes: crate::validate::DEFAULT_MAX_PAYLOAD_BYTES,
            max_connections: None,
            min_connections: 0,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl StoreOptions {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        schema::check_prefix(&self.table_prefix)?;
        if !(1..=4096).contains(&self.partitions) {
            return Err(Error::config("partitions", "must be between 1 and 4096"));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 256 * 1024 * 1024 {
            return Err(Error::config(
                "max_payload_bytes",
                "must be between 1 byte and 256 MiB",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be positive"));
        }
        Ok(())
    }

    /// Options from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let options: StoreOptions = serde_json::from_value(value)
            .map_err(|e| Error::config("store options", e.to_string()))?;
        options.validate()?;
        Ok(options)
    }
}

/// The pool size of `options`, `default` when it sets none; a
/// `min_connections` above it is a config error.
pub(super) fn max_connections(options: &StoreOptions, default: u32) -> Result<u32> {
    let max = options.max_connections.unwrap_or(default);
    if options.min_connections > max {
        return Err(Error::config(
            "min_connections",
            format!("must be at most the pool size ({max})"),
        ));
    }
    Ok(max)
}
