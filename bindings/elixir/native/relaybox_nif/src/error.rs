//! Maps relaybox's one error type to the `%Relaybox.Error{}` exception
//! struct, carrying the machine-readable fields (`code` as an atom,
//! `retryable`, `message_id`).

use relaybox::Error;
use rustler::{Atom, Encoder, Env, Term};

rustler::atoms! {
    __struct__,
    __exception__,
    code,
    message,
    retryable,
    message_id,
}

/// `%Relaybox.Error{}` for `err`.
pub fn error_struct<'a>(env: Env<'a>, err: &Error) -> Term<'a> {
    let module = Atom::from_str(env, "Elixir.Relaybox.Error")
        .expect("atom")
        .encode(env);
    let code_atom = Atom::from_str(env, err.code()).expect("atom").encode(env);
    let id = match err.message_id() {
        Some(id) => id.to_string().encode(env),
        None => crate::nil().encode(env),
    };
    let keys = [
        __struct__().encode(env),
        __exception__().encode(env),
        code().encode(env),
        message().encode(env),
        retryable().encode(env),
        message_id().encode(env),
    ];
    let values = [
        module,
        true.encode(env),
        code_atom,
        err.to_string().encode(env),
        err.retryable().encode(env),
        id,
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// `{:error, %Relaybox.Error{}}` for `err`.
pub fn error_tuple<'a>(env: Env<'a>, err: &Error) -> Term<'a> {
    (crate::error(), error_struct(env, err)).encode(env)
}

/// An invalid value given by the caller.
pub fn invalid_value(reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        reason: reason.into(),
    }
}

/// An invalid option given by the caller.
pub fn invalid_config(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}
