//! [`RabbitMqSink`]: publishes relay batches to a topic exchange with
//! publisher confirms, many messages in flight at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use uuid::Uuid;

use super::codec::encode;
use super::config::RabbitMqConfig;
use super::{amqp_error, transport_error, NAME};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::{Acks, Sink};

/// A [`Sink`] that publishes to a RabbitMQ topic exchange.
///
/// Every message is published persistent (`delivery_mode` 2) on one channel
/// in confirm mode, in batch order, with the topic as routing key; a batch is
/// written out before any confirm is awaited, and the relay may hand over
/// further batches while confirms are outstanding. A message counts as
/// delivered when its confirm is an ack; a nack, a message returned as
/// unroutable (with `mandatory`), a lost connection or a confirm that does
/// not arrive within `confirm_timeout` fail it with a retryable error. After a
/// lost connection the next batch connects again.
///
/// With `mandatory`, the first message to a topic on a connection is a probe:
/// it is published alone and its confirm awaited. If it comes back
/// unroutable, the batch's other messages of that topic fail unpublished, so
/// a queue that appears mid-batch starts with the key's first message. A key
/// that failed is not published again until the acknowledgements of the batch
/// it failed in are taken (the relay then holds it behind its retry).
#[derive(Clone)]
pub struct RabbitMqSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitMqConfig,
    link: tokio::sync::Mutex<Option<Link>>,
    /// Topics a message was routed for on the current connection.
    routed: Mutex<HashSet<String>>,
    /// Keys that failed in batches whose acknowledgements are outstanding,
    /// with the number of such batches.
    held: Mutex<HashMap<String, usize>>,
}

struct Link {
    conn: Connection,
    channel: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Opens a connection within `connect_timeout`.
pub(crate) async fn connect(config: &RabbitMqConfig, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let what = format!("connecting to {}", config.redacted_url());
    let builder = lapin::DefaultConnectionBuilder::new()
        .map_err(|e| amqp_error(config, &what, &e, None))?
        .with_uri_str(config.url.clone())
        .with_properties(props)
        .with_tls_config(config.tls_config()?);
    match tokio::time::timeout(config.connect_timeout, builder.connect()).await {
        Err(_) => Err(transport_error(
            config,
            format!("{what} timed out after {:?}", config.connect_timeout),
            true,
            None,
        )),
        Ok(Err(e)) if e.to_string().contains("certificate verify failed") => {
            // OpenSSL's text names no reason: say which settings decide.
            Err(transport_error(
                config,
                format!(
                    "{what}: TLS: the broker's certificate could not be verified: it is not \
                     signed by a trusted certificate authority (give the CA with tls_ca_file), \
                     or not valid for the host name of the URL ({e})"
                ),
                true,
                None,
            ))
        }
        Ok(Err(e)) => Err(amqp_error(config, &what, &e, None)),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// Declares the durable topic exchange `name` (when `declare` is set).
pub(crate) async fn declare_exchange(
    config: &RabbitMqConfig,
    channel: &Channel,
    name: &str,
) -> Result<()> {
    if !config.declare {
        return Ok(());
    }
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(config, &format!("declaring exchange {name:?}"), &e, None))
}

impl RabbitMqSink {
    /// Creates the sink; it connects on the first publish.
    pub fn new(config: RabbitMqConfig) -> Result<Self> {
        config.validate()?;
        Ok(RabbitMqSink {
            inner: Arc::new(Inner {
                config,
                link: tokio::sync::Mutex::new(None),
                routed: Mutex::new(HashSet::new()),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The settings this sink was created with.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.inner.config
    }

    /// Connects now (declaring the exchange) instead of on the first publish.
    pub async fn connect(&self) -> Result<()> {
        let mut link = self.inner.link.lock().await;
        self.channel(&mut link).await.map(|_| ())
    }

    /// The confirm-mode channel, connecting when there is none or it was lost.
    async fn channel(&self, link: &mut Option<Link>) -> Result<Channel> {
        if let Some(l) = link.as_ref().filter(|l| l.usable()) {
            return Ok(l.channel.clone());
        }
        if let Some(old) = link.take() {
            let _ = old.conn.close(200, "reconnecting".into()).await;
        }
        let config = &self.inner.config;
        self.inner.routed().clear();
        let conn = connect(config, "relaybox relay").await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| amqp_error(config, "opening a channel", &e, None))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp_error(config, "enabling publisher confirms", &e, None))?;
        declare_exchange(config, &channel, &config.exchange).await?;
        tracing::info!(url = %config.redacted_url(), exchange = %config.exchange, "relaybox connected to RabbitMQ");
        *link = Some(Link {
            conn,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Closes the connection; the next publish opens a new one.
    pub async fn close(&self) {
        if let Some(l) = self.inner.link.lock().await.take() {
            let _ = l.conn.close(200, "closing".into()).await;
        }
    }
}

/// The text of a transport error without its `transport rabbitmq failed` prefix.
fn detail(e: &Error) -> String {
    match e {
        Error::Transport { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn failed(config: &RabbitMqConfig, message: &str, id: Uuid) -> Error {
    transport_error(config, message.to_string(), true, Some(id))
}

/// The error of a message not published because an earlier message of its
/// key failed.
fn held_back(config: &RabbitMqConfig, id: Uuid) -> Error {
    failed(config, "an earlier message with the same key failed", id)
}

/// What a publisher confirm said about one message.
enum Settled {
    Delivered,
    /// Returned with `312 NO_ROUTE`: no queue is bound for its topic.
    Unroutable(Error),
    Failed(Error),
}

impl Settled {
    fn into_result(self) -> Result<()> {
        match self {
            Settled::Delivered => Ok(()),
            Settled::Unroutable(e) | Settled::Failed(e) => Err(e),
        }
    }
}

/// Waits for one confirm and turns it into the message's result.
async fn settle(
    config: &RabbitMqConfig,
    topic: &str,
    id: Uuid,
    confirm: PublisherConfirm,
) -> Settled {
    match tokio::time::timeout(config.confirm_timeout, confirm).await {
        Err(_) => Settled::Failed(failed(
            config,
            &format!("no publisher confirm within {:?}", config.confirm_timeout),
            id,
        )),
        Ok(Err(e)) => Settled::Failed(amqp_error(
            config,
            "waiting for the publisher confirm",
            &e,
            Some(id),
        )),
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Settled::Delivered,
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Settled::Unroutable(failed(
            config,
            &format!(
                "unroutable: no queue is bound to exchange {:?} for routing key {topic:?} ({} {}); \
                 it is retried until a consumer group's queue exists",
                config.exchange, returned.reply_code, returned.reply_text
            ),
            id,
        )),
        Ok(Ok(Confirmation::Nack(_))) => {
            Settled::Failed(failed(config, "the broker refused the message (nack)", id))
        }
    }
}

/// The keys of one batch that failed while its acknowledgements are still
/// outstanding; dropping it (the batch settled, or the relay gave it up)
/// lets later batches publish those keys again.
struct HeldKeys {
    inner: Arc<Inner>,
    keys: HashSet<String>,
}

impl HeldKeys {
    fn hold(&mut self, key: &str) {
        if self.keys.insert(key.to_string()) {
            *self.inner.held().entry(key.to_string()).or_default() += 1;
        }
    }
}

impl Drop for HeldKeys {
    fn drop(&mut self) {
        let mut held = self.inner.held();
        for key in &self.keys {
            if let Some(n) = held.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

/// One message of a batch being sent: failed before it was published,
/// already settled, or waiting for its confirm.
enum Outcome {
    Done(Result<()>),
    Confirm(PublisherConfirm),
}

impl Inner {
    fn held(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent whatever panicked while holding it.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn routed(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding it.
        self.routed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_held(&self, key: &str) -> bool {
        self.held().contains_key(key)
    }

    fn is_routed(&self, topic: &str) -> bool {
        self.routed().contains(topic)
    }

    fn set_routed(&self, topic: &str, routed: bool) {
        let mut set = self.routed();
        if routed {
            set.insert(topic.to_string());
        } else {
            set.remove(topic);
        }
    }
}

#[async_trait::async_trait]
impl Sink for RabbitMqSink {
    fn name(&self) -> &str {
        NAME
    }

    /// Whether the connection and its channel are open, connecting first
    /// when they are not (as the next publish would).
    async fn check(&self) -> Result<()> {
        let mut link = self.inner.link.lock().await;
        self.channel(&mut link).await.map(|_| ())
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        self.send(batch).await.await
    }

    /// Publishes every message in batch order and returns at once; the
    /// acknowledgements are the publisher confirms. Batches handed over one
    /// after the other are published in that order on the same channel, so a
    /// key's messages stay in order across batches.
    ///
    /// With `mandatory`, the first message of a topic not yet routed on this
    /// connection is published alone and its confirm awaited before the
    /// batch goes on, so a consumer group's queue appearing mid-batch never
    /// receives a key's later messages without its earlier ones. A key whose
    /// message failed is not published again, in this batch or a later one,
    /// until this batch's acknowledgements are taken.
    async fn send(&self, batch: &[Message]) -> Acks {
        let inner = &self.inner;
        let config = inner.config.clone();
        let mut held = HeldKeys {
            inner: inner.clone(),
            keys: HashSet::new(),
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        {
            let mut link = inner.link.lock().await;
            let mut broken: Option<String> = None;
            let channel = match self.channel(&mut link).await {
                Ok(c) => Some(c),
                Err(e) => {
                    broken = Some(detail(&e));
                    None
                }
            };
            // Topics found without a queue in this batch, with the error.
            let mut unroutable: HashMap<&str, String> = HashMap::new();
            for m in batch {
                let key = m.key.as_deref();
                let outcome = 'outcome: {
                    if let Some(reason) = &broken {
                        break 'outcome Outcome::Done(Err(failed(&config, reason, m.id)));
                    }
                    if key.is_some_and(|k| held.keys.contains(k) || inner.is_held(k)) {
                        break 'outcome Outcome::Done(Err(held_back(&config, m.id)));
                    }
                    if let Some(reason) = unroutable.get(m.topic.as_str()) {
                        break 'outcome Outcome::Done(Err(failed(&config, reason, m.id)));
                    }
                    let (body, props) = match encode(m, config.codec, &config.cloudevents) {
                        Ok(x) => x,
                        Err(e) => break 'outcome Outcome::Done(Err(e)),
                    };
                    let channel = channel.as_ref().expect("set unless broken");
                    let options = BasicPublishOptions {
                        mandatory: config.mandatory,
                        ..BasicPublishOptions::default()
                    };
                    let confirm = match channel
                        .basic_publish(
                            config.exchange.as_str().into(),
                            m.topic.as_str().into(),
                            options,
                            &body,
                            props,
                        )
                        .await
                    {
                        Ok(confirm) => confirm,
                        Err(e) => {
                            let err = amqp_error(&config, "publishing", &e, Some(m.id));
                            broken = Some(detail(&err));
                            *link = None;
                            break 'outcome Outcome::Done(Err(err));
                        }
                    };
                    if !config.mandatory || inner.is_routed(&m.topic) {
                        break 'outcome Outcome::Confirm(confirm);
                    }
                    // The probe: the first message to this topic on this connection.
                    Outcome::Done(match settle(&config, &m.topic, m.id, confirm).await {
                        Settled::Delivered => {
                            inner.set_routed(&m.topic, true);
                            Ok(())
                        }
                        Settled::Unroutable(e) => {
                            unroutable.insert(m.topic.as_str(), detail(&e));
                            Err(e)
                        }
                        Settled::Failed(e) => Err(e),
                    })
                };
                if let (Some(k), Outcome::Done(Err(_))) = (key, &outcome) {
                    held.hold(k);
                }
                outcomes.push(outcome);
            }
        }
        let meta: Vec<(Uuid, String, Option<String>)> = batch
            .iter()
            .map(|m| (m.id, m.topic.clone(), m.key.clone()))
            .collect();
        Box::pin(async move {
            let mut results = Vec::with_capacity(outcomes.len());
            // A message must not count as delivered after an earlier message of
            // its key failed: it is sent again, after that one.
            let mut failed_keys: HashSet<&str> = HashSet::new();
            for ((id, topic, key), outcome) in meta.iter().zip(outcomes) {
                let mut result = match outcome {
                    Outcome::Done(r) => r,
                    Outcome::Confirm(confirm) => {
                        let settled = settle(&config, topic, *id, confirm).await;
                        if let Settled::Unroutable(_) = settled {
                            held.inner.set_routed(topic, false);
                        }
                        settled.into_result()
                    }
                };
                if let Some(k) = key.as_deref() {
                    if result.is_ok() && failed_keys.contains(k) {
                        result = Err(held_back(&config, *id));
                    }
                    if result.is_err() {
                        failed_keys.insert(k);
                        held.hold(k);
                    }
                }
                results.push(result);
            }
            drop(held);
            results
        })
    }
}
