//! What PostgreSQL alone does: claim and delete (or move into the log)
//! batch after batch over a backlog, the ceiling of sections 3 and 8.

use std::time::Instant;

use anyhow::{ensure, Result};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Row};
use uuid::Uuid;

use crate::context::Bench;
use crate::cpu::MachineCpu;
use crate::drain::{ensure_logged, DrainRun};

/// PostgreSQL alone: claim (the relay's columns) and delete, batch after batch,
/// over the pre-filled `n`-row backlog.
/// With `copy_to_log`, the rows are moved into the log table by the server in
/// the same transaction (advisory lock, then `DELETE ... RETURNING` feeding an
/// `INSERT INTO log`).
pub(crate) async fn ceiling_drain(
    b: &Bench,
    n: usize,
    batch: u32,
    copy_to_log: bool,
) -> Result<DrainRun> {
    let outbox = b.table("outbox");
    let log = b.table("log");
    let move_to_log = format!(
        "WITH moved AS (DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[]) \
             RETURNING seq, id, topic, key, partition, type, payload, content_type, headers, created_at, available_at) \
         INSERT INTO {log} (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, now() \
         FROM moved ORDER BY seq"
    );
    let (select, delete) = claim_and_delete(&outbox);
    let mut conn = b.pool.acquire().await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let (mut done, mut batches, mut bytes) = (0usize, 0u64, 0usize);
    loop {
        let mut tx = conn.begin().await?;
        let (addresses, payload_bytes) = claim_batch(&mut tx, &select, i64::from(batch)).await?;
        if addresses.is_empty() {
            tx.commit().await?;
            break;
        }
        bytes += payload_bytes;
        if copy_to_log {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(i64::from(u32::MAX) + 7)
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(move_to_log.as_str()))
                .bind(&addresses)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(AssertSqlSafe(delete.as_str()))
                .bind(&addresses)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        done += addresses.len();
        batches += 1;
    }
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    ensure!(
        done == n,
        "the ceiling loop drained {done} rows, expected {n}"
    );
    ensure!(bytes > 0, "no payload read");
    if copy_to_log {
        ensure_logged(b, n).await?;
    }
    Ok(DrainRun {
        elapsed,
        batches,
        busy,
    })
}

/// The ceiling loop's statements on the outbox table `outbox`: the claim of
/// up to `$1` rows with the relay's columns, and the delete of the rows by
/// the addresses (`$1`, text[]) the claim returned.
pub(crate) fn claim_and_delete(outbox: &str) -> (String, String) {
    (
        format!(
            "SELECT ctid::text AS row_address, seq, partition, attempts, id, topic, key, type, payload, content_type, \
             headers::text AS headers, created_at, available_at FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT $1 \
             FOR UPDATE SKIP LOCKED"
        ),
        format!("DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[])"),
    )
}

/// Runs the claim of [`claim_and_delete`] for up to `batch` rows in `tx`
/// and decodes each row's id and payload as the relay does; returns the
/// rows' addresses (empty when nothing was claimed) and their payload bytes.
pub(crate) async fn claim_batch(
    tx: &mut PgConnection,
    select: &str,
    batch: i64,
) -> Result<(Vec<String>, usize)> {
    let rows = sqlx::query(AssertSqlSafe(select))
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    let mut addresses = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for row in &rows {
        addresses.push(row.try_get::<String, _>("row_address")?);
        row.try_get::<Uuid, _>("id")?;
        bytes += row.try_get::<&[u8], _>("payload")?.len();
    }
    Ok((addresses, bytes))
}
