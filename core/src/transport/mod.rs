//! Transports: sinks the relay publishes to and sources the consumer reads.
//! The database transport is built in; brokers plug in through the same
//! [`Sink`](crate::Sink) and [`Source`](crate::Source) traits.

pub mod cloudevents;
pub mod database;
mod select;

pub use select::{RouteConfig, TransportConfig};
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "eventodb")]
pub mod eventodb;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "message-db")]
pub mod message_db;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
