//! `relaybox._native.Relay`: a relay running on the core's threads.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use relaybox::{Relay, RelayConfig, TransportConfig};

use crate::bridge::{awaitable, blocking, none};
use crate::error::{to_py, IntoPyResult};
use crate::store::PyStore;

/// Parses a JSON text argument into a core config.
pub fn parse_json(what: &str, text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        to_py(relaybox::Error::InvalidConfig {
            field: what.to_string(),
            reason: e.to_string(),
        })
    })
}

/// A running relay.
#[pyclass(frozen, module = "relaybox._native", name = "Relay")]
pub struct PyRelay(Arc<Relay>);

#[pymethods]
impl PyRelay {
    /// Starts relaying `store`'s outbox to the transport (`"database"` or
    /// `{"kafka": {...}}` as JSON) with the relay settings (a JSON object).
    #[staticmethod]
    fn start(
        py: Python<'_>,
        store: &PyStore,
        transport_json: &str,
        config_json: &str,
    ) -> PyResult<Self> {
        crate::logging::refresh(py);
        let transport =
            TransportConfig::from_json(parse_json("transport", transport_json)?).py()?;
        let config = RelayConfig::from_json(parse_json("relay config", config_json)?).py()?;
        let runtime = relaybox::runtime::runtime();
        let _entered = runtime.enter();
        let sink = transport.sink(&store.0).py()?;
        Relay::start(store.0.clone(), sink, config)
            .map(|relay| PyRelay(Arc::new(relay)))
            .py()
    }

    /// This relay's instance id (lease owner).
    #[getter]
    fn owner(&self) -> String {
        self.0.owner().to_string()
    }

    /// Whether it is still running.
    #[getter]
    fn running(&self) -> bool {
        self.0.is_running()
    }

    /// Counters: delivered, retried, dead_lettered, batches, claims, partitions_held.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.0.stats();
        let dict = PyDict::new(py);
        dict.set_item("delivered", s.delivered)?;
        dict.set_item("retried", s.retried)?;
        dict.set_item("dead_lettered", s.dead_lettered)?;
        dict.set_item("batches", s.batches)?;
        dict.set_item("claims", s.claims)?;
        dict.set_item("partitions_held", s.partitions_held)?;
        Ok(dict)
    }

    /// Finishes the batch in flight, hands its partitions over, and stops.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let relay = self.0.clone();
        blocking(py, async move { relay.shutdown().await })
    }

    /// `stop`, as an awaitable.
    fn stop_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let relay = self.0.clone();
        awaitable(py, async move { relay.shutdown().await }, none)
    }
}
