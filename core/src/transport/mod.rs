//! Transports: sinks the relay publishes to and sources the consumer reads.
//! The database transport is built in; brokers plug in through the same
//! [`Sink`](crate::Sink) and [`Source`](crate::Source) traits.

pub mod database;
mod select;

pub use select::TransportConfig;
#[cfg(feature = "kafka")]
pub mod kafka;
