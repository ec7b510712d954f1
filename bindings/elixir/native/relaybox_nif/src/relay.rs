//! `Relaybox.Relay`: a core relay owned by a GenServer. The resource
//! monitors that process: if it dies without stopping the relay (or the
//! handle is garbage collected), the relay is shut down on the core's
//! runtime, handing its partitions over.

use std::sync::{Arc, Mutex};

use std::time::Instant;

use relaybox::{Acks, Message, Relay, RelayConfig, Sink, TransportConfig};
use rustler::{Encoder, Env, LocalPid, Monitor, NifMap, NifResult, OwnedEnv, ResourceArc, Term};

use crate::bridge::{guard, spawn_reply};
use crate::convert::options_json;
use crate::outbox::OutboxResource;

rustler::atoms! {
    relaybox_relay_batch,
    start,
    stop,
}

/// The transport's sink, telling the relay's owner about each batch it
/// publishes: `{:relaybox_relay_batch, :start, batch_ref, count, topics}`
/// before, `{:relaybox_relay_batch, :stop, batch_ref, count, delivered,
/// failed, duration_us}` once every message of the batch is acknowledged or
/// failed. A sink that appends to the store's own log is used by the relay
/// inside its claim transaction, without batches to report.
struct TelemetrySink {
    inner: Arc<dyn Sink>,
    owner: LocalPid,
}

impl TelemetrySink {
    fn started(&self, batch: &[Message]) -> (u64, Instant) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut topics: Vec<&str> = batch.iter().map(|m| m.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let _ = OwnedEnv::new().send_and_clear(&self.owner, |env| {
            (relaybox_relay_batch(), start(), id, batch.len(), topics).encode(env)
        });
        (id, Instant::now())
    }
}

fn finished(owner: &LocalPid, id: u64, began: Instant, results: &[relaybox::Result<()>]) {
    let delivered = results.iter().filter(|r| r.is_ok()).count();
    let duration = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = OwnedEnv::new().send_and_clear(owner, |env| {
        (
            relaybox_relay_batch(),
            stop(),
            id,
            results.len(),
            delivered,
            results.len() - delivered,
            duration,
        )
            .encode(env)
    });
}

#[async_trait::async_trait]
impl Sink for TelemetrySink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        let (id, began) = self.started(batch);
        let results = self.inner.publish(batch).await;
        finished(&self.owner, id, began, &results);
        results
    }

    async fn send(&self, batch: &[Message]) -> Acks {
        let (id, began) = self.started(batch);
        let acks = self.inner.send(batch).await;
        let owner = self.owner;
        Box::pin(async move {
            let results = acks.await;
            finished(&owner, id, began, &results);
            results
        })
    }

    fn unrecorded(&self, messages: &[&Message]) {
        self.inner.unrecorded(messages)
    }

    fn log_store(&self) -> Option<&relaybox::Store> {
        self.inner.log_store()
    }

    fn topics(&self) -> Option<&relaybox::Topics> {
        self.inner.topics()
    }

    async fn check(&self) -> relaybox::Result<()> {
        self.inner.check().await
    }
}

/// A running relay.
pub struct RelayResource {
    relay: Mutex<Option<Arc<Relay>>>,
}

impl RelayResource {
    fn take(&self) -> Option<Arc<Relay>> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn current(&self) -> Option<Arc<Relay>> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Shuts the relay down in the background, if it still runs.
    fn shutdown_in_background(&self) {
        if let Some(relay) = self.take() {
            relaybox::runtime::spawn(async move {
                let _ = relay.shutdown().await;
            });
        }
    }
}

impl Drop for RelayResource {
    fn drop(&mut self) {
        self.shutdown_in_background();
    }
}

#[rustler::resource_impl]
impl rustler::Resource for RelayResource {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.shutdown_in_background();
    }
}

/// Parses a transport setting: `"database"` or `%{"kafka" => %{...}}`.
pub fn transport(term: Term<'_>) -> relaybox::Result<TransportConfig> {
    TransportConfig::from_json(options_json(term, "transport")?)
}

/// Starts relaying `outbox` to `transport` with `config` (a map of relay
/// settings), owned by the calling process; `{:ok, relay}`.
#[rustler::nif(schedule = "DirtyIo")]
fn relay_start<'a>(
    env: Env<'a>,
    outbox: ResourceArc<OutboxResource>,
    transport_term: Term<'a>,
    config: Term<'a>,
) -> Term<'a> {
    guard(env, move |env| {
        let transport = transport(transport_term)?;
        let config = RelayConfig::from_json(options_json(config, "relay options")?)?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let store = outbox.store()?;
        let sink: Arc<dyn Sink> = Arc::new(TelemetrySink {
            inner: transport.sink(&store)?,
            owner: env.pid(),
        });
        let relay = Relay::start(store, sink, config)?;
        let resource = ResourceArc::new(RelayResource {
            relay: Mutex::new(Some(Arc::new(relay))),
        });
        resource.monitor(Some(env), &env.pid());
        Ok(resource.encode(env))
    })
}

/// Finishes the batch in flight, hands the partitions over and stops.
#[rustler::nif]
fn relay_stop<'a>(
    env: Env<'a>,
    relay: ResourceArc<RelayResource>,
    reference: Term<'a>,
) -> NifResult<Term<'a>> {
    let relay = relay.take();
    spawn_reply(
        env,
        reference,
        async move {
            if let Some(relay) = relay {
                relay.shutdown().await?;
            }
            Ok(())
        },
        |env, ()| crate::ok().encode(env),
    )
}

/// `{:ok, stats}`: delivered, retried, dead_lettered, batches, claims,
/// partitions_held, running and owner.
#[rustler::nif]
fn relay_stats<'a>(env: Env<'a>, relay: ResourceArc<RelayResource>) -> Term<'a> {
    guard(env, move |env| {
        let Some(relay) = relay.current() else {
            return Err(relaybox::Error::Closed { what: "relay" });
        };
        let s = relay.stats();
        Ok(RelayStats {
            delivered: s.delivered,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            batches: s.batches,
            claims: s.claims,
            partitions_held: s.partitions_held,
            running: relay.is_running(),
            owner: relay.owner().to_string(),
        }
        .encode(env))
    })
}

/// The map `relay_stats/1` returns.
#[derive(NifMap)]
#[rustler(encode)]
struct RelayStats {
    delivered: u64,
    retried: u64,
    dead_lettered: u64,
    batches: u64,
    claims: u64,
    partitions_held: u64,
    running: bool,
    owner: String,
}
