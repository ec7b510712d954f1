//! Section 5: commit-to-handler latency at a steady 1,000 messages/s, and
//! the consumer's capacity.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use relaybox::{Consumer, ConsumerConfig, DatabaseSource, DatabaseSourceConfig, Message};
use sqlx::{AssertSqlSafe, Row};

use crate::context::{
    message, Bench, MakeMessage, CAPACITY_MESSAGES, LATENCY_IN_FLIGHT, LATENCY_TOPIC, P99_TARGET_MS,
};
use crate::cpu::cores;
use crate::pipeline::{recording_handler, start_pipeline, stop_pipeline, wait_processed, Clocks};
use crate::report::{header, histogram, ms, rate, thousands, verdict};
use crate::steady::{produce_steady, Steady};

pub(crate) struct LatencyRun {
    pub(crate) steady: Steady,
    pub(crate) latency: Histogram<u64>,
    /// (leg, p50 ms, p99 ms), cumulative since `created_at`.
    pub(crate) legs: Vec<(&'static str, f64, f64)>,
    pub(crate) relay_batches: u64,
}

/// Prints the table of latency runs (one row each).
pub(crate) fn print_latency_rows(runs: &[(&str, &Steady, &Histogram<u64>, u64)]) {
    println!(
        "  {:<30} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "run",
        "msgs",
        "msg/s",
        "commit50",
        "commit99",
        "p50",
        "p90",
        "p99",
        "max",
        "batches",
        "p99<25"
    );
    for (name, s, h, batches) in runs {
        println!(
            "  {:<30} {:>7} {:>7.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            name,
            thousands(s.produced as u64),
            s.achieved,
            ms(s.commits.value_at_quantile(0.5)),
            ms(s.commits.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            thousands(*batches),
            verdict(Some(p99_met(h))),
        );
    }
    println!("  latency (p50..max) = handler start - the producer's commit returning;");
    println!("  commit50/99 = the producer's begin+enqueue+commit; batches = relay batches");
    for (name, s, _, _) in runs {
        println!(
            "  {name}: while producing, PostgreSQL's checkpointer began {} checkpoint(s) and wrote {} buffers;",
            s.disk.checkpoints,
            thousands(s.disk.buffers.max(0) as u64)
        );
        println!(
            "    the machine had {} MB of page cache to write back at the start and wrote {} MB to disk",
            s.disk.dirty_kb / 1024,
            s.disk.written_kb / 1024
        );
        let (busy, wall) = s.cpu;
        let per = |seconds: f64| seconds * 1e6 / s.produced.max(1) as f64;
        println!(
            "    its {} cores were {:.0}% busy: {:.0} us of CPU per message (this process {:.0}, PostgreSQL {:.0}, broker {:.0})",
            cores(),
            100.0 * busy.machine / (wall.as_secs_f64() * cores() as f64).max(f64::MIN_POSITIVE),
            per(busy.machine),
            per(busy.own),
            per(busy.postgres),
            per(busy.java)
        );
    }
}

pub(crate) async fn section_latency(b: &mut Bench) -> Result<()> {
    let run_for = b.sizes.latency_for;
    header(&format!(
        "5. Commit-to-handler latency at 1,000 msg/s for {} s (relay + DatabaseSink + consumer)",
        run_for.as_secs()
    ));
    let main = latency_run(b, "latency").await?;
    println!(
        "  producer: ticks every 1 ms (MissedTickBehavior::Burst), 1 msg per tx, <= {LATENCY_IN_FLIGHT} tx in flight"
    );
    print_latency_rows(&[(
        "relay + consumer",
        &main.steady,
        &main.latency,
        main.relay_batches,
    )]);
    println!(
        "  where the time goes (per message, since created_at; cumulative; the log's appended_at"
    );
    println!("  and the inbox's processed_at are now() = the start of the relay's and consumer's transactions):");
    for (leg, p50, p99) in &main.legs {
        println!("  {leg:<50} p50 {p50:>8.2} ms  p99 {p99:>8.2} ms");
    }
    latency_figure(
        b,
        "latency p50 / p99 / max @1k msg/s",
        &main.latency,
        &main.steady,
    );
    if b.sizes.diagnostics_batch.is_some() {
        let n = CAPACITY_MESSAGES;
        let r = database_consumer_capacity(b, n, message).await?;
        println!(
            "  consumer capacity: Consumer + DatabaseSource (default ConsumerConfig), {} messages waiting",
            thousands(n as u64)
        );
        println!(
            "  in the log, a handler that does nothing: {} msg/s from the first handled to the last",
            thousands(r as u64)
        );
        b.figure(
            "consumer capacity (DatabaseSource)",
            format!("{} msg/s", thousands(r as u64)),
            "(info)",
            None,
        );
    }
    Ok(())
}

/// How long the latency runs load the pipeline at their rate before the
/// window, not counted.
pub(crate) const WARM_UP_FOR: Duration = Duration::from_secs(1);

/// Loads the pipeline at the window's rate for [`WARM_UP_FOR`], not counted,
/// so that the window starts in the steady state (connection pools grown,
/// every lane busy before), then lets it go idle for 500 ms. Returns how many
/// messages `consumer` has processed then, `before` of them earlier.
pub(crate) async fn warm_up(
    b: &Bench,
    consumer: &Consumer,
    make: Arc<dyn Fn(usize) -> Message + Send + Sync>,
    before: u64,
) -> Result<u64> {
    let warm = produce_steady(b, WARM_UP_FOR, make).await?;
    let processed = before + warm.produced as u64;
    wait_processed(consumer, processed, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(processed)
}

/// Adds the summary figure `name` of a latency window: p50 / p99 / max of
/// its commit-to-handler `latency` and the rate `steady` achieved, judged
/// against the p99 target.
pub(crate) fn latency_figure(b: &mut Bench, name: &str, latency: &Histogram<u64>, steady: &Steady) {
    b.figure(
        name,
        format!(
            "{} / {} / {} ({:.0} msg/s achieved)",
            ms(latency.value_at_quantile(0.5)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.max()),
            steady.achieved
        ),
        "p99 < 25 ms",
        Some(p99_met(latency)),
    );
}

/// Whether the p99 of `h` (µs) is under the latency target.
pub(crate) fn p99_met(h: &Histogram<u64>) -> bool {
    (h.value_at_quantile(0.99) as f64 / 1000.0) < P99_TARGET_MS
}

pub(crate) async fn latency_run(b: &Bench, name: &str) -> Result<LatencyRun> {
    let run_for = b.sizes.latency_for;
    b.reset().await?;
    b.settle().await?;
    let clocks = Clocks::new();
    let (relay, consumer) = start_pipeline(b, name, &clocks).await?;
    let make: Arc<dyn Fn(usize) -> Message + Send + Sync> = Arc::new(|i| message(LATENCY_TOPIC, i));
    let outcome = async {
        let warmed = warm_up(b, &consumer, make.clone(), 0).await?;
        clocks.reset();
        let from = Utc::now();
        let batches_before = relay.stats().batches;
        let steady = produce_steady(b, run_for, make).await?;
        let processed = warmed + steady.produced as u64;
        wait_processed(&consumer, processed, Duration::from_secs(30)).await?;
        Ok::<_, anyhow::Error>((steady, from, relay.stats().batches - batches_before))
    }
    .await;
    let (steady, from, relay_batches) = stop_pipeline(&relay, &consumer, outcome).await?;
    let (since_created, latency) = clocks.handler_latencies(&steady)?;
    let [relay_leg, inbox_leg] = latency_legs(b, &format!("bench-{name}"), from).await?;
    let handed = clocks.handed.lock().expect("histogram lock").clone();
    let quantiles = |h: &Histogram<u64>| {
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    let (handed50, handed99) = quantiles(&handed);
    let (handler50, handler99) = quantiles(&since_created);
    let legs = vec![
        ("-> relay's log append tx starts", relay_leg.0, relay_leg.1),
        ("-> DatabaseSource::fetch returns it", handed50, handed99),
        ("-> consumer's inbox tx starts", inbox_leg.0, inbox_leg.1),
        ("-> handler starts", handler50, handler99),
    ];
    b.reset().await?;
    Ok(LatencyRun {
        steady,
        latency,
        legs,
        relay_batches,
    })
}

/// (p50, p99) in ms since `created_at` of the log's `appended_at` and of the
/// inbox's `processed_at`.
/// The legs of the messages created from `from` on (the window, not its warm-up).
pub(crate) async fn latency_legs(
    b: &Bench,
    group: &str,
    from: chrono::DateTime<Utc>,
) -> Result<[(f64, f64); 2]> {
    let (log, inbox) = (b.table("log"), b.table("inbox"));
    let sql = format!(
        "WITH t AS (SELECT extract(epoch FROM l.appended_at - l.created_at) * 1000 AS relay, \
                           extract(epoch FROM i.processed_at - l.created_at) * 1000 AS consumer \
                    FROM {log} l JOIN {inbox} i ON i.message_id = l.id AND i.consumer_group = $1 \
                    WHERE l.created_at >= $2) \
         SELECT percentile_disc(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY relay)::float8[], \
                percentile_disc(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY consumer)::float8[] FROM t"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(group)
        .bind(from)
        .fetch_one(&b.pool)
        .await?;
    let relay: Vec<f64> = row.try_get(0)?;
    let consumer: Vec<f64> = row.try_get(1)?;
    ensure!(relay.len() == 2 && consumer.len() == 2, "no latency legs");
    Ok([(relay[0], relay[1]), (consumer[0], consumer[1])])
}

/// How fast a `Consumer` (default `ConsumerConfig`) with a `DatabaseSource`
/// handles `n` messages `make(topic, i)` already in the log.
pub(crate) async fn database_consumer_capacity(
    b: &Bench,
    n: usize,
    make: MakeMessage,
) -> Result<f64> {
    b.reset().await?;
    let topic = "bench.capacity";
    let messages: Vec<Message> = (0..n).map(|i| make(topic, i)).collect();
    for chunk in messages.chunks(1000) {
        b.store.append_log(chunk).await?;
    }
    let group = "bench-capacity";
    let source = DatabaseSource::new(b.store.clone(), DatabaseSourceConfig::new(topic, group))?;
    let r = measure_consumer(b, source, group, n).await?;
    b.reset().await?;
    Ok(r)
}

/// Starts a consumer (default `ConsumerConfig`) on `source` with `n`
/// messages waiting and a handler that does nothing; its rate from the first
/// handled message to the last.
pub(crate) async fn measure_consumer(
    b: &Bench,
    source: Arc<dyn relaybox::Source>,
    group: &str,
    n: usize,
) -> Result<f64> {
    let consumer = Consumer::start(
        b.store.clone(),
        source,
        recording_handler(Arc::new(Mutex::new(histogram())), None),
        ConsumerConfig::new(group),
    )?;
    let outcome = async {
        let since = Instant::now();
        while consumer.stats().processed == 0 {
            ensure!(
                since.elapsed() < Duration::from_secs(60),
                "the consumer handled nothing in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (t0, p0) = (Instant::now(), consumer.stats().processed);
        wait_processed(&consumer, n as u64, Duration::from_secs(180)).await?;
        Ok(rate((n as u64 - p0) as usize, t0.elapsed()))
    }
    .await;
    consumer.shutdown().await?;
    outcome
}
