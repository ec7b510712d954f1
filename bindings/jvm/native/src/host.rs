//! The host-transaction protocol for the JVM: the core generates the outbox
//! INSERTs, the wake-up `NOTIFY` and, for a consumer in host mode, the inbox
//! INSERT of each delivery; the Kotlin side runs them with JDBC on the
//! application's own connection, inside the application's transaction.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use relaybox::{ConsumerConfig, Dialect, Error, HostDelivery, HostOutcome, Placeholders};

use crate::bridge::{blocking, guard};
use crate::consumer::Consumer;
use crate::convert::{parse_json, Message, MessageSpec, SqlValue};
use crate::error::RelayboxError;
use crate::outbox::Outbox;
use crate::relay::parse_transport;

/// A statement for the application's driver to run in its own transaction.
/// Parameters are text, integers, bytes or null (the SQL casts text to
/// `uuid`, `jsonb` and `timestamptz`), types every JDBC driver binds natively.
#[derive(Clone, Debug, uniffi::Record)]
pub struct HostStatement {
    /// The SQL text, in the placeholder style that was asked for.
    pub sql: String,
    /// The parameters, in placeholder order.
    pub params: Vec<SqlValue>,
    /// The ids of the messages the statement writes (empty for an inbox statement).
    pub message_ids: Vec<String>,
    /// The wake-up to run after the statement in the same transaction
    /// (PostgreSQL `NOTIFY`), or none.
    pub wake: Option<String>,
}

/// What a host handler reports for one delivery.
#[derive(Clone, Debug, uniffi::Enum)]
pub enum HostResult {
    /// The inbox row and the handler's writes are committed.
    Processed,
    /// The inbox statement inserted no row: the group had the message
    /// already; the transaction was rolled back.
    Duplicate,
    /// The handler failed and its transaction was rolled back: retried with
    /// backoff, then dead-lettered with `error`.
    Failed { error: String },
    /// The message can never be handled (rolled back): dead-lettered at once.
    Rejected { reason: String },
}

/// Handles one delivery in a transaction of the application's (a JDBC
/// connection, a Spring-managed transaction): runs `inbox` first in it, then
/// the handler's writes, commits, and reports how it ended. Runs on a thread
/// of its own, so it may block.
#[uniffi::export(callback_interface)]
pub trait HostMessageHandler: Send + Sync {
    /// Handles `message`, whose inbox statement is `inbox`.
    fn handle(&self, message: Message, inbox: HostStatement) -> Result<HostResult, RelayboxError>;
}

/// Adapts a JVM host handler to the core's `HostHandler`.
struct ForeignHostHandler(Arc<dyn HostMessageHandler>);

#[async_trait::async_trait]
impl relaybox::HostHandler for ForeignHostHandler {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        let handler = self.0.clone();
        let inbox = HostStatement {
            sql: delivery.inbox.sql,
            params: delivery
                .inbox
                .params
                .into_iter()
                .map(SqlValue::from)
                .collect(),
            message_ids: Vec::new(),
            wake: None,
        };
        let message = Message::from(delivery.message);
        let outcome = tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| handler.handle(message, inbox)))
                .unwrap_or_else(|panic| Err(Error::from_panic(panic).into()))
        })
        .await;
        match outcome {
            Ok(Ok(HostResult::Processed)) => HostOutcome::Processed,
            Ok(Ok(HostResult::Duplicate)) => HostOutcome::Duplicate,
            Ok(Ok(HostResult::Failed { error })) => HostOutcome::Failed(error),
            Ok(Ok(HostResult::Rejected { reason })) => HostOutcome::Rejected(reason),
            Ok(Err(RelayboxError::Rejected { reason, .. })) => HostOutcome::Rejected(reason),
            Ok(Err(other)) => HostOutcome::Failed(other.to_string()),
            Err(e) => HostOutcome::Failed(format!("the handler did not finish: {e}")),
        }
    }
}

fn placeholders(text: &str) -> relaybox::Result<Placeholders> {
    text.parse()
}

#[uniffi::export]
impl Outbox {
    /// `"postgres"` or `"sqlite"`.
    pub fn dialect(&self) -> String {
        match self.store.dialect() {
            Dialect::Postgres => "postgres".into(),
            Dialect::Sqlite => "sqlite".into(),
        }
    }

    /// The outbox INSERTs writing `messages` (one per 1000 messages, to run
    /// in order in one transaction) in `placeholders` style (`"question"`
    /// for JDBC, `"dollar"`), each with its wake-up. Every message is
    /// validated first; nothing is written here.
    pub fn insert_statements_blocking(
        &self,
        messages: Vec<MessageSpec>,
        placeholders: String,
    ) -> Result<Vec<HostStatement>, RelayboxError> {
        let style = guard(|| self::placeholders(&placeholders))?;
        let messages = guard(|| {
            messages
                .into_iter()
                .map(MessageSpec::into_message)
                .collect::<relaybox::Result<Vec<_>>>()
        })?;
        let statements = blocking(self.store.insert_batch_statements(&messages, style))?;
        Ok(statements
            .into_iter()
            .map(|s| HostStatement {
                sql: s.sql,
                params: s.params.into_iter().map(SqlValue::from).collect(),
                message_ids: s.message_ids.iter().map(ToString::to_string).collect(),
                wake: s.wake,
            })
            .collect())
    }

    /// Wakes the relays of this process (and, on PostgreSQL, of every
    /// process) for rows committed through the application's own driver.
    pub fn wake_relays(&self) {
        self.store.wake_relays();
    }
}

#[uniffi::export]
impl Consumer {
    /// Starts consuming `topic` in host-transaction mode: for each delivery
    /// `handler` receives the message and its inbox statement in
    /// `placeholders` style, runs both in a transaction of its own and
    /// reports the outcome. Transport and settings are those of `start`.
    #[uniffi::constructor]
    pub fn start_host(
        outbox: Arc<Outbox>,
        transport_json: String,
        topic: String,
        config_json: String,
        placeholders: String,
        handler: Box<dyn HostMessageHandler>,
    ) -> Result<Arc<Self>, RelayboxError> {
        let handler = Arc::new(ForeignHostHandler(Arc::from(handler)));
        guard(|| {
            let style = self::placeholders(&placeholders)?;
            let transport = parse_transport(&transport_json)?;
            let config = ConsumerConfig::from_json(parse_json("consumer config", &config_json)?)?;
            let runtime = relaybox::runtime::runtime();
            let _entered = runtime.enter();
            let source = transport.source(&outbox.store, &topic, &config.group)?;
            let consumer = relaybox::Consumer::start_host(
                outbox.store.clone(),
                source,
                handler,
                style,
                config,
            )?;
            Ok(Consumer::wrap(consumer))
        })
    }
}
