//! relaybox: reliable event delivery from an application's database to a
//! message broker.
//!
//! - **Transactional outbox**: write events in the same transaction as your
//!   business rows ([`Store::enqueue`] into your own sqlx transaction, or an
//!   owned [`Transaction`]).
//! - **Relay**: [`Relay`] moves committed rows to a [`Sink`] in order per key,
//!   sharing partitions between instances through leases.
//! - **Idempotent consumer**: [`Consumer`] reads a [`Source`] and records each
//!   message id in an inbox in the same transaction as the handler's writes.
//!
//! The database transport ([`transport::database`]) makes the whole flow work
//! on SQLite or PostgreSQL alone. See `docs/architecture.md`.
//!
//! # Features
//!
//! The stores and the database transport are always compiled in. Each
//! broker transport is a feature: `kafka` (librdkafka, built from source),
//! `rabbitmq` (lapin), `redis`, `aws` (SNS and SQS, AWS SDK), `message-db`
//! and `eventodb`; `full` turns on all of them. A transport configured but
//! not compiled in is an [`Error::InvalidConfig`] naming the feature.
//! `otlp` exports spans over OTLP ([`telemetry::otlp`]; in `full`).
//! `log-forward` hands the core's log records to a host's logging (the
//! language bindings use it).

mod backoff;
mod batch_sizer;
pub mod consumer;
pub mod consumer_host;
pub mod duration;
pub mod error;
pub mod health;
#[cfg(feature = "log-forward")]
pub mod log_forward;
pub mod message;
pub mod metrics;
pub mod partition;
pub mod redact;
pub mod relay;
pub mod route;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod transaction;
pub mod transport;
pub mod validate;
pub mod value;
mod wake;

pub use consumer::{handler_fn, Consumer, ConsumerConfig, ConsumerStats, Handler, Rejected};
pub use consumer_host::{
    host_handler_fn, HostDelivery, HostHandler, HostOutcome, HostRun, HostRunOutcome,
};
pub use error::{BoxError, Error, Result};
pub use health::Health;
pub use message::Message;
pub use redact::DatabaseUrl;
pub use relay::{Relay, RelayConfig, RelayStats};
pub use route::{Route, RoutedSink, TopicPattern, Topics};
pub use schema::Dialect;
pub use sink::{Acks, Sink, TransactionalSink};
pub use source::{AckToken, Delivery, Source};
pub use spec::MessageSpec;
pub use store::{
    DeadLetter, DeadLetterFilter, InboxStatement, InsertStatement, ParkedKey, Placeholders, Status,
    Store, StoreOptions,
};
pub use transaction::Transaction;
pub use transport::database::{DatabaseSink, DatabaseSource, DatabaseSourceConfig, StartFrom};
pub use transport::TransportConfig;
pub use validate::Limits;
pub use value::{Row, Value};

/// Re-exported so callers use the same sqlx as relaybox.
pub use sqlx;
