//! `Relaybox.Tx`: an open database transaction as a resource. An owned one
//! (from `Relaybox.Outbox.transaction/2`) is created in the calling process
//! and filled once the core has begun the transaction; it rolls back when
//! garbage collected uncommitted. A handler's one belongs to the consumer,
//! which commits it.

use std::future::Future;
use std::sync::OnceLock;

use relaybox::Transaction;
use rustler::{Encoder, Env, NifResult, ResourceArc, Term};

use crate::bridge::{spawn_reply, Finish};
use crate::convert::{message_from_spec, messages_from_specs, params_from_term, rows_to_term};
use crate::error::OrFail;

/// A transaction handle.
pub struct TxResource {
    tx: OnceLock<Transaction>,
    owned: bool,
}

impl TxResource {
    /// A transaction the caller commits or rolls back, not begun yet.
    pub fn pending() -> Self {
        TxResource {
            tx: OnceLock::new(),
            owned: true,
        }
    }

    /// A consumer handler's transaction: the consumer commits it.
    pub fn borrowed(tx: Transaction) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(tx);
        TxResource {
            tx: cell,
            owned: false,
        }
    }

    /// Fills a pending handle with the begun transaction.
    pub fn set(&self, tx: Transaction) {
        if let Err(extra) = self.tx.set(tx) {
            relaybox::runtime::spawn(async move { drop(extra) });
        }
    }

    fn get(&self) -> relaybox::Result<Transaction> {
        self.tx.get().cloned().ok_or(relaybox::Error::Closed {
            what: "transaction",
        })
    }

    fn check_owned(&self, what: &str) -> relaybox::Result<()> {
        if self.owned {
            Ok(())
        } else {
            Err(relaybox::Error::InvalidValue {
                reason: format!(
                    "a consumer handler's transaction cannot be {what} by the handler; the consumer commits it with the inbox row (return {{:error, reason}} to roll back)"
                ),
            })
        }
    }
}

impl Drop for TxResource {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let owned = self.owned;
            relaybox::runtime::spawn(async move {
                if owned && !tx.is_finished().await {
                    let _ = tx.rollback().await;
                }
                drop(tx)
            });
        }
    }
}

#[rustler::resource_impl]
impl rustler::Resource for TxResource {}

/// Runs `op` on the transaction of `handle` on the core's runtime and replies
/// `{ref, {:ok, value}}` with `finish`'s term. The handle lives until `op`
/// has finished: the calling process may drop its last reference while it
/// waits for the reply, and the handle's `Drop` rolls back an owned
/// transaction that is not finished, which must not race a commit.
fn on_tx<'a, T, F, Fut>(
    env: Env<'a>,
    handle: ResourceArc<TxResource>,
    reference: Term<'a>,
    op: F,
    finish: Finish<T>,
) -> NifResult<Term<'a>>
where
    F: FnOnce(Transaction) -> Fut,
    Fut: Future<Output = relaybox::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let work = op(handle.get().or_fail()?);
    spawn_reply(
        env,
        reference,
        async move {
            let result = work.await;
            drop(handle);
            result
        },
        finish,
    )
}

/// Runs a query; replies `{:ok, rows}` (a list of maps).
#[rustler::nif]
fn tx_query<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    sql: String,
    params: Term<'a>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let params = params_from_term(params).or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move { tx.query(&sql, &params).await },
        rows_to_term,
    )
}

/// Runs a statement; replies `{:ok, rows_affected}`.
#[rustler::nif]
fn tx_execute<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    sql: String,
    params: Term<'a>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let params = params_from_term(params).or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move { tx.execute(&sql, &params).await },
        |env, n| n.encode(env),
    )
}

/// Writes one message to the outbox; replies `{:ok, id}`.
#[rustler::nif]
fn tx_enqueue<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    spec: Term<'a>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let message = message_from_spec(spec).or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move { tx.enqueue(message).await.map(|id| id.to_string()) },
        |env, id| id.encode(env),
    )
}

/// Writes many messages in one statement, all or none; replies `{:ok, ids}`.
#[rustler::nif]
fn tx_enqueue_batch<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    specs: Term<'a>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let messages = messages_from_specs(specs).or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move {
            let ids = tx.enqueue_batch(&messages).await?;
            Ok(ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        },
        |env, ids| ids.encode(env),
    )
}

/// Commits.
#[rustler::nif]
fn tx_commit<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    tx.check_owned("committed").or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move { tx.commit().await },
        |env, ()| crate::ok().encode(env),
    )
}

/// Rolls back.
#[rustler::nif]
fn tx_rollback<'a>(
    env: Env<'a>,
    tx: ResourceArc<TxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    tx.check_owned("rolled back").or_fail()?;
    on_tx(
        env,
        tx,
        reference,
        |tx| async move { tx.rollback().await },
        |env, ()| crate::ok().encode(env),
    )
}
