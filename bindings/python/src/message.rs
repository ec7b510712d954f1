//! `relaybox._native.Message`: a delivered message as handlers see it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use relaybox::Message;

/// A message read from a broker or the database log (read-only).
#[pyclass(frozen, module = "relaybox._native", name = "Message")]
pub struct PyMessage(pub Message);

#[pymethods]
impl PyMessage {
    /// The message id (a UUID v7 string): the idempotency key.
    #[getter]
    fn id(&self) -> String {
        self.0.id.to_string()
    }

    /// The topic it was published to.
    #[getter]
    fn topic(&self) -> &str {
        &self.0.topic
    }

    /// The partition key, if any.
    #[getter]
    fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The event type (may be empty).
    #[getter]
    fn r#type(&self) -> &str {
        &self.0.event_type
    }

    /// The payload bytes, untouched.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.payload)
    }

    /// MIME type of the payload.
    #[getter]
    fn content_type(&self) -> &str {
        &self.0.content_type
    }

    /// String headers.
    #[getter]
    fn headers(&self) -> BTreeMap<String, String> {
        self.0.headers.clone()
    }

    /// When the message was created (UTC).
    #[getter]
    fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Earliest delivery time (UTC).
    #[getter]
    fn available_at(&self) -> DateTime<Utc> {
        self.0.available_at
    }

    /// The payload parsed as JSON (`json.loads`).
    fn json(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let payload = PyBytes::new(py, &self.0.payload);
        Ok(py
            .import("json")?
            .call_method1("loads", (payload,))?
            .unbind())
    }

    /// The canonical JSON form shared by every relaybox language.
    fn to_canonical_json(&self) -> String {
        self.0.to_canonical_json()
    }

    fn __repr__(&self) -> String {
        format!(
            "Message(id={:?}, topic={:?}, key={:?}, type={:?}, {} bytes)",
            self.0.id.to_string(),
            self.0.topic,
            self.0.key,
            self.0.event_type,
            self.0.payload.len()
        )
    }
}
