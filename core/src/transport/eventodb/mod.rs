//! The EventoDB transport: an [`EventoDbSink`] that writes with
//! `stream.write` and an [`EventoDbSource`] that reads a category with
//! `category.get` and consumer groups, over EventoDB's HTTP RPC API
//! (`POST /rpc`, `Authorization: Bearer <namespace token>`).
//!
//! EventoDB derives from Message DB, and a relaybox message maps onto it
//! the same way (see [`crate::transport::message_db`]): stream
//! `<topic>-<key>`, type, JSON data, metadata with the headers and the
//! `relaybox` envelope, the relaybox id as message id. EventoDB stores only
//! messages with a type and a JSON object as data: [`check_message`] says
//! whether a message qualifies.

mod client;
mod config;
mod sink;
mod source;

pub use config::{EventoDbConfig, Token};
pub use sink::{check_message, EventoDbSink};
pub use source::EventoDbSource;
