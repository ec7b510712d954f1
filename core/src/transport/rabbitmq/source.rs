//! [`RabbitMqSource`]: a consumer on a group's durable queue, acknowledging
//! only what the handler's transaction committed, with a dead-letter exchange.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{Channel, Connection, Consumer};

use super::codec::{
    encode, message_from_delivery, Codec, HEADER_ERROR, HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_TOPIC,
};
use super::config::{check_name, RabbitMqConfig};
use super::sink::{connect, declare_exchange};
use super::{amqp_error, transport_error, NAME};
use crate::error::{Error, Result};
use crate::source::{AckToken, Delivery, Source};
use crate::validate::check_topic;

/// Settings of a [`RabbitMqSource`].
#[derive(Clone, Debug)]
pub struct RabbitMqSourceConfig {
    /// Connection and topology settings.
    pub rabbitmq: RabbitMqConfig,
    /// Topic to consume: the routing key the queue is bound with.
    pub topic: String,
    /// Consumer group: members of one group share one queue.
    pub group: String,
    /// The queue (default `<group>.<topic>`).
    pub queue: Option<String>,
}

impl RabbitMqSourceConfig {
    /// Consumes `topic` as group `group`.
    pub fn new(
        rabbitmq: RabbitMqConfig,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        RabbitMqSourceConfig {
            rabbitmq,
            topic: topic.into(),
            group: group.into(),
            queue: None,
        }
    }

    /// The queue in force.
    pub fn queue(&self) -> String {
        self.queue
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.group, self.topic))
    }

    /// The dead-letter queue: `<queue>.dlq`, bound to the dead-letter
    /// exchange with the queue's name as routing key.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue())
    }
}

/// A [`Source`] reading a consumer group's durable queue.
///
/// The queue `<group>.<topic>` is bound to the exchange with routing key =
/// topic and dead-letters into the dead-letter exchange with the queue's
/// name as routing key, where `<group>.<topic>.dlq` collects them. The
/// broker hands out at most `prefetch` unacknowledged deliveries. Each
/// delivery gets an increasing offset (partition 0); acknowledging an offset
/// acks every delivery up to it with one `basic.ack` (`multiple`). Nothing
/// is acknowledged before the consumer's transaction for it committed, so
/// deliveries not acknowledged when the consumer stops or the connection is
/// lost are delivered again. Deliveries are laned by key: a key's messages
/// are processed in order, different keys concurrently. After a lost
/// connection, `fetch` reports a retryable error and connects again.
pub struct RabbitMqSource {
    config: RabbitMqSourceConfig,
    live: Mutex<Option<Arc<Live>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Unacknowledged deliveries: offset → (connection generation, delivery tag).
    pending: Mutex<BTreeMap<i64, (u64, u64)>>,
    next_offset: AtomicI64,
    generation: AtomicU64,
}

struct Live {
    generation: u64,
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Confirm-mode channel for dead letters.
    publisher: Channel,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

impl std::fmt::Debug for RabbitMqSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSource")
            .field("config", &self.config)
            .finish()
    }
}

impl RabbitMqSource {
    /// Checks the settings; the connection is opened by the first `fetch`.
    pub fn new(config: RabbitMqSourceConfig) -> Result<Arc<Self>> {
        config.rabbitmq.validate()?;
        check_topic(&config.topic)?;
        if config.group.is_empty() {
            return Err(Error::config("group", "must not be empty"));
        }
        check_name("queue", &config.dead_letter_queue())?;
        Ok(Arc::new(RabbitMqSource {
            config,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            pending: Mutex::new(BTreeMap::new()),
            next_offset: AtomicI64::new(0),
            generation: AtomicU64::new(0),
        }))
    }

    /// The settings this source was created with.
    pub fn config(&self) -> &RabbitMqSourceConfig {
        &self.config
    }

    /// Declares the queues and bindings (when `declare` is set) and starts
    /// consuming, instead of waiting for the first `fetch`.
    pub async fn connect(&self) -> Result<()> {
        self.live().await.map(|_| ())
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.live.lock().expect("live").clone()
    }

    fn drop_live(&self, generation: u64) {
        let mut live = self.live.lock().expect("live");
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            *live = None;
        }
    }

    async fn live(&self) -> Result<Arc<Live>> {
        if let Some(l) = self.current().filter(|l| l.usable()) {
            return Ok(l);
        }
        let _one = self.connecting.lock().await;
        if let Some(l) = self.current() {
            if l.usable() {
                return Ok(l);
            }
            self.drop_live(l.generation);
            let _ = l.conn.close(200, "reconnecting".into()).await;
        }
        let live = Arc::new(self.open().await?);
        *self.live.lock().expect("live") = Some(live.clone());
        Ok(live)
    }

    async fn open(&self) -> Result<Live> {
        let c = &self.config.rabbitmq;
        let err = |what: &str| {
            let what = what.to_string();
            move |e: lapin::Error| amqp_error(c, &what, &e, None)
        };
        let queue = self.config.queue();
        let dlx = c.dead_letter_exchange();
        let conn = connect(c, &format!("relaybox consumer {}", self.config.group)).await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(err("opening a channel"))?;
        let publisher = conn
            .create_channel()
            .await
            .map_err(err("opening a channel"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err("enabling publisher confirms"))?;
        if c.declare {
            declare_exchange(c, &channel, &c.exchange).await?;
            declare_exchange(c, &channel, &dlx).await?;
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(dlx.as_bytes().to_vec())),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(queue.as_bytes().to_vec())),
            );
            let mut dlq_args = FieldTable::default();
            if c.quorum_queues {
                for a in [&mut args, &mut dlq_args] {
                    a.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
                    );
                }
            }
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            let dlq = self.config.dead_letter_queue();
            channel
                .queue_declare(queue.as_str().into(), durable, args)
                .await
                .map_err(err(&format!("declaring queue {queue:?}")))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    c.exchange.as_str().into(),
                    self.config.topic.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err(&format!("binding queue {queue:?}")))?;
            channel
                .queue_declare(dlq.as_str().into(), durable, dlq_args)
                .await
                .map_err(err(&format!("declaring queue {dlq:?}")))?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dlx.as_str().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err(&format!("binding queue {dlq:?}")))?;
        }
        channel
            .basic_qos(c.prefetch, BasicQosOptions::default())
            .await
            .map_err(err("setting the prefetch"))?;
        let tag = format!(
            "relaybox-{}-{}",
            self.config.group,
            uuid::Uuid::now_v7().simple()
        );
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err(&format!("consuming queue {queue:?}")))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(url = %c.redacted_url(), queue = %queue, "relaybox consuming from RabbitMQ");
        Ok(Live {
            generation,
            conn,
            channel,
            consumer,
            publisher,
        })
    }

    fn delivery(&self, live: &Live, d: lapin::message::Delivery) -> Delivery {
        let message = message_from_delivery(d.routing_key.as_str(), &d.properties, &d.data);
        let offset = self.next_offset.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .expect("pending")
            .insert(offset, (live.generation, d.delivery_tag));
        Delivery {
            lane: u64::from(crate::partition::routing_hash(
                message.key.as_deref(),
                &message.id,
            )),
            message,
            ack: AckToken {
                partition: 0,
                offset,
            },
        }
    }

    fn lost(&self, live: &Live, what: &str, e: Option<&lapin::Error>) -> Error {
        self.drop_live(live.generation);
        let c = &self.config.rabbitmq;
        match e {
            Some(e) => amqp_error(c, what, e, None),
            None => transport_error(c, format!("{what}: the connection was closed"), true, None),
        }
    }
}

#[async_trait::async_trait]
impl Source for RabbitMqSource {
    fn name(&self) -> &str {
        NAME
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let live = self.live().await?;
        let mut consumer = live.consumer.clone();
        let mut out = Vec::new();
        // `next` is cancellation safe, and a delivery it returned is
        // registered before the next await point.
        match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => return Err(self.lost(&live, "consuming", None)),
            Ok(Some(Err(e))) => return Err(self.lost(&live, "consuming", Some(&e))),
            Ok(Some(Ok(d))) => out.push(self.delivery(&live, d)),
        }
        while out.len() < max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.delivery(&live, d)),
                Some(Some(Err(e))) => {
                    self.drop_live(live.generation);
                    tracing::warn!(error = %amqp_error(&self.config.rabbitmq, "consuming", &e, None), "relaybox RabbitMQ consumer error");
                    break;
                }
                Some(None) | None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, acks: &[AckToken]) -> Result<()> {
        let Some(up_to) = acks.iter().map(|a| a.offset).max() else {
            return Ok(());
        };
        let settled: Vec<(u64, u64)> = {
            let mut pending = self.pending.lock().expect("pending");
            let rest = pending.split_off(&(up_to + 1));
            std::mem::replace(&mut *pending, rest)
                .into_values()
                .collect()
        };
        let Some(live) = self.current() else {
            // Their channel is gone: the broker delivers them again.
            return Ok(());
        };
        // Offsets and delivery tags of one channel grow together, and every
        // delivery of the channel up to the highest tag here is either among
        // them or already acknowledged alone (dead letters): one `multiple` ack.
        let Some(tag) = settled
            .iter()
            .filter(|(g, _)| *g == live.generation)
            .map(|(_, t)| *t)
            .max()
        else {
            return Ok(());
        };
        live.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| self.lost(&live, "acknowledging", Some(&e)))
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<bool> {
        let c = &self.config.rabbitmq;
        let live = self.live().await?;
        let m = &delivery.message;
        let (body, props) = encode(m, Codec::Relaybox, &c.cloudevents)?;
        let mut headers = props.headers().clone().unwrap_or_default();
        let queue = self.config.queue();
        for (k, v) in [
            (HEADER_ERROR, error),
            (HEADER_ORIGINAL_TOPIC, m.topic.as_str()),
            (HEADER_ORIGINAL_QUEUE, queue.as_str()),
        ] {
            headers.insert(
                k.into(),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
        }
        let confirm = live
            .publisher
            .basic_publish(
                c.dead_letter_exchange().as_str().into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                props.with_headers(headers),
            )
            .await
            .map_err(|e| self.lost(&live, "publishing a dead letter", Some(&e)))?;
        match tokio::time::timeout(c.confirm_timeout, confirm).await {
            Err(_) => {
                return Err(transport_error(
                    c,
                    "no publisher confirm for the dead letter".into(),
                    true,
                    Some(m.id),
                ))
            }
            Ok(Err(e)) => return Err(self.lost(&live, "publishing a dead letter", Some(&e))),
            Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => {}
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                return Err(transport_error(
                    c,
                    format!(
                        "no dead-letter queue is bound to {:?} for routing key {queue:?}",
                        c.dead_letter_exchange()
                    ),
                    true,
                    Some(m.id),
                ))
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                return Err(transport_error(
                    c,
                    "the broker refused the dead letter (nack)".into(),
                    true,
                    Some(m.id),
                ))
            }
        }
        // The original is settled now, whatever the consumer acknowledges later.
        let entry = self
            .pending
            .lock()
            .expect("pending")
            .remove(&delivery.ack.offset);
        if let Some((generation, tag)) = entry {
            if generation == live.generation {
                live.channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await
                    .map_err(|e| self.lost(&live, "acknowledging a dead letter", Some(&e)))?;
            }
        }
        Ok(true)
    }

    async fn close(&self) -> Result<()> {
        let live = self.live.lock().expect("live").take();
        if let Some(l) = live {
            // Unacknowledged deliveries go back to the queue.
            let _ = l.conn.close(200, "closing".into()).await;
        }
        Ok(())
    }
}
