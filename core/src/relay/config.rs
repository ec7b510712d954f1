//! Relay settings: [`RelayConfig`], its defaults, validation and reading
//! from JSON.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Relay settings. Every field has a default; [`validate`](RelayConfig::validate) rejects nonsense.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The largest batch, in rows (default 5000). Each batch loop starts
    /// with batches of 100 rows (or this, when smaller), doubles them while
    /// claims come back full and batches are acknowledged within a second
    /// (or half the publish timeout, when shorter), and halves them when a
    /// claim comes back less than half full or a batch is slower: small
    /// batches while rows trickle in, large ones while a backlog drains.
    pub batch_size: u32,
    /// Fallback poll when no wake-up arrives (default 1 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// How long a partition lease lasts without renewal (default 15 s); leases
    /// are renewed every third of it. On SQLite a dead relay's partitions are
    /// taken over once its leases expire, after at most this long; on
    /// PostgreSQL as soon as its session with the database is gone.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub lease_ttl: Duration,
    /// Attempts before a message moves to dead letters (default 10). A
    /// message the transport refuses for good (a transport error that is not
    /// retryable and names it) is dead-lettered at its first attempt.
    pub max_attempts: u32,
    /// First retry delay (default 500 ms); doubles per attempt, with jitter.
    /// Rows that failed while the transport was down are retried at once
    /// (once) when it delivers again.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub backoff_initial: Duration,
    /// Longest retry delay (default 5 min).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub backoff_max: Duration,
    /// Longest wait for the sink's acknowledgements of a batch; must be shorter
    /// than `lease_ttl` (default: 10 s or half the lease, whichever is shorter).
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub publish_timeout: Option<Duration>,
    /// Keep delivered rows (with `sent_at`) this long instead of deleting them.
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub retention: Option<Duration>,
    /// Delete rows of the database transport's log appended longer ago than
    /// this (default: kept for ever); see `log_keep_unread`.
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub log_retention: Option<Duration>,
    /// With `log_retention`, keep the rows that a consumer group member that
    /// has read the topic has not passed yet, and the rows of topics no group
    /// has read (default true).
    pub log_keep_unread: bool,
    /// Delete dead letters that failed longer ago than this (default: kept
    /// for ever).
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub dead_letter_retention: Option<Duration>,
    /// How long producers' idempotency keys are kept after their message
    /// has left the outbox (default 24 h, measured to within a minute); an
    /// enqueue with the same key after that writes a new message.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub idempotency_window: Duration,
    /// Instance id shown in leases and `relaybox status` (default: host-pid-random).
    pub instance_id: Option<String>,
    /// Batch loops run at once, each over its share of the held partitions
    /// (partition mod `concurrency`), so that one loop's database work
    /// overlaps another's wait for the broker (default 2).
    pub concurrency: u32,
    /// Batches each batch loop may have handed to the sink and still be
    /// waiting for the acknowledgements of (default 2): the next batch is
    /// claimed and handed over while earlier ones are acknowledged, as long
    /// as the batches in flight hold fewer than 256 rows together (a claim
    /// behind them steps over every row they keep locked, so a backlog goes
    /// one batch at a time). Takes effect with sinks that
    /// hand over before acknowledging (Kafka) and on PostgreSQL; each batch
    /// in flight holds a pooled connection.
    pub batches_in_flight: u32,
    /// How often the relay samples the backlog per topic for its metrics
    /// (`relaybox_backlog_messages` and the like, docs/metrics.md): one
    /// `relaybox status` query (default 5 s; 0 turns sampling off).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub metrics_interval: Duration,
    /// Park a key after the relay dead-letters one of its messages (default
    /// true): the relay claims none of the key's later messages (same
    /// partition and key) until that dead letter is retried, which puts it
    /// back ahead of them, or purged, so order per key holds. Other keys,
    /// and messages without a key, flow. `false`: the key's later messages
    /// go on without it. Dead letters of consumers never park a key.
    pub park_keys: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 5_000,
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            max_attempts: 10,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            publish_timeout: None,
            retention: None,
            log_retention: None,
            log_keep_unread: true,
            dead_letter_retention: None,
            idempotency_window: Duration::from_secs(86_400),
            instance_id: None,
            concurrency: 2,
            batches_in_flight: 2,
            metrics_interval: Duration::from_secs(5),
            park_keys: true,
        }
    }
}

impl RelayConfig {
    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10000"));
        }
        if self.idempotency_window < Duration::from_secs(1) {
            return Err(Error::config("idempotency_window", "must be at least 1 s"));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config("poll_interval", "must be at least 1 ms"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(Error::config("lease_ttl", "must be at least 100 ms"));
        }
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(Error::config(
                "backoff_initial",
                "must be positive and at most backoff_max",
            ));
        }
        let timeout = self.effective_publish_timeout();
        if timeout.is_zero() || timeout >= self.lease_ttl {
            return Err(Error::config(
                "publish_timeout",
                "must be positive and shorter than lease_ttl",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::config("concurrency", "must be between 1 and 64"));
        }
        if !(1..=16).contains(&self.batches_in_flight) {
            return Err(Error::config(
                "batches_in_flight",
                "must be between 1 and 16",
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty() || id.len() > 200 {
                return Err(Error::config("instance_id", "must be 1 to 200 characters"));
            }
        }
        Ok(())
    }

    /// The publish timeout in force: the configured one, or the default.
    pub fn effective_publish_timeout(&self) -> Duration {
        self.publish_timeout
            .unwrap_or_else(|| Duration::from_secs(10).min(self.lease_ttl / 2))
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: RelayConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("relay config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_nonsense() {
        let bad = |f: fn(&mut RelayConfig)| {
            let mut c = RelayConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(
            matches!(bad(|c| c.batch_size = 0), Error::InvalidConfig { field, .. } if field == "batch_size")
        );
        assert!(
            matches!(bad(|c| c.max_attempts = 0), Error::InvalidConfig { field, .. } if field == "max_attempts")
        );
        assert!(
            matches!(bad(|c| c.publish_timeout = Some(c.lease_ttl)), Error::InvalidConfig { field, .. } if field == "publish_timeout")
        );
        assert!(RelayConfig::default().validate().is_ok());
    }

    #[test]
    fn config_from_json() {
        let c = RelayConfig::from_json(
            serde_json::json!({"batch_size": 10, "poll_interval": "250ms", "lease_ttl": 5000}),
        )
        .unwrap();
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert!(RelayConfig::from_json(serde_json::json!({"batch_sise": 10})).is_err());
        assert!(RelayConfig::from_json(serde_json::json!({"batch_size": 0})).is_err());
    }
}
