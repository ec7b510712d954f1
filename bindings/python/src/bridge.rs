//! Running core futures for Python: blocking calls release the GIL and run on
//! the process runtime; async calls return an `asyncio` future resolved from
//! the runtime through `loop.call_soon_threadsafe`. Panics become
//! `relaybox.InternalError`, never a Python `BaseException`.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::IntoPyObjectExt;
use relaybox::Error;

use crate::error::to_py;

/// `relaybox._bridge.resolve`, imported once.
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Runs `future` to completion with the GIL released.
pub fn blocking<T, F>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = relaybox::Result<T>> + Send,
    T: Send,
{
    py.detach(|| {
        relaybox::runtime::block_on(AssertUnwindSafe(future).catch_unwind())
            .unwrap_or_else(|panic| Err(Error::from_panic(panic)))
    })
    .map_err(to_py)
}

/// Converts a finished result to a Python object (called with the GIL held).
pub type Finish<T> = fn(Python<'_>, T) -> PyResult<Py<PyAny>>;

/// Returns an awaitable of the running event loop that resolves with
/// `finish(output)` once `future` completes on the process runtime.
pub fn awaitable<'py, T, F>(
    py: Python<'py>,
    future: F,
    finish: Finish<T>,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = relaybox::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_future = event_loop.call_method0("create_future")?;
    let resolve = RESOLVE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("relaybox._bridge")?.getattr("resolve")?.unbind())
        })?
        .clone_ref(py);
    let target = (event_loop.unbind(), py_future.clone().unbind());
    relaybox::runtime::spawn(async move {
        let output = AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::from_panic(panic)));
        Python::attach(|py| {
            let (ok, value) = match output.map_err(to_py).and_then(|v| finish(py, v)) {
                Ok(value) => (true, value),
                Err(err) => (false, err.into_value(py).into_any()),
            };
            let (event_loop, py_future) = target;
            // A closed loop has no one left waiting for the result.
            let _ = event_loop.call_method1(
                py,
                "call_soon_threadsafe",
                (resolve, py_future, ok, value),
            );
        });
    });
    Ok(py_future)
}

/// `finish` for calls that return nothing.
pub fn none(py: Python<'_>, (): ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

/// `finish` for any value with a Python conversion.
pub fn convert<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
where
    T: for<'py> IntoPyObject<'py>,
{
    value.into_py_any(py)
}
