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
    BoxError, Consumer, ConsumerConfig, Handler, Message, Rejected, Transaction, TransportConfig,
};
use serde::Deserialize;

use crate::bridge::{guard, run};
use crate::convert::parse_config;
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
    function: Arc<Mutex<Option<Arc<HandlerFunction>>>>,
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
            let transport =
                TransportConfig::from_json(parse_config("transport", &transport_json)?)?;
            let config = ConsumerConfig::from_json(parse_config("consumer config", &config_json)?)?;
            let runtime = relaybox::runtime::runtime();
            let _entered = runtime.enter();
            let source = transport.source(&store.0, &topic, &config.group)?;
            let function = Arc::new(Mutex::new(Some(Arc::new(handler))));
            let js_handler = Arc::new(JsHandler {
                function: function.clone(),
            });
            let consumer = Consumer::start(store.0.clone(), source, js_handler, config)?;
            Ok(NativeConsumer {
                consumer: Arc::new(consumer),
                function,
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
        let function = self.function.clone();
        run(async move {
            let result = consumer.shutdown().await;
            function.lock().unwrap_or_else(|p| p.into_inner()).take();
            result
        })
        .await
    }
}
