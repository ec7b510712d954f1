//! The seam between a broker and the idempotent consumer: a [`Source`] hands
//! out deliveries and takes acknowledgements once they are processed.

use std::time::Duration;

use crate::error::Result;
use crate::message::Message;

/// Where an acknowledgement goes: a partition and an offset (or a log position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// Broker partition (0 for sources without partitions).
    pub partition: i32,
    /// Offset or position of the delivery; acknowledging it means everything
    /// up to and including it on that partition was processed.
    pub offset: i64,
}

/// One message handed to the consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Ordering lane: deliveries of one lane are processed in order, lanes run
    /// concurrently (a Kafka partition, or a hash of the key).
    pub lane: u64,
    /// What to acknowledge once processed.
    pub ack: AckToken,
}

/// A broker (or the database log) the consumer reads from.
///
/// The consumer calls `fetch` again while it still processes earlier
/// deliveries, and `ack` whenever a partition's processed prefix grows:
/// each token it passes is, for its partition, the highest offset up to
/// which every delivery handed out is processed, so offsets acknowledged for
/// a partition only grow. `fetch` and `ack` may run at the same time (never
/// two `fetch`es). Deliveries not acknowledged are delivered again after a
/// restart; the inbox makes that harmless.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &str;

    /// Returns up to `max` deliveries, waiting up to `wait` when none are ready.
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Records that everything up to and including each token's offset on
    /// its partition is processed.
    async fn ack(&self, acks: &[AckToken]) -> Result<()>;

    /// Sends a message that exhausted its retries to the source's own
    /// dead-letter destination (a DLQ topic). Returns `false` when the source
    /// has none; the consumer then writes it to the `dead_letters` table.
    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<bool> {
        let _ = (delivery, error);
        Ok(false)
    }

    /// Called once when the consumer stops, after its last acknowledgement.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
