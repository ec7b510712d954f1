//! Publishing through a [`TransactionalSink`]: each claimed batch is split
//! by outbox partition, and each partition's messages go out in one broker
//! transaction with the record of what was published for that partition
//! and may still be in the outbox.
//!
//! Per partition the relay keeps that set (`published`): the ids committed
//! to the broker whose rows it has not recorded as sent yet. A message
//! found in it is not published again (its row is recorded as delivered);
//! a message recorded as sent leaves it. On taking a partition over, the
//! relay adopts it: the sink fences earlier holders and returns the last
//! committed record, and the ids of it whose rows are still unsent start
//! the set. After any failure or a lease change the partition is adopted
//! again, so the set is never older than the broker's last record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use uuid::Uuid;

use super::worker::Worker;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::TransactionalSink;
use crate::store::{OutboxRow, Slice};

/// Per outbox partition this relay has adopted: the ids published and not
/// recorded as sent yet. A partition is absent while a publish of it is
/// under way (the publish takes its set out) and after any failure: absent
/// means "adopt it before publishing".
#[derive(Default)]
pub(super) struct Published(Mutex<PublishedState>);

#[derive(Default)]
struct PublishedState {
    partitions: HashMap<u32, HashSet<Uuid>>,
    /// The held partitions adopted (or tried) as soon as they were taken:
    /// each once per lease, the rest is left to their next publish.
    eager: HashSet<u32>,
}

impl Published {
    fn lock(&self) -> std::sync::MutexGuard<'_, PublishedState> {
        // The state stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, partition: u32) -> Option<HashSet<Uuid>> {
        self.lock().partitions.remove(&partition)
    }

    fn put(&self, partition: u32, ids: HashSet<Uuid>) {
        self.lock().partitions.insert(partition, ids);
    }

    /// Removes ids whose rows were recorded as sent.
    pub(super) fn recorded(&self, sent: &[(u32, Uuid)]) {
        let mut state = self.lock();
        for (partition, id) in sent {
            if let Some(ids) = state.partitions.get_mut(partition) {
                ids.remove(id);
            }
        }
    }

    /// Of `held`, the partitions neither adopted nor tried since they were
    /// taken; marks them tried.
    fn to_adopt(&self, held: Vec<u32>) -> Vec<u32> {
        let mut state = self.lock();
        let PublishedState { partitions, eager } = &mut *state;
        held.into_iter()
            .filter(|p| !partitions.contains_key(p) && eager.insert(*p))
            .collect()
    }

    /// Forgets the partitions not in `held`; returns them.
    pub(super) fn keep_only(&self, held: &[u32]) -> Vec<u32> {
        let mut state = self.lock();
        state.eager.retain(|p| held.contains(p));
        let gone: Vec<u32> = state
            .partitions
            .keys()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        for p in &gone {
            state.partitions.remove(p);
        }
        gone
    }
}

impl Worker {
    /// Publishes a claimed batch through `sink`, one transaction per outbox
    /// partition (run side by side); one result per message, in batch order.
    pub(super) async fn publish_in_transactions(
        &self,
        sink: &dyn TransactionalSink,
        rows: &[OutboxRow],
        messages: &[Message],
    ) -> Vec<Result<()>> {
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            by_partition.entry(row.partition).or_default().push(i);
        }
        let runs = by_partition
            .into_iter()
            .map(|(partition, indexes)| async move {
                let batch: Vec<Message> = indexes.iter().map(|&i| messages[i].clone()).collect();
                let results = self.publish_partition(sink, partition, &batch).await;
                indexes.into_iter().zip(results).collect::<Vec<_>>()
            });
        let mut results: Vec<Option<Result<()>>> = (0..messages.len()).map(|_| None).collect();
        for (i, result) in futures::future::join_all(runs).await.into_iter().flatten() {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::internal("no result for a message"))))
            .collect()
    }

    /// Publishes the messages of one partition: those published already
    /// (in its set) are not sent again, the others go out in one transaction.
    async fn publish_partition(
        &self,
        sink: &dyn TransactionalSink,
        partition: u32,
        batch: &[Message],
    ) -> Vec<Result<()>> {
        let published = match self.published.take(partition) {
            Some(ids) => ids,
            None => match self.adopt(sink, partition).await {
                Ok(ids) => ids,
                Err(e) => {
                    sink.release(partition);
                    let transport = self.sink.name();
                    return batch
                        .iter()
                        .map(|m| Err(adopt_failed(&e, transport, m.id)))
                        .collect();
                }
            },
        };
        let fresh: Vec<Message> = batch
            .iter()
            .filter(|m| !published.contains(&m.id))
            .cloned()
            .collect();
        if fresh.is_empty() {
            self.published.put(partition, published);
            return batch.iter().map(|_| Ok(())).collect();
        }
        let mut record: Vec<Uuid> = published.iter().copied().collect();
        record.extend(fresh.iter().map(|m| m.id));
        let results = sink.publish_partition(partition, &fresh, &record).await;
        if results.len() == fresh.len() && results.iter().all(Result::is_ok) {
            self.published.put(partition, record.into_iter().collect());
            return batch.iter().map(|_| Ok(())).collect();
        }
        // Failed: the sink forgot the partition; so does the relay, which
        // adopts it again (reading the broker's last record) next time.
        sink.release(partition);
        let mut failed: HashMap<Uuid, Error> = fresh
            .iter()
            .zip(results)
            .filter_map(|(m, r)| r.err().map(|e| (m.id, e)))
            .collect();
        batch
            .iter()
            .map(|m| match failed.remove(&m.id) {
                Some(e) => Err(e),
                None if published.contains(&m.id) => Ok(()),
                None => Err(Error::internal("the sink returned no result for a message")),
            })
            .collect()
    }

    /// Adopts `partition`: the ids of the sink's last record for it whose
    /// rows are still unsent.
    async fn adopt(&self, sink: &dyn TransactionalSink, partition: u32) -> Result<HashSet<Uuid>> {
        let partitions = self.store.partitions().await?;
        let recorded = sink.adopt(partition, partitions).await?;
        let unsent = self.store.unsent(&recorded).await?;
        tracing::debug!(target: super::LOG_TARGET, owner = %self.owner, partition, recorded = recorded.len(), unsent = unsent.len(), "relaybox relay adopted a partition for transactional publishing");
        Ok(unsent.into_iter().collect())
    }

    /// Adopts the held partitions of `slice` not adopted yet, before the
    /// loop claims: a transaction that an earlier holder left open (it was
    /// killed mid-batch) is aborted now, and readers of committed records
    /// wait for it no longer, even when the partition has nothing to
    /// publish. A partition that cannot be adopted now is adopted at its
    /// next publish.
    pub(super) async fn adopt_held(&self, sink: &dyn TransactionalSink, slice: Slice) {
        let held: Vec<u32> = self
            .held
            .borrow()
            .iter()
            .copied()
            .filter(|p| slice.contains(*p))
            .collect();
        let adoptions = self.published.to_adopt(held).into_iter().map(|partition| async move {
            match self.adopt(sink, partition).await {
                Ok(ids) => self.published.put(partition, ids),
                Err(e) => {
                    sink.release(partition);
                    tracing::warn!(target: super::LOG_TARGET, owner = %self.owner, partition, error = %e, "relaybox relay could not take the partition over for transactional publishing; it tries again at the partition's next batch");
                }
            }
        });
        futures::future::join_all(adoptions).await;
    }

    /// Forgets the partitions this relay no longer holds, on both sides.
    pub(super) fn partitions_held(&self, held: &[u32]) {
        if let Some(sink) = self.sink.transactional() {
            for partition in self.published.keep_only(held) {
                sink.release(partition);
            }
        }
    }
}

/// The error of message `id` when its partition could not be adopted:
/// always retryable, since it is not the message's fault.
fn adopt_failed(e: &Error, transport: &str, id: Uuid) -> Error {
    let message = match e {
        Error::Transport { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Error::Transport {
        transport: transport.to_string(),
        message: format!("could not take the outbox partition over: {message}"),
        retryable: true,
        message_id: Some(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ids_leave_their_partition_and_lost_partitions_are_forgotten() {
        let published = Published::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        published.put(1, [a, b].into_iter().collect());
        published.put(2, [c].into_iter().collect());
        // An id recorded under another partition leaves nothing.
        published.recorded(&[(1, a), (1, c)]);
        assert_eq!(published.take(1), Some([b].into_iter().collect()));
        published.put(1, HashSet::new());
        assert_eq!(published.keep_only(&[1, 3]), vec![2]);
        assert_eq!(published.take(2), None);
        assert!(published.take(1).is_some());
    }
}
