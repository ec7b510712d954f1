//! `NativeRelay`: a relay running on the core's threads.

use std::sync::Arc;

use napi::Result;
use napi_derive::napi;
use relaybox::{Relay, RelayConfig, TransportConfig};

use crate::bridge::{guard, run};
use crate::convert::parse_config;
use crate::store::NativeStore;

/// Counters of a relay.
#[napi(object)]
pub struct RelayStats {
    /// Messages the broker acknowledged.
    pub delivered: i64,
    /// Failed attempts scheduled for retry.
    pub retried: i64,
    /// Messages moved to dead letters.
    pub dead_lettered: i64,
    /// Batches published.
    pub batches: i64,
    /// Claims run against the outbox, those that found nothing included.
    pub claims: i64,
    /// Partitions held right now.
    pub partitions_held: i64,
}

/// A running relay.
#[napi]
pub struct NativeRelay(Arc<Relay>);

fn n(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[napi]
impl NativeRelay {
    /// Starts relaying `store`'s outbox to the transport (`"database"` or
    /// `{"kafka": {...}}` as JSON) with the relay settings (a JSON object).
    #[napi(factory, catch_unwind)]
    pub fn start(
        store: &NativeStore,
        transport_json: String,
        config_json: String,
    ) -> Result<NativeRelay> {
        guard(|| {
            let transport =
                TransportConfig::from_json(parse_config("transport", &transport_json)?)?;
            let config = RelayConfig::from_json(parse_config("relay config", &config_json)?)?;
            let runtime = relaybox::runtime::runtime();
            let _entered = runtime.enter();
            let sink = transport.sink(&store.0)?;
            Relay::start(store.0.clone(), sink, config).map(|relay| NativeRelay(Arc::new(relay)))
        })
    }

    /// This relay's instance id (lease owner).
    #[napi(getter, catch_unwind)]
    pub fn owner(&self) -> String {
        self.0.owner().to_string()
    }

    /// Whether it is still running.
    #[napi(getter, catch_unwind)]
    pub fn running(&self) -> bool {
        self.0.is_running()
    }

    /// Counters: delivered, retried, deadLettered, batches, claims, partitionsHeld.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> RelayStats {
        let s = self.0.stats();
        RelayStats {
            delivered: n(s.delivered),
            retried: n(s.retried),
            dead_lettered: n(s.dead_lettered),
            batches: n(s.batches),
            claims: n(s.claims),
            partitions_held: n(s.partitions_held),
        }
    }

    /// Finishes the batch in flight, hands its partitions over, and stops.
    #[napi(catch_unwind)]
    pub async fn shutdown(&self) -> Result<()> {
        let relay = self.0.clone();
        run(async move { relay.shutdown().await }).await
    }
}
