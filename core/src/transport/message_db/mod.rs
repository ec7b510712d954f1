//! The Message DB transport: a [`MessageDbSink`] that writes with
//! `write_message` and a [`MessageDbSource`] that reads a category with
//! `get_category_messages` and consumer groups, both through Message DB's
//! own SQL functions in PostgreSQL (https://github.com/message-db/message-db).
//!
//! On the wire a relaybox message is a plain Message DB message that any
//! Message DB client reads: stream `<topic>-<key>` (the topic is the
//! category; a keyless message gets its id as stream id), type = the event
//! type, data = the JSON payload, metadata = the headers (each a string
//! entry, so a `correlationStreamName` header is Message DB's correlation)
//! plus `relaybox: {key, contentType, createdAt}`; the message id is the
//! relaybox id. The [`mapping`] is shared with the EventoDB transport.

mod config;
pub mod mapping;
mod sink;
mod source;

pub use config::MessageDbConfig;
pub use sink::MessageDbSink;
pub use source::MessageDbSource;
#[cfg(feature = "eventodb")]
pub(crate) use source::Positions;
