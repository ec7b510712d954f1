//! [`MessageDbSink`]: writes each message with Message DB's `write_message`.

use std::collections::HashSet;

use sqlx::postgres::PgPool;

use super::config::MessageDbConfig;
use super::mapping::{outgoing, Outgoing};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::redact::DatabaseUrl;
use crate::sink::Sink;
use crate::store::Store;

const NAME: &str = "message_db";

/// A [`Sink`] writing to Message DB in PostgreSQL.
///
/// Each message becomes `write_message(id, '<topic>-<key>', type, data,
/// metadata, expected_version)` (keyless messages get their id as stream
/// id), committed on its own: `Ok` means Message DB stored it. A message
/// whose id is already stored counts as delivered (a redelivery). A payload
/// that is not JSON, a topic with `-`, or a wrong expected version is a
/// permanent error; a lost connection is retryable and the pool reconnects.
pub struct MessageDbSink {
    config: MessageDbConfig,
    url: DatabaseUrl,
    pool: PgPool,
}

impl std::fmt::Debug for MessageDbSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDbSink")
            .field("url", &self.url)
            .field("config", &self.config)
            .finish()
    }
}

impl MessageDbSink {
    /// Writes to `config.url`, or to `store`'s database when it has none.
    /// Connects lazily, on the first publish. Call inside a tokio runtime.
    pub fn new(config: MessageDbConfig, store: &Store) -> Result<Self> {
        config.validate()?;
        let url = config.url_for(store)?;
        let pool = config.pool(&url)?;
        Ok(MessageDbSink { config, url, pool })
    }

    async fn write(&self, conn: &mut sqlx::PgConnection, m: &Message, out: Outgoing) -> Result<()> {
        let result =
            sqlx::query("SELECT message_store.write_message($1, $2, $3, $4::jsonb, $5::jsonb, $6)")
                .bind(m.id.to_string())
                .bind(&out.stream_name)
                .bind(&out.message_type)
                .bind(sqlx::types::Json(&out.data))
                .bind(sqlx::types::Json(&out.metadata))
                .bind(out.expected_version)
                .execute(&mut *conn)
                .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("23505")
                    && db.constraint() == Some("messages_id") =>
            {
                // Written before: the relay is delivering it again.
                Ok(())
            }
            Err(sqlx::Error::Database(db))
                if db.message().starts_with("Wrong expected version") =>
            {
                Err(Error::Transport {
                    transport: NAME.into(),
                    message: format!("stream version conflict: {}", db.message()),
                    retryable: false,
                    message_id: Some(m.id),
                })
            }
            Err(e) => Err(transport_error(e.into(), Some(m.id))),
        }
    }
}

/// Any relaybox error as a Message DB transport error, keeping its retryable flag.
pub(crate) fn transport_error(e: Error, message_id: Option<uuid::Uuid>) -> Error {
    match e {
        Error::Transport { .. } => e,
        other => Error::Transport {
            transport: NAME.into(),
            retryable: other.retryable(),
            message: other.to_string(),
            message_id,
        },
    }
}

#[async_trait::async_trait]
impl Sink for MessageDbSink {
    fn name(&self) -> &str {
        NAME
    }

    /// `SELECT 1` on Message DB's pool.
    async fn check(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| transport_error(e.into(), None))
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                // No connection to Message DB (down, starting, refusing
                // connections): worth trying again, whatever the cause.
                let e = match transport_error(e.into(), None) {
                    Error::Transport {
                        transport, message, ..
                    } => Error::Transport {
                        transport,
                        message,
                        retryable: true,
                        message_id: None,
                    },
                    other => other,
                };
                return batch
                    .iter()
                    .map(|m| Err(transport_error_for(&e, m)))
                    .collect();
            }
        };
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for m in batch {
            if let Some(k) = m.key.as_deref().filter(|k| failed_keys.contains(k)) {
                results.push(Err(Error::Transport {
                    transport: NAME.into(),
                    message: format!("held behind an earlier failed message of key {k:?}"),
                    retryable: true,
                    message_id: Some(m.id),
                }));
                continue;
            }
            let result = match outgoing(NAME, m, &self.config.expected_version_header) {
                Ok(out) => self.write(&mut conn, m, out).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                if let Some(k) = m.key.as_deref() {
                    failed_keys.insert(k);
                }
            }
            results.push(result);
        }
        results
    }
}

/// `e` (about no message in particular) reported for message `m`.
fn transport_error_for(e: &Error, m: &Message) -> Error {
    Error::Transport {
        transport: NAME.into(),
        message: match e {
            Error::Transport { message, .. } => message.clone(),
            other => other.to_string(),
        },
        retryable: e.retryable(),
        message_id: Some(m.id),
    }
}
