//! The idempotent consumer in host-transaction mode, on PostgreSQL: the
//! application keeps its own `sqlx::PgPool` and opens its own
//! `sqlx::Transaction` for each delivery. relaybox hands over the message
//! and the statement that records it in the inbox; the application runs that
//! statement first, then its business write, and commits; relaybox
//! acknowledges the delivery only after it hears of the commit.
//!
//! 1. publishes an OrderPlaced event through the outbox and a relay;
//! 2. consumes it into the application's `shipments` table;
//! 3. delivers it again, as brokers do after a crash: the inbox statement
//!    inserts nothing, so the application skips it.
//!
//! Run from the repository root, with a PostgreSQL database:
//! `RELAYBOX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/relaybox cargo run --example host_consumer`
//! (`RELAYBOX_TRANSPORT=kafka` switches the transport to Kafka, as in the quickstart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use relaybox::sqlx::{self, PgPool};
use relaybox::{
    host_handler_fn, Consumer, ConsumerConfig, HostDelivery, HostOutcome, Message, Placeholders,
    Relay, RelayConfig, Store, StoreOptions, TransportConfig,
};

/// The application's side of the protocol, with its own pool and transaction.
async fn ship(pool: &PgPool, delivery: &HostDelivery) -> Result<HostOutcome, relaybox::BoxError> {
    let mut tx: sqlx::Transaction<'_, sqlx::Postgres> = pool.begin().await?;
    // The inbox row first: no row inserted means the group had this message.
    if !delivery.insert_inbox_pg(&mut tx).await? {
        tx.rollback().await?;
        println!("   handler: {} seen before, skipped", delivery.message.id);
        return Ok(HostOutcome::Duplicate);
    }
    sqlx::query("INSERT INTO host_example_shipments (order_event, order_key) VALUES ($1, $2)")
        .bind(delivery.message.id)
        .bind(delivery.message.key.clone())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    println!(
        "   handler: shipping for {}",
        delivery.message.key.as_deref().unwrap_or("-")
    );
    Ok(HostOutcome::Processed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("RELAYBOX_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/relaybox".into());
    let transport = TransportConfig::from_env()?;
    let options = StoreOptions {
        table_prefix: "host_example_".into(),
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&url, options).await?;
    store.migrate().await?;
    // The application's own pool: relaybox never sees its transactions.
    let app = PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS host_example_shipments (order_event uuid NOT NULL, order_key text)",
    )
    .execute(&app)
    .await?;
    println!("1. connected; relaybox tables and the application's table ready");

    let event = Message::json("orders", &serde_json::json!({"order": "order-1"}))?
        .with_key("order-1")
        .with_type("OrderPlaced");
    let tx = store.begin().await?;
    tx.enqueue(event.clone()).await?;
    tx.commit().await?;
    let sink = transport.sink(&store)?;
    let relay = Relay::start(store.clone(), sink.clone(), RelayConfig::default())?;

    let group = format!("shipping-{}", std::process::id());
    let pool = app.clone();
    let handler = Arc::new(host_handler_fn(move |delivery: HostDelivery| {
        let pool = pool.clone();
        async move {
            match ship(&pool, &delivery).await {
                Ok(outcome) => outcome,
                Err(e) => HostOutcome::Failed(e.to_string()),
            }
        }
    }));
    let source = transport.source(&store, "orders", &group)?;
    let consumer = Consumer::start_host(
        store.clone(),
        source,
        handler,
        Placeholders::Dollar,
        ConsumerConfig::new(group.as_str()),
    )?;
    let shipped = async || -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM host_example_shipments WHERE order_event = $1")
            .bind(event.id)
            .fetch_one(&app)
            .await
    };
    wait_for(async || shipped().await.is_ok_and(|n| n == 1)).await?;
    println!(
        "2. relayed over the {} transport and consumed in the application's transaction",
        transport.name()
    );

    let before = consumer.stats().duplicates;
    for result in sink.publish(std::slice::from_ref(&event)).await {
        result?;
    }
    wait_for(async || consumer.stats().duplicates > before).await?;
    println!(
        "3. delivered again: skipped by the inbox, {} shipment for the event",
        shipped().await?
    );

    consumer.shutdown().await?;
    relay.shutdown().await?;
    store.close().await;
    app.close().await;
    println!("done: the event took effect once, in the application's own transaction.");
    Ok(())
}

async fn wait_for(mut done: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        if Instant::now() > deadline {
            return Err("timed out after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
