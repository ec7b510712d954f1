//! Section 4: a hand-rolled outbox poller, one row per round trip, and the
//! poller's loop, which section 8's naive poller into Kafka runs too.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use crate::context::{Bench, TOPIC};
use crate::report::{header, rate, thousands};

pub(crate) async fn section_naive(b: &mut Bench) -> Result<()> {
    let n = b.sizes.naive_rows;
    let limit = b.sizes.naive_max;
    header(&format!(
        "4. Naive baseline: one row at a time ({}-row backlog, at most {} s)",
        thousands(n as u64),
        limit.as_secs()
    ));
    b.backlog(n, TOPIC).await?;
    let log = b.table("log");
    let insert = format!(
        "INSERT INTO {log} (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, now())"
    );
    let columns = "id, topic, key, partition, type, payload, content_type, headers::text AS headers, created_at, available_at";
    let (done, elapsed) = poll_one_row_at_a_time(b, columns, async |conn, row| {
        let id: Uuid = row.try_get("id")?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(id)
            .bind(row.try_get::<String, _>("topic")?)
            .bind(row.try_get::<Option<String>, _>("key")?)
            .bind(row.try_get::<i32, _>("partition")?)
            .bind(row.try_get::<String, _>("type")?)
            .bind(row.try_get::<Vec<u8>, _>("payload")?)
            .bind(row.try_get::<String, _>("content_type")?)
            .bind(row.try_get::<String, _>("headers")?)
            .bind(row.try_get::<chrono::DateTime<Utc>, _>("created_at")?)
            .bind(row.try_get::<chrono::DateTime<Utc>, _>("available_at")?)
            .execute(conn)
            .await?;
        Ok(id)
    })
    .await?;
    let naive = rate(done, elapsed);
    println!("  loop: SELECT ... ORDER BY seq LIMIT 1; INSERT INTO log ...; UPDATE ... SET sent_at = now()");
    println!("        (autocommit each; continues at once after a row, sleeps 1 s only when the table is empty)");
    println!(
        "  delivered {} rows in {:.2} s: {} msg/s",
        thousands(done as u64),
        elapsed.as_secs_f64(),
        thousands(naive as u64)
    );
    let best = b
        .relay_rates
        .iter()
        .copied()
        .max_by(|x, y| x.1.total_cmp(&y.1));
    match best {
        Some((batch, relay)) => {
            println!(
                "  relay (batch {batch}, {} msg/s) / naive = {:.0}x",
                thousands(relay as u64),
                relay / naive
            );
            b.figure(
                "naive 1-row poller",
                format!(
                    "{} msg/s; relay/naive = {:.0}x",
                    thousands(naive as u64),
                    relay / naive
                ),
                "(info)",
                None,
            );
        }
        None => {
            println!("  relay/naive: n/a (run the drain section too)");
            b.figure(
                "naive 1-row poller",
                format!("{} msg/s", thousands(naive as u64)),
                "(info)",
                None,
            );
        }
    }
    b.reset().await?;
    Ok(())
}

/// The hand-rolled poller of the naive baselines: on one connection, in
/// autocommit, `SELECT <columns> FROM outbox WHERE sent_at IS NULL ORDER BY
/// seq LIMIT 1`, `deliver` the row (it returns the row's id), then `UPDATE
/// ... SET sent_at = now()` by that id; at once again after a row, after
/// 1 s only when the table is empty. Stops after `naive_rows` rows or
/// `naive_max`, whichever comes first; returns the rows delivered and the
/// time taken.
pub(crate) async fn poll_one_row_at_a_time(
    b: &Bench,
    columns: &str,
    mut deliver: impl AsyncFnMut(&mut PgConnection, PgRow) -> Result<Uuid>,
) -> Result<(usize, Duration)> {
    let (n, limit) = (b.sizes.naive_rows, b.sizes.naive_max);
    let outbox = b.table("outbox");
    let select =
        format!("SELECT {columns} FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT 1");
    let mark = format!("UPDATE {outbox} SET sent_at = now() WHERE id = $1");
    let mut conn = b.pool.acquire().await?;
    let started = Instant::now();
    let mut done = 0usize;
    while done < n && started.elapsed() < limit {
        let row = sqlx::query(AssertSqlSafe(select.as_str()))
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            // The hand-rolled poller's idle wait; never reached while the backlog lasts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let id = deliver(&mut *conn, row).await?;
        sqlx::query(AssertSqlSafe(mark.as_str()))
            .bind(id)
            .execute(&mut *conn)
            .await?;
        done += 1;
    }
    Ok((done, started.elapsed()))
}
