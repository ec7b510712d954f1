//! `relaybox._native.Store`: an open outbox store (PostgreSQL or SQLite).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use relaybox::{DeadLetterFilter, InsertStatement, Placeholders, Store, StoreOptions};
use uuid::Uuid;

use crate::bridge::{awaitable, blocking, convert, none};
use crate::convert::{json_to_py, message_from_spec, params_to_py};
use crate::error::{to_py, IntoPyResult};
use crate::transaction::PyTransaction;

/// An open store: a connection pool plus the outbox tables.
#[pyclass(frozen, module = "relaybox._native", name = "Store")]
pub struct PyStore(pub Store);

fn options(options_json: Option<&str>) -> PyResult<StoreOptions> {
    match options_json {
        None => Ok(StoreOptions::default()),
        Some(text) => {
            let value = serde_json::from_str(text).map_err(|e| {
                to_py(relaybox::Error::InvalidConfig {
                    field: "store options".into(),
                    reason: e.to_string(),
                })
            })?;
            StoreOptions::from_json(value).py()
        }
    }
}

fn dead_letter_filter(ids: Option<Vec<String>>) -> PyResult<DeadLetterFilter> {
    match ids {
        None => Ok(DeadLetterFilter::All),
        Some(ids) => ids
            .iter()
            .map(|id| {
                Uuid::parse_str(id).map_err(|e| {
                    to_py(relaybox::Error::InvalidValue {
                        reason: format!("{id:?} is not a message id: {e}"),
                    })
                })
            })
            .collect::<PyResult<Vec<_>>>()
            .map(DeadLetterFilter::Ids),
    }
}

/// The parameters of `statement` for a Python driver: a dict by name for
/// the named placeholder styles, a tuple otherwise.
fn statement_params<'py>(
    py: Python<'py>,
    statement: &InsertStatement,
) -> PyResult<Bound<'py, PyAny>> {
    let params = params_to_py(py, &statement.params)?;
    if statement.names.is_empty() {
        return Ok(params.into_any());
    }
    let dict = PyDict::new(py);
    for (name, value) in statement.names.iter().zip(params.iter()) {
        dict.set_item(name, value)?;
    }
    Ok(dict.into_any())
}

fn report<T: serde::Serialize>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>> {
    let json = serde_json::to_value(value).map_err(|e| {
        to_py(relaybox::Error::Internal {
            message: e.to_string(),
        })
    })?;
    json_to_py(py, &json)
}

impl PyStore {
    /// Retries (`retry`) or purges the dead letters `ids` (all when `None`),
    /// as an awaitable of how many.
    fn change_dead_letters<'py>(
        &self,
        py: Python<'py>,
        ids: Option<Vec<String>>,
        retry: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let filter = dead_letter_filter(ids)?;
        let store = self.0.clone();
        awaitable(
            py,
            async move {
                if retry {
                    store.retry_dead_letters(&filter).await
                } else {
                    store.purge_dead_letters(&filter).await
                }
            },
            convert::<u64>,
        )
    }
}

#[pymethods]
impl PyStore {
    /// Connects (blocking, GIL released). `options_json` is a JSON object of
    /// store options; `migrate` applies the schema first.
    #[staticmethod]
    #[pyo3(signature = (url, options_json=None, migrate=false))]
    fn open(
        py: Python<'_>,
        url: String,
        options_json: Option<&str>,
        migrate: bool,
    ) -> PyResult<Self> {
        let options = options(options_json)?;
        crate::logging::refresh(py);
        blocking(py, async move {
            let store = Store::connect_with(&url, options).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(PyStore(store))
        })
    }

    /// Like `open`, as an awaitable.
    #[staticmethod]
    #[pyo3(signature = (url, options_json=None, migrate=false))]
    fn open_async<'py>(
        py: Python<'py>,
        url: String,
        options_json: Option<&str>,
        migrate: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = options(options_json)?;
        crate::logging::refresh(py);
        awaitable(
            py,
            async move {
                let store = Store::connect_with(&url, options).await?;
                if migrate {
                    store.migrate().await?;
                }
                Ok(PyStore(store))
            },
            |py, store| Ok(Py::new(py, store)?.into_any()),
        )
    }

    /// The database URL with its password redacted.
    #[getter]
    fn url(&self) -> String {
        self.0.url().to_string()
    }

    /// `"postgres"` or `"sqlite"`.
    #[getter]
    fn dialect(&self) -> String {
        self.0.dialect().to_string()
    }

    /// The table prefix.
    #[getter]
    fn table_prefix(&self) -> String {
        self.0.options().table_prefix.clone()
    }

    /// Applies pending migrations.
    fn migrate(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.0.clone();
        blocking(py, async move { store.migrate().await })
    }

    /// Applies pending migrations, as an awaitable.
    fn migrate_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(py, async move { store.migrate().await }, none)
    }

    /// Begins a transaction.
    fn begin(&self, py: Python<'_>) -> PyResult<PyTransaction> {
        let store = self.0.clone();
        blocking(py, async move { store.begin().await }).map(PyTransaction)
    }

    /// Begins a transaction, as an awaitable.
    fn begin_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(py, async move { store.begin().await }, |py, tx| {
            Ok(Py::new(py, PyTransaction(tx))?.into_any())
        })
    }

    /// The outbox INSERT for one message spec, for a host driver to run in
    /// its own transaction: `(sql, params, message_id)`. `placeholders` is
    /// `"percent"` (psycopg), `"dollar"`, `"question"`, `"pyformat"` or
    /// `"named"`; for the named styles `params` is a dict (`p1`, `p2`, ...),
    /// otherwise a tuple.
    #[pyo3(signature = (spec, placeholders="percent"))]
    fn insert_statement<'py>(
        &self,
        py: Python<'py>,
        spec: &Bound<'py, PyDict>,
        placeholders: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let style: Placeholders = placeholders.parse().py()?;
        let message = message_from_spec(spec)?;
        let store = self.0.clone();
        let statement = blocking(
            py,
            async move { store.insert_statement(&message, style).await },
        )?;
        let params = statement_params(py, &statement)?;
        PyTuple::new(
            py,
            [
                statement.sql.into_pyobject(py)?.into_any(),
                params,
                statement
                    .message_id
                    .to_string()
                    .into_pyobject(py)?
                    .into_any(),
            ],
        )
    }

    /// The outbox INSERTs of many message specs, for a host driver to run
    /// in its own transaction: a list of `(sql, params, message_ids, wake)`,
    /// one statement per `HOST_BATCH_MAX` (1000) messages. Every message is
    /// validated before any statement is made. `params` is as for
    /// `insert_statement`; `wake` is the wake-up to run after the INSERTs in
    /// the same transaction (a `NOTIFY` naming the rows' partitions on
    /// PostgreSQL, `None` on SQLite).
    #[pyo3(signature = (specs, placeholders="percent"))]
    fn insert_batch_statement<'py>(
        &self,
        py: Python<'py>,
        specs: Vec<Bound<'py, PyDict>>,
        placeholders: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let style: Placeholders = placeholders.parse().py()?;
        let messages = specs
            .iter()
            .map(message_from_spec)
            .collect::<PyResult<Vec<_>>>()?;
        let store = self.0.clone();
        let statements = blocking(py, async move {
            store.insert_batch_statements(&messages, style).await
        })?;
        let items = statements
            .iter()
            .map(|statement| {
                let ids: Vec<String> = statement
                    .message_ids
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                PyTuple::new(
                    py,
                    [
                        statement.sql.clone().into_pyobject(py)?.into_any(),
                        statement_params(py, statement)?,
                        PyList::new(py, ids)?.into_any(),
                        statement.wake.clone().into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// A statement that, run in the caller's own transaction, wakes relays of
    /// every process when it commits (`None` on SQLite).
    #[getter]
    fn wake_statement(&self) -> Option<String> {
        self.0.wake_statement()
    }

    /// Wakes this process's relays on this store (after a host driver committed outbox rows).
    fn wake_relays(&self) {
        self.0.wake_relays();
    }

    /// Backlog, dead letters and lease owners, as a dict.
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let store = self.0.clone();
        let status = blocking(py, async move { store.status().await })?;
        report(py, status)
    }

    /// Undelivered outbox rows.
    fn pending_count(&self, py: Python<'_>) -> PyResult<i64> {
        let store = self.0.clone();
        blocking(py, async move { store.pending_count().await })
    }

    /// Up to `limit` dead letters, oldest first, as dicts.
    #[pyo3(signature = (limit=100))]
    fn dead_letters(&self, py: Python<'_>, limit: u32) -> PyResult<Py<PyAny>> {
        let store = self.0.clone();
        let letters = blocking(py, async move { store.dead_letters(limit).await })?;
        report(py, letters)
    }

    /// Puts dead letters (all, or those of `ids`) back into the outbox; returns how many.
    #[pyo3(signature = (ids=None))]
    fn retry_dead_letters(&self, py: Python<'_>, ids: Option<Vec<String>>) -> PyResult<u64> {
        let filter = dead_letter_filter(ids)?;
        let store = self.0.clone();
        blocking(py, async move { store.retry_dead_letters(&filter).await })
    }

    /// Deletes dead letters (all, or those of `ids`); returns how many.
    #[pyo3(signature = (ids=None))]
    fn purge_dead_letters(&self, py: Python<'_>, ids: Option<Vec<String>>) -> PyResult<u64> {
        let filter = dead_letter_filter(ids)?;
        let store = self.0.clone();
        blocking(py, async move { store.purge_dead_letters(&filter).await })
    }

    /// Closes the pool; later calls raise `ClosedError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.0.clone();
        blocking(py, async move {
            store.close().await;
            Ok(())
        })
    }

    /// Closes the pool, as an awaitable.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(
            py,
            async move {
                store.close().await;
                Ok(())
            },
            none,
        )
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Undelivered outbox rows, as an awaitable.
    fn pending_count_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(
            py,
            async move { store.pending_count().await },
            convert::<i64>,
        )
    }

    /// Backlog, dead letters and lease owners, as an awaitable dict.
    fn status_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(py, async move { store.status().await }, report)
    }

    /// Up to `limit` dead letters, oldest first, as an awaitable list of dicts.
    #[pyo3(signature = (limit=100))]
    fn dead_letters_async<'py>(&self, py: Python<'py>, limit: u32) -> PyResult<Bound<'py, PyAny>> {
        let store = self.0.clone();
        awaitable(py, async move { store.dead_letters(limit).await }, report)
    }

    /// [`Self::retry_dead_letters`] as an awaitable.
    #[pyo3(signature = (ids=None))]
    fn retry_dead_letters_async<'py>(
        &self,
        py: Python<'py>,
        ids: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.change_dead_letters(py, ids, true)
    }

    /// [`Self::purge_dead_letters`] as an awaitable.
    #[pyo3(signature = (ids=None))]
    fn purge_dead_letters_async<'py>(
        &self,
        py: Python<'py>,
        ids: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.change_dead_letters(py, ids, false)
    }

    fn __repr__(&self) -> String {
        format!("Store(url={:?})", self.0.url().to_string())
    }
}
