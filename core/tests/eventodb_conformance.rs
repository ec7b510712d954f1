//! The conformance suite against the EventoDB transport, served by the
//! in-test EventoDB server of `tests/eventodb_server` (EventoDB's own Go
//! server is not served by the Go module proxy). One server serves the whole
//! binary; the outage scenario closes it and listens again on its port.
#![cfg(feature = "eventodb")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;
mod eventodb_server;

use std::sync::Arc;

use conformance::Broker;
use eventodb_server::EventoDbServer;
use relaybox::transport::eventodb::EventoDbConfig;
use relaybox::TransportConfig;
use uuid::Uuid;

struct EventoDb {
    server: Arc<EventoDbServer>,
}

impl EventoDb {
    fn new() -> EventoDb {
        EventoDb {
            server: EventoDbServer::shared(),
        }
    }
}

#[async_trait::async_trait]
impl Broker for EventoDb {
    fn transport(&self) -> TransportConfig {
        let mut config = EventoDbConfig::new(self.server.url(), Some(&self.server.token));
        config.request_timeout = std::time::Duration::from_secs(2);
        TransportConfig::EventoDb(config)
    }

    async fn dead_lettered(&self, _topic: &str, _group: &str) -> Option<Vec<Uuid>> {
        None
    }

    fn service(&self) -> &'static str {
        "eventodb"
    }

    async fn stop(&self) {
        self.server.stop();
    }

    async fn start(&self) {
        self.server.start().await;
    }
}

conformance_tests!(EventoDb::new(), outage);
