//! The relaybox quickstart, on SQLite with no server:
//!
//! 1. writes a business row and its event in one transaction;
//! 2. shows that a rolled-back transaction leaves no event;
//! 3. relays the outbox (to the database log by default);
//! 4. consumes each message once, also when the transport delivers it again.
//!
//! Run from the repository root: `cargo run --example quickstart`.
//! One setting switches the transport to Kafka:
//! `RELAYBOX_TRANSPORT=kafka cargo run --example quickstart --features kafka`
//! (broker at `RELAYBOX_KAFKA_BOOTSTRAP`, default 127.0.0.1:9092).

use std::sync::Arc;
use std::time::{Duration, Instant};

use relaybox::{
    handler_fn, BoxError, Consumer, ConsumerConfig, Message, Relay, RelayConfig, Store,
    TransportConfig, Value,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = TransportConfig::from_env()?;
    let dir = std::env::temp_dir().join(format!("relaybox-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("shop.db").display());
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    println!("1. opened {url} and created the relaybox tables");

    let tx = store.begin().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)",
        &[],
    )
    .await?;
    tx.execute(
        "INSERT INTO orders (id, total) VALUES (?1, ?2)",
        &["order-1".into(), 4200.into()],
    )
    .await?;
    let event = Message::json(
        "orders",
        &serde_json::json!({"order": "order-1", "total": 4200}),
    )?
    .with_key("order-1")
    .with_type("OrderPlaced");
    let placed = tx.enqueue(event.clone()).await?;
    tx.commit().await?;
    println!("2. committed order-1 and its OrderPlaced event {placed} in one transaction");

    let tx = store.begin().await?;
    tx.execute(
        "INSERT INTO orders (id, total) VALUES (?1, ?2)",
        &["order-2".into(), 99.into()],
    )
    .await?;
    tx.enqueue(Message::new("orders", b"never sent".to_vec()).with_key("order-2"))
        .await?;
    tx.rollback().await?;
    let orders = count(&store, "SELECT count(*) FROM orders").await?;
    println!(
        "3. rolled back order-2: {orders} order in the table, {} event waiting in the outbox",
        store.pending_count().await?
    );

    let sink = transport.sink(&store)?;
    let relay = Relay::start(store.clone(), sink.clone(), RelayConfig::default())?;
    let handler = Arc::new(handler_fn(
        |message: Message, tx: relaybox::Transaction| async move {
            tx.execute(
                "CREATE TABLE IF NOT EXISTS shipments (order_event TEXT PRIMARY KEY)",
                &[],
            )
            .await?;
            tx.execute(
                "INSERT INTO shipments (order_event) VALUES (?1)",
                &[Value::Uuid(message.id)],
            )
            .await?;
            println!(
                "   handler: shipping for {} ({})",
                message.key.as_deref().unwrap_or("-"),
                message.event_type
            );
            Ok::<(), BoxError>(())
        },
    ));
    let source = transport.source(&store, "orders", "shipping")?;
    let consumer = Consumer::start(
        store.clone(),
        source,
        handler,
        ConsumerConfig::new("shipping"),
    )?;
    wait_for(|| consumer.stats().processed == 1).await?;
    println!(
        "4. relayed over the {} transport and consumed: {} delivered, {} handled",
        transport.name(),
        relay.stats().delivered,
        consumer.stats().processed
    );

    // The transport delivers the same event again, as brokers do after a crash or rebalance.
    for result in sink.publish(&[event]).await {
        result?;
    }
    wait_for(|| consumer.stats().duplicates == 1).await?;
    let shipments = count(&store, "SELECT count(*) FROM shipments").await?;
    println!(
        "5. delivered again: {} duplicate skipped by the inbox, {shipments} shipment in total",
        consumer.stats().duplicates
    );

    consumer.shutdown().await?;
    relay.shutdown().await?;
    store.close().await;
    std::fs::remove_dir_all(&dir)?;
    println!("done: every event handled once, nothing from the rolled-back transaction.");
    Ok(())
}

async fn count(store: &Store, sql: &str) -> Result<i64, relaybox::Error> {
    let tx = store.begin().await?;
    let rows = tx.query(sql, &[]).await?;
    tx.rollback().await?;
    match rows.first().and_then(|r| r.values.first()) {
        Some(Value::Int(n)) => Ok(*n),
        other => Err(relaybox::Error::InvalidValue {
            reason: format!("expected a count, got {other:?}"),
        }),
    }
}

async fn wait_for(mut done: impl FnMut() -> bool) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        if Instant::now() > deadline {
            return Err("timed out after 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
