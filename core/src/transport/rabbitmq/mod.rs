//! The RabbitMQ transport (lapin, AMQP 0-9-1): a [`RabbitMqSink`] for the
//! relay and a [`RabbitMqSource`] for the idempotent consumer.
//!
//! The relay publishes to one durable topic exchange with the message topic
//! as routing key, as persistent messages with publisher confirms: a message
//! counts as delivered once the broker acknowledged it. `correlation_id` is
//! the relaybox key, `message_id` the relaybox id, `type` the event type, and
//! the remaining envelope travels in AMQP headers (see [`codec`]). The body
//! is the payload untouched ([`Codec::Relaybox`]) or the JSON event envelope
//! of the `core.messaging` API ([`Codec::Envelope`]).
//!
//! A consumer group reads a durable queue `<group>.<topic>` bound to the
//! exchange with routing key = topic; dead letters go through a dead-letter
//! exchange into `<group>.<topic>.dlq`.

pub mod codec;
mod config;
mod sink;
mod source;

pub use codec::{
    message_from_delivery, Codec, HEADER_CREATED_AT, HEADER_ERROR, HEADER_ID, HEADER_TYPE,
};
pub use config::RabbitMqConfig;
pub use sink::RabbitMqSink;
pub use source::{RabbitMqSource, RabbitMqSourceConfig};

use crate::error::Error;

/// Transport name used in errors and logs.
pub(crate) const NAME: &str = "rabbitmq";

/// An AMQP error as a retryable relaybox transport error, with the URL's
/// password (should the library echo it) replaced by `***`.
pub(crate) fn amqp_error(
    config: &RabbitMqConfig,
    what: &str,
    err: &lapin::Error,
    message_id: Option<uuid::Uuid>,
) -> Error {
    transport_error(config, format!("{what}: {err}"), true, message_id)
}

/// A transport error whose text is scrubbed of the configured password.
pub(crate) fn transport_error(
    config: &RabbitMqConfig,
    message: String,
    retryable: bool,
    message_id: Option<uuid::Uuid>,
) -> Error {
    Error::Transport {
        transport: NAME.into(),
        message: config.scrub(&message),
        retryable,
        message_id,
    }
}
