//! Section 1: producer throughput, one and 100 messages per transaction;
//! and the enqueue workload the language bindings' benchmarks set their
//! figures beside (`enqueue-peer`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use hdrhistogram::Histogram;
use relaybox::{Message, Store, StoreOptions};
use tokio::task::JoinSet;

use crate::context::{message, Bench, ENQUEUE_TASKS, TOPIC};
use crate::report::{header, histogram, ms, rate, thousands};

pub(crate) struct EnqueueRun {
    pub(crate) messages: usize,
    pub(crate) transactions: usize,
    pub(crate) elapsed: Duration,
    pub(crate) tx_latency: Histogram<u64>,
}

pub(crate) async fn section_enqueue(b: &mut Bench) -> Result<()> {
    header("1. Enqueue throughput (PostgreSQL, committed transactions)");
    b.reset().await?;
    let single = enqueue_run(b, b.sizes.single_n, 1).await?;
    let batched = enqueue_run(b, b.sizes.batch_total, b.sizes.batch_size).await?;
    let total = b.count("outbox", "").await?;
    ensure!(
        total == (single.messages + batched.messages) as i64,
        "the outbox holds {total} rows, expected {}",
        single.messages + batched.messages
    );
    b.reset().await?;

    println!(
        "  {:<34} {:>9} {:>7} {:>6} {:>9} {:>10} {:>10} {:>10}",
        "mode", "messages", "tx", "tasks", "elapsed", "msg/s", "tx p50", "tx p99"
    );
    let rows = [
        ("1 msg/tx   (begin+enqueue+commit)", &single),
        ("100 msg/tx (enqueue_batch)", &batched),
    ];
    for (name, r) in rows {
        println!(
            "  {:<34} {:>9} {:>7} {:>6} {:>7.2} s {:>10} {:>10} {:>10}",
            name,
            thousands(r.messages as u64),
            thousands(r.transactions as u64),
            ENQUEUE_TASKS,
            r.elapsed.as_secs_f64(),
            thousands(rate(r.messages, r.elapsed) as u64),
            ms(r.tx_latency.value_at_quantile(0.5)),
            ms(r.tx_latency.value_at_quantile(0.99)),
        );
    }
    println!(
        "  tx = one transaction from pool acquire to commit (relays of other processes are woken"
    );
    println!(
        "  after the commit by the store's coalescing NOTIFY announcer, outside the transaction)."
    );
    let value = |r: &EnqueueRun| {
        format!(
            "{} msg/s ({} tx/s)",
            thousands(rate(r.messages, r.elapsed) as u64),
            thousands(rate(r.transactions, r.elapsed) as u64)
        )
    };
    b.figure("enqueue, 1 msg/tx, 8 tasks", value(&single), "(info)", None);
    b.figure(
        "enqueue, 100 msg/tx, 8 tasks",
        value(&batched),
        "(info)",
        None,
    );
    Ok(())
}

/// Enqueues `total` messages, `per_tx` per transaction, from `ENQUEUE_TASKS` tasks.
pub(crate) async fn enqueue_run(b: &Bench, total: usize, per_tx: usize) -> Result<EnqueueRun> {
    let transactions = total.div_ceil(per_tx);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for t in 0..ENQUEUE_TASKS {
        let store = b.store.clone();
        let pool = b.pool.clone();
        set.spawn(async move {
            let mut hist = histogram();
            // Transactions t, t + TASKS, t + 2 * TASKS, ...
            for n in (t..transactions).step_by(ENQUEUE_TASKS) {
                let first = n * per_tx;
                let last = (first + per_tx).min(total);
                let begun = Instant::now();
                if per_tx == 1 {
                    let tx = store.begin().await?;
                    tx.enqueue(message(TOPIC, first)).await?;
                    tx.commit().await?;
                } else {
                    let batch: Vec<Message> = (first..last).map(|i| message(TOPIC, i)).collect();
                    let mut tx = pool.begin().await?;
                    store.enqueue_batch(&mut *tx, &batch).await?;
                    tx.commit().await?;
                }
                hist.saturating_record(begun.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(hist)
        });
    }
    let mut tx_latency = histogram();
    while let Some(r) = set.join_next().await {
        tx_latency.add(r??)?;
    }
    Ok(EnqueueRun {
        messages: total,
        transactions,
        elapsed: started.elapsed(),
        tx_latency,
    })
}

/// The subcommand that runs [`enqueue_workload`] alone and prints the
/// seconds it took as JSON (`{"seconds": 1.25}`): the Rust baseline the
/// Python and Node benchmarks set their enqueue figures beside.
pub(crate) const ENQUEUE_PEER: &str = "enqueue-peer";

const ENQUEUE_PEER_USAGE: &str =
    "usage: relaybox-bench enqueue-peer --url URL --prefix TABLE_PREFIX \
     --total N --per-tx K --tasks T --payload BYTES [--max-connections C]";

/// `enqueue-peer`: [`enqueue_workload`] on the tables of `--prefix` at
/// `--url` (migrated first: nothing to do when the caller's outbox made
/// them), through a pool of `--max-connections` (default: `--tasks` + 2, the
/// pool the bindings' benchmarks open).
pub(crate) async fn enqueue_peer(args: &[String]) -> Result<()> {
    let mut values: HashMap<&str, &str> = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| anyhow!("unexpected argument {flag:?}\n{ENQUEUE_PEER_USAGE}"))?;
        let value = it
            .next()
            .ok_or_else(|| anyhow!("--{name} needs a value\n{ENQUEUE_PEER_USAGE}"))?;
        values.insert(name, value);
    }
    let text = |name: &str| {
        values
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("--{name} is missing\n{ENQUEUE_PEER_USAGE}"))
    };
    let number = |name: &str| -> Result<usize> {
        text(name)?
            .parse()
            .with_context(|| format!("--{name} needs a number"))
    };
    let (total, per_tx, tasks, payload) = (
        number("total")?,
        number("per-tx")?,
        number("tasks")?,
        number("payload")?,
    );
    let max_connections = match values.get("max-connections") {
        Some(_) => number("max-connections")?,
        None => tasks + 2,
    };
    let store = Store::connect_with(
        text("url")?,
        StoreOptions {
            table_prefix: text("prefix")?.to_string(),
            max_connections: Some(u32::try_from(max_connections)?),
            ..StoreOptions::default()
        },
    )
    .await
    .context("connecting to --url")?;
    store.migrate().await.context("migrating")?;
    let took = enqueue_workload(&store, total, per_tx, tasks, payload).await;
    store.close().await;
    println!("{}", serde_json::json!({ "seconds": took?.as_secs_f64() }));
    Ok(())
}

/// The enqueue workload: `tasks` concurrent tasks write `total` messages of
/// `payload_bytes` bytes, `per_tx` per owned transaction (one `enqueue` when
/// `per_tx` is 1, else one `enqueue_batch`), keys spread over 64 values, to
/// topic `bench`. Returns the time taken.
pub(crate) async fn enqueue_workload(
    store: &Store,
    total: usize,
    per_tx: usize,
    tasks: usize,
    payload_bytes: usize,
) -> Result<Duration> {
    let (per_tx, tasks) = (per_tx.max(1), tasks.max(1));
    let per_task = total / tasks;
    let started = Instant::now();
    let mut runs = JoinSet::new();
    for task in 0..tasks {
        let store = store.clone();
        runs.spawn(async move {
            let payload = vec![b'x'; payload_bytes];
            let mut written = 0;
            while written < per_task {
                let n = per_tx.min(per_task - written);
                let mut batch: Vec<Message> = (0..n)
                    .map(|i| {
                        Message::new("bench", payload.clone())
                            .with_key(format!("k{}", (task * per_task + written + i) % 64))
                    })
                    .collect();
                let tx = store.begin().await?;
                if n == 1 {
                    tx.enqueue(batch.pop().expect("one message")).await?;
                } else {
                    tx.enqueue_batch(&batch).await?;
                }
                tx.commit().await?;
                written += n;
            }
            Ok::<(), relaybox::Error>(())
        });
    }
    while let Some(result) = runs.join_next().await {
        result.context("a benchmark task failed")??;
    }
    Ok(started.elapsed())
}
