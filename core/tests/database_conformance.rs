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

struct Database;

#[async_trait::async_trait]
impl Broker for Database {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Database
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        vec![
            (json!("nats"), "transport"),
            (json!({"databse": {}}), "transport"),
        ]
    }

    /// None: the transport writes through the store's own connection.
    fn secret_configs(&self) -> Vec<TransportConfig> {
        Vec::new()
    }

    fn service(&self) -> &'static str {
        "postgres"
    }
}

// Every scenario but the outage (no broker to stop) and the secrets (the
// transport holds none of its own: it writes through the store's
// connection, whose URL tests/bad_input.rs checks).
conformance_tests!(@tests Database;
    delivers_each_committed_message_once,
    keeps_the_order_of_each_key,
    deduplicates_a_message_delivered_twice,
    redelivers_what_a_stopped_consumer_left_unacknowledged,
    dead_letters_a_poison_message_and_moves_on,
    refuses_bad_configs_naming_the_field);
