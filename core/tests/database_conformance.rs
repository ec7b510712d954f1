//! The conformance suite against the database transport: the relay moves
//! messages into the store's own log table and consumers read it by
//! position. There is no broker to stop, so the outage scenario does not
//! apply.

#[macro_use]
mod common;
#[macro_use]
mod conformance;

use conformance::Broker;
use relaybox::TransportConfig;
use uuid::Uuid;

struct Database;

#[async_trait::async_trait]
impl Broker for Database {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Database
    }

    async fn dead_lettered(&self, _topic: &str, _group: &str) -> Option<Vec<Uuid>> {
        None
    }

    fn service(&self) -> &'static str {
        "postgres"
    }
}

conformance_tests!(Database);
