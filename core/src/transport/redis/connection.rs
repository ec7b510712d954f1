//! A lazily opened, self-reconnecting Redis connection
//! (`redis::aio::ConnectionManager`) with relaybox's timeouts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::config::RedisConfig;
use super::redis_error;
use crate::error::Result;

/// One multiplexed connection, opened on first use. A connection dropped by
/// the server (a restart, say) fails the commands in flight with a retryable
/// error and is opened again in the background.
pub(crate) struct Connection {
    client: redis::Client,
    settings: ConnectionManagerConfig,
    secret: Option<String>,
    manager: OnceCell<ConnectionManager>,
}

impl Connection {
    /// A connection whose commands time out after `response_timeout`.
    pub(crate) fn new(config: &RedisConfig, response_timeout: Duration) -> Result<Self> {
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        Ok(Connection {
            client: config.client()?,
            settings,
            secret: config.password(),
            manager: OnceCell::new(),
        })
    }

    /// The URL's password, to keep out of error texts.
    pub(crate) fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// The connection, opening it if needed; a server that cannot be reached
    /// is a retryable error and the next call tries again.
    pub(crate) async fn get(&self) -> Result<ConnectionManager> {
        self.manager
            .get_or_try_init(|| async {
                ConnectionManager::new_with_config(self.client.clone(), self.settings.clone())
                    .await
                    .map_err(|e| redis_error(&e, self.secret(), None))
            })
            .await
            .cloned()
    }

    /// Runs `cmd` and converts its reply. A connection found dropped (the
    /// server restarted while it was idle) is opened again and the command
    /// sent once more; the source's commands tolerate that (acknowledging
    /// twice is harmless, and an entry read twice is deduplicated).
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.get().await?;
        match cmd.query_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                tracing::debug!(error = %redis_error(&e, self.secret(), None), "relaybox Redis connection dropped; sending again");
                cmd.query_async(&mut conn).await
            }
            other => other,
        }
        .map_err(|e| redis_error(&e, self.secret(), None))
    }
}
