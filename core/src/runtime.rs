//! The process-wide tokio runtime that bindings run relaybox on: built on
//! first use, and built anew in a child process after `fork()` (the parent's
//! worker threads do not exist there).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime of this process, created on first call.
///
/// Handles (stores, relays) created before a `fork()` belong to the parent's
/// runtime; a child process opens its own.
pub fn runtime() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return rt.clone();
        }
    }
    if let Some((_, inherited)) = slot.take() {
        // The parent's worker threads are gone; dropping would wait for them forever.
        std::mem::forget(inherited);
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
            .thread_name("relaybox")
            .enable_all()
            .build()
            .expect("the relaybox runtime could not start"),
    );
    *slot = Some((pid, rt.clone()));
    rt
}

/// Runs `future` to completion on the process runtime, blocking this thread.
/// Call it from a host-language thread (with the GIL released), never from
/// inside the runtime itself.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// The runtime the caller is running on, or a clear error when there is none.
pub fn current() -> crate::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        crate::Error::internal(
            "must be called from within a tokio runtime (or through relaybox::runtime::block_on)",
        )
    })
}

/// Spawns `future` on the process runtime.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(future)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_runtime_per_process() {
        let a = super::runtime();
        let b = super::runtime();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(super::block_on(async { 1 + 1 }), 2);
    }
}
