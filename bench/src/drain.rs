//! Sections 2 and 3: the relay draining a backlog into the log, beside the
//! PostgreSQL ceiling (see `ceiling`), with the generic-path diagnostics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use relaybox::{DatabaseSink, Message, Relay, RelayConfig, RelayStats, Sink};

use crate::ceiling::ceiling_drain;
use crate::context::{Bench, CEILING_TARGET, DRAIN_TARGET, DRAIN_TIMEOUT, TOPIC};
use crate::cpu::{Busy, MachineCpu};
use crate::report::{header, rate, thousands, verdict};

/// A sink that acknowledges everything at once: the relay's own cost alone.
pub(crate) struct NullSink;

#[async_trait::async_trait]
impl Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A thin forwarding sink: it publishes through the wrapped sink but does not
/// report a `log_store()`, so the relay takes its generic path (claim,
/// `publish`, complete) even when the wrapped sink is a `DatabaseSink`.
pub(crate) struct Forward(Arc<dyn Sink>);

#[async_trait::async_trait]
impl Sink for Forward {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        self.0.publish(batch).await
    }
}

/// The sink of a drain run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainSink {
    /// `DatabaseSink` on the relay's own store: the fused claim-and-move statement.
    Fused,
    /// The same `DatabaseSink` behind [`Forward`]: claim, `append_log`, complete.
    Generic,
    /// [`NullSink`] (generic path): claiming and completing alone.
    Null,
}

pub(crate) struct DrainRun {
    pub(crate) elapsed: Duration,
    pub(crate) batches: u64,
    /// The machine's busy CPU over `elapsed`.
    pub(crate) busy: Busy,
}

pub(crate) async fn section_drain(b: &mut Bench, relay: bool, ceiling: bool) -> Result<()> {
    let n = b.sizes.backlog;
    header(&format!(
        "2+3. Drain of a {}-message backlog: relay (DatabaseSink) vs PostgreSQL ceiling",
        thousands(n as u64)
    ));
    println!("  ceiling = one connection looping BEGIN; SELECT <relay's columns> ... ORDER BY seq LIMIT B");
    println!(
        "            FOR UPDATE SKIP LOCKED; DELETE ... WHERE ctid = ANY($1); COMMIT  (no transport)"
    );
    print_drain_header();
    let batches = b.sizes.drain_batches.clone();
    for &batch in &batches {
        let mut ceiling_rate = None;
        if ceiling {
            b.backlog(n, TOPIC).await?;
            let run = ceiling_drain(b, n, batch, false).await?;
            let r = rate(n, run.elapsed);
            ceiling_rate = Some(r);
            b.ceiling_rates.push((batch, r));
            print_drain_row("PostgreSQL ceiling", batch, &run, n, None, "");
        }
        if relay {
            b.backlog(n, TOPIC).await?;
            let run = relay_drain(b, batch, DrainSink::Fused).await?;
            let r = rate(n, run.elapsed);
            b.relay_rates.push((batch, r));
            let share = ceiling_rate.map(|c| 100.0 * r / c);
            let met = r >= DRAIN_TARGET && share.is_none_or(|s| s >= CEILING_TARGET);
            print_drain_row(
                "relay, DatabaseSink (fused path)",
                batch,
                &run,
                n,
                share,
                verdict(Some(met)),
            );
            b.figure(
                format!("relay drain (DatabaseSink, fused), batch {batch}"),
                format!("{} msg/s", thousands(r as u64)),
                ">= 50,000 msg/s",
                Some(r >= DRAIN_TARGET),
            );
            if let Some(s) = share {
                b.figure(
                    format!("relay / PG ceiling, batch {batch}"),
                    format!(
                        "{s:.0}% (ceiling {} msg/s)",
                        thousands(ceiling_rate.unwrap_or(0.0) as u64)
                    ),
                    ">= 70%",
                    Some(s >= CEILING_TARGET),
                );
            }
        }
        if b.sizes.diagnostics_batch == Some(batch) {
            if relay {
                for (name, sink) in [
                    (
                        "diag: relay, generic path (wrapped DatabaseSink)",
                        DrainSink::Generic,
                    ),
                    ("diag: relay, no-op sink (generic path)", DrainSink::Null),
                ] {
                    b.backlog(n, TOPIC).await?;
                    let run = relay_drain(b, batch, sink).await?;
                    let share = ceiling_rate.map(|c| 100.0 * rate(n, run.elapsed) / c);
                    print_drain_row(name, batch, &run, n, share, "");
                }
            }
            if ceiling {
                b.backlog(n, TOPIC).await?;
                let run = ceiling_drain(b, n, batch, true).await?;
                let share = ceiling_rate.map(|c| 100.0 * rate(n, run.elapsed) / c);
                print_drain_row(
                    "diag: PG loop, claim + move to log",
                    batch,
                    &run,
                    n,
                    share,
                    "",
                );
            }
        }
    }
    println!("  Each run starts from a fresh, ANALYZEd, checkpointed backlog. Relay clock: Relay::start until");
    println!("  the relay reports all delivered; then pending_count()==0 and the log's row count are checked.");
    println!("  fused = DatabaseSink on the relay's own Store: each claimed batch is moved into the log by ONE");
    println!("  statement in the claim transaction (payloads never leave the server), so it can beat the");
    println!("  ceiling loop, which fetches every row to the client.");
    if b.sizes.diagnostics_batch.is_some() {
        println!("  diag rows (not judged): generic path = the same DatabaseSink behind a forwarding Sink");
        println!("  (log_store() is None: claim, publish = append_log, complete, as for any broker); no-op sink =");
        println!("  generic path whose publish does nothing (claim + complete cost of the relay alone); PG loop =");
        println!("  a hand-written loop moving each claimed batch into the log server-side (advisory lock;");
        println!("  DELETE ... RETURNING -> INSERT INTO log), roughly what the fused path does.");
    }
    b.reset().await?;
    Ok(())
}

pub(crate) fn print_drain_header() {
    println!(
        "  {:<48} {:>6} {:>9} {:>11} {:>8} {:>11} {:>9} {:>8}",
        "run", "batch", "elapsed", "msg/s", "batches", "ms/batch", "%ceiling", "target"
    );
}

pub(crate) fn print_drain_row(
    name: &str,
    batch: u32,
    run: &DrainRun,
    n: usize,
    share: Option<f64>,
    result: &str,
) {
    println!(
        "  {:<48} {:>6} {:>7.2} s {:>11} {:>8} {:>11} {:>9} {:>8}",
        name,
        batch,
        run.elapsed.as_secs_f64(),
        thousands(rate(n, run.elapsed) as u64),
        run.batches,
        format!(
            "{:.2}",
            run.elapsed.as_secs_f64() * 1000.0 / run.batches.max(1) as f64
        ),
        share.map_or_else(|| "-".into(), |s| format!("{s:.0}%")),
        result,
    );
}

/// Starts one relay on the pre-filled backlog and times it until everything is delivered.
pub(crate) async fn relay_drain(b: &Bench, batch: u32, kind: DrainSink) -> Result<DrainRun> {
    let n = b.sizes.backlog;
    let database: Arc<dyn Sink> = Arc::new(DatabaseSink::new(b.store.clone()));
    let sink: Arc<dyn Sink> = match kind {
        DrainSink::Fused => database,
        DrainSink::Generic => Arc::new(Forward(database)),
        DrainSink::Null => Arc::new(NullSink),
    };
    let config = RelayConfig {
        batch_size: batch,
        instance_id: Some(format!("{}drain-{batch}-{kind:?}", b.prefix)),
        ..RelayConfig::default()
    };
    let (elapsed, stats, busy) = timed_drain(b, sink, config, n).await?;
    if kind != DrainSink::Null {
        ensure_logged(b, n).await?;
    }
    Ok(DrainRun {
        elapsed,
        batches: stats.batches,
        busy,
    })
}

/// Checks that the log holds the `n` entries a drain moved into it.
pub(crate) async fn ensure_logged(b: &Bench, n: usize) -> Result<()> {
    let logged = b.count("log", "").await?;
    ensure!(
        logged == n as i64,
        "the log has {logged} entries, expected {n}"
    );
    Ok(())
}

/// Starts a relay on the pre-filled `n`-message backlog, waits until it
/// reports every message delivered (its counter moves after the completing
/// commit), shuts it down and checks `pending_count() == 0` and no failures.
pub(crate) async fn timed_drain(
    b: &Bench,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    n: usize,
) -> Result<(Duration, RelayStats, Busy)> {
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let relay = Relay::start(b.store.clone(), sink, config)?;
    while relay.stats().delivered < n as u64 {
        if started.elapsed() > DRAIN_TIMEOUT {
            let stats = relay.stats();
            relay.shutdown().await?;
            bail!(
                "the relay delivered {} of {n} messages in {DRAIN_TIMEOUT:?}: {stats:?}",
                stats.delivered
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    let stats = relay.stats();
    relay.shutdown().await?;
    let pending = b.store.pending_count().await?;
    ensure!(
        pending == 0,
        "{pending} messages still pending after the drain"
    );
    ensure!(
        stats.retried == 0 && stats.dead_lettered == 0 && stats.delivered == n as u64,
        "unexpected failures while draining: {stats:?}"
    );
    Ok((elapsed, stats, busy))
}
