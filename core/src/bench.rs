//! Benchmark workloads that the bindings' benchmarks run through the core
//! alone, so each binding's figure is set beside the same Rust baseline.
//! Not part of the stable API.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::store::Store;

/// The enqueue workload: `tasks` concurrent tasks write `total` messages of
/// `payload_bytes` bytes, `per_tx` per owned transaction (one `enqueue` when
/// `per_tx` is 1, else one `enqueue_batch`), keys spread over 64 values, to
/// topic `bench`. Returns the time taken.
pub async fn enqueue_workload(
    store: &Store,
    total: usize,
    per_tx: usize,
    tasks: usize,
    payload_bytes: usize,
) -> Result<Duration> {
    let (per_tx, tasks) = (per_tx.max(1), tasks.max(1));
    let per_task = total / tasks;
    let started = Instant::now();
    let runs = (0..tasks).map(|task| {
        let store = store.clone();
        crate::runtime::spawn(async move {
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
            Ok::<(), Error>(())
        })
    });
    for result in futures::future::join_all(runs).await {
        result.map_err(|e| Error::internal(format!("benchmark task failed: {e}")))??;
    }
    Ok(started.elapsed())
}
