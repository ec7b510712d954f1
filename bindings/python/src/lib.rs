//! `relaybox._native`: the thin pyo3 layer under the `relaybox` Python
//! package. It converts values, maps errors to `relaybox.errors` and bridges
//! the core's async calls to blocking (GIL released) and awaitable forms; all
//! delivery logic is in the `relaybox` crate. Importing it routes the core's
//! logs into Python's `logging` (see [`logging`]).

mod bridge;
mod consumer;
mod convert;
mod error;
mod logging;
mod message;
mod relay;
mod store;
mod transaction;

use pyo3::prelude::*;

use crate::error::IntoPyResult;

/// The schema of `dialect` (`"postgres"` or `"sqlite"`) as plain SQL, for
/// users who apply migrations with their own tool.
#[pyfunction]
#[pyo3(signature = (dialect, table_prefix="relaybox_", partitions=16))]
fn schema_sql(dialect: &str, table_prefix: &str, partitions: u32) -> PyResult<String> {
    let dialect: relaybox::Dialect = dialect.parse().py()?;
    relaybox::schema::schema_sql(dialect, table_prefix, partitions).py()
}

/// Runs the `relaybox` command line `argv` (program name first) with the GIL
/// released; returns its exit status (0 ok, 1 failure, 2 usage). The same
/// command as the `relaybox` binary: `relaybox.cli` calls it for every
/// subcommand but `consumer`.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    logging::refresh(py);
    py.detach(|| std::panic::catch_unwind(|| relaybox_cli::main_with(argv)))
        .map_err(|panic| error::to_py(relaybox::Error::from_panic(panic)))
}

/// Parses a message from its canonical JSON form.
#[pyfunction]
fn message_from_canonical_json(text: &str) -> PyResult<message::PyMessage> {
    relaybox::Message::from_canonical_json(text)
        .map(message::PyMessage)
        .py()
}

/// The message a spec dict describes, validated against the default limits,
/// in canonical JSON (what `enqueue` would store).
#[pyfunction]
fn canonical_json_of(spec: &Bound<'_, pyo3::types::PyDict>) -> PyResult<String> {
    let message = convert::message_from_spec(spec)?;
    message.validate(&relaybox::Limits::default()).py()?;
    Ok(message.to_canonical_json())
}

/// The outbox partition of a message key among `partitions` (CRC-32 of the
/// key, modulo the count), as every relaybox language computes it.
#[pyfunction]
fn partition_for_key(key: &str, partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(error::to_py(relaybox::Error::InvalidValue {
            reason: "partitions must be at least 1".into(),
        }));
    }
    Ok(relaybox::partition::partition_for(
        Some(key),
        &uuid::Uuid::nil(),
        partitions,
    ))
}

/// Panics inside the core's runtime, for tests that check a panic reaches
/// Python as `relaybox.InternalError`; `awaitable` selects the async path.
/// A test hook: in the module only when built with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[pyfunction]
#[pyo3(signature = (message, awaitable=false))]
fn _panic_for_tests<'py>(
    py: Python<'py>,
    message: String,
    awaitable: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let fail = async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    };
    if awaitable {
        bridge::awaitable(py, fail, bridge::none)
    } else {
        bridge::blocking(py, fail).map(|()| py.None().into_bound(py))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<transaction::PyTransaction>()?;
    m.add_class::<relay::PyRelay>()?;
    m.add_class::<consumer::PyConsumer>()?;
    m.add_class::<message::PyMessage>()?;
    m.add_function(wrap_pyfunction!(schema_sql, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(message_from_canonical_json, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_json_of, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for_key, m)?)?;
    #[cfg(feature = "test-hooks")]
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_logging_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_logging_stats, m)?)?;
    #[cfg(feature = "test-hooks")]
    m.add_function(wrap_pyfunction!(logging::_log_for_tests, m)?)?;
    if let Err(err) = logging::install(m) {
        // Logging must not stand between the user and relaybox: warn and go on.
        let text = format!("relaybox could not forward its logs to Python logging: {err}");
        let category = m.py().get_type::<pyo3::exceptions::PyRuntimeWarning>();
        PyErr::warn(m.py(), &category, &std::ffi::CString::new(text)?, 1)?;
    }
    Ok(())
}
