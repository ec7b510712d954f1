//! The Kafka transport (librdkafka): a [`KafkaSink`] for the relay and a
//! [`KafkaSource`] for the idempotent consumer.
//!
//! On the wire a relaybox message is a plain Kafka record that any client can
//! read: the record key is the relaybox key (so Kafka partitions by it and
//! keeps its order), the value is the payload bytes untouched, and the
//! envelope travels in headers: `relaybox-id`, `relaybox-type`,
//! `content-type`, `relaybox-created-at`, then every user header (`source`,
//! `traceparent`, ...) under its own name.

mod codec;
mod config;
mod producer;
mod sink;
mod source;
mod transactions;

pub use codec::{
    message_from_record, HEADER_CONTENT_TYPE, HEADER_CREATED_AT, HEADER_ERROR, HEADER_ID,
    HEADER_TYPE,
};
pub use config::KafkaConfig;
pub use sink::KafkaSink;
pub use source::{KafkaSource, KafkaSourceConfig};

use crate::error::Error;

/// A Kafka error as a relaybox transport error (no configuration values in it).
///
/// Only errors about the record itself are permanent (not retryable): too
/// large, or invalid as a record. Authorization and configuration errors are
/// retryable: they are not the message's fault, and an operator can fix them
/// while the relay retries with backoff.
pub(crate) fn kafka_error(
    err: rdkafka::error::KafkaError,
    message_id: Option<uuid::Uuid>,
) -> Error {
    use rdkafka::error::RDKafkaErrorCode as C;
    let retryable = !matches!(
        err.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord)
    );
    Error::Transport {
        transport: "kafka".into(),
        message: err.to_string(),
        retryable,
        message_id,
    }
}
