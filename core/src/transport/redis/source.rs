//! [`RedisSource`]: a consumer-group member whose entries are acknowledged
//! (`XACK`) only after the handler's transaction committed, that takes over
//! entries of dead consumers (`XAUTOCLAIM`) and dead-letters to a stream.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::codec::{
    fields_of, message_from_entry, parse_autoclaim_reply, parse_read_reply, Entry, FIELD_ERROR,
    FIELD_ORIGINAL_ID, FIELD_ORIGINAL_STREAM,
};
use super::config::RedisConfig;
use super::connection::Connection;
use crate::error::{Error, Result};
use crate::source::{AckToken, Delivery, Source};
use crate::validate::check_topic;

/// Settings of a [`RedisSource`].
#[derive(Clone, Debug)]
pub struct RedisSourceConfig {
    /// Connection and stream settings.
    pub redis: RedisConfig,
    /// Topic to consume (its stream is `redis.stream` with the topic filled in).
    pub topic: String,
    /// Consumer group name.
    pub group: String,
}

impl RedisSourceConfig {
    /// Consumes `topic` as group `group`.
    pub fn new(redis: RedisConfig, topic: impl Into<String>, group: impl Into<String>) -> Self {
        RedisSourceConfig {
            redis,
            topic: topic.into(),
            group: group.into(),
        }
    }
}

/// A [`Source`] reading one stream as a member of a consumer group.
///
/// The group is created on first use (`XGROUP CREATE ... MKSTREAM` at
/// `start_id`), and again if the server lost it. A new source first reads
/// what is still pending under its own consumer name (entries a previous
/// process of the same name read but never acknowledged), then new entries
/// with `XREADGROUP ... BLOCK`; every `claim_interval` it takes over entries
/// that stayed pending longer than `claim_idle` with any consumer of the
/// group (`XAUTOCLAIM`). Deliveries are laned by key. Each delivery's
/// [`AckToken`] is partition 0 and a sequence number assigned here;
/// acknowledging it `XACK`s every entry handed out up to it. A message that
/// exhausts its retries is appended to the dead-letter stream with the
/// error, then acknowledged.
pub struct RedisSource {
    config: RedisSourceConfig,
    stream: String,
    dead_letter_stream: String,
    consumer: String,
    /// Blocking reads: one connection of their own, so that acks never wait
    /// behind a `BLOCK`.
    reader: Connection,
    writer: Connection,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    group_ready: bool,
    /// Cursor through this consumer's own pending entries, `None` once read.
    own_pending: Option<String>,
    claim_cursor: String,
    last_claim: Option<Instant>,
    next_seq: i64,
    /// Entries handed out and not acknowledged yet, by sequence number.
    in_flight: BTreeMap<i64, String>,
    in_flight_ids: HashSet<String>,
    /// Acknowledgements that failed, sent again with the next ones.
    ack_retry: Vec<String>,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("config", &self.config)
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl RedisSource {
    /// Prepares the group member; the connection opens on the first fetch.
    /// Call inside a tokio runtime.
    pub fn new(config: RedisSourceConfig) -> Result<Arc<Self>> {
        config.redis.validate()?;
        check_topic(&config.topic)?;
        if config.group.trim().is_empty() {
            return Err(Error::config("group", "must not be empty"));
        }
        let r = &config.redis;
        let reader = Connection::new(r, r.block + r.command_timeout)?;
        let writer = Connection::new(r, r.command_timeout)?;
        let consumer = r.consumer.clone().unwrap_or_else(default_consumer_name);
        Ok(Arc::new(RedisSource {
            stream: r.stream_for(&config.topic),
            dead_letter_stream: r.dead_letter_stream_for(&config.topic),
            consumer,
            reader,
            writer,
            state: Mutex::new(State {
                own_pending: Some("0".into()),
                claim_cursor: "0-0".into(),
                ..State::default()
            }),
            config,
        }))
    }

    /// The settings this source was created with.
    pub fn config(&self) -> &RedisSourceConfig {
        &self.config
    }

    /// The stream this source reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// This member's consumer name within the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("redis source state")
    }

    async fn ensure_group(&self) -> Result<()> {
        if self.state().group_ready {
            return Ok(());
        }
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(&self.config.group)
            .arg(&self.config.redis.start_id)
            .arg("MKSTREAM");
        match self.writer.query::<Value>(&cmd).await {
            Ok(_) => {
                tracing::info!(stream = %self.stream, group = %self.config.group, "relaybox created Redis consumer group")
            }
            Err(Error::Transport { message, .. }) if message.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.state().group_ready = true;
        Ok(())
    }

    /// Runs a group command; a group the server lost (a restart without
    /// persistence) is created again on the next call.
    async fn group_query(&self, conn: &Connection, cmd: &redis::Cmd) -> Result<Value> {
        self.ensure_group().await?;
        match conn.query::<Value>(cmd).await {
            Err(Error::Transport { message, .. }) if message.contains("NOGROUP") => {
                self.state().group_ready = false;
                Err(Error::Transport {
                    transport: "redis".into(),
                    message: format!(
                        "consumer group {:?} of stream {:?} is gone; creating it again",
                        self.config.group, self.stream
                    ),
                    retryable: true,
                    message_id: None,
                })
            }
            other => other,
        }
    }

    fn read_cmd(&self, max: usize, block: Option<Duration>, from: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        cmd
    }

    /// Entries of this consumer still pending from an earlier run, if any are left.
    async fn read_own_pending(&self, max: usize) -> Result<Option<Vec<Entry>>> {
        let Some(cursor) = self.state().own_pending.clone() else {
            return Ok(None);
        };
        let reply = self
            .group_query(&self.reader, &self.read_cmd(max, None, &cursor))
            .await?;
        let entries = parse_read_reply(&reply);
        self.state().own_pending = entries.last().map(|e| e.id.clone());
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.drop_trimmed(entries).await?))
    }

    /// Takes over entries idle longer than `claim_idle`, when a look is due.
    async fn claim(&self, max: usize) -> Result<Vec<Entry>> {
        let cursor = {
            let mut state = self.state();
            let due = state
                .last_claim
                .is_none_or(|t| t.elapsed() >= self.config.redis.claim_interval);
            if !due {
                return Ok(Vec::new());
            }
            state.last_claim = Some(Instant::now());
            state.claim_cursor.clone()
        };
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(self.config.redis.claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(max.max(1));
        let reply = self.group_query(&self.writer, &cmd).await?;
        let (next, entries, deleted) = parse_autoclaim_reply(&reply);
        self.xack(deleted).await?;
        let mut state = self.state();
        // Look again soon while the scan is not through the whole list.
        if next != "0-0" {
            state.last_claim = None;
        }
        state.claim_cursor = next;
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !state.in_flight_ids.contains(&e.id))
            .collect();
        if !entries.is_empty() {
            tracing::info!(stream = %self.stream, count = entries.len(), consumer = %self.consumer, "relaybox took over pending Redis entries");
        }
        Ok(entries)
    }

    /// Acknowledges pending entries that were trimmed from the stream and
    /// returns the others.
    async fn drop_trimmed(&self, entries: Vec<Entry>) -> Result<Vec<Entry>> {
        let (kept, trimmed): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.fields.is_some());
        if !trimmed.is_empty() {
            tracing::warn!(stream = %self.stream, count = trimmed.len(), "relaybox found pending Redis entries already trimmed from the stream");
            self.xack(trimmed.into_iter().map(|e| e.id).collect())
                .await?;
        }
        Ok(kept)
    }

    async fn xack(&self, ids: Vec<String>) -> Result<()> {
        for chunk in ids.chunks(1000) {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.stream).arg(&self.config.group).arg(chunk);
            self.writer.query::<Value>(&cmd).await?;
        }
        Ok(())
    }

    fn deliveries(&self, entries: Vec<Entry>) -> Vec<Delivery> {
        let mut state = self.state();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if state.in_flight_ids.contains(&e.id) {
                continue;
            }
            let message = message_from_entry(
                &self.stream,
                &self.config.topic,
                &e.id,
                e.fields.as_deref().unwrap_or_default(),
            );
            state.next_seq += 1;
            let seq = state.next_seq;
            state.in_flight.insert(seq, e.id.clone());
            state.in_flight_ids.insert(e.id);
            out.push(Delivery {
                lane: u64::from(crate::partition::routing_hash(
                    message.key.as_deref(),
                    &message.id,
                )),
                message,
                ack: AckToken {
                    partition: 0,
                    offset: seq,
                },
            });
        }
        out
    }
}

#[async_trait::async_trait]
impl Source for RedisSource {
    fn name(&self) -> &str {
        "redis"
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if let Some(entries) = self.read_own_pending(max).await? {
            return Ok(self.deliveries(entries));
        }
        let claimed = self.claim(max).await?;
        if !claimed.is_empty() {
            return Ok(self.deliveries(claimed));
        }
        let block = wait.min(self.config.redis.block);
        let block = (!block.is_zero()).then_some(block);
        let reply = self
            .group_query(&self.reader, &self.read_cmd(max, block, ">"))
            .await?;
        let entries = parse_read_reply(&reply);
        let entries = self.drop_trimmed(entries).await?;
        Ok(self.deliveries(entries))
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        let Some(upto) = acks.iter().map(|a| a.offset).max() else {
            return Ok(());
        };
        let ids = {
            let mut state = self.state();
            let rest = state.in_flight.split_off(&(upto + 1));
            let done = std::mem::replace(&mut state.in_flight, rest);
            let mut ids = std::mem::take(&mut state.ack_retry);
            for id in done.into_values() {
                state.in_flight_ids.remove(&id);
                ids.push(id);
            }
            ids
        };
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.xack(ids.clone()).await {
            self.state().ack_retry.extend(ids);
            return Err(e);
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<bool> {
        let m = &delivery.message;
        let original = self.state().in_flight.get(&delivery.ack.offset).cloned();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.dead_letter_stream);
        if let Some(n) = self.config.redis.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (name, value) in fields_of(m) {
            cmd.arg(name).arg(value);
        }
        cmd.arg(FIELD_ERROR)
            .arg(error)
            .arg(FIELD_ORIGINAL_STREAM)
            .arg(&self.stream)
            .arg(FIELD_ORIGINAL_ID)
            .arg(original.as_deref().unwrap_or(""));
        self.writer
            .query::<String>(&cmd)
            .await
            .map_err(|e| match e {
                Error::Transport {
                    transport,
                    message,
                    retryable,
                    ..
                } => Error::Transport {
                    transport,
                    message,
                    retryable,
                    message_id: Some(m.id),
                },
                other => other,
            })?;
        if let Some(id) = original {
            self.xack(vec![id]).await?;
        }
        Ok(true)
    }

    /// Sends acknowledgements still owed, then leaves the group when this
    /// consumer has nothing pending (a consumer with pending entries stays,
    /// so that they are delivered again).
    async fn close(&self) -> Result<()> {
        let retry = std::mem::take(&mut self.state().ack_retry);
        self.xack(retry).await?;
        if !self.state().group_ready {
            return Ok(());
        }
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.stream)
            .arg(&self.config.group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer);
        let pending: Vec<Value> = self.writer.query(&cmd).await?;
        if pending.is_empty() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DELCONSUMER")
                .arg(&self.stream)
                .arg(&self.config.group)
                .arg(&self.consumer);
            self.writer.query::<Value>(&cmd).await?;
        }
        Ok(())
    }
}

/// `relaybox-<host>-<pid>-<random>`: unique per process.
fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "relaybox-{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
