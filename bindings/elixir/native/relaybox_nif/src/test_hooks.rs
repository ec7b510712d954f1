//! The NIF's test hook `panic_for_tests`, compiled only with the cargo
//! feature `test-hooks` (the test environment's build, see mix.exs); the
//! log hook `log_for_tests` is in `logging`.

use rustler::{Env, NifResult, Term};

use crate::bridge::{guard, spawn_reply};
use crate::ok;

/// Panics for tests that check a panic reaches Elixir as an internal error:
/// `"sync"` panics in the NIF itself, `"async"` on the core's runtime (the
/// result is then sent to the caller as `{ref, result}`).
#[rustler::nif]
fn panic_for_tests<'a>(env: Env<'a>, mode: String, reference: Term<'a>) -> NifResult<Term<'a>> {
    if mode == "async" {
        return spawn_reply(
            env,
            reference,
            async move {
                if !mode.is_empty() {
                    panic!("requested by the test");
                }
                Ok(())
            },
            |env, ()| ok().to_term(env),
        );
    }
    Ok(guard(env, |_env| -> relaybox::Result<Term<'a>> {
        panic!("requested by the test")
    }))
}
