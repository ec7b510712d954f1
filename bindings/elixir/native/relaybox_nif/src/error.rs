//! Every error a NIF returns, in one place: relaybox's one error type
//! becomes the `%Relaybox.Error{}` exception struct with its
//! machine-readable fields (`code` as an atom, `retryable`, `message_id`),
//! and [`OrFail`] turns a `relaybox::Result` into a [`NifResult`] whose
//! error the NIF returns as `{:error, %Relaybox.Error{}}`, so a NIF checks
//! its arguments with `?`.

use relaybox::Error;
use rustler::{Atom, Encoder, Env, NifException, NifResult, Term};

/// An error code, encoded as the atom of the same name (`:invalid_topic`).
struct Code(&'static str);

impl Encoder for Code {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        Atom::from_str(env, self.0)
            .expect("error codes are valid atoms")
            .encode(env)
    }
}

/// `%Relaybox.Error{}` (see `Relaybox.Error`), built from a [`relaybox::Error`].
#[derive(NifException)]
#[module = "Relaybox.Error"]
#[rustler(encode)]
pub struct ElixirError {
    code: Code,
    message: String,
    retryable: bool,
    message_id: Option<String>,
}

impl From<&Error> for ElixirError {
    fn from(err: &Error) -> Self {
        ElixirError {
            code: Code(err.code()),
            message: err.to_string(),
            retryable: err.retryable(),
            message_id: err.message_id().map(|id| id.to_string()),
        }
    }
}

/// `{:error, %Relaybox.Error{}}` for `err`.
pub fn error_tuple<'a>(env: Env<'a>, err: &Error) -> Term<'a> {
    (crate::error(), ElixirError::from(err)).encode(env)
}

/// A `relaybox::Result` as a [`NifResult`]: an error is returned from the
/// NIF as `{:error, %Relaybox.Error{}}`.
pub trait OrFail<T> {
    /// The value, or the error the NIF returns with `?`.
    fn or_fail(self) -> NifResult<T>;
}

impl<T> OrFail<T> for relaybox::Result<T> {
    fn or_fail(self) -> NifResult<T> {
        self.map_err(|err| rustler::Error::Term(Box::new(ElixirError::from(&err))))
    }
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
