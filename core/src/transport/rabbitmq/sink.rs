//! [`RabbitMqSink`]: publishes relay batches to a topic exchange with
//! publisher confirms, many messages in flight at once.

use std::collections::HashSet;
use std::sync::Arc;

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
#[derive(Clone)]
pub struct RabbitMqSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitMqConfig,
    link: tokio::sync::Mutex<Option<Link>>,
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
    match tokio::time::timeout(
        config.connect_timeout,
        Connection::connect(&config.url, props),
    )
    .await
    {
        Err(_) => Err(transport_error(
            config,
            format!("{what} timed out after {:?}", config.connect_timeout),
            true,
            None,
        )),
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

/// Waits for one confirm and turns it into the message's result.
async fn settle(
    config: &RabbitMqConfig,
    topic: &str,
    id: Uuid,
    confirm: PublisherConfirm,
) -> Result<()> {
    match tokio::time::timeout(config.confirm_timeout, confirm).await {
        Err(_) => Err(failed(
            config,
            &format!("no publisher confirm within {:?}", config.confirm_timeout),
            id,
        )),
        Ok(Err(e)) => Err(amqp_error(
            config,
            "waiting for the publisher confirm",
            &e,
            Some(id),
        )),
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(failed(
            config,
            &format!(
                "unroutable: no queue is bound to exchange {:?} for routing key {topic:?} ({} {}); \
                 it is retried until a consumer group's queue exists",
                config.exchange, returned.reply_code, returned.reply_text
            ),
            id,
        )),
        Ok(Ok(Confirmation::Nack(_))) => {
            Err(failed(config, "the broker refused the message (nack)", id))
        }
    }
}

#[async_trait::async_trait]
impl Sink for RabbitMqSink {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        self.send(batch).await.await
    }

    /// Publishes every message in batch order and returns at once; the
    /// acknowledgements are the publisher confirms. Batches handed over one
    /// after the other are published in that order on the same channel, so a
    /// key's messages stay in order across batches.
    async fn send(&self, batch: &[Message]) -> Acks {
        let config = self.inner.config.clone();
        let mut pending: Vec<Result<PublisherConfirm>> = Vec::with_capacity(batch.len());
        {
            let mut link = self.inner.link.lock().await;
            let mut broken: Option<String> = None;
            let channel = match self.channel(&mut link).await {
                Ok(c) => Some(c),
                Err(e) => {
                    broken = Some(detail(&e));
                    None
                }
            };
            for m in batch {
                if let Some(reason) = &broken {
                    pending.push(Err(failed(&config, reason, m.id)));
                    continue;
                }
                let channel = channel.as_ref().expect("set unless broken");
                let (body, props) = match encode(m, config.codec) {
                    Ok(x) => x,
                    Err(e) => {
                        pending.push(Err(e));
                        continue;
                    }
                };
                let options = BasicPublishOptions {
                    mandatory: config.mandatory,
                    ..BasicPublishOptions::default()
                };
                match channel
                    .basic_publish(
                        config.exchange.as_str().into(),
                        m.topic.as_str().into(),
                        options,
                        &body,
                        props,
                    )
                    .await
                {
                    Ok(confirm) => pending.push(Ok(confirm)),
                    Err(e) => {
                        let err = amqp_error(&config, "publishing", &e, Some(m.id));
                        broken = Some(detail(&err));
                        pending.push(Err(err));
                        *link = None;
                    }
                }
            }
        }
        let meta: Vec<(Uuid, String, Option<String>)> = batch
            .iter()
            .map(|m| (m.id, m.topic.clone(), m.key.clone()))
            .collect();
        Box::pin(async move {
            let mut results = Vec::with_capacity(pending.len());
            for ((id, topic, _), p) in meta.iter().zip(pending) {
                results.push(match p {
                    Err(e) => Err(e),
                    Ok(confirm) => settle(&config, topic, *id, confirm).await,
                });
            }
            // A message must not count as delivered after an earlier message of
            // its key failed: it is sent again, after that one.
            let mut failed_keys: HashSet<&str> = HashSet::new();
            for ((id, _, key), result) in meta.iter().zip(results.iter_mut()) {
                let Some(key) = key.as_deref() else { continue };
                if result.is_ok() && failed_keys.contains(key) {
                    *result = Err(failed(
                        &config,
                        "an earlier message with the same key failed",
                        *id,
                    ));
                }
                if result.is_err() {
                    failed_keys.insert(key);
                }
            }
            results
        })
    }
}
