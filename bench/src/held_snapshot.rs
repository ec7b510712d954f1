//! A session holding a snapshot open: a `REPEATABLE READ` transaction
//! whose snapshot pins the xmin horizon, so no dead row can be vacuumed
//! while it lasts (the held-snapshot rows of the `kafka` and `position`
//! sections).

use anyhow::{ensure, Result};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

use crate::context::Bench;

/// Another session's transaction, open from before a drain to after it:
/// `REPEATABLE READ`, its snapshot taken by a read of a table other than
/// the outbox; read-only, so it has no xid.
pub(crate) struct HeldSnapshot {
    conn: PgConnection,
}

impl HeldSnapshot {
    /// Opens the transaction, its snapshot taken by reading the bench's
    /// `table`: the read holds that table's `ACCESS SHARE` lock until
    /// [`HeldSnapshot::release`], so it must be one the section does not
    /// `TRUNCATE` while the snapshot is held.
    pub(crate) async fn open(b: &Bench, table: &str) -> Result<HeldSnapshot> {
        let url = std::env::var("RELAYBOX_DATABASE_URL")?;
        let mut conn = PgConnection::connect(&url).await?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut conn)
            .await?;
        let _: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            b.table(table)
        )))
        .fetch_one(&mut conn)
        .await?;
        let (xmin, xid): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT backend_xmin::text, backend_xid::text FROM pg_stat_activity \
             WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        ensure!(xmin.is_some(), "the held session has no snapshot");
        ensure!(xid.is_none(), "the held session has an xid: {xid:?}");
        Ok(HeldSnapshot { conn })
    }

    /// Ends the held transaction.
    pub(crate) async fn release(mut self) -> Result<()> {
        sqlx::raw_sql("COMMIT").execute(&mut self.conn).await?;
        self.conn.close().await?;
        Ok(())
    }
}
