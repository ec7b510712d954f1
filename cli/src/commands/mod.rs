//! One module per `relaybox` subcommand, each with its clap arguments and a
//! `run` function.

pub mod console;
pub mod consumer;
pub mod dead_letters;
pub mod migrate;
pub mod relay;
pub mod schema;
pub mod status;
pub mod tail;
