//! The operations that run alike on either dialect: each picks the dialect
//! module of the store's pool and passes its arguments on (status, dead
//! letters, purges, consumer positions, the database transport's log).

use std::time::Duration;

use super::{
    postgres, sqlite, ConsumerPosition, DeadLetter, DeadLetterFilter, DeadLetterQuery, LogEntry,
    Pool, Status, Store,
};
use crate::error::Result;
use crate::message::Message;

impl Store {
    /// Per-topic backlog, dead letters and lease owners.
    pub async fn status(&self) -> Result<Status> {
        let partitions = self.partitions().await?;
        let mut status = on_dialect!(self, status())?;
        status.partitions = partitions;
        Ok(status)
    }

    /// Lists up to `limit` dead letters, oldest failure first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        on_dialect!(self, dead_letters(limit))
    }

    /// Lists up to `limit` dead letters that match `query`, most recent
    /// failure first.
    pub async fn search_dead_letters(
        &self,
        query: &DeadLetterQuery,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        on_dialect!(self, search_dead_letters(query, limit))
    }

    /// How many rows were ever inserted into the outbox: the high-water mark
    /// of its `seq` column, which deleting rows does not lower (0 before the
    /// first insert; on PostgreSQL, inserts rolled back count too, as they
    /// use up sequence values). Two readings a moment apart give the
    /// enqueue rate.
    pub async fn outbox_high_water(&self) -> Result<i64> {
        on_dialect!(self, outbox_high_water())
    }

    /// The stored positions of every consumer group, by group and source,
    /// with the lag of those on the database transport's log.
    pub async fn consumer_positions(&self) -> Result<Vec<ConsumerPosition>> {
        on_dialect!(self, consumer_positions())
    }

    /// Moves dead letters back into the outbox (same id, attempts reset) so the
    /// relay delivers them again. Returns how many messages went back.
    pub async fn retry_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let n = on_dialect!(self, retry_dead_letters(filter))?;
        self.inner.wake.outbox_changed();
        Ok(n)
    }

    /// Deletes dead letters for good. Returns how many were deleted.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        on_dialect!(self, purge_dead_letters(filter))
    }

    /// Deletes inbox rows processed longer ago than `older_than`.
    pub async fn purge_inbox(&self, older_than: Duration) -> Result<u64> {
        on_dialect!(self, purge_inbox(older_than))
    }

    /// Marks the producers' idempotency keys whose message has left the
    /// outbox (delivered or dead-lettered) as released, then deletes those
    /// released longer ago than `older_than`; a key whose message still
    /// waits is kept. Returns how many were deleted. Relays run this every
    /// minute with their `idempotency_window`, so a key is kept for that
    /// window after its message's delivery (to within that minute).
    pub async fn purge_idempotency_keys(&self, older_than: Duration) -> Result<u64> {
        on_dialect!(self, purge_idempotency_keys(older_than))
    }

    /// Deletes up to `limit` rows of the database transport's log appended
    /// longer ago than `older_than`, oldest first; with `keep_unread`, only
    /// rows that every consumer group member that has read the topic has
    /// passed (a topic no group has read keeps its rows). Returns how many
    /// were deleted. Relays run this with their `log_retention`.
    pub async fn purge_log(
        &self,
        older_than: Duration,
        keep_unread: bool,
        limit: u32,
    ) -> Result<u64> {
        on_dialect!(self, purge_log(older_than, keep_unread, limit))
    }

    /// Deletes up to `limit` dead letters that failed longer ago than
    /// `older_than`, oldest first. Returns how many were deleted. Relays run
    /// this with their `dead_letter_retention`.
    pub async fn purge_old_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64> {
        on_dialect!(self, purge_old_dead_letters(older_than, limit))
    }

    /// Deletes outbox rows delivered longer ago than `older_than` (kept when a relay has a retention).
    pub async fn purge_sent(&self, older_than: Duration) -> Result<u64> {
        on_dialect!(self, purge_sent(older_than))
    }

    /// The stored position of a consumer group on a source.
    pub async fn position(&self, group: &str, source: &str) -> Result<Option<i64>> {
        on_dialect!(self, position(group, source))
    }

    /// Stores the position of a consumer group on a source (also to rewind it).
    pub async fn set_position(&self, group: &str, source: &str, position: i64) -> Result<()> {
        on_dialect!(self, set_position(group, source, position))
    }

    /// Appends messages to the log table in the given order, as one transaction,
    /// serialised with other appenders so positions grow in commit order.
    pub async fn append_log(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let n = self.partitions().await?;
        on_dialect!(self, append_log(messages, n))?;
        self.inner.wake.log_changed();
        Ok(())
    }

    /// Reads up to `limit` log entries of `topic` after `after`, in position order.
    pub async fn read_log(&self, topic: &str, after: i64, limit: u32) -> Result<Vec<LogEntry>> {
        on_dialect!(self, read_log(topic, after, limit))
    }

    /// Counts undelivered outbox rows.
    pub async fn pending_count(&self) -> Result<i64> {
        on_dialect!(self, pending_count())
    }

    pub(crate) async fn dead_letter_consumed(
        &self,
        group: &str,
        message: &Message,
        attempts: u32,
        error: &str,
    ) -> Result<()> {
        let partition = Store::place(std::slice::from_ref(message), self.partitions().await?)[0];
        let origin = format!("consumer:{group}");
        on_dialect!(
            self,
            insert_dead_letter(message, partition, &origin, attempts, error)
        )
    }
}
