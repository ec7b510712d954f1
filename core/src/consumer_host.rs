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
//! Consecutive deliveries of a lane come as one run
//! ([`HostHandler::handle_run`]), which a host may handle in one transaction:
//! the run's one inbox statement ([`HostRun::inbox`], returning the ids it
//! inserted), then the handler of each delivery it inserted; one commit for
//! all. When a handler fails, the host rolls the whole run back
//! and reports which one failed; the consumer then hands the deliveries
//! before it over again one at a time ([`HostHandler::handle`]) and retries
//! the failed one alone, so retries and dead letters stay per message.
//!
//! The consumer acknowledges a delivery (a position, offsets, a broker ack)
//! only after its outcome is reported, so only after the host's commit; a
//! lane waits for each outcome (or run) before handing out the next
//! deliveries of its keys. A crash between the host's commit and the
//! acknowledgement brings the delivery again, and its inbox statement then
//! inserts nothing. Everything
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
use crate::source::Delivery;
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

/// Host code run per delivery, in a transaction the host owns (see the
/// [module](self) for the protocol). It must report
/// [`HostOutcome::Processed`] only after its commit succeeded. A panic counts
/// as [`HostOutcome::Failed`].
#[async_trait::async_trait]
pub trait HostHandler: Send + Sync + 'static {
    /// Handles one delivery and reports how it ended.
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome;

    /// Handles consecutive deliveries of one lane, in order (two or more),
    /// and reports how the run ended ([`HostRunOutcome`]). A panic counts
    /// as [`HostRunOutcome::RolledBack`].
    ///
    /// By default each delivery goes to [`HostHandler::handle`] in turn (a
    /// transaction each), stopping at the first that is not processed or a
    /// duplicate.
    async fn handle_run(&self, run: HostRun) -> HostRunOutcome {
        HostRunOutcome::Each(handle_each(self, run.deliveries).await)
    }
}

/// Consecutive deliveries of one lane for [`HostHandler::handle_run`].
#[derive(Clone, Debug)]
pub struct HostRun {
    /// The deliveries, in order (two or more), each with its own inbox
    /// statement for a host that handles them one by one.
    pub deliveries: Vec<HostDelivery>,
    /// One inbox INSERT of every delivery of the run that returns the id (as
    /// text) of each message it inserted; a delivery whose id it does not
    /// return is a duplicate ([`crate::store::Store::inbox_run_statement`]).
    pub inbox: InboxStatement,
}

impl HostRun {
    /// Runs the run's inbox statement on a PostgreSQL connection of the
    /// host (in its transaction) and returns the ids of the messages it
    /// inserted, i.e. the new ones. The statement must be in
    /// [`Placeholders::Dollar`].
    pub async fn insert_inbox_pg(
        &self,
        conn: &mut PgConnection,
    ) -> Result<std::collections::HashSet<uuid::Uuid>> {
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(self.inbox.sql.clone()));
        for p in &self.inbox.params {
            q = match p {
                Value::Text(t) => q.bind(t.clone()),
                other => return Err(unexpected(other)),
            };
        }
        q.fetch_all(conn)
            .await?
            .iter()
            .map(|id| {
                uuid::Uuid::parse_str(id)
                    .map_err(|e| Error::internal(format!("inbox returned {id:?}: {e}")))
            })
            .collect()
    }
}

/// What the host reports for a run of deliveries
/// ([`HostHandler::handle_run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRunOutcome {
    /// The outcomes of the first deliveries of the run, in order, one each,
    /// each reported as [`HostHandler::handle`] would: a
    /// [`HostOutcome::Processed`] only once committed. After a
    /// [`HostOutcome::Failed`] or [`HostOutcome::Rejected`] (that delivery's
    /// first attempt, rolled back) no later delivery may have been
    /// attempted. Deliveries without an outcome are handed over again.
    Each(Vec<HostOutcome>),
    /// The run's one transaction was rolled back because the handler of the
    /// delivery at this index failed with this outcome
    /// ([`HostOutcome::Failed`] or [`HostOutcome::Rejected`]), which counts
    /// as its first attempt; no later delivery was attempted. The deliveries
    /// before it took no effect: they are handed over again one at a time,
    /// then it is retried (or dead-lettered) alone.
    RolledBackAt(usize, HostOutcome),
    /// The run's one transaction failed (e.g. at its commit) and none of it
    /// took effect: every delivery is handed over again alone, with this
    /// error logged.
    RolledBack(String),
}

/// The default [`HostHandler::handle_run`]: hands each delivery to
/// [`HostHandler::handle`] in turn, stopping after the first that is not
/// processed or a duplicate (a panic counts as [`HostOutcome::Failed`]).
pub async fn handle_each<H: HostHandler + ?Sized>(
    handler: &H,
    deliveries: Vec<HostDelivery>,
) -> Vec<HostOutcome> {
    let mut outcomes = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let outcome = AssertUnwindSafe(handler.handle(delivery))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| HostOutcome::Failed(Error::from_panic(panic).to_string()));
        let settled = matches!(outcome, HostOutcome::Processed | HostOutcome::Duplicate);
        outcomes.push(outcome);
        if !settled {
            break;
        }
    }
    outcomes
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

/// How a run handed to [`HostHandler::handle_run`] ended, for the first
/// deliveries of the run.
pub(crate) enum RunResult {
    /// The first `settled` deliveries are committed or duplicates (with how
    /// many duplicates); `then` is the first attempt of the next one, which
    /// failed, if any.
    Settled {
        settled: usize,
        duplicates: usize,
        then: Option<Attempt>,
    },
    /// The run rolled back at the delivery with this index, whose first
    /// attempt this was: those before it take no effect.
    RolledBackAt(usize, Attempt),
    /// Nothing of the run took effect for sure: every delivery goes on alone.
    OneByOne(Error),
}

/// The attempt a failed outcome reports; `None` for a settled one.
fn failed_attempt(outcome: HostOutcome) -> Option<Attempt> {
    match outcome {
        HostOutcome::Processed | HostOutcome::Duplicate => None,
        HostOutcome::Failed(error) => Some(Attempt::HandlerFailed(error)),
        HostOutcome::Rejected(reason) => Some(Attempt::Rejected(reason)),
    }
}

impl HostMode {
    /// Hands `run` (two or more consecutive deliveries of a lane) to the
    /// host in one call and reads its outcomes.
    pub(crate) async fn attempt_run(
        &self,
        store: &Store,
        group: &str,
        run: &[Delivery],
    ) -> RunResult {
        let ids: Vec<uuid::Uuid> = run.iter().map(|d| d.message.id).collect();
        let inbox = match store.inbox_run_statement(group, &ids, self.style) {
            Ok(inbox) => inbox,
            Err(e) => return RunResult::OneByOne(e),
        };
        let mut deliveries = Vec::with_capacity(run.len());
        for d in run {
            match store.inbox_statement(group, d.message.id, self.style) {
                Ok(inbox) => deliveries.push(HostDelivery {
                    message: d.message.clone(),
                    inbox,
                }),
                Err(e) => return RunResult::OneByOne(e),
            }
        }
        let outcomes = match AssertUnwindSafe(
            self.handler.handle_run(HostRun { deliveries, inbox }),
        )
        .catch_unwind()
        .await
        {
            Ok(HostRunOutcome::Each(outcomes)) => outcomes,
            Ok(HostRunOutcome::RolledBackAt(index, outcome)) => {
                return match failed_attempt(outcome) {
                    Some(attempt) if index < run.len() => RunResult::RolledBackAt(index, attempt),
                    _ => RunResult::OneByOne(Error::internal(format!(
                        "the host rolled back the run at message {index} but reported no failure of it"
                    ))),
                };
            }
            Ok(HostRunOutcome::RolledBack(error)) => {
                return RunResult::OneByOne(Error::internal(format!(
                    "the host rolled back the run: {error}"
                )))
            }
            Err(panic) => return RunResult::OneByOne(Error::from_panic(panic)),
        };
        let (mut settled, mut duplicates, mut then) = (0, 0, None);
        for outcome in outcomes.into_iter().take(run.len()) {
            let duplicate = outcome == HostOutcome::Duplicate;
            if let Some(attempt) = failed_attempt(outcome) {
                then = Some(attempt);
                break;
            }
            settled += 1;
            duplicates += usize::from(duplicate);
        }
        if settled == 0 && then.is_none() {
            return RunResult::OneByOne(Error::internal(
                "the host reported no outcome for the run",
            ));
        }
        RunResult::Settled {
            settled,
            duplicates,
            then,
        }
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
