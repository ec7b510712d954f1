//! PostgreSQL outbox → Apache Kafka → idempotent consumer.
//!
//! Writes orders and their events in one transaction each, relays them to a
//! Kafka topic (keyed by order, so each order's events stay in order), and
//! consumes them as consumer group `billing`, recording each order once.
//!
//! Needs PostgreSQL and Kafka: `dev/services start postgres kafka`, then
//! `eval "$(dev/services env)"; cargo run --example kafka`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relaybox::transport::kafka::{KafkaConfig, KafkaSink, KafkaSource, KafkaSourceConfig};
use relaybox::{
    handler_fn, BoxError, Consumer, ConsumerConfig, Message, Relay, RelayConfig, Store,
    StoreOptions, Transaction,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("RELAYBOX_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/relaybox".into());
    let bootstrap =
        std::env::var("RELAYBOX_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let run = std::process::id();
    let options = StoreOptions {
        table_prefix: format!("example_kafka_{run}_"),
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&url, options).await?;
    store.migrate().await?;
    let topic = format!("orders-{run}");

    let mut kafka = KafkaConfig::new(bootstrap);
    kafka.create_topics = true; // create `topic` (3 partitions) on first use
    kafka
        .producer_properties
        .insert("compression.type".into(), "lz4".into());

    let setup = store.begin().await?;
    setup
        .execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS example_kafka_{run}_billed (order_id TEXT PRIMARY KEY)"
            ),
            &[],
        )
        .await?;
    setup.commit().await?;

    for n in 1..=20 {
        let tx = store.begin().await?;
        let order = format!("order-{n}");
        tx.enqueue(
            Message::json(
                &topic,
                &serde_json::json!({"order": order, "total": n * 100}),
            )?
            .with_key(order.clone())
            .with_type("OrderPlaced")
            .with_source("example-shop"),
        )
        .await?;
        tx.commit().await?;
    }
    println!("enqueued 20 OrderPlaced events in 20 transactions");

    let relay = Relay::start(
        store.clone(),
        Arc::new(KafkaSink::new(kafka.clone())?),
        RelayConfig::default(),
    )?;

    let billed_table = format!("example_kafka_{run}_billed");
    let handler = handler_fn(move |message: Message, tx: Transaction| {
        let table = billed_table.clone();
        async move {
            let order = message.key.clone().unwrap_or_default();
            tx.execute(
                &format!("INSERT INTO {table} (order_id) VALUES ($1)"),
                &[order.into()],
            )
            .await?;
            Ok::<(), BoxError>(())
        }
    });
    let source = KafkaSource::new(KafkaSourceConfig::new(
        kafka,
        &topic,
        format!("billing-{run}"),
    ))?;
    let consumer = Consumer::start(
        store.clone(),
        source,
        Arc::new(handler),
        ConsumerConfig::new("billing"),
    )?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.stats().processed < 20 {
        if Instant::now() > deadline {
            return Err(format!("only {} of 20 consumed", consumer.stats().processed).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "relayed {} to Kafka topic {topic}; consumer group billing handled {} (dead letters go to {topic}.dlq)",
        relay.stats().delivered,
        consumer.stats().processed
    );

    consumer.shutdown().await?;
    relay.shutdown().await?;
    let cleanup = store.begin().await?;
    for table in std::iter::once(&"billed").chain(relaybox::schema::TABLES) {
        cleanup
            .execute(
                &format!("DROP TABLE IF EXISTS example_kafka_{run}_{table} CASCADE"),
                &[],
            )
            .await?;
    }
    cleanup.commit().await?;
    store.close().await;
    Ok(())
}
