//! The seam between the relay and a broker: a [`Sink`] publishes a batch and
//! reports a result per message.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
use crate::message::Message;

/// The outcome of a batch handed over with [`Sink::send`]: resolves to one
/// result per message, in batch order, once every message is acknowledged
/// or has failed.
pub type Acks = Pin<Box<dyn Future<Output = Vec<Result<()>>> + Send + 'static>>;

/// Where the relay delivers messages: a broker, or the database log.
///
/// # Contract
///
/// `publish` receives a batch in outbox order and returns exactly one result
/// per message, in the same order. `Ok` means the broker acknowledged the
/// message durably. A message must not be delivered when an earlier message
/// with the same key in the same batch failed (report it failed too), so that
/// order per key survives retries. Implementations must be cancel-safe: the
/// relay abandons a publish that exceeds its `publish_timeout` and retries it.
///
/// # Pipelining
///
/// The relay calls [`send`](Sink::send), which by default is `publish`
/// returning its results at once; the relay records those results before
/// it claims the next batch, so a sink that publishes within `send` sees
/// one batch at a time, the failures of each recorded before the next. A
/// sink that overrides `send` to return as soon as the batch is handed over
/// (to a producer's queue, say), with the acknowledgements still to come,
/// lets the relay claim and hand over the next batches while it waits (up
/// to `batches_in_flight`). Such a sink must keep, for each key, the
/// messages of a batch handed over later behind those of the batches handed
/// over before (as a producer's per-partition queue does). The relay still
/// records deliveries batch by batch in claim order, and never records a
/// message as delivered while an earlier message of its key failed: that
/// message is sent again after the earlier one (and the sink is told, see
/// [`unrecorded`](Sink::unrecorded)).
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `"database"` or `"kafka"`.
    fn name(&self) -> &str;

    /// Publishes `batch`; see the trait documentation for the contract.
    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>>;

    /// Hands `batch` over and returns its acknowledgements, which may still
    /// be on their way (see "Pipelining" above). The default publishes the
    /// whole batch and returns the results ready.
    async fn send(&self, batch: &[Message]) -> Acks {
        let results = self.publish(batch).await;
        Box::pin(std::future::ready(results))
    }

    /// The store whose log table this sink appends to, if that is what it
    /// does. When it is the relay's own store, the relay moves claimed rows
    /// into the log inside its claim transaction instead of calling
    /// `publish`: one statement, and each row lands in the log exactly once.
    fn log_store(&self) -> Option<&crate::store::Store> {
        None
    }

    /// The topics this sink serves, when it serves some topics only (a
    /// [`RoutedSink`](crate::route::RoutedSink)): a relay publishing to it
    /// claims rows of those topics only, and shares partitions with the
    /// relays serving the same topics (see [`crate::route`]). `None`, the
    /// default, serves every topic.
    fn topics(&self) -> Option<&crate::route::Topics> {
        None
    }

    /// Whether the destination can be reached now, for a relay's readiness
    /// ([`Relay::health`](crate::Relay::health)): a cheap round trip to the
    /// broker (connecting first if the sink is not connected yet), an error
    /// naming what failed otherwise. The relay bounds it with a timeout. The
    /// default reports `Ok` without looking: a sink that cannot check counts
    /// as connected.
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Messages this sink acknowledged that the relay did not record as
    /// delivered, because an earlier message of their key failed
    /// (see "Pipelining" above): the relay sends each again after that one.
    /// A sink that can tell such a repeat from a new message may acknowledge
    /// it then without publishing it a second time: a Kafka record is in
    /// its partition already, behind the earlier one. The default does
    /// nothing, so the repeat is published again.
    fn unrecorded(&self, messages: &[&Message]) {
        let _ = messages;
    }

    /// The sink's exactly-once side, when it publishes each outbox
    /// partition's messages in transactions of the broker (see
    /// [`TransactionalSink`]). A relay given such a sink publishes through
    /// it instead of [`send`](Sink::send). `None`, the default: at least
    /// once.
    fn transactional(&self) -> Option<&dyn TransactionalSink> {
        None
    }
}

/// A sink that publishes exactly once: each batch of one outbox partition
/// goes out in one broker transaction, together with a record of the
/// messages published for that partition whose rows may still be in the
/// outbox. Whoever holds the partition next reads that record back
/// ([`adopt`](TransactionalSink::adopt)) and does not publish those messages
/// again, whether the relay that published them recorded them or crashed
/// first.
///
/// # Contract
///
/// - `adopt` fences every earlier holder of the partition (a zombie relay
///   can no longer commit) before it reads the record, so the record it
///   returns is the last one that will ever be committed by them.
/// - `publish_partition` is all or nothing: every result `Ok` (the messages
///   and the record are committed together), or every result an error (none
///   of them is visible to a reader that reads committed records only).
/// - After any failure, and after `release`, the sink forgets the partition:
///   the relay adopts it again before its next publish.
#[async_trait::async_trait]
pub trait TransactionalSink: Send + Sync {
    /// Takes outbox partition `partition` (of `partitions`) over: fences
    /// its earlier holders and returns the ids of the last record committed
    /// for it (empty when there is none).
    async fn adopt(&self, partition: u32, partitions: u32) -> Result<Vec<uuid::Uuid>>;

    /// Publishes `batch`, messages of the adopted `partition` in outbox
    /// order, in one transaction that also records `published` (the ids of
    /// `batch` and of the partition's messages published before whose rows
    /// may still be in the outbox). One result per message, all `Ok` or
    /// all errors.
    async fn publish_partition(
        &self,
        partition: u32,
        batch: &[Message],
        published: &[uuid::Uuid],
    ) -> Vec<Result<()>>;

    /// Lets go of `partition` (its lease was given up or lost).
    fn release(&self, partition: u32);
}
