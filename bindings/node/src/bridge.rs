//! Running core futures for Node: every async export awaits its work on the
//! core's process runtime (never on the JavaScript thread), with panics caught
//! and reported as `InternalError` instead of aborting the process.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use relaybox::Error;

use crate::error::to_napi;

/// Runs `future` on the core runtime and returns its result, converted for Node.
pub async fn run<T, F>(future: F) -> napi::Result<T>
where
    F: Future<Output = relaybox::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let joined = relaybox::runtime::spawn(AssertUnwindSafe(future).catch_unwind()).await;
    let output = match joined {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(Error::from_panic(panic)),
        Err(join) => Err(Error::Internal {
            message: format!("the task did not finish: {join}"),
        }),
    };
    output.map_err(to_napi)
}

/// Runs a synchronous body with panics caught and errors converted for Node.
pub fn guard<T>(body: impl FnOnce() -> relaybox::Result<T>) -> napi::Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|panic| Err(Error::from_panic(panic)))
        .map_err(to_napi)
}
