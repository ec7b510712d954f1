//! [`RedisSink`]: appends relay batches to streams with `XADD`, one round
//! trip per batch.

use std::collections::HashSet;

use super::codec::fields_of;
use super::config::RedisConfig;
use super::connection::Connection;
use super::redis_error;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;

/// A [`Sink`] that appends to Redis streams.
///
/// A batch travels as one `MULTI`/`EXEC` transaction of `XADD <stream>
/// MAXLEN ~ N * data .. key .. headers .. id .. type .. content_type ..
/// created_at .. topic ..`, in batch order, so the entries of a key land in
/// batch order. A message counts as delivered when its `XADD` returned an
/// entry id; whether that entry survives a server crash is decided by the
/// server's persistence (`appendonly yes` with `appendfsync always` for
/// every write, `everysec` for up to a second at risk).
pub struct RedisSink {
    config: RedisConfig,
    conn: Connection,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("config", &self.config)
            .finish()
    }
}

impl RedisSink {
    /// Creates the sink. The connection opens on the first publish.
    pub fn new(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let conn = Connection::new(&config, config.command_timeout)?;
        Ok(RedisSink { config, conn })
    }

    /// The settings this sink was created with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, m: &Message) {
        let cmd = pipe.cmd("XADD").arg(self.config.stream_for(&m.topic));
        if let Some(n) = self.config.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (name, value) in fields_of(m) {
            cmd.arg(name).arg(value);
        }
    }
}

#[async_trait::async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        "redis"
    }

    /// `PING` on the sink's connection (opened if needed).
    async fn check(&self) -> Result<()> {
        self.conn
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        for m in batch {
            self.xadd(&mut pipe, m);
        }
        let replies: Vec<redis::RedisResult<String>> = match self.conn.get().await {
            Err(e) => return batch.iter().map(|m| Err(with_id(&e, m))).collect(),
            Ok(mut conn) => match pipe.query_async(&mut conn).await {
                Ok(replies) => replies,
                Err(e) => {
                    let e = redis_error(&e, self.conn.secret(), None);
                    return batch.iter().map(|m| Err(with_id(&e, m))).collect();
                }
            },
        };
        // A message whose key had an earlier failure in this batch is
        // reported failed as well, so that it is sent again after it.
        let mut failed_keys: HashSet<(&str, &str)> = HashSet::new();
        batch
            .iter()
            .zip(
                replies
                    .into_iter()
                    .map(Some)
                    .chain(std::iter::repeat_with(|| None)),
            )
            .map(|(m, reply)| {
                let key = m.key.as_deref().map(|k| (m.topic.as_str(), k));
                let result = match reply {
                    Some(Ok(_)) => match key {
                        Some(k) if failed_keys.contains(&k) => Err(Error::Transport {
                            transport: "redis".into(),
                            message: "an earlier message with the same key failed".into(),
                            retryable: true,
                            message_id: Some(m.id),
                        }),
                        _ => Ok(()),
                    },
                    Some(Err(e)) => Err(redis_error(&e, self.conn.secret(), Some(m.id))),
                    None => Err(Error::Transport {
                        transport: "redis".into(),
                        message: "the server returned fewer replies than commands".into(),
                        retryable: true,
                        message_id: Some(m.id),
                    }),
                };
                if let (Err(_), Some(k)) = (&result, key) {
                    failed_keys.insert(k);
                }
                result
            })
            .collect()
    }
}

fn with_id(e: &Error, m: &Message) -> Error {
    Error::Transport {
        transport: "redis".into(),
        message: match e {
            Error::Transport { message, .. } => message.clone(),
            other => other.to_string(),
        },
        retryable: e.retryable(),
        message_id: Some(m.id),
    }
}
