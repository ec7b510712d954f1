//! The consumer's handler API: the [`Handler`] trait user code implements,
//! [`handler_fn`] for closures, and [`Rejected`] to dead-letter a message at
//! once.

use std::future::Future;

use crate::error::BoxError;
use crate::message::Message;
use crate::transaction::Transaction;

/// User code run once per message. The transaction holds the inbox row: write
/// through it and your writes commit atomically with "processed". Do not
/// commit or roll it back yourself.
///
/// Consecutive messages of a lane may share one transaction, each inside a
/// savepoint of its own: a failing message is rolled back to its savepoint
/// alone, and the row locks a handler takes are held until the shared
/// transaction commits.
///
/// Return `Err` to retry (with backoff, up to `max_retries`), after which the
/// message goes to dead letters; return a boxed [`Rejected`] to dead-letter it
/// at once. A panic counts as an error.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, message: Message, tx: Transaction) -> std::result::Result<(), BoxError>;
}

/// A handler error that sends the message to dead letters at once, without
/// retries: return it (boxed) when the message itself can never be handled,
/// e.g. it fails schema validation. `reason` is recorded as the dead letter's
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    /// Why the message cannot be handled.
    pub reason: String,
}

impl Rejected {
    /// A rejection for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Rejected {
            reason: reason.into(),
        }
    }
}

/// A [`Handler`] made from an async closure.
pub struct HandlerFn<F>(F);

/// Wraps `f(message, tx) -> impl Future<Output = Result<(), BoxError>>` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Message, Transaction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    HandlerFn(f)
}

#[async_trait::async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Message, Transaction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    async fn handle(&self, message: Message, tx: Transaction) -> std::result::Result<(), BoxError> {
        (self.0)(message, tx).await
    }
}
