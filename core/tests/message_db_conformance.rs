//! The conformance suite against Message DB in the dev PostgreSQL, including
//! an outage: `dev/services stop messagedb` makes the Message DB database
//! refuse connections (the relaybox store beside it keeps running) and
//! `start` lets them in again.
//!
//! Message DB keeps message ids unique: the sink's second publish of a
//! message is a no-op reported as delivered, so in
//! `deduplicates_a_message_delivered_twice` no second copy reaches the
//! consumer (`tests/message_db.rs` checks that the stream holds each message
//! once).
//!
//! Needs `RELAYBOX_MESSAGE_DB_URL` (`dev/services start postgres messagedb
//! && eval "$(dev/services env)"`); fails, never skips, without it.
#![cfg(feature = "message-db")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;

use conformance::{Broker, SECRET};
use relaybox::transport::message_db::MessageDbConfig;
use relaybox::TransportConfig;

struct MessageDb {
    url: String,
}

impl MessageDb {
    fn new() -> MessageDb {
        match std::env::var("RELAYBOX_MESSAGE_DB_URL") {
            Ok(url) if !url.trim().is_empty() => MessageDb { url },
            _ => panic!(
                "RELAYBOX_MESSAGE_DB_URL is not set; run `dev/services start postgres messagedb \
                 && eval \"$(dev/services env)\"`"
            ),
        }
    }
}

#[async_trait::async_trait]
impl Broker for MessageDb {
    fn transport(&self) -> TransportConfig {
        TransportConfig::MessageDb(MessageDbConfig::new(&self.url))
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        vec![
            (
                json!({"message_db": {"url": "mysql://x/y"}}),
                "message_db.url",
            ),
            (
                json!({"message_db": {"consumer_group_size": 0}}),
                "message_db.consumer_group_member",
            ),
            (
                json!({"message_db": {"correlation": "a-b"}}),
                "message_db.correlation",
            ),
        ]
    }

    /// The Message DB database at an address nobody answers on, with the
    /// secret as its password (the test server trusts local users and would
    /// accept any password).
    fn secret_configs(&self) -> Vec<TransportConfig> {
        let url = format!("postgres://message_store:{SECRET}@127.0.0.1:1/message_store");
        vec![TransportConfig::MessageDb(MessageDbConfig::new(url))]
    }

    fn stores_each_id_once(&self) -> bool {
        true
    }

    fn service(&self) -> &'static str {
        "messagedb"
    }
}

conformance_tests!(MessageDb::new(), outage);
