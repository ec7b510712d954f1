//! The database transport, the embedded default: the relay appends messages
//! to the store's log table, and consumers read a topic by position, Message
//! DB style, with consumer groups and positions kept in `relaybox_positions`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::partition;
use crate::sink::Sink;
use crate::source::{AckToken, Delivery, Source};
use crate::store::Store;
use crate::validate::check_topic;

/// A [`Sink`] that appends every batch, in order and atomically, to the log
/// table of `store` (usually the outbox's own store).
#[derive(Clone, Debug)]
pub struct DatabaseSink {
    store: Store,
}

impl DatabaseSink {
    /// Appends to the log table of `store`.
    pub fn new(store: Store) -> Self {
        DatabaseSink { store }
    }
}

#[async_trait::async_trait]
impl Sink for DatabaseSink {
    fn name(&self) -> &str {
        "database"
    }

    fn log_store(&self) -> Option<&Store> {
        Some(&self.store)
    }

    /// `SELECT 1` on the store's pool.
    async fn check(&self) -> Result<()> {
        crate::health::ping(&self.store).await
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        match self.store.append_log(batch).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                let retryable = e.retryable();
                let message = e.to_string();
                batch
                    .iter()
                    .map(|m| {
                        Err(Error::Transport {
                            transport: "database".into(),
                            message: message.clone(),
                            retryable,
                            message_id: Some(m.id),
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Where a new consumer group starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The first entry of the topic (default).
    #[default]
    Beginning,
    /// Only entries appended after the group first starts.
    End,
}

/// Settings of a [`DatabaseSource`].
#[derive(Clone, Debug)]
pub struct DatabaseSourceConfig {
    /// Topic (category) to read.
    pub topic: String,
    /// Consumer group name; members of a group share the topic.
    pub group: String,
    /// This member's number, `0..size`.
    pub member: u32,
    /// Number of members in the group (1 = no split).
    pub size: u32,
    /// Where a group without a stored position starts.
    pub start_from: StartFrom,
}

impl DatabaseSourceConfig {
    /// A single-member group reading `topic` from the beginning.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        DatabaseSourceConfig {
            topic: topic.into(),
            group: group.into(),
            member: 0,
            size: 1,
            start_from: StartFrom::Beginning,
        }
    }

    /// Makes this source member `member` of a group of `size`.
    pub fn member(mut self, member: u32, size: u32) -> Self {
        self.member = member;
        self.size = size;
        self
    }

    fn validate(&self) -> Result<()> {
        check_topic(&self.topic)?;
        if self.group.is_empty() || self.group.len() > 200 {
            return Err(Error::config("group", "must be 1 to 200 characters"));
        }
        if self.size == 0 || self.member >= self.size {
            return Err(Error::config(
                "group_member",
                format!(
                    "member {} is not within a group of size {}",
                    self.member, self.size
                ),
            ));
        }
        Ok(())
    }

    /// The key under which this member's position is stored.
    pub fn position_source(&self) -> String {
        format!("log:{}:{}/{}", self.topic, self.member, self.size)
    }
}

/// A [`Source`] reading one topic of the log table by position.
///
/// Each member of a group reads every entry and keeps those whose key hashes
/// to it (CRC-32 of the key mod `size`; keyless entries by id), so members
/// split a topic with no overlap and no gap, each in log order. Its position
/// is stored when the consumer acknowledges, and survives restarts.
pub struct DatabaseSource {
    store: Store,
    config: DatabaseSourceConfig,
    position_source: String,
    /// Where reading goes on (None until the stored position is read).
    cursor: Mutex<Option<i64>>,
    wake: Mutex<tokio::sync::watch::Receiver<u64>>,
    progress: std::sync::Mutex<Progress>,
    /// The position last stored by this source; writes take turns and only go forward.
    stored: Mutex<Option<i64>>,
}

/// What was handed out and acknowledged, to store positions that never pass
/// an unprocessed delivery.
#[derive(Default)]
struct Progress {
    /// Ack offset of the last delivery handed out.
    handed_out: i64,
    /// Highest offset acknowledged.
    acked: i64,
    /// End of a scan after `handed_out` that found only other members' entries.
    skipped_to: i64,
}

impl Progress {
    /// The position to store: past the skipped entries once everything
    /// handed out is acknowledged.
    fn storable(&self) -> i64 {
        if self.acked >= self.handed_out {
            self.acked.max(self.skipped_to)
        } else {
            self.acked
        }
    }
}

impl std::fmt::Debug for DatabaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSource")
            .field("config", &self.config)
            .finish()
    }
}

impl DatabaseSource {
    /// Reads `config.topic` from the log table of `store`. Call inside a tokio runtime.
    pub fn new(store: Store, config: DatabaseSourceConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let wake = Mutex::new(store.subscribe_log());
        Ok(Arc::new(DatabaseSource {
            position_source: config.position_source(),
            store,
            config,
            cursor: Mutex::new(None),
            wake,
            progress: std::sync::Mutex::new(Progress::default()),
            stored: Mutex::new(None),
        }))
    }

    /// The position stored for this member (None before its first acknowledgement).
    pub async fn stored_position(&self) -> Result<Option<i64>> {
        self.store
            .position(&self.config.group, &self.position_source)
            .await
    }

    async fn start_position(&self) -> Result<i64> {
        if let Some(p) = self.stored_position().await? {
            *self.stored.lock().await = Some(p);
            return Ok(p);
        }
        Ok(match self.config.start_from {
            StartFrom::Beginning => 0,
            StartFrom::End => {
                let mut last = 0;
                loop {
                    let page = self
                        .store
                        .read_log(&self.config.topic, last, 10_000)
                        .await?;
                    match page.last() {
                        Some(e) => last = e.position,
                        None => break last,
                    }
                }
            }
        })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the position `progress` allows, unless a later one is stored.
    async fn store_progress(&self) -> Result<()> {
        let mut stored = self.stored.lock().await;
        let position = self.progress().storable();
        if stored.is_none_or(|s| position > s) {
            self.store
                .set_position(&self.config.group, &self.position_source, position)
                .await?;
            *stored = Some(position);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for DatabaseSource {
    fn name(&self) -> &str {
        "database"
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut cursor = self.cursor.lock().await;
        let mut after = match *cursor {
            Some(p) => p,
            None => {
                let start = self.start_position().await?;
                let mut progress = self.progress();
                progress.handed_out = start;
                progress.acked = start;
                start
            }
        };
        let mut wake = self.wake.lock().await;
        loop {
            wake.borrow_and_update();
            let entries = self
                .store
                .read_log(&self.config.topic, after, max.max(1) as u32)
                .await?;
            let scanned_to = entries.last().map(|e| e.position);
            let mut out: Vec<Delivery> = entries
                .into_iter()
                .filter(|e| {
                    partition::member_owns(
                        e.message.key.as_deref(),
                        &e.message.id,
                        self.config.member,
                        self.config.size,
                    )
                })
                .map(|e| Delivery {
                    lane: u64::from(partition::routing_hash(
                        e.message.key.as_deref(),
                        &e.message.id,
                    )),
                    ack: AckToken {
                        partition: 0,
                        offset: e.position,
                    },
                    message: e.message,
                })
                .collect();
            if let Some(to) = scanned_to {
                after = to;
                *cursor = Some(to);
                match out.last_mut() {
                    // Acknowledging the last delivery also passes the other members' entries scanned after it.
                    Some(last) => {
                        last.ack.offset = to;
                        self.progress().handed_out = to;
                        return Ok(out);
                    }
                    // Only other members' entries: pass them once everything handed out is processed.
                    None => {
                        self.progress().skipped_to = to;
                        self.store_progress().await?;
                        continue;
                    }
                }
            }
            *cursor = Some(after);
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        if let Some(max) = acks.iter().map(|a| a.offset).max() {
            {
                let mut progress = self.progress();
                progress.acked = progress.acked.max(max);
            }
            self.store_progress().await?;
        }
        Ok(())
    }
}
