//! Section 7 (opt-in): EXPLAIN (ANALYZE, BUFFERS) of the relay's statements
//! on a full backlog, with the SQL the store exposes
//! (`relaybox::store::statements`).

use anyhow::{ensure, Result};
use relaybox::store::statements;
use relaybox::Message;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

use crate::context::{message, Bench, TOPIC};
use crate::report::{header, thousands};

/// The lease owner the `explain` section's claim runs as.
pub(crate) const EXPLAIN_OWNER: &str = "bench-explain";

/// Runs `EXPLAIN (ANALYZE, BUFFERS, TIMING)` of `sql` with the parameters
/// `bind` gives it, in a transaction rolled back after, and prints the plan.
pub(crate) async fn explain(
    conn: &mut PgConnection,
    sql: &str,
    bind: impl FnOnce(ExplainQuery) -> ExplainQuery,
) -> Result<()> {
    let text = format!("EXPLAIN (ANALYZE, BUFFERS, TIMING) {sql}");
    let mut tx = conn.begin().await?;
    let rows: Vec<String> = bind(sqlx::query_scalar(AssertSqlSafe(text)))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    for line in rows {
        println!("    {line}");
    }
    Ok(())
}

/// The query `explain` binds parameters to.
pub(crate) type ExplainQuery =
    sqlx::query::QueryScalar<'static, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

pub(crate) async fn section_explain(b: &mut Bench) -> Result<()> {
    let n = b.sizes.backlog;
    let batch = 1000i64;
    header(&format!(
        "Explain: the relay's statements on a {}-row backlog (batch {batch}; rolled back)",
        thousands(n as u64)
    ));
    b.backlog(n, TOPIC).await?;
    let p = b.prefix.clone();
    let partitions: Vec<i32> = (0..b.store.partitions().await? as i32).collect();
    let mut conn = b.pool.acquire().await?;
    // The claim locks the leases of its owner: one that holds them all.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {p}leases SET owner = '{EXPLAIN_OWNER}', expires_at = now() + interval '1 hour'"
    )))
    .execute(&mut *conn)
    .await?;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *conn)
            .await?;
        println!("  claim (one batch loop holding every partition), plan_cache_mode = {mode}:");
        explain(&mut conn, &statements::claim(&p), |q| {
            q.bind(EXPLAIN_OWNER).bind(1i32).bind(0i32).bind(batch)
        })
        .await?;
    }
    sqlx::raw_sql("RESET plan_cache_mode")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {p}leases SET owner = NULL, expires_at = now()"
    )))
    .execute(&mut *conn)
    .await?;
    for limit in [batch, 2 * batch] {
        println!("  move_to_log (the fused DatabaseSink path), LIMIT {limit}:");
        explain(&mut conn, &statements::move_to_log(&p), |q| {
            q.bind(partitions.clone()).bind(limit)
        })
        .await?;
    }

    // The log append of one batch, with the messages of the first claimable batch.
    let rows = b.store.read_log(TOPIC, 0, 1).await?;
    ensure!(rows.is_empty(), "the log should be empty");
    let messages: Vec<Message> = (0..batch as usize).map(|i| message(TOPIC, i)).collect();
    let n_parts = partitions.len() as u32;
    let headers: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(&m.headers).expect("headers"))
        .collect();
    println!("  log_append of {batch} messages:");
    explain(&mut conn, &statements::log_append(&p), |q| {
        q.bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.topic.clone()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.key.clone()).collect::<Vec<_>>())
            .bind(
                messages
                    .iter()
                    .map(|m| {
                        relaybox::partition::partition_for(m.key.as_deref(), &m.id, n_parts) as i32
                    })
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.event_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.payload.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.content_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(headers.clone())
            .bind(messages.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.available_at).collect::<Vec<_>>())
    })
    .await?;
    drop(conn);
    b.reset().await?;
    Ok(())
}
