//! Conversions between Python objects and core types: SQL parameters and
//! result values, message specifications, JSON-shaped reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use relaybox::{Message, Value};
use uuid::Uuid;

/// A SQL parameter from a Python value: `None`, `bool`, `int`, `float`,
/// `str`, `bytes`/`bytearray`, `uuid.UUID`, an aware `datetime`, or a
/// `dict`/`list` (sent as JSON).
pub fn value_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj
            .extract::<i64>()
            .map(Value::Int)
            .map_err(|_| value_error("an int parameter must fit in 64 bits"));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.extract()?));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Value::Text(obj.extract()?));
    }
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Ok(Value::Bytes(obj.extract()?));
    }
    if obj.is_instance_of::<PyDict>() || obj.is_instance_of::<PyList>() {
        let text: String = obj
            .py()
            .import("json")?
            .call_method1("dumps", (obj,))?
            .extract()?;
        let json = serde_json::from_str(&text).map_err(|e| value_error(&e.to_string()))?;
        return Ok(Value::Json(json));
    }
    let type_name = obj.get_type().name()?.to_string();
    match type_name.as_str() {
        "UUID" => {
            let text: String = obj.str()?.extract()?;
            let id = Uuid::parse_str(&text).map_err(|e| value_error(&e.to_string()))?;
            Ok(Value::Uuid(id))
        }
        "datetime" => Ok(Value::Timestamp(aware_datetime(obj)?)),
        _ => Err(value_error(&format!(
            "unsupported SQL parameter type {type_name}; use None, bool, int, float, str, \
             bytes, uuid.UUID, an aware datetime, dict or list"
        ))),
    }
}

/// SQL parameters from a Python sequence (or `None` for none).
pub fn params_from_py(params: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Value>> {
    let Some(params) = params else {
        return Ok(Vec::new());
    };
    if params.is_none() {
        return Ok(Vec::new());
    }
    if params.is_instance_of::<PyString>() || params.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(
            "params must be a sequence (list or tuple) of positional parameters",
        ));
    }
    params
        .try_iter()?
        .map(|item| value_from_py(&item?))
        .collect()
}

fn aware_datetime(obj: &Bound<'_, PyAny>) -> PyResult<DateTime<Utc>> {
    if obj.getattr("tzinfo")?.is_none() {
        return Err(value_error("a datetime parameter must be timezone-aware"));
    }
    obj.extract::<DateTime<Utc>>()
}

/// A `relaybox.ValidationError` for a bad value.
fn value_error(reason: &str) -> PyErr {
    crate::error::to_py(relaybox::Error::InvalidValue {
        reason: reason.to_string(),
    })
}

/// A result value as a Python object (`jsonb` columns become dicts/lists).
pub fn value_to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        Value::Text(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any().unbind(),
        Value::Json(j) => json_to_py(py, j)?,
        Value::Uuid(u) => py
            .import("uuid")?
            .getattr("UUID")?
            .call1((u.to_string(),))?
            .unbind(),
        Value::Timestamp(t) => t.into_pyobject(py)?.into_any().unbind(),
    })
}

/// Any serde-serialisable report (status, dead letters) as Python objects.
pub fn json_to_py(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let text = value.to_string();
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// Rows as a list of dicts, column name to value.
pub fn rows_to_py(py: Python<'_>, rows: Vec<relaybox::Row>) -> PyResult<Py<PyAny>> {
    let list = PyList::empty(py);
    for row in rows {
        let dict = PyDict::new(py);
        for (column, value) in row.columns.iter().zip(&row.values) {
            dict.set_item(column, value_to_py(py, value)?)?;
        }
        list.append(dict)?;
    }
    Ok(list.into_any().unbind())
}

/// Parameters of an INSERT statement as a Python tuple.
pub fn params_to_py<'py>(py: Python<'py>, params: &[Value]) -> PyResult<Bound<'py, PyTuple>> {
    let items = params
        .iter()
        .map(|v| value_to_py(py, v))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, items)
}

/// A message from the keyword form the Python package builds:
/// `topic`, `payload` (bytes), and optional `key`, `type`, `content_type`,
/// `headers` (str → str), `delay` (seconds), `created_at` and `available_at`
/// (aware datetimes), `id` (a UUID string), `idempotency_key`.
pub fn message_from_spec(spec: &Bound<'_, PyDict>) -> PyResult<Message> {
    let topic: String = required(spec, "topic")?;
    let payload: Vec<u8> = match spec.get_item("payload")? {
        Some(p) if p.is_instance_of::<PyBytes>() || p.is_instance_of::<PyByteArray>() => {
            p.extract()?
        }
        Some(p) => {
            return Err(PyTypeError::new_err(format!(
                "payload must be bytes here, not {}",
                p.get_type().name()?
            )))
        }
        None => return Err(PyTypeError::new_err("a message needs a payload")),
    };
    let mut message = Message::new(topic, payload);
    if let Some(key) = optional::<String>(spec, "key")? {
        message = message.with_key(key);
    }
    if let Some(key) = optional::<String>(spec, "idempotency_key")? {
        message = message.with_idempotency_key(key);
    }
    if let Some(event_type) = optional::<String>(spec, "type")? {
        message = message.with_type(event_type);
    }
    if let Some(content_type) = optional::<String>(spec, "content_type")? {
        message = message.with_content_type(content_type);
    }
    if let Some(headers) = optional::<BTreeMap<String, String>>(spec, "headers")? {
        message.headers.extend(headers);
    }
    if let Some(delay) = optional::<f64>(spec, "delay")? {
        if !(delay.is_finite() && delay >= 0.0) {
            return Err(crate::error::to_py(relaybox::Error::InvalidMessage {
                field: "available_at",
                reason: "delay must be a finite number of seconds, zero or more".into(),
            }));
        }
        message = message.delayed_by(std::time::Duration::from_secs_f64(delay));
    }
    if let Some(at) = spec.get_item("created_at")?.filter(|v| !v.is_none()) {
        let at = aware_datetime(&at)?;
        let delay = message.available_at - message.created_at;
        message.created_at = at;
        message.available_at = at + delay;
    }
    if let Some(at) = spec.get_item("available_at")?.filter(|v| !v.is_none()) {
        message = message.available_at(aware_datetime(&at)?);
    }
    if let Some(id) = optional::<String>(spec, "id")? {
        message.id = Uuid::parse_str(&id).map_err(|e| {
            crate::error::to_py(relaybox::Error::InvalidMessage {
                field: "id",
                reason: e.to_string(),
            })
        })?;
    }
    Ok(message)
}

fn required<T: for<'a, 'py> FromPyObject<'a, 'py>>(
    spec: &Bound<'_, PyDict>,
    name: &str,
) -> PyResult<T> {
    match spec.get_item(name)? {
        Some(v) if !v.is_none() => field(&v, name),
        _ => Err(PyTypeError::new_err(format!("a message needs `{name}`"))),
    }
}

fn optional<T: for<'a, 'py> FromPyObject<'a, 'py>>(
    spec: &Bound<'_, PyDict>,
    name: &str,
) -> PyResult<Option<T>> {
    match spec.get_item(name)? {
        Some(v) if !v.is_none() => field(&v, name).map(Some),
        _ => Ok(None),
    }
}

fn field<T: for<'a, 'py> FromPyObject<'a, 'py>>(
    value: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<T> {
    value.extract::<T>().map_err(|_| {
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!("`{name}` has the wrong type ({type_name})"))
    })
}
