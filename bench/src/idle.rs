//! Section 6: the CPU a running relay and consumer use with no traffic.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::context::{message, Bench, IDLE_TARGET, LATENCY_TOPIC};
use crate::cpu::{backend_pids, clock_ticks_per_second, postgres_ticks, proc_stat};
use crate::pipeline::{start_pipeline, stop_pipeline, wait_processed, Clocks};
use crate::report::{header, verdict};

pub(crate) async fn section_idle(b: &mut Bench) -> Result<()> {
    let window = b.sizes.idle_for;
    header(&format!(
        "6. CPU while idle ({} s, relay + consumer running, no traffic)",
        window.as_secs()
    ));
    b.reset().await?;
    let (relay, consumer) = start_pipeline(b, "idle", &Clocks::new()).await?;
    // Some traffic first, so that everything is warm and then drained.
    let warm = 100;
    for i in 0..warm {
        let tx = b.store.begin().await?;
        tx.enqueue(message(LATENCY_TOPIC, i)).await?;
        tx.commit().await?;
    }
    let outcome = async {
        wait_processed(&consumer, warm as u64, Duration::from_secs(30)).await?;
        ensure!(b.store.pending_count().await? == 0, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let ours = backend_pids(b).await?;
        let tck = clock_ticks_per_second();
        let me0 = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
        let pg0 = postgres_ticks();
        let wall0 = Instant::now();
        tokio::time::sleep(window).await;
        let wall = wall0.elapsed().as_secs_f64();
        let me1 = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
        let pg1 = postgres_ticks();
        let delta = |pids: &mut dyn Iterator<Item = i32>| -> u64 {
            pids.map(|p| {
                pg1.get(&p)
                    .unwrap_or(&0)
                    .saturating_sub(*pg0.get(&p).unwrap_or(&0))
            })
            .sum()
        };
        let pct = |ticks: u64| 100.0 * ticks as f64 / tck / wall;
        let me = pct(me1.saturating_sub(me0));
        let pg_all = pct(delta(&mut pg1.keys().copied()));
        let pg_ours = pct(delta(&mut ours.iter().copied()));
        Ok((me, pg_all, pg_ours, ours.len(), pg1.len(), wall))
    }
    .await;
    let delivered = relay.stats().delivered;
    let (me, pg_all, pg_ours, n_ours, n_all, wall) =
        stop_pipeline(&relay, &consumer, outcome).await?;
    ensure!(
        delivered == warm as u64,
        "relay delivered {delivered} of {warm}"
    );
    let tick = 100.0 / clock_ticks_per_second() / wall;
    println!(
        "  CPU time over {wall:.1} s, % of one core (/proc/<pid>/stat utime+stime; 1 tick = {tick:.2}%):"
    );
    let rows = [
        ("this process (relay + consumer)".to_string(), me),
        (format!("postgres: this run's {n_ours} backends"), pg_ours),
        (format!("postgres: all {n_all} processes"), pg_all),
    ];
    for (name, pct) in rows {
        println!(
            "  {:<42} {:>7.2}%   target < {IDLE_TARGET}%  {}",
            name,
            pct,
            verdict(Some(pct < IDLE_TARGET))
        );
    }
    println!("  (all postgres processes include the server's background workers and any other");
    println!("   sessions on this server, e.g. tests run by others at the same time)");
    b.figure(
        "idle CPU, this process",
        format!("{me:.2}% of a core"),
        "~0% (< 1%)",
        Some(me < IDLE_TARGET),
    );
    b.figure(
        "idle CPU, this run's PG backends",
        format!("{pg_ours:.2}% of a core"),
        "~0% (< 1%)",
        Some(pg_ours < IDLE_TARGET),
    );
    b.figure(
        "idle CPU, all postgres processes",
        format!("{pg_all:.2}% of a core"),
        "~0% (< 1%)",
        Some(pg_all < IDLE_TARGET),
    );
    b.reset().await?;
    Ok(())
}
