//! What every section shares: the run's sizes and targets, the store and
//! pool on this run's tables, the summary figures, the benchmark message, and
//! the table helpers (reset, backlog, settle, drop).

use std::time::Duration;

use anyhow::{ensure, Result};
use relaybox::{Message, Store};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, PgPool};
use tokio::task::JoinSet;

/// Distinct partition keys of the generated messages.
pub(crate) const KEYS: usize = 1_000;
/// Topic of the throughput sections.
pub(crate) const TOPIC: &str = "bench.orders";
/// Topic of the latency and idle sections.
pub(crate) const LATENCY_TOPIC: &str = "bench.latency";
/// Relay drain target, messages per second.
pub(crate) const DRAIN_TARGET: f64 = 50_000.0;
/// Relay rate as a share of the ceiling, percent.
pub(crate) const CEILING_TARGET: f64 = 70.0;
/// Commit-to-handler p99 target, milliseconds.
pub(crate) const P99_TARGET_MS: f64 = 25.0;
/// Idle CPU target, percent of one core.
pub(crate) const IDLE_TARGET: f64 = 1.0;
/// Concurrent producer tasks of the enqueue section.
pub(crate) const ENQUEUE_TASKS: usize = 8;
/// Producer transactions in flight at most in the latency section.
pub(crate) const LATENCY_IN_FLIGHT: usize = 32;
/// Messages waiting for the consumer capacity runs.
pub(crate) const CAPACITY_MESSAGES: usize = 20_000;
/// Longest a relay drain may take before the run is abandoned.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// Sizes of one run (full or `--quick`).
pub(crate) struct Sizes {
    pub(crate) single_n: usize,
    pub(crate) batch_total: usize,
    pub(crate) batch_size: usize,
    pub(crate) backlog: usize,
    pub(crate) drain_batches: Vec<u32>,
    pub(crate) diagnostics_batch: Option<u32>,
    pub(crate) naive_rows: usize,
    pub(crate) naive_max: Duration,
    pub(crate) latency_for: Duration,
    pub(crate) idle_for: Duration,
    /// Backlog of the Kafka drains (256-byte payloads).
    pub(crate) kafka_backlog: usize,
    /// Interleaved runs of the Kafka drains (`--runs` overrides it).
    pub(crate) kafka_runs: usize,
    /// Backlog of the Kafka takeover measurement.
    pub(crate) takeover_backlog: usize,
}

impl Sizes {
    pub(crate) fn full() -> Sizes {
        Sizes {
            single_n: 5_000,
            batch_total: 100_000,
            batch_size: 100,
            backlog: 100_000,
            drain_batches: vec![500, 1000, 2000],
            diagnostics_batch: Some(1000),
            naive_rows: 2_000,
            naive_max: Duration::from_secs(10),
            latency_for: Duration::from_secs(10),
            idle_for: Duration::from_secs(5),
            kafka_backlog: 200_000,
            kafka_runs: 3,
            takeover_backlog: 200_000,
        }
    }

    pub(crate) fn quick() -> Sizes {
        Sizes {
            single_n: 800,
            batch_total: 10_000,
            batch_size: 100,
            backlog: 10_000,
            drain_batches: vec![1000],
            diagnostics_batch: None,
            naive_rows: 300,
            naive_max: Duration::from_secs(3),
            latency_for: Duration::from_secs(3),
            idle_for: Duration::from_secs(2),
            kafka_backlog: 20_000,
            kafka_runs: 1,
            takeover_backlog: 50_000,
        }
    }
}

/// One line of the final summary.
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

/// What the run shares between sections.
pub(crate) struct Bench {
    pub(crate) store: Store,
    pub(crate) pool: PgPool,
    pub(crate) prefix: String,
    pub(crate) app_name: String,
    pub(crate) sizes: Sizes,
    pub(crate) summary: Vec<Figure>,
    /// Relay drain rates (DatabaseSink) by batch size.
    pub(crate) relay_rates: Vec<(u32, f64)>,
    /// Ceiling rates by batch size.
    pub(crate) ceiling_rates: Vec<(u32, f64)>,
    /// Kafka topics and consumer groups this run created (deleted at the end).
    pub(crate) kafka_topics: Vec<String>,
    pub(crate) kafka_groups: Vec<String>,
}

/// Makes the `i`th message of a topic.
pub(crate) type MakeMessage = fn(&str, usize) -> Message;

/// The `i`th benchmark message: ~200 bytes of JSON, one of `KEYS` keys.
pub(crate) fn message(topic: &str, i: usize) -> Message {
    let key = format!("customer-{:04}", i % KEYS);
    let payload = serde_json::json!({
        "order_id": i,
        "customer": key,
        "amount_cents": (i * 7919) % 100_000,
        "currency": "EUR",
        "items": [{"sku": format!("SKU-{:05}", i % 50_000), "qty": 1 + i % 5}],
        "note": "deliver to the back door; ring twice, then wait at the gate please",
    });
    Message::json(topic, &payload)
        .expect("a JSON payload")
        .with_key(key)
        .with_type("OrderPlaced")
}

impl Bench {
    pub(crate) fn figure(
        &mut self,
        name: impl Into<String>,
        value: String,
        target: &str,
        met: Option<bool>,
    ) {
        self.summary.push(Figure {
            name: name.into(),
            value,
            target: target.into(),
            met,
        });
    }

    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) async fn exec(&self, sql: String) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(Into::into)
    }

    pub(crate) async fn count(&self, table: &str, filter: &str) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}{table} {filter}", self.prefix);
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Cleans up after earlier sections and runs before a latency window:
    /// `VACUUM` (the system catalogs' dead rows, left by every run creating
    /// and dropping its tables, which an autovacuum worker would otherwise
    /// clean during the window), then writes out what they left dirty:
    /// PostgreSQL's buffers (`CHECKPOINT`), then the machine's page cache
    /// (`sync`: the broker's log segments too), so that a latency window does
    /// not share the disk with their writeback. `RELAYBOX_BENCH_NO_SETTLE`
    /// (any value) skips it.
    pub(crate) async fn settle(&self) -> Result<()> {
        if std::env::var("RELAYBOX_BENCH_NO_SETTLE").is_ok() {
            return Ok(());
        }
        self.exec("VACUUM".into()).await?;
        self.exec("CHECKPOINT".into()).await?;
        let synced = tokio::process::Command::new("sync").status().await?;
        ensure!(synced.success(), "sync failed: {synced}");
        Ok(())
    }

    /// Empties every table a section writes to.
    pub(crate) async fn reset(&self) -> Result<()> {
        let p = &self.prefix;
        self.exec(format!(
            "TRUNCATE {p}outbox, {p}log, {p}inbox, {p}positions, {p}dead_letters RESTART IDENTITY"
        ))
        .await
    }

    /// Resets, then writes an `n`-message backlog with `enqueue_batch` (1,000
    /// per transaction, 2 writers), then ANALYZE and CHECKPOINT so that every
    /// timed drain starts from the same state.
    pub(crate) async fn backlog(&self, n: usize, topic: &str) -> Result<()> {
        self.backlog_of(n, topic, message).await
    }

    /// [`backlog`](Bench::backlog) of the messages `make(topic, i)`.
    pub(crate) async fn backlog_of(&self, n: usize, topic: &str, make: MakeMessage) -> Result<()> {
        self.backlog_with(n, topic, make, 2).await
    }

    /// [`backlog_of`](Bench::backlog_of) written by one writer, so that the
    /// messages are enqueued in the order of `i` (the Kafka section's reader
    /// checks each key's records against it).
    pub(crate) async fn backlog_in_order(
        &self,
        n: usize,
        topic: &str,
        make: MakeMessage,
    ) -> Result<()> {
        self.backlog_with(n, topic, make, 1).await
    }

    pub(crate) async fn backlog_with(
        &self,
        n: usize,
        topic: &str,
        make: MakeMessage,
        writers: usize,
    ) -> Result<()> {
        self.reset().await?;
        let mut set = JoinSet::new();
        for w in 0..writers {
            let store = self.store.clone();
            let pool = self.pool.clone();
            let topic = topic.to_string();
            set.spawn(async move {
                let mut i = w * 1000;
                while i < n {
                    let batch: Vec<Message> =
                        (i..(i + 1000).min(n)).map(|j| make(&topic, j)).collect();
                    let mut tx = pool.begin().await?;
                    store.enqueue_batch(&mut *tx, &batch).await?;
                    tx.commit().await?;
                    i += writers * 1000;
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let pending = self.store.pending_count().await?;
        ensure!(pending == n as i64, "backlog has {pending} rows, not {n}");
        self.exec(format!("ANALYZE {}", self.table("outbox")))
            .await?;
        self.exec("CHECKPOINT".into()).await?;
        Ok(())
    }
}

pub(crate) async fn drop_tables(url: &str, prefix: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let p = prefix;
    let tables: Vec<String> = relaybox::schema::TABLES
        .iter()
        .map(|t| format!("{p}{t}"))
        .collect();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {} CASCADE",
        tables.join(", ")
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}
