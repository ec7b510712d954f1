//! The consumer in host-transaction mode: the handler's transaction is the
//! host application's (its own pool, ORM session or driver connection), not
//! relaybox's.
//!
//! For each delivery the consumer hands the [`HostHandler`] the message and
//! the [`InboxStatement`] that records it in the inbox, in the placeholder
//! style the host's driver uses. The host, in one transaction of its own:
//!
//! 1. runs the inbox statement first;
//! 2. one row inserted: runs its handler's writes, commits, and reports
//!    [`HostOutcome::Processed`]; no row inserted (`ON CONFLICT DO NOTHING`):
//!    the group processed this message before, so it rolls back and reports
//!    [`HostOutcome::Duplicate`];
//! 3. a failure: rolls back and reports [`HostOutcome::Failed`] (retried with
//!    backoff, then dead-lettered) or [`HostOutcome::Rejected`] (dead-lettered
//!    at once).
//!
//! The consumer acknowledges a delivery (a position, offsets, a broker ack)
//! only after its outcome is reported, so only after the host's commit; a
//! lane waits for each outcome before handing out the next delivery of its
//! keys. A crash between the host's commit and the acknowledgement brings the
//! delivery again, and its inbox statement then inserts nothing. Everything
//! but the transaction is the ordinary [`Consumer`]'s: lanes, retries, dead
//! letters (written by relaybox), acknowledgements, every transport.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::{AssertSqlSafe, PgConnection, SqliteConnection};

use crate::consumer::{Attempt, Consumer, ConsumerConfig, Handling};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::source::Source;
use crate::store::{InboxStatement, Placeholders, Store};
use crate::value::Value;

/// One delivery for a host-transaction handler: the message, and the
/// statement to run first in the host's transaction.
#[derive(Clone, Debug)]
pub struct HostDelivery {
    /// The message.
    pub message: Message,
    /// The inbox INSERT of this message for the consumer's group: one row
    /// inserted means the message is new, none that it is a duplicate.
    pub inbox: InboxStatement,
}

/// What the host reports for one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOutcome {
    /// The inbox row and the handler's writes are committed.
    Processed,
    /// The inbox statement inserted no row: the group had the message
    /// already; nothing was written.
    Duplicate,
    /// The handler (or the host's transaction) failed and was rolled back:
    /// retried with backoff, then dead-lettered with this error.
    Failed(String),
    /// The message can never be handled (rolled back): dead-lettered at once
    /// with this reason.
    Rejected(String),
}

/// Host code run once per delivery, in a transaction the host owns (see the
/// [module](self) for the protocol). It must report
/// [`HostOutcome::Processed`] only after its commit succeeded. A panic counts
/// as [`HostOutcome::Failed`].
#[async_trait::async_trait]
pub trait HostHandler: Send + Sync + 'static {
    /// Handles one delivery and reports how it ended.
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome;
}

/// A [`HostHandler`] made from an async closure.
pub struct HostHandlerFn<F>(F);

/// Wraps `f(delivery) -> impl Future<Output = HostOutcome>` as a [`HostHandler`].
pub fn host_handler_fn<F, Fut>(f: F) -> HostHandlerFn<F>
where
    F: Fn(HostDelivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HostOutcome> + Send + 'static,
{
    HostHandlerFn(f)
}

#[async_trait::async_trait]
impl<F, Fut> HostHandler for HostHandlerFn<F>
where
    F: Fn(HostDelivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HostOutcome> + Send + 'static,
{
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        (self.0)(delivery).await
    }
}

impl HostDelivery {
    /// Runs the inbox statement on a PostgreSQL connection of the host (in
    /// its transaction: `&mut *tx`); true when the row was inserted, i.e.
    /// the message is new. The statement must be in [`Placeholders::Dollar`].
    pub async fn insert_inbox_pg(&self, conn: &mut PgConnection) -> Result<bool> {
        let mut q = sqlx::query(AssertSqlSafe(self.inbox.sql.clone()));
        for p in &self.inbox.params {
            q = match p {
                Value::Text(t) => q.bind(t.clone()),
                Value::Uuid(u) => q.bind(*u),
                Value::Int(i) => q.bind(*i),
                other => return Err(unexpected(other)),
            };
        }
        Ok(q.execute(conn).await?.rows_affected() == 1)
    }

    /// Runs the inbox statement on a SQLite connection of the host (in its
    /// transaction); true when the row was inserted. The statement must be
    /// in [`Placeholders::Dollar`] or [`Placeholders::Question`].
    pub async fn insert_inbox_sqlite(&self, conn: &mut SqliteConnection) -> Result<bool> {
        let mut q = sqlx::query(AssertSqlSafe(self.inbox.sql.clone()));
        for p in &self.inbox.params {
            q = match p {
                Value::Text(t) => q.bind(t.clone()),
                Value::Uuid(u) => q.bind(u.to_string()),
                Value::Int(i) => q.bind(*i),
                other => return Err(unexpected(other)),
            };
        }
        Ok(q.execute(conn).await?.rows_affected() == 1)
    }
}

fn unexpected(value: &Value) -> Error {
    Error::internal(format!("unexpected inbox parameter {value:?}"))
}

/// The host-mode side of the consumer's seam ([`Handling::Host`]).
#[derive(Clone)]
pub(crate) struct HostMode {
    handler: Arc<dyn HostHandler>,
    style: Placeholders,
}

impl HostMode {
    /// One attempt: the host runs the inbox statement and its handler in its
    /// transaction and reports the outcome. `Err` only when relaybox cannot
    /// build the statement (the store is closed).
    pub(crate) async fn attempt(
        &self,
        store: &Store,
        group: &str,
        message: &Message,
    ) -> Result<Attempt> {
        let inbox = store.inbox_statement(group, message.id, self.style)?;
        let delivery = HostDelivery {
            message: message.clone(),
            inbox,
        };
        let outcome = AssertUnwindSafe(self.handler.handle(delivery))
            .catch_unwind()
            .await;
        Ok(match outcome {
            Ok(HostOutcome::Processed) => Attempt::Done,
            Ok(HostOutcome::Duplicate) => Attempt::Duplicate,
            Ok(HostOutcome::Failed(error)) => Attempt::HandlerFailed(error),
            Ok(HostOutcome::Rejected(reason)) => Attempt::Rejected(reason),
            Err(panic) => Attempt::HandlerFailed(Error::from_panic(panic).to_string()),
        })
    }
}

impl Consumer {
    /// Validates `config` and starts consuming in host-transaction mode on
    /// the current tokio runtime: `handler` receives each delivery with its
    /// inbox statement in `placeholders` style, runs both in the host's
    /// transaction and reports the outcome (see [`crate::consumer_host`]).
    /// Stats, shutdown and drop behave as with [`Consumer::start`].
    pub fn start_host(
        store: Store,
        source: Arc<dyn Source>,
        handler: Arc<dyn HostHandler>,
        placeholders: Placeholders,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        let mode = HostMode {
            handler,
            style: placeholders,
        };
        Consumer::spawn(store, source, Handling::Host(mode), config)
    }
}
