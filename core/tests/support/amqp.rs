//! Raw AMQP access for the RabbitMQ tests: what a third-party lapin client
//! sees of the broker (declare and bind, `basic.get`, queue depth, delete).
#![allow(dead_code)]

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use uuid::Uuid;

/// The broker URL; fails the test loudly when it is not set.
pub fn url() -> String {
    match std::env::var("RELAYBOX_RABBITMQ_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "RELAYBOX_RABBITMQ_URL is not set: the RabbitMQ tests run against a real node and \
             are never skipped. Start it with `dev/services start rabbitmq && eval \"$(dev/services env)\"`"
        ),
    }
}

/// A raw lapin channel on the broker at `url` (a plaintext `amqp://` URL,
/// such as [`url`]'s), as a third-party client sees the broker.
pub async fn raw(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "raw AMQP connection: {e}; start RabbitMQ with \
                 `dev/services start rabbitmq && eval \"$(dev/services env)\"`"
            )
        });
    let channel = conn.create_channel().await.expect("raw channel");
    (conn, channel)
}

/// Declares the exchange and a queue bound to it with `routing_key`.
pub async fn bind_queue(
    ch: &Channel,
    exchange: &str,
    queue: &str,
    routing_key: &str,
    args: FieldTable,
) {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange declare");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("queue declare");
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        routing_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue bind");
}

/// One message taken from a queue with `basic.get` (auto-ack).
pub struct Got {
    pub routing_key: String,
    pub exchange: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<String> {
        match self.properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            other => Some(format!("{other:?}")),
        }
    }

    pub fn prop(v: &Option<lapin::types::ShortString>) -> Option<String> {
        v.as_ref().map(|s| s.as_str().to_string())
    }

    pub fn message_id(&self) -> Uuid {
        Uuid::parse_str(&Self::prop(self.properties.message_id()).expect("message_id"))
            .expect("message_id is a UUID")
    }
}

/// Every message in `queue`, in queue order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let d = &m.delivery;
        out.push(Got {
            routing_key: d.routing_key.as_str().to_string(),
            exchange: d.exchange.as_str().to_string(),
            properties: d.properties.clone(),
            body: d.data.clone(),
        });
    }
    out
}

/// Messages ready in `queue` (passive declare).
pub async fn queue_depth(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue declare")
    .message_count()
}

pub async fn delete(ch: &Channel, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    for e in exchanges {
        let _ = ch
            .exchange_delete((*e).into(), ExchangeDeleteOptions::default())
            .await;
    }
}
