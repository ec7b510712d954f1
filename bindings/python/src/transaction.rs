//! `relaybox._native.Transaction`: an owned database transaction for the
//! caller's business writes and enqueues; every call has a blocking form
//! (GIL released) and an `_async` form returning an awaitable.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use relaybox::{Message, Transaction};

use crate::bridge::{awaitable, blocking, convert, none};
use crate::convert::{message_from_spec, params_from_py, rows_to_py};

/// An open transaction. Uncommitted when dropped: rolled back.
#[pyclass(frozen, module = "relaybox._native", name = "Transaction")]
pub struct PyTransaction(pub Transaction);

fn specs(list: &Bound<'_, PyList>) -> PyResult<Vec<Message>> {
    list.iter()
        .map(|item| message_from_spec(item.cast::<PyDict>()?))
        .collect()
}

fn id_strings(ids: Vec<uuid::Uuid>) -> Vec<String> {
    ids.into_iter().map(|id| id.to_string()).collect()
}

#[pymethods]
impl PyTransaction {
    /// Runs a statement; returns the number of rows affected.
    #[pyo3(signature = (sql, params=None))]
    fn execute(
        &self,
        py: Python<'_>,
        sql: String,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let params = params_from_py(params)?;
        let tx = self.0.clone();
        blocking(py, async move { tx.execute(&sql, &params).await })
    }

    /// `execute`, as an awaitable.
    #[pyo3(signature = (sql, params=None))]
    fn execute_async<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = params_from_py(params)?;
        let tx = self.0.clone();
        awaitable(
            py,
            async move { tx.execute(&sql, &params).await },
            convert::<u64>,
        )
    }

    /// Runs a query; returns a list of dicts.
    #[pyo3(signature = (sql, params=None))]
    fn query(
        &self,
        py: Python<'_>,
        sql: String,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let params = params_from_py(params)?;
        let tx = self.0.clone();
        let rows = blocking(py, async move { tx.query(&sql, &params).await })?;
        rows_to_py(py, rows)
    }

    /// `query`, as an awaitable.
    #[pyo3(signature = (sql, params=None))]
    fn query_async<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = params_from_py(params)?;
        let tx = self.0.clone();
        awaitable(py, async move { tx.query(&sql, &params).await }, rows_to_py)
    }

    /// Writes one message (a spec dict) into the outbox; returns its id.
    fn enqueue(&self, py: Python<'_>, spec: &Bound<'_, PyDict>) -> PyResult<String> {
        let message = message_from_spec(spec)?;
        let tx = self.0.clone();
        blocking(py, async move { tx.enqueue(message).await }).map(|id| id.to_string())
    }

    /// `enqueue`, as an awaitable.
    fn enqueue_async<'py>(
        &self,
        py: Python<'py>,
        spec: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = message_from_spec(spec)?;
        let tx = self.0.clone();
        awaitable(
            py,
            async move { tx.enqueue(message).await.map(|id| id.to_string()) },
            convert::<String>,
        )
    }

    /// Writes many messages in one statement; returns their ids. All or none.
    fn enqueue_batch(
        &self,
        py: Python<'_>,
        specs_list: &Bound<'_, PyList>,
    ) -> PyResult<Vec<String>> {
        let messages = specs(specs_list)?;
        let tx = self.0.clone();
        blocking(py, async move { tx.enqueue_batch(&messages).await }).map(id_strings)
    }

    /// `enqueue_batch`, as an awaitable.
    fn enqueue_batch_async<'py>(
        &self,
        py: Python<'py>,
        specs_list: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let messages = specs(specs_list)?;
        let tx = self.0.clone();
        awaitable(
            py,
            async move { tx.enqueue_batch(&messages).await.map(id_strings) },
            convert::<Vec<String>>,
        )
    }

    /// Commits; enqueued messages become visible to relays.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        let tx = self.0.clone();
        blocking(py, async move { tx.commit().await })
    }

    /// `commit`, as an awaitable.
    fn commit_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.0.clone();
        awaitable(py, async move { tx.commit().await }, none)
    }

    /// Rolls back: nothing written in this transaction remains.
    fn rollback(&self, py: Python<'_>) -> PyResult<()> {
        let tx = self.0.clone();
        blocking(py, async move { tx.rollback().await })
    }

    /// `rollback`, as an awaitable.
    fn rollback_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.0.clone();
        awaitable(py, async move { tx.rollback().await }, none)
    }

    /// Whether it was committed or rolled back.
    fn is_finished(&self, py: Python<'_>) -> PyResult<bool> {
        let tx = self.0.clone();
        blocking(py, async move { Ok(tx.is_finished().await) })
    }
}
