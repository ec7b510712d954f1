//! Running core work for Elixir without blocking a scheduler: quick calls
//! run inline under [`guard`]; anything that waits on I/O runs on the core's
//! runtime through [`spawn_reply`], which sends `{ref, result}` to the
//! calling process. Panics become `{:error, %Relaybox.Error{code: :internal}}`.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use relaybox::Error;
use rustler::{Encoder, Env, NifResult, OwnedEnv, Term};

use crate::error::error_tuple;

/// Runs a quick call; its error or panic becomes `{:error, %Relaybox.Error{}}`.
pub fn guard<'a, F>(env: Env<'a>, f: F) -> Term<'a>
where
    F: FnOnce(Env<'a>) -> relaybox::Result<Term<'a>>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(term)) => (crate::ok(), term).encode(env),
        Ok(Err(err)) => error_tuple(env, &err),
        Err(panic) => error_tuple(env, &Error::from_panic(panic)),
    }
}

/// Encodes the value of a finished call in the environment of the reply.
pub type Finish<T> = for<'b> fn(Env<'b>, T) -> Term<'b>;

/// Spawns `future` on the core's runtime and returns `:ok` at once; the
/// calling process later receives `{reference, {:ok, value}}` or
/// `{reference, {:error, %Relaybox.Error{}}}`.
pub fn spawn_reply<'a, T, F>(
    env: Env<'a>,
    reference: Term<'a>,
    future: F,
    finish: Finish<T>,
) -> NifResult<Term<'a>>
where
    F: Future<Output = relaybox::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let pid = env.pid();
    let owned = OwnedEnv::new();
    let saved = owned.save(reference);
    relaybox::runtime::spawn(async move {
        let result = AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::from_panic(panic)));
        let mut owned = owned;
        let sent = std::panic::catch_unwind(AssertUnwindSafe(|| {
            owned.send_and_clear(&pid, |env| {
                let reference = saved.load(env);
                let payload = match result {
                    Ok(value) => (crate::ok(), finish(env, value)).encode(env),
                    Err(err) => error_tuple(env, &err),
                };
                (reference, payload).encode(env)
            })
        }));
        if sent.is_err() {
            // Encoding the value panicked: still answer, so the caller never waits forever.
            let err = Error::Internal {
                message: "the result could not be converted to Elixir terms".into(),
            };
            let _ = owned.send_and_clear(&pid, |env| {
                (saved.load(env), error_tuple(env, &err)).encode(env)
            });
        }
    });
    Ok(crate::ok().to_term(env))
}
