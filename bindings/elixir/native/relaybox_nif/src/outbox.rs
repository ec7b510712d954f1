//! `Relaybox.Outbox` handles: an open store (PostgreSQL or SQLite) as a
//! resource, with the calls that touch the database run on the core's runtime.

use relaybox::{DeadLetterFilter, Placeholders, Store, StoreOptions};
use rustler::{Atom, Encoder, Env, NifMap, NifResult, ResourceArc, Term};

use std::sync::OnceLock;

use crate::bridge::{guard, spawn_reply};
use crate::convert::{
    json_to_term, message_from_spec, messages_from_specs, options_json, string, value_to_term,
};
use crate::error::{invalid_value, OrFail};
use crate::tx::TxResource;

/// An open store, created in the calling process and filled once connected;
/// its pool is dropped when the handle is garbage collected.
pub struct OutboxResource(OnceLock<Store>);

impl OutboxResource {
    /// The store, once connected.
    pub fn store(&self) -> relaybox::Result<Store> {
        self.0
            .get()
            .cloned()
            .ok_or(relaybox::Error::Closed { what: "store" })
    }
}

impl Drop for OutboxResource {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            relaybox::runtime::spawn(async move { drop(store) });
        }
    }
}

#[rustler::resource_impl]
impl rustler::Resource for OutboxResource {}

fn report<'b, T: serde::Serialize>(env: Env<'b>, value: T) -> Term<'b> {
    match serde_json::to_value(value) {
        Ok(json) => json_to_term(env, &json),
        Err(_) => crate::nil().encode(env),
    }
}

/// Connects (and migrates when asked): returns `{:ok, outbox}` at once and
/// replies `{ref, {:ok, :ok}}` once connected (the handle is usable from then on).
#[rustler::nif]
fn outbox_open<'a>(
    env: Env<'a>,
    url: String,
    options: Term<'a>,
    migrate: bool,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let options = options_json(options, "outbox options")
        .and_then(StoreOptions::from_json)
        .or_fail()?;
    let outbox = ResourceArc::new(OutboxResource(OnceLock::new()));
    let filled = outbox.clone();
    spawn_reply(
        env,
        reference,
        async move {
            let store = Store::connect_with(&url, options).await?;
            if migrate {
                store.migrate().await?;
            }
            let _ = filled.0.set(store);
            Ok(())
        },
        |env, ()| crate::ok().encode(env),
    )?;
    Ok((crate::ok(), outbox).encode(env))
}

/// Applies pending migrations.
#[rustler::nif]
fn outbox_migrate<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move { store.migrate().await },
        |env, ()| crate::ok().encode(env),
    )
}

/// Closes the pool.
#[rustler::nif]
fn outbox_close<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move {
            store.close().await;
            Ok(())
        },
        |env, ()| crate::ok().encode(env),
    )
}

/// Begins an owned transaction: returns `{:ok, tx}` at once and replies
/// `{ref, {:ok, :ok}}` once it has begun (the handle is usable from then on).
#[rustler::nif]
fn outbox_begin<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    let tx = ResourceArc::new(TxResource::pending());
    let filled = tx.clone();
    spawn_reply(
        env,
        reference,
        async move {
            filled.set(store.begin().await?);
            Ok(())
        },
        |env, ()| crate::ok().encode(env),
    )?;
    Ok((crate::ok(), tx).encode(env))
}

/// The outbox INSERT of one message for a host driver: replies
/// `{:ok, {sql, params, message_id}}`. The parameters are the core's (text,
/// integers and bytes), which the statement casts itself, so Postgrex binds
/// them as they are.
#[rustler::nif]
fn outbox_insert_sql<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    spec: Term<'a>,
    placeholders: String,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let style: Placeholders = placeholders.parse().or_fail()?;
    let message = message_from_spec(spec).or_fail()?;
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move { store.insert_statement(&message, style).await },
        |env, statement| {
            let params: Vec<Term<'_>> = statement
                .params
                .iter()
                .map(|v| value_to_term(env, v))
                .collect();
            (
                string(env, &statement.sql),
                params,
                statement.message_id.to_string(),
            )
                .encode(env)
        },
    )
}

/// The outbox INSERTs of a batch of messages for a host driver (Ecto):
/// replies `{:ok, [{sql, params, message_ids, wake}]}`, one statement per
/// core batch, to run in order in one transaction, each followed by its
/// wake-up (`nil` on SQLite). Every message is validated before any
/// statement is made; the parameters are the core's (text, integers, bytes
/// and `nil`), which the statements cast themselves.
#[rustler::nif]
fn outbox_insert_batch_sql<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    specs: Term<'a>,
    placeholders: String,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let style: Placeholders = placeholders.parse().or_fail()?;
    let messages = messages_from_specs(specs).or_fail()?;
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move { store.insert_batch_statements(&messages, style).await },
        |env, statements| {
            statements
                .iter()
                .map(|statement| {
                    let params: Vec<Term<'_>> = statement
                        .params
                        .iter()
                        .map(|v| value_to_term(env, v))
                        .collect();
                    let ids: Vec<String> = statement
                        .message_ids
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    let wake = statement
                        .wake
                        .as_deref()
                        .map_or(crate::nil().encode(env), |w| string(env, w));
                    (string(env, &statement.sql), params, ids, wake).encode(env)
                })
                .collect::<Vec<_>>()
                .encode(env)
        },
    )
}

/// `{:ok, info}`: the redacted URL, dialect, table prefix and wake statement.
#[rustler::nif]
fn outbox_info<'a>(env: Env<'a>, outbox: ResourceArc<OutboxResource>) -> Term<'a> {
    guard(env, move |env| {
        let store = outbox.store()?;
        Ok(OutboxInfo {
            url: store.url().to_string(),
            dialect: Atom::from_str(env, &store.dialect().to_string()).expect("atom"),
            table_prefix: store.options().table_prefix.clone(),
            wake_statement: store.wake_statement(),
            closed: store.is_closed(),
        }
        .encode(env))
    })
}

/// The map `outbox_info/1` returns.
#[derive(NifMap)]
#[rustler(encode)]
struct OutboxInfo {
    url: String,
    dialect: Atom,
    table_prefix: String,
    wake_statement: Option<String>,
    closed: bool,
}

/// Wakes this process's relays on this outbox.
#[rustler::nif]
fn outbox_wake_relays(outbox: ResourceArc<OutboxResource>) -> rustler::Atom {
    if let Ok(store) = outbox.store() {
        store.wake_relays();
    }
    crate::ok()
}

/// Undelivered outbox rows.
#[rustler::nif]
fn outbox_pending_count<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move { store.pending_count().await },
        |env, n| n.encode(env),
    )
}

/// Backlog, dead letters and lease owners, as a map with string keys.
#[rustler::nif]
fn outbox_status<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    spawn_reply(env, reference, async move { store.status().await }, report)
}

/// Up to `limit` dead letters, oldest first.
#[rustler::nif]
fn outbox_dead_letters<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    limit: u32,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let store = outbox.store().or_fail()?;
    spawn_reply(
        env,
        reference,
        async move { store.dead_letters(limit).await },
        |env, letters| {
            letters
                .iter()
                .map(|l| {
                    let mut map = report(env, l);
                    if let Ok(m) =
                        map.map_put("message", crate::convert::message_to_term(env, &l.message))
                    {
                        map = m;
                    }
                    map
                })
                .collect::<Vec<_>>()
                .encode(env)
        },
    )
}

fn filter(ids: Option<Vec<String>>) -> relaybox::Result<DeadLetterFilter> {
    match ids {
        None => Ok(DeadLetterFilter::All),
        Some(ids) => ids
            .iter()
            .map(|id| {
                uuid::Uuid::parse_str(id)
                    .map_err(|e| invalid_value(format!("{id:?} is not a message id: {e}")))
            })
            .collect::<relaybox::Result<Vec<_>>>()
            .map(DeadLetterFilter::Ids),
    }
}

/// Puts dead letters (all, or those of `ids`) back into the outbox.
#[rustler::nif]
fn outbox_retry_dead_letters<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    ids: Option<Vec<String>>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    on_dead_letters(env, &outbox, ids, reference, |store, filter| async move {
        store.retry_dead_letters(&filter).await
    })
}

/// Deletes dead letters (all, or those of `ids`).
#[rustler::nif]
fn outbox_purge_dead_letters<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    ids: Option<Vec<String>>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    on_dead_letters(env, &outbox, ids, reference, |store, filter| async move {
        store.purge_dead_letters(&filter).await
    })
}

/// Runs `op` (retry or purge) on the dead letters `ids` names (all when
/// `nil`) on the core's runtime; replies `{:ok, count}` to the caller.
fn on_dead_letters<'a, F, Fut>(
    env: Env<'a>,
    outbox: &OutboxResource,
    ids: Option<Vec<String>>,
    reference: Term<'a>,
    op: F,
) -> NifResult<Term<'a>>
where
    F: FnOnce(Store, DeadLetterFilter) -> Fut,
    Fut: std::future::Future<Output = relaybox::Result<u64>> + Send + 'static,
{
    let filter = filter(ids).or_fail()?;
    let store = outbox.store().or_fail()?;
    spawn_reply(env, reference, op(store, filter), |env, n| n.encode(env))
}
