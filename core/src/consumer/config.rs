//! The consumer's settings ([`ConsumerConfig`]) and counters
//! ([`ConsumerStats`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Consumer settings. Every field but `group` has a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group: the inbox deduplicates per group.
    pub group: String,
    /// Deliveries fetched at a time (default 100). The next batch is fetched
    /// while lanes work, so up to twice this many are in flight.
    pub batch_size: u32,
    /// Lanes processed concurrently; each lane is in order (default 8).
    pub concurrency: u32,
    /// Retries after the first failure before dead-lettering (default 3).
    pub max_retries: u32,
    /// First retry delay (default 200 ms), doubling, with jitter.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub retry_delay: Duration,
    /// Longest retry delay (default 30 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub retry_delay_max: Duration,
    /// Longest wait for new deliveries before checking for shutdown (default 1 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// How long inbox rows are kept, i.e. the deduplication window (default 7 days).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub inbox_retention: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            batch_size: 100,
            concurrency: 8,
            max_retries: 3,
            retry_delay: Duration::from_millis(200),
            retry_delay_max: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            inbox_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

impl ConsumerConfig {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            ..ConsumerConfig::default()
        }
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.group.is_empty() || self.group.len() > 200 {
            return Err(Error::config("group", "must be 1 to 200 characters"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10000"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(Error::config("concurrency", "must be between 1 and 1024"));
        }
        if self.retry_delay.is_zero() || self.retry_delay > self.retry_delay_max {
            return Err(Error::config(
                "retry_delay",
                "must be positive and at most retry_delay_max",
            ));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config("poll_interval", "must be at least 1 ms"));
        }
        if self.inbox_retention < Duration::from_secs(1) {
            return Err(Error::config("inbox_retention", "must be at least 1 s"));
        }
        Ok(())
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: ConsumerConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("consumer config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

/// Counters of a running consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages whose handler succeeded and committed.
    pub processed: u64,
    /// Deliveries skipped because the inbox had them.
    pub duplicates: u64,
    /// Handler failures that were retried.
    pub retried: u64,
    /// Messages moved to dead letters.
    pub dead_lettered: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) processed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(
            ConsumerConfig::default().validate().is_err(),
            "a group is required"
        );
        assert!(ConsumerConfig::new("g").validate().is_ok());
        let c = ConsumerConfig::from_json(
            serde_json::json!({"group": "g", "max_retries": 5, "retry_delay": "1s"}),
        )
        .unwrap();
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.retry_delay, Duration::from_secs(1));
        assert!(
            ConsumerConfig::from_json(serde_json::json!({"group": "g", "batch_size": 0})).is_err()
        );
    }
}
