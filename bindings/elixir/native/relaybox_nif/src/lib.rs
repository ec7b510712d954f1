//! `relaybox_nif`: the rustler NIF under the `relaybox` Elixir package
//! (module `Relaybox.Native`). It converts terms, maps errors to
//! `%Relaybox.Error{}` and runs every call that touches the database or a
//! broker on the core's tokio runtime, sending the result to the calling
//! process; all delivery logic is in the `relaybox` crate.

mod bridge;
mod consumer;
mod convert;
mod error;
mod logging;
mod outbox;
mod relay;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod tx;

use rustler::{Env, Term};

use crate::bridge::guard;

rustler::atoms! {
    ok,
    error,
    nil,
    relaybox_message,
}

/// The schema of `dialect` (`"postgres"` or `"sqlite"`) as plain SQL.
#[rustler::nif]
fn schema_sql<'a>(env: Env<'a>, dialect: String, prefix: String, partitions: u32) -> Term<'a> {
    guard(env, move |env| {
        let dialect: relaybox::Dialect = dialect.parse()?;
        let sql = relaybox::schema::schema_sql(dialect, &prefix, partitions)?;
        Ok(convert::string(env, &sql))
    })
}

/// The message a spec describes, validated against the default limits, as
/// the map a consumer's handler would receive (without `"tx"`).
#[rustler::nif]
fn build_message<'a>(env: Env<'a>, spec: Term<'a>) -> Term<'a> {
    guard(env, move |env| {
        let message = convert::message_from_spec(spec)?;
        message.validate(&relaybox::Limits::default())?;
        Ok(convert::message_to_term(env, &message))
    })
}

/// `term` as JSON text (maps, lists, strings, numbers, booleans and `nil`).
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    guard(env, move |env| {
        let value = convert::term_to_json(term)?;
        Ok(convert::string(env, &value.to_string()))
    })
}

/// The term of JSON `text`: objects become maps with string keys.
#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Term<'a> {
    guard(env, move |env| {
        let value: serde_json::Value = serde_json::from_slice(text.as_slice())
            .map_err(|e| error::invalid_value(format!("not JSON: {e}")))?;
        Ok(convert::json_to_term(env, &value))
    })
}

/// The library version.
#[rustler::nif]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

rustler::init!("Elixir.Relaybox.Native");
