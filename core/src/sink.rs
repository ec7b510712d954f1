//! The seam between the relay and a broker: a [`Sink`] publishes a batch and
//! reports a result per message.

use crate::error::Result;
use crate::message::Message;

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
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `"database"` or `"kafka"`.
    fn name(&self) -> &str;

    /// Publishes `batch`; see the trait documentation for the contract.
    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>>;

    /// The store whose log table this sink appends to, if that is what it
    /// does. When it is the relay's own store, the relay moves claimed rows
    /// into the log inside its claim transaction instead of calling
    /// `publish`: one statement, and each row lands in the log exactly once.
    fn log_store(&self) -> Option<&crate::store::Store> {
        None
    }
}
