//! The steady producer of the latency windows (one transaction per 1 ms
//! tick) and the disk writes measured around a window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use hdrhistogram::Histogram;
use relaybox::Message;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::context::{Bench, LATENCY_IN_FLIGHT};
use crate::cpu::{Busy, MachineCpu};
use crate::report::{histogram, rate};

/// What the steady producer of the latency runs did.
pub(crate) struct Steady {
    pub(crate) produced: usize,
    pub(crate) achieved: f64,
    /// begin + enqueue + commit, µs.
    pub(crate) commits: Histogram<u64>,
    /// When each message's `commit` returned (wall clock), by message id.
    pub(crate) committed: HashMap<Uuid, chrono::DateTime<Utc>>,
    /// What was written to disk while the producer ran.
    pub(crate) disk: DiskWrites,
    /// The machine's busy CPU while the producer ran, and how long it ran.
    pub(crate) cpu: (Busy, Duration),
}

/// Writes to disk besides the benchmark's own: checkpoints begun and buffers
/// written by PostgreSQL's checkpointer, and the machine's dirty page cache
/// and disk writes (every process: the broker's log segments too). Read
/// before a window and differenced after it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DiskWrites {
    pub(crate) checkpoints: i64,
    pub(crate) buffers: i64,
    /// Page cache waiting to be written back (`Dirty` + `Writeback` of
    /// /proc/meminfo), kB; at the window's start.
    pub(crate) dirty_kb: u64,
    /// Written to disk by the whole machine (`pgpgout` of /proc/vmstat), kB.
    pub(crate) written_kb: u64,
}

impl DiskWrites {
    /// The counters now: `pg_stat_checkpointer` on PostgreSQL 17 and later,
    /// `pg_stat_bgwriter` before; /proc for the machine's figures (0 if absent).
    pub(crate) async fn read(b: &Bench) -> Result<DiskWrites> {
        // PostgreSQL 17 moved the checkpointer's counters to their own view.
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&b.pool)
            .await?;
        let counters = if version >= 170_000 {
            "SELECT num_timed + num_requested, buffers_written FROM pg_stat_checkpointer"
        } else {
            "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter"
        };
        let (checkpoints, buffers): (i64, i64) =
            sqlx::query_as(counters).fetch_one(&b.pool).await?;
        let field = |file: &str, names: &[&str]| -> u64 {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    let name = parts.next()?.trim_end_matches(':');
                    names
                        .contains(&name)
                        .then(|| parts.next()?.parse::<u64>().ok())?
                })
                .sum()
        };
        Ok(DiskWrites {
            checkpoints,
            buffers,
            dirty_kb: field("/proc/meminfo", &["Dirty", "Writeback"]),
            written_kb: field("/proc/vmstat", &["pgpgout"]),
        })
    }

    /// What happened since `before`; the dirty page cache as it was then.
    pub(crate) fn since(self, before: DiskWrites) -> DiskWrites {
        DiskWrites {
            checkpoints: self.checkpoints - before.checkpoints,
            buffers: self.buffers - before.buffers,
            dirty_kb: before.dirty_kb,
            written_kb: self.written_kb.saturating_sub(before.written_kb),
        }
    }
}

/// One message per transaction, one transaction per 1 ms tick
/// (`MissedTickBehavior::Burst`), at most `LATENCY_IN_FLIGHT` in flight, for
/// `run_for`; message `i` is `make(i)` (its `created_at` is set just before
/// the transaction begins).
pub(crate) async fn produce_steady(
    b: &Bench,
    run_for: Duration,
    make: Arc<dyn Fn(usize) -> Message + Send + Sync>,
) -> Result<Steady> {
    let in_flight = Arc::new(Semaphore::new(LATENCY_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut commits = histogram();
    let mut committed = HashMap::new();
    let mut set = JoinSet::new();
    let mut produced = 0usize;
    let disk = DiskWrites::read(b).await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    while started.elapsed() < run_for {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let store = b.store.clone();
        let make = make.clone();
        let i = produced;
        produced += 1;
        set.spawn(async move {
            let _permit = permit;
            let m = make(i);
            let id = m.id;
            let begun = Instant::now();
            let tx = store.begin().await?;
            tx.enqueue(m).await?;
            tx.commit().await?;
            let took = begun.elapsed().as_micros() as u64;
            Ok::<_, anyhow::Error>((took, id, Utc::now()))
        });
        while let Some(r) = set.try_join_next() {
            let (took, id, at) = r??;
            commits.saturating_record(took);
            committed.insert(id, at);
        }
    }
    let producing = started.elapsed();
    while let Some(r) = set.join_next().await {
        let (took, id, at) = r??;
        commits.saturating_record(took);
        committed.insert(id, at);
    }
    let cpu = (cpu.stop(), started.elapsed());
    let disk = DiskWrites::read(b).await?.since(disk);
    Ok(Steady {
        produced,
        achieved: rate(produced, producing),
        commits,
        committed,
        disk,
        cpu,
    })
}
