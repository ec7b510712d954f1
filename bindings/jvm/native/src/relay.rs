//! `Relay`: moves committed outbox rows to the transport on the core's
//! threads. `stop` shuts it down gracefully; `close()` (AutoCloseable) does
//! the same if it is still running, then releases the handle.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use relaybox::{RelayConfig, TransportConfig};

use crate::bridge::{blocking, guard, run};
use crate::convert::parse_json;
use crate::error::RelayboxError;
use crate::outbox::Outbox;

/// Counters of a relay since it started.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RelayStats {
    /// Messages the broker acknowledged.
    pub delivered: i64,
    /// Failed deliveries that will be retried.
    pub retried: i64,
    /// Messages moved to dead letters.
    pub dead_lettered: i64,
    /// Batches published.
    pub batches: i64,
    /// Claims run against the outbox, those that found nothing included.
    pub claims: i64,
    /// Outbox partitions this relay holds a lease on.
    pub partitions_held: i64,
}

/// The transport of `text`: a JSON transport setting, or a bare name
/// (`database`) standing for the JSON string of that name.
pub fn parse_transport(text: &str) -> relaybox::Result<TransportConfig> {
    let trimmed = text.trim();
    let value = if trimmed.starts_with(['{', '"']) {
        parse_json("transport", trimmed)?
    } else {
        serde_json::Value::String(trimmed.to_string())
    };
    TransportConfig::from_json(value)
}

/// A counter as a JVM `long`.
pub fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A running relay.
#[derive(uniffi::Object)]
pub struct Relay {
    relay: Arc<relaybox::Relay>,
}

/// Stops `stop` on the core runtime: waits for it from a JVM thread, or lets
/// it finish in the background when dropped on a runtime thread.
pub fn stop_on_drop<F>(stop: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        relaybox::runtime::spawn(stop);
    } else {
        let _ = catch_unwind(AssertUnwindSafe(|| relaybox::runtime::block_on(stop)));
    }
}

#[uniffi::export]
impl Relay {
    /// Starts relaying `outbox` to the transport: `database` or
    /// `{"kafka": {"bootstrap_servers": "..."}}` (JSON); `configJson` holds
    /// the relay settings as a JSON object (`"{}"` for the defaults).
    #[uniffi::constructor(default(transport_json = "database", config_json = "{}"))]
    pub fn start(
        outbox: Arc<Outbox>,
        transport_json: String,
        config_json: String,
    ) -> Result<Arc<Self>, RelayboxError> {
        guard(|| {
            let transport = parse_transport(&transport_json)?;
            let config = RelayConfig::from_json(parse_json("relay config", &config_json)?)?;
            let runtime = relaybox::runtime::runtime();
            let _entered = runtime.enter();
            let sink = transport.sink(&outbox.store)?;
            let relay = relaybox::Relay::start(outbox.store.clone(), sink, config)?;
            Ok(Arc::new(Relay {
                relay: Arc::new(relay),
            }))
        })
    }

    /// This relay's instance id (the lease owner).
    pub fn owner(&self) -> String {
        self.relay.owner().to_string()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.relay.is_running()
    }

    /// Counters since start.
    pub fn stats(&self) -> RelayStats {
        let s = self.relay.stats();
        RelayStats {
            delivered: count(s.delivered),
            retried: count(s.retried),
            dead_lettered: count(s.dead_lettered),
            batches: count(s.batches),
            claims: count(s.claims),
            partitions_held: count(s.partitions_held),
        }
    }

    /// Finishes the batch in flight, hands its partitions over and stops.
    pub async fn stop(&self) -> Result<(), RelayboxError> {
        let relay = self.relay.clone();
        run(async move { relay.shutdown().await }).await
    }

    /// `stop`, blocking the calling thread.
    pub fn stop_blocking(&self) -> Result<(), RelayboxError> {
        blocking(self.relay.shutdown())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let relay = self.relay.clone();
        stop_on_drop(async move {
            let _ = relay.shutdown().await;
        });
    }
}
