//! `NativeConsumer`: the idempotent consumer calling a JavaScript function
//! for each message through a thread-safe function. The core's worker awaits
//! the promise the function returns, so the message is acknowledged only after
//! the handler finished; the JavaScript thread is never blocked.

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{FnArgs, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Result, Status};
use napi_derive::napi;
use relaybox::{
    BoxError, Consumer, ConsumerConfig, Handler, HostDelivery, HostHandler, HostOutcome, Message,
    Placeholders, Rejected, Source, Store, Transaction, TransportConfig,
};
use serde::Deserialize;

use crate::bridge::{guard, run};
use crate::convert::{self, parse_config};
use crate::store::NativeStore;
use crate::transaction::NativeTransaction;

/// The arguments the JavaScript function receives: the message in canonical
/// JSON and the transaction holding its inbox row.
type Args = FnArgs<(String, NativeTransaction)>;

/// `(messageJson, tx) => Promise<string | null>`: the promise resolves with
/// `null` on success or a JSON outcome `{"error": "...", "reject": bool}`.
type HandlerFunction = ThreadsafeFunction<Args, Promise<Option<String>>, Args, Status, false>;

/// A handler failure as the JavaScript layer reports it.
#[derive(Deserialize)]
struct Failure {
    error: String,
    #[serde(default)]
    reject: bool,
}

/// Calls the JavaScript function while the consumer runs; the function is
/// released on shutdown so that it no longer keeps Node's event loop alive.
struct JsHandler {
    function: Arc<Mutex<Option<Arc<HandlerFunction>>>>,
}

#[async_trait::async_trait]
impl Handler for JsHandler {
    async fn handle(&self, message: Message, tx: Transaction) -> std::result::Result<(), BoxError> {
        let function = self
            .function
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("the consumer was closed")?;
        let args = FnArgs::from((message.to_canonical_json(), NativeTransaction(tx)));
        let promise = function
            .call_async_catch(args)
            .await
            .map_err(|e| format!("the handler could not be called: {}", e.reason))?;
        drop(function);
        let outcome = promise
            .await
            .map_err(|e| format!("the handler's promise rejected: {}", e.reason))?;
        match outcome {
            None => Ok(()),
            Some(text) => {
                let failure: Failure = serde_json::from_str(&text).unwrap_or(Failure {
                    error: text,
                    reject: false,
                });
                if failure.reject {
                    Err(Box::new(Rejected::new(failure.error)))
                } else {
                    Err(failure.error.into())
                }
            }
        }
    }
}

/// The arguments a host-mode JavaScript function receives: the message in
/// canonical JSON, the inbox statement's SQL and its tagged parameters (JSON).
type HostArgs = FnArgs<(String, String, String)>;

/// `(messageJson, inboxSql, inboxParamsJson) => Promise<string>`: resolves
/// with `"processed"`, `"duplicate"` or a JSON failure
/// `{"error": "...", "reject": bool}`.
type HostFunction = ThreadsafeFunction<HostArgs, Promise<String>, HostArgs, Status, false>;

/// Hands each delivery to JavaScript, which runs the inbox statement and the
/// handler in the application's own transaction and reports the outcome.
struct JsHostHandler {
    function: Arc<Mutex<Option<Arc<HostFunction>>>>,
}

impl JsHostHandler {
    async fn call(&self, delivery: HostDelivery) -> std::result::Result<String, String> {
        let function = self
            .function
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("the consumer was closed")?;
        let params: Vec<serde_json::Value> =
            delivery.inbox.params.iter().map(convert::tagged).collect();
        let args = FnArgs::from((
            delivery.message.to_canonical_json(),
            delivery.inbox.sql,
            serde_json::Value::Array(params).to_string(),
        ));
        let promise = function
            .call_async_catch(args)
            .await
            .map_err(|e| format!("the handler could not be called: {}", e.reason))?;
        drop(function);
        promise
            .await
            .map_err(|e| format!("the handler's promise rejected: {}", e.reason))
    }
}

#[async_trait::async_trait]
impl HostHandler for JsHostHandler {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        match self.call(delivery).await {
            Err(error) => HostOutcome::Failed(error),
            Ok(text) => match text.as_str() {
                "processed" => HostOutcome::Processed,
                "duplicate" => HostOutcome::Duplicate,
                _ => {
                    let failure: Failure = serde_json::from_str(&text).unwrap_or(Failure {
                        error: text,
                        reject: false,
                    });
                    if failure.reject {
                        HostOutcome::Rejected(failure.error)
                    } else {
                        HostOutcome::Failed(failure.error)
                    }
                }
            },
        }
    }
}

/// Validates the transport and settings, builds the source on the core
/// runtime and starts a consumer with `start`.
fn start_with(
    store: &NativeStore,
    transport_json: &str,
    topic: &str,
    config_json: &str,
    start: impl FnOnce(Store, Arc<dyn Source>, ConsumerConfig) -> relaybox::Result<Consumer>,
) -> relaybox::Result<Consumer> {
    let transport = TransportConfig::from_json(parse_config("transport", transport_json)?)?;
    let config = ConsumerConfig::from_json(parse_config("consumer config", config_json)?)?;
    let runtime = relaybox::runtime::runtime();
    let _entered = runtime.enter();
    let source = transport.source(&store.0, topic, &config.group)?;
    start(store.0.clone(), source, config)
}

/// Releases a JavaScript function once the consumer stopped.
type Release = Arc<dyn Fn() + Send + Sync>;

/// Counters of a consumer.
#[napi(object)]
pub struct ConsumerStats {
    /// Messages whose handler succeeded and committed.
    pub processed: i64,
    /// Deliveries skipped because the inbox had them.
    pub duplicates: i64,
    /// Handler failures that were retried.
    pub retried: i64,
    /// Messages moved to dead letters.
    pub dead_lettered: i64,
}

/// A running consumer.
#[napi]
pub struct NativeConsumer {
    consumer: Arc<Consumer>,
    release: Release,
}

fn n(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[napi]
impl NativeConsumer {
    /// Starts consuming `topic` from the transport (JSON) with the consumer
    /// settings (a JSON object with at least `group`), calling
    /// `handler(messageJson, tx)` for each message.
    // The handler's type is spelt out (no alias) so that napi's TypeScript
    // generator sees its argument types.
    #[allow(clippy::type_complexity)]
    #[napi(factory, catch_unwind)]
    pub fn start(
        store: &NativeStore,
        transport_json: String,
        topic: String,
        config_json: String,
        handler: ThreadsafeFunction<
            FnArgs<(String, NativeTransaction)>,
            Promise<Option<String>>,
            FnArgs<(String, NativeTransaction)>,
            Status,
            false,
        >,
    ) -> Result<NativeConsumer> {
        guard(|| {
            let function = Arc::new(Mutex::new(Some(Arc::new(handler))));
            let js_handler = Arc::new(JsHandler {
                function: function.clone(),
            });
            let consumer = start_with(
                store,
                &transport_json,
                &topic,
                &config_json,
                |store, source, config| Consumer::start(store, source, js_handler, config),
            )?;
            Ok(NativeConsumer {
                consumer: Arc::new(consumer),
                release: Arc::new(move || {
                    function.lock().unwrap_or_else(|p| p.into_inner()).take();
                }),
            })
        })
    }

    /// Starts consuming in host-transaction mode: for each message,
    /// `handler(messageJson, inboxSql, inboxParamsJson)` runs the inbox
    /// statement (in `placeholders` style: `"dollar"`, `"question"`, ...)
    /// and the application's handler in the application's own transaction,
    /// commits, and resolves with `"processed"`, `"duplicate"` or a JSON
    /// failure.
    #[allow(clippy::type_complexity)]
    #[napi(factory, catch_unwind)]
    pub fn start_host(
        store: &NativeStore,
        transport_json: String,
        topic: String,
        config_json: String,
        placeholders: String,
        handler: ThreadsafeFunction<
            FnArgs<(String, String, String)>,
            Promise<String>,
            FnArgs<(String, String, String)>,
            Status,
            false,
        >,
    ) -> Result<NativeConsumer> {
        guard(|| {
            let style: Placeholders = placeholders.parse()?;
            let function = Arc::new(Mutex::new(Some(Arc::new(handler))));
            let js_handler = Arc::new(JsHostHandler {
                function: function.clone(),
            });
            let consumer = start_with(
                store,
                &transport_json,
                &topic,
                &config_json,
                |store, source, config| {
                    Consumer::start_host(store, source, js_handler, style, config)
                },
            )?;
            Ok(NativeConsumer {
                consumer: Arc::new(consumer),
                release: Arc::new(move || {
                    function.lock().unwrap_or_else(|p| p.into_inner()).take();
                }),
            })
        })
    }

    /// Whether it is still running.
    #[napi(getter, catch_unwind)]
    pub fn running(&self) -> bool {
        self.consumer.is_running()
    }

    /// Counters: processed, duplicates, retried, deadLettered.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> ConsumerStats {
        let s = self.consumer.stats();
        ConsumerStats {
            processed: n(s.processed),
            duplicates: n(s.duplicates),
            retried: n(s.retried),
            dead_lettered: n(s.dead_lettered),
        }
    }

    /// Finishes and acknowledges the messages in flight, stops, and releases
    /// the handler so that nothing of this consumer keeps Node running.
    #[napi(catch_unwind)]
    pub async fn shutdown(&self) -> Result<()> {
        let consumer = self.consumer.clone();
        let release = self.release.clone();
        run(async move {
            let result = consumer.shutdown().await;
            release();
            result
        })
        .await
    }
}
