//! The conformance suite against the real EventoDB server (its Go server on
//! its PostgreSQL backend), including an outage: the scenario stops and
//! starts it with `dev/services stop|start eventodb`, its messages staying
//! in PostgreSQL.
//!
//! EventoDB keeps message ids unique: the sink's second publish of a
//! message finds it stored and reports it delivered, so in
//! `deduplicates_a_message_delivered_twice` no second copy reaches the
//! consumer (`tests/eventodb.rs` checks that the stream holds each message
//! once).
//!
//! Needs `RELAYBOX_EVENTODB_URL` and `RELAYBOX_EVENTODB_TOKEN`
//! (`dev/services start postgres eventodb && eval "$(dev/services env)"`);
//! fails, never skips, without them.
#![cfg(feature = "eventodb")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;

use conformance::{Broker, SECRET};
use relaybox::transport::eventodb::EventoDbConfig;
use relaybox::TransportConfig;

struct EventoDb {
    url: String,
    token: String,
}

impl EventoDb {
    fn new() -> EventoDb {
        let var = |name: &str| match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => panic!(
                "{name} is not set: the EventoDB conformance tests run against the real \
                 EventoDB server and are never skipped; run `dev/services start postgres \
                 eventodb && eval \"$(dev/services env)\"`"
            ),
        };
        EventoDb {
            url: var("RELAYBOX_EVENTODB_URL"),
            token: var("RELAYBOX_EVENTODB_TOKEN"),
        }
    }
}

#[async_trait::async_trait]
impl Broker for EventoDb {
    fn transport(&self) -> TransportConfig {
        let mut config = EventoDbConfig::new(&self.url, Some(&self.token));
        config.request_timeout = std::time::Duration::from_secs(2);
        TransportConfig::EventoDb(config)
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        vec![
            (
                json!({"eventodb": {"url": "127.0.0.1:8080"}}),
                "eventodb.url",
            ),
            (
                json!({"eventodb": {"url": "http://127.0.0.1:1", "token": "a b"}}),
                "eventodb.token",
            ),
            (
                json!({"eventodb": {"url": "http://127.0.0.1:1", "consumer_group_size": 0}}),
                "eventodb.consumer_group_member",
            ),
            (
                json!({"eventodb": {"url": "http://127.0.0.1:1", "correlation": "a-b"}}),
                "eventodb.correlation",
            ),
        ]
    }

    /// A token of the namespace's shape that the server refuses, and a
    /// server nobody answers for.
    fn secret_configs(&self) -> Vec<TransportConfig> {
        let prefix = self.token.rsplit_once('_').map_or("ns", |(p, _)| p);
        [
            (self.url.clone(), format!("{prefix}_{SECRET}")),
            ("http://127.0.0.1:1".to_string(), SECRET.to_string()),
        ]
        .into_iter()
        .map(|(url, token)| {
            let mut config = EventoDbConfig::new(url, Some(&token));
            config.request_timeout = std::time::Duration::from_secs(2);
            TransportConfig::EventoDb(config)
        })
        .collect()
    }

    fn stores_each_id_once(&self) -> bool {
        true
    }

    fn service(&self) -> &'static str {
        "eventodb"
    }
}

conformance_tests!(EventoDb::new(), outage);
