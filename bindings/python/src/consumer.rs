//! `relaybox._native.Consumer`: the idempotent consumer calling a Python
//! callable for each message, on a blocking thread of the core's runtime so
//! the runtime's workers never wait on the GIL. In host mode
//! (`Consumer.start_host`) the callable runs the inbox statement and its
//! handler in the application's own transaction and returns the outcome.
//!
//! Those blocking threads are not Python threads: each keeps the Python
//! thread state it is first given until it exits ([`keep_thread_state`]),
//! so a handler's thread-local state (Django's per-thread database
//! connection, `threading.local`) lasts from one message to the next as on
//! any worker thread, instead of being created and dropped for each message.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use relaybox::consumer_host::{handle_each, HostRun, HostRunOutcome};
use relaybox::{
    BoxError, Consumer, ConsumerConfig, Handler, HostDelivery, HostHandler, HostOutcome,
    InboxStatement, Message, Placeholders, Rejected, Source, Transaction, TransportConfig,
};

use crate::bridge::{awaitable, blocking, none};
use crate::convert::value_to_py;
use crate::error::{handler_error, IntoPyResult};
use crate::message::PyMessage;
use crate::relay::parse_json;
use crate::store::PyStore;
use crate::transaction::PyTransaction;

/// Set by an `atexit` hook: the interpreter is finalizing, so an exiting
/// blocking thread leaves its thread state to the interpreter.
static FINALIZING: AtomicBool = AtomicBool::new(false);
static WATCH_EXIT: Once = Once::new();

/// The Python thread state of a blocking thread, from its first handler call
/// until the thread exits; released then (its thread-locals dropped, so
/// Django closes that thread's connection) unless the interpreter is
/// finalizing.
struct KeptThreadState {
    gil: ffi::PyGILState_STATE,
    tstate: *mut ffi::PyThreadState,
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        if FINALIZING.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `tstate` is this thread's state, saved (GIL released) by
        // `keep_thread_state`; restoring it and releasing the `PyGILState_Ensure`
        // made there deletes it, as a thread's last `PyGILState_Release` does.
        unsafe {
            if ffi::Py_IsInitialized() != 0 {
                ffi::PyEval_RestoreThread(self.tstate);
                ffi::PyGILState_Release(self.gil);
            }
        }
    }
}

thread_local! {
    static KEPT: RefCell<Option<KeptThreadState>> = const { RefCell::new(None) };
}

/// Registers the `atexit` hook that sets [`FINALIZING`] (once per process).
fn watch_interpreter_exit(py: Python<'_>) -> PyResult<()> {
    let mut result = Ok(());
    WATCH_EXIT.call_once(|| {
        result = (|| {
            let hook = PyCFunction::new_closure(py, None, None, |_args, _kwargs| {
                FINALIZING.store(true, Ordering::Release);
            })?;
            py.import("atexit")?.call_method1("register", (hook,))?;
            Ok(())
        })();
    });
    result
}

/// Gives this (non-Python) thread a Python thread state that outlives the
/// call, unless it has one: `Python::attach` alone creates a thread state
/// per call and deletes it on return, with every thread-local of the call.
/// Call it without the GIL.
fn keep_thread_state() {
    if FINALIZING.load(Ordering::Acquire) {
        return;
    }
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.is_some() {
            return;
        }
        // SAFETY: called without the GIL on a thread with no Python thread
        // state: `PyGILState_Ensure` creates one and takes the GIL,
        // `PyEval_SaveThread` releases the GIL and keeps the state, whose
        // gilstate counter stays at one, so later `Python::attach` calls on
        // this thread reuse it.
        unsafe {
            if ffi::Py_IsInitialized() == 0 || !ffi::PyGILState_GetThisThreadState().is_null() {
                return;
            }
            let gil = ffi::PyGILState_Ensure();
            let tstate = ffi::PyEval_SaveThread();
            *kept = Some(KeptThreadState { gil, tstate });
        }
    });
}

/// Calls `callable(message, transaction)`; an exception fails the attempt.
struct PyHandler {
    callable: Arc<Py<PyAny>>,
}

#[async_trait::async_trait]
impl Handler for PyHandler {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        let callable = self.callable.clone();
        tokio::task::spawn_blocking(move || {
            keep_thread_state();
            Python::attach(|py| {
                let message = Py::new(py, PyMessage(message)).map_err(|e| handler_error(py, e))?;
                let tx = Py::new(py, PyTransaction(tx)).map_err(|e| handler_error(py, e))?;
                callable
                    .call1(py, (message, tx))
                    .map(drop)
                    .map_err(|e| handler_error(py, e))
            })
        })
        .await
        .map_err(|e| -> BoxError { format!("the Python handler did not finish: {e}").into() })?
    }
}

/// Calls `callable(message, sql, params)` in host mode: `params` is a dict
/// for named placeholder styles, else a tuple. It returns `"processed"`
/// (committed) or `"duplicate"` (the statement inserted no row); an exception
/// is a failure (`relaybox.Reject`: a rejection).
///
/// With `run_callable`, a run of consecutive deliveries goes to
/// `run_callable(messages, sql, params)` (`sql`: the run's one inbox
/// statement, returning the id of each message it inserted as text), which
/// runs them in one transaction and returns one of those strings per message
/// after its commit; an exception means it rolled all of them
/// back: `relaybox.consumer._RunFailed(index)` raised from a handler's
/// exception names the message that failed (its first attempt), any other
/// exception none, and the core hands the others over again one at a time.
struct PyHostHandler {
    callable: Arc<Py<PyAny>>,
    run_callable: Option<Arc<Py<PyAny>>>,
}

/// The inbox statement's parameters for Python: a dict for named styles,
/// else a tuple.
fn inbox_params(py: Python<'_>, inbox: &InboxStatement) -> PyResult<Py<PyAny>> {
    if inbox.names.is_empty() {
        let values = inbox
            .params
            .iter()
            .map(|v| value_to_py(py, v))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyTuple::new(py, values)?.into_any().unbind())
    } else {
        let dict = PyDict::new(py);
        for (name, value) in inbox.names.iter().zip(&inbox.params) {
            dict.set_item(name, value_to_py(py, value)?)?;
        }
        Ok(dict.into_any().unbind())
    }
}

/// A settled outcome from the string a host callable returned.
fn settled_outcome(outcome: &str) -> Option<HostOutcome> {
    match outcome {
        "processed" => Some(HostOutcome::Processed),
        "duplicate" => Some(HostOutcome::Duplicate),
        _ => None,
    }
}

impl PyHostHandler {
    fn call(&self, py: Python<'_>, delivery: HostDelivery) -> PyResult<HostOutcome> {
        let params = inbox_params(py, &delivery.inbox)?;
        let message = Py::new(py, PyMessage(delivery.message))?;
        let result = self
            .callable
            .call1(py, (message, delivery.inbox.sql, params))?;
        let outcome: String = result.extract(py)?;
        Ok(settled_outcome(&outcome).unwrap_or_else(|| {
            HostOutcome::Failed(format!(
                "the host handler returned {outcome:?}, not \"processed\" or \"duplicate\""
            ))
        }))
    }

    /// Calls `run` with the deliveries and reads how the run ended: an
    /// exception is a rollback, of the message `relaybox.consumer._RunFailed`
    /// names (its `__cause__`: the handler's exception) or of all of them.
    fn call_run(py: Python<'_>, run: &Py<PyAny>, host_run: HostRun) -> HostRunOutcome {
        let count = host_run.deliveries.len();
        let call = || -> PyResult<Vec<String>> {
            let params = inbox_params(py, &host_run.inbox)?;
            let messages = host_run
                .deliveries
                .into_iter()
                .map(|d| Py::new(py, PyMessage(d.message)))
                .collect::<PyResult<Vec<_>>>()?;
            run.call1(py, (messages, host_run.inbox.sql, params))?
                .extract(py)
        };
        let outcomes = match call() {
            Ok(outcomes) => outcomes,
            Err(e) => return rolled_back(py, e),
        };
        if outcomes.len() != count {
            return HostRunOutcome::RolledBack(format!(
                "the host handler returned {} outcomes for {count} messages",
                outcomes.len()
            ));
        }
        let mut settled = Vec::with_capacity(count);
        for o in &outcomes {
            match settled_outcome(o) {
                Some(outcome) => settled.push(outcome),
                None => {
                    return HostRunOutcome::RolledBack(format!(
                        "the host handler returned {o:?}, not \"processed\" or \"duplicate\""
                    ))
                }
            }
        }
        HostRunOutcome::Each(settled)
    }
}

/// The outcome of a run whose call raised `err`.
fn rolled_back(py: Python<'_>, err: PyErr) -> HostRunOutcome {
    let failed_at = (|| -> PyResult<Option<(usize, PyErr)>> {
        let class = py.import("relaybox.consumer")?.getattr("_RunFailed")?;
        let value = err.value(py);
        if !value.is_instance(&class)? {
            return Ok(None);
        }
        let index: usize = value.getattr("index")?.extract()?;
        let cause = value.getattr("__cause__")?;
        if cause.is_none() {
            return Ok(None);
        }
        Ok(Some((index, PyErr::from_value(cause))))
    })();
    match failed_at {
        Ok(Some((index, cause))) => {
            let error = handler_error(py, cause);
            let outcome = match error.downcast::<Rejected>() {
                Ok(rejected) => HostOutcome::Rejected(rejected.reason),
                Err(error) => HostOutcome::Failed(error.to_string()),
            };
            HostRunOutcome::RolledBackAt(index, outcome)
        }
        _ => HostRunOutcome::RolledBack(handler_error(py, err).to_string()),
    }
}

#[async_trait::async_trait]
impl HostHandler for PyHostHandler {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        let this = PyHostHandler {
            callable: self.callable.clone(),
            run_callable: None,
        };
        let outcome = tokio::task::spawn_blocking(move || {
            keep_thread_state();
            Python::attach(|py| {
                this.call(py, delivery).unwrap_or_else(|e| {
                    let error = handler_error(py, e);
                    match error.downcast::<Rejected>() {
                        Ok(rejected) => HostOutcome::Rejected(rejected.reason),
                        Err(error) => HostOutcome::Failed(error.to_string()),
                    }
                })
            })
        })
        .await;
        outcome.unwrap_or_else(|e| {
            HostOutcome::Failed(format!("the Python host handler did not finish: {e}"))
        })
    }

    async fn handle_run(&self, host_run: HostRun) -> HostRunOutcome {
        let Some(run) = self.run_callable.clone() else {
            return HostRunOutcome::Each(handle_each(self, host_run.deliveries).await);
        };
        tokio::task::spawn_blocking(move || {
            keep_thread_state();
            Python::attach(|py| Self::call_run(py, &run, host_run))
        })
        .await
        .unwrap_or_else(|e| {
            HostRunOutcome::RolledBack(format!("the Python host handler did not finish: {e}"))
        })
    }
}

/// A running consumer.
#[pyclass(frozen, module = "relaybox._native", name = "Consumer")]
pub struct PyConsumer(Arc<Consumer>);

#[pymethods]
impl PyConsumer {
    /// Starts consuming `topic` from the transport (JSON) with the consumer
    /// settings (a JSON object with at least `group`), calling
    /// `handler(message, transaction)` for each message.
    #[staticmethod]
    fn start(
        py: Python<'_>,
        store: &PyStore,
        transport_json: &str,
        topic: &str,
        config_json: &str,
        handler: Py<PyAny>,
    ) -> PyResult<Self> {
        let handler = Arc::new(PyHandler {
            callable: Arc::new(handler),
        });
        start_consumer(
            py,
            store,
            transport_json,
            topic,
            config_json,
            |source, config| Consumer::start(store.0.clone(), source, handler, config),
        )
    }

    /// Starts consuming in host-transaction mode: `handler(message, sql,
    /// params)` runs the inbox statement (in `placeholders` style: dollar,
    /// percent, question, pyformat or named) and the user's handler in the
    /// application's transaction, commits, and returns `"processed"` or
    /// `"duplicate"`. `run_handler(messages, sql, params)`, when given, does
    /// the same for consecutive messages in one transaction (`sql`: one inbox
    /// statement for all of them, returning the ids it inserted) and returns
    /// one outcome each.
    #[staticmethod]
    #[pyo3(signature = (store, transport_json, topic, config_json, placeholders, handler, run_handler=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_host(
        py: Python<'_>,
        store: &PyStore,
        transport_json: &str,
        topic: &str,
        config_json: &str,
        placeholders: &str,
        handler: Py<PyAny>,
        run_handler: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let style: Placeholders = placeholders.parse().py()?;
        let handler = Arc::new(PyHostHandler {
            callable: Arc::new(handler),
            run_callable: run_handler.map(Arc::new),
        });
        start_consumer(
            py,
            store,
            transport_json,
            topic,
            config_json,
            |source, config| Consumer::start_host(store.0.clone(), source, handler, style, config),
        )
    }

    /// Whether it is still running.
    #[getter]
    fn running(&self) -> bool {
        self.0.is_running()
    }

    /// Counters: processed, duplicates, retried, dead_lettered.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.0.stats();
        let dict = PyDict::new(py);
        dict.set_item("processed", s.processed)?;
        dict.set_item("duplicates", s.duplicates)?;
        dict.set_item("retried", s.retried)?;
        dict.set_item("dead_lettered", s.dead_lettered)?;
        Ok(dict)
    }

    /// Finishes and acknowledges the messages in flight, then stops.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let consumer = self.0.clone();
        blocking(py, async move { consumer.shutdown().await })
    }

    /// `stop`, as an awaitable.
    fn stop_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let consumer = self.0.clone();
        awaitable(py, async move { consumer.shutdown().await }, none)
    }
}

/// Starts a consumer of `topic` with the settings and transport a Python
/// `Consumer` passes as JSON: `start` receives the transport's source and
/// the settings, and runs inside the core's runtime, which the source's
/// clients and the consumer's task need.
fn start_consumer(
    py: Python<'_>,
    store: &PyStore,
    transport_json: &str,
    topic: &str,
    config_json: &str,
    start: impl FnOnce(Arc<dyn Source>, ConsumerConfig) -> relaybox::Result<Consumer>,
) -> PyResult<PyConsumer> {
    crate::logging::refresh(py);
    watch_interpreter_exit(py)?;
    let transport = TransportConfig::from_json(parse_json("transport", transport_json)?).py()?;
    let config = ConsumerConfig::from_json(parse_json("consumer config", config_json)?).py()?;
    let runtime = relaybox::runtime::runtime();
    let _entered = runtime.enter();
    let source = transport.source(&store.0, topic, &config.group).py()?;
    start(source, config)
        .map(|consumer| PyConsumer(Arc::new(consumer)))
        .py()
}
