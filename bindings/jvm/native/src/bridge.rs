//! Running core futures for the JVM. Suspending calls spawn the work on the
//! core's one process-wide runtime and await its `JoinHandle` (uniffi polls
//! that from Kotlin coroutines); blocking calls run it with `block_on` on the
//! calling JVM thread. Panics become `RelayboxException.Internal`.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures::FutureExt;
use relaybox::Error;

use crate::error::RelayboxError;

/// Awaits `future` run on the core runtime (the body of every `suspend` call).
pub async fn run<T, F>(future: F) -> Result<T, RelayboxError>
where
    F: Future<Output = relaybox::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match relaybox::runtime::spawn(future).await {
        Ok(result) => result.map_err(RelayboxError::from),
        Err(join) if join.is_panic() => Err(Error::from_panic(join.into_panic()).into()),
        Err(join) => Err(Error::Internal {
            message: format!("the task was cancelled: {join}"),
        }
        .into()),
    }
}

/// Runs `future` to completion on the core runtime, blocking this thread
/// (the body of every `...Blocking` call).
pub fn blocking<T, F>(future: F) -> Result<T, RelayboxError>
where
    F: Future<Output = relaybox::Result<T>>,
{
    catch_unwind(AssertUnwindSafe(|| {
        relaybox::runtime::block_on(AssertUnwindSafe(future).catch_unwind())
    }))
    .and_then(|caught| caught)
    .unwrap_or_else(|panic| Err(Error::from_panic(panic)))
    .map_err(RelayboxError::from)
}

/// Runs a synchronous piece of binding code, turning a panic into an error.
pub fn guard<T>(f: impl FnOnce() -> relaybox::Result<T>) -> Result<T, RelayboxError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(Error::from_panic(panic)))
        .map_err(RelayboxError::from)
}
