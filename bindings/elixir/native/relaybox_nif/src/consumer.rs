//! `Relaybox.Consumer`: the core's idempotent consumer calling back into a
//! GenServer, in one of two modes.
//!
//! - Relaybox's transaction: for each message the core's handler sends
//!   `{:relaybox_message, call_id, message}` to the owning process, which
//!   takes the handler's transaction with `consumer_tx/2`.
//! - The host's transaction (`repo:`, the core's host mode): the owner
//!   receives `{:relaybox_delivery, call_id, message, inbox_sql,
//!   inbox_params}`, runs the inbox statement and the handler in a
//!   transaction of its Ecto repo, and replies after its commit.
//!
//! Either way the core waits, on its runtime (never on a scheduler), for
//! `consumer_reply/4`. The resource monitors the owner: if it dies, waiting
//! handlers fail and the consumer shuts down; unacknowledged messages come
//! again and the inbox skips what was already processed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use relaybox::transport::eventodb::EventoDbSource;
use relaybox::transport::message_db::MessageDbSource;
use relaybox::{
    BoxError, Consumer, ConsumerConfig, DatabaseSource, DatabaseSourceConfig, Handler,
    HostDelivery, HostHandler, HostOutcome, Message, Placeholders, Rejected, Transaction,
    TransportConfig,
};
use rustler::{
    Atom, Encoder, Env, LocalPid, Monitor, NifMap, NifResult, OwnedEnv, ResourceArc, Term,
};
use tokio::sync::oneshot;

use crate::bridge::{guard, spawn_reply};
use crate::convert::{message_to_term, options_json, string, value_to_term};
use crate::error::invalid_config;
use crate::outbox::OutboxResource;
use crate::relay::transport;
use crate::tx::TxResource;

rustler::atoms! {
    reject,
    duplicate,
    relaybox_delivery,
}

/// What the Elixir handler answered.
enum Reply {
    /// Handled (in host mode: committed).
    Ok,
    /// Host mode: the inbox statement inserted no row; nothing was written.
    Duplicate,
    Error(String),
    Reject(String),
}

/// A handler call waiting for its reply, with the transaction it runs in
/// (none in host mode, where the transaction is the repo's).
struct Call {
    reply: oneshot::Sender<Reply>,
    tx: Option<Transaction>,
}

/// Handler calls waiting for their reply.
#[derive(Default)]
struct Calls {
    pending: Mutex<HashMap<u64, Call>>,
    next: AtomicU64,
    closed: AtomicBool,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Call>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails every waiting call and refuses new ones.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let calls: Vec<Call> = self.lock().drain().map(|(_, call)| call).collect();
        relaybox::runtime::spawn(async move { drop(calls) });
    }
}

impl Calls {
    /// Registers a call, sends the owner the term `encode` builds with the
    /// call's id, and waits for the reply.
    async fn dispatch<F>(
        &self,
        pid: &LocalPid,
        tx: Option<Transaction>,
        encode: F,
    ) -> Result<Reply, String>
    where
        F: for<'b> FnOnce(Env<'b>, u64) -> Term<'b>,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err("the consumer process has stopped".into());
            }
            pending.insert(id, Call { reply: sender, tx });
        }
        let sent = OwnedEnv::new().send_and_clear(pid, |env| encode(env, id));
        if sent.is_err() {
            self.lock().remove(&id);
            return Err("the consumer process is not alive".into());
        }
        receiver
            .await
            .map_err(|_| "the consumer process stopped before the handler replied".to_string())
    }
}

/// Sends each message to the owning process and waits for its reply.
struct ElixirHandler {
    pid: LocalPid,
    calls: Arc<Calls>,
}

#[async_trait::async_trait]
impl Handler for ElixirHandler {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        let reply = self
            .calls
            .dispatch(&self.pid, Some(tx), |env, id| {
                (
                    crate::relaybox_message(),
                    id,
                    message_to_term(env, &message),
                )
                    .encode(env)
            })
            .await?;
        match reply {
            Reply::Ok | Reply::Duplicate => Ok(()),
            Reply::Error(reason) => Err(reason.into()),
            Reply::Reject(reason) => Err(Box::new(Rejected::new(reason))),
        }
    }
}

/// Host mode: sends each delivery with its inbox statement to the owning
/// process, which runs both in its repo's transaction and replies after
/// the commit.
struct ElixirHostHandler {
    pid: LocalPid,
    calls: Arc<Calls>,
}

#[async_trait::async_trait]
impl HostHandler for ElixirHostHandler {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        let reply = self
            .calls
            .dispatch(&self.pid, None, |env, id| {
                let params: Vec<Term<'_>> = delivery
                    .inbox
                    .params
                    .iter()
                    .map(|v| value_to_term(env, v))
                    .collect();
                (
                    relaybox_delivery(),
                    id,
                    message_to_term(env, &delivery.message),
                    string(env, &delivery.inbox.sql),
                    params,
                )
                    .encode(env)
            })
            .await;
        match reply {
            Ok(Reply::Ok) => HostOutcome::Processed,
            Ok(Reply::Duplicate) => HostOutcome::Duplicate,
            Ok(Reply::Error(reason)) | Err(reason) => HostOutcome::Failed(reason),
            Ok(Reply::Reject(reason)) => HostOutcome::Rejected(reason),
        }
    }
}

/// A running consumer.
pub struct ConsumerResource {
    consumer: Mutex<Option<Arc<Consumer>>>,
    calls: Arc<Calls>,
}

impl ConsumerResource {
    fn take(&self) -> Option<Arc<Consumer>> {
        self.consumer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn current(&self) -> Option<Arc<Consumer>> {
        self.consumer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fails the waiting handler calls and shuts the consumer down in the background.
    fn abandon(&self) {
        self.calls.close();
        if let Some(consumer) = self.take() {
            relaybox::runtime::spawn(async move {
                let _ = consumer.shutdown().await;
            });
        }
    }
}

impl Drop for ConsumerResource {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[rustler::resource_impl]
impl rustler::Resource for ConsumerResource {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.abandon();
    }
}

/// Starts consuming `topic` as member `member` of a group of `size`, owned by
/// (and calling back into) the calling process; `{:ok, consumer}`. With
/// `host` true the consumer runs in the core's host mode (see the module).
#[rustler::nif(schedule = "DirtyIo")]
#[allow(clippy::too_many_arguments)]
fn consumer_start<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    transport_term: Term<'a>,
    topic: String,
    config: Term<'a>,
    member: u32,
    size: u32,
    host: bool,
) -> Term<'a> {
    guard(env, move |env| {
        let transport = transport(transport_term)?;
        let config = ConsumerConfig::from_json(options_json(config, "consumer options")?)?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let store = outbox.store()?;
        let source: Arc<dyn relaybox::Source> = match &transport {
            TransportConfig::Database => DatabaseSource::new(
                store.clone(),
                DatabaseSourceConfig::new(topic, config.group.clone()).member(member, size),
            )?,
            TransportConfig::EventoDb(c) if size > 1 => EventoDbSource::new(
                c.clone().member(member, size),
                &store,
                &topic,
                &config.group,
            )?,
            TransportConfig::MessageDb(c) if size > 1 => MessageDbSource::new(
                c.clone().member(member, size),
                &store,
                &topic,
                &config.group,
            )?,
            _ if size > 1 => {
                return Err(invalid_config(
                    "group_size",
                    format!(
                        "group_member/group_size split a topic of the database, message_db and eventodb transports; with {} the broker splits partitions among consumers sharing a consumer_id",
                        transport.name()
                    ),
                ))
            }
            _ => transport.source(&store, &topic, &config.group)?,
        };
        let calls = Arc::new(Calls::default());
        let consumer = if host {
            let handler = Arc::new(ElixirHostHandler {
                pid: env.pid(),
                calls: calls.clone(),
            });
            Consumer::start_host(store, source, handler, Placeholders::Dollar, config)?
        } else {
            let handler = Arc::new(ElixirHandler {
                pid: env.pid(),
                calls: calls.clone(),
            });
            Consumer::start(store, source, handler, config)?
        };
        let resource = ResourceArc::new(ConsumerResource {
            consumer: Mutex::new(Some(Arc::new(consumer))),
            calls,
        });
        resource.monitor(Some(env), &env.pid());
        Ok(resource.encode(env))
    })
}

/// The handler's answer for call `call_id`: `:ok`, `:error` or `:reject`
/// with a reason, or (host mode) `:duplicate`.
#[rustler::nif]
fn consumer_reply(
    consumer: ResourceArc<ConsumerResource>,
    call_id: u64,
    status: Atom,
    reason: String,
) -> Atom {
    let reply = if status == crate::ok() {
        Reply::Ok
    } else if status == duplicate() {
        Reply::Duplicate
    } else if status == reject() {
        Reply::Reject(reason)
    } else {
        Reply::Error(reason)
    };
    let call = consumer.calls.lock().remove(&call_id);
    if let Some(call) = call {
        let _ = call.reply.send(reply);
        if let Some(tx) = call.tx {
            relaybox::runtime::spawn(async move { drop(tx) });
        }
    }
    crate::ok()
}

/// `{:ok, tx}`: the transaction of handler call `call_id`, for the handler's
/// writes (created in the calling process).
#[rustler::nif]
fn consumer_tx<'a>(
    env: Env<'a>,
    consumer: ResourceArc<ConsumerResource>,
    call_id: u64,
) -> Term<'a> {
    guard(env, move |env| {
        let tx = consumer
            .calls
            .lock()
            .get(&call_id)
            .and_then(|call| call.tx.clone())
            .ok_or(relaybox::Error::Closed {
                what: "handler call",
            })?;
        Ok(ResourceArc::new(TxResource::borrowed(tx)).encode(env))
    })
}

/// Finishes and acknowledges the messages in flight, then stops. The owner
/// keeps answering handler calls until the reply arrives.
#[rustler::nif]
fn consumer_stop<'a>(
    env: Env<'a>,
    consumer: ResourceArc<ConsumerResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let running = consumer.take();
    let calls = consumer.calls.clone();
    spawn_reply(
        env,
        reference,
        async move {
            let result = match running {
                Some(c) => c.shutdown().await,
                None => Ok(()),
            };
            calls.close();
            result
        },
        |env, ()| crate::ok().encode(env),
    )
}

/// `{:ok, stats}`: processed, duplicates, retried, dead_lettered, running.
#[rustler::nif]
fn consumer_stats<'a>(env: Env<'a>, consumer: ResourceArc<ConsumerResource>) -> Term<'a> {
    guard(env, move |env| {
        let Some(consumer) = consumer.current() else {
            return Err(relaybox::Error::Closed { what: "consumer" });
        };
        let s = consumer.stats();
        Ok(ConsumerStats {
            processed: s.processed,
            duplicates: s.duplicates,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            running: consumer.is_running(),
        }
        .encode(env))
    })
}

/// The map `consumer_stats/1` returns.
#[derive(NifMap)]
#[rustler(encode)]
struct ConsumerStats {
    processed: u64,
    duplicates: u64,
    retried: u64,
    dead_lettered: u64,
    running: bool,
}
