//! Maps relaybox's one error type to the Python exception hierarchy of
//! `relaybox.errors`, carrying the machine-readable fields (`code`,
//! `retryable`, `message_id`); and Python exceptions raised by handlers back
//! to handler errors.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use relaybox::Error;

/// The `relaybox.errors` module, imported once.
static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Name of the `relaybox.errors` class for an error code.
fn class_name(code: &str) -> &'static str {
    match code {
        "invalid_topic" | "payload_too_large" | "invalid_header" | "invalid_message"
        | "invalid_value" => "ValidationError",
        "invalid_config" => "ConfigError",
        "closed" => "ClosedError",
        "schema" => "SchemaError",
        "database" => "StoreError",
        "transport" => "TransportError",
        "handler" => "HandlerError",
        "timeout" => "TimeoutError",
        "not_found" => "NotFoundError",
        _ => "InternalError",
    }
}

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("relaybox.errors")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// The Python exception for a relaybox error.
pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| build(py, &err).unwrap_or_else(|e| e))
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let module =
        errors_module(py).map_err(|_| PyRuntimeError::new_err(format!("relaybox: {err}")))?;
    let class = module
        .getattr(class_name(err.code()))?
        .cast_into::<PyType>()?;
    let instance = class.call1((err.to_string(),))?;
    instance.setattr("code", err.code())?;
    instance.setattr("retryable", err.retryable())?;
    instance.setattr("message_id", err.message_id().map(|id| id.to_string()))?;
    Ok(PyErr::from_value(instance))
}

/// Extension trait: `result.py()?` converts a relaybox result for Python.
pub trait IntoPyResult<T> {
    /// The result with its error converted to the matching Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for relaybox::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// An error raised by a Python handler, rendered for the dead-letter record:
/// `ExceptionType: message`. `relaybox.Reject` becomes [`relaybox::Rejected`].
pub fn handler_error(py: Python<'_>, err: PyErr) -> relaybox::BoxError {
    let value = err.value(py);
    let rendered = match (value.get_type().name(), value.str()) {
        (Ok(name), Ok(text)) if text.to_string().is_empty() => name.to_string(),
        (Ok(name), Ok(text)) => format!("{name}: {text}"),
        _ => "a Python exception that could not be rendered".to_string(),
    };
    let rejected = errors_module(py)
        .and_then(|m| m.getattr("Reject"))
        .and_then(|class| value.is_instance(&class))
        .unwrap_or(false);
    if rejected {
        let reason = value.str().map(|s| s.to_string()).unwrap_or(rendered);
        return Box::new(relaybox::Rejected::new(reason));
    }
    rendered.into()
}
