//! Versioned migrations, embedded in the crate, rendered per dialect and
//! table prefix; runnable by relaybox or printable for a host's own tool.

use crate::error::{Error, Result};

/// The SQL dialect of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL 12 or later.
    Postgres,
    /// SQLite 3.35 or later.
    Sqlite,
}

impl std::str::FromStr for Dialect {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
            "sqlite" | "sqlite3" => Ok(Dialect::Sqlite),
            other => Err(Error::config(
                "dialect",
                format!("unknown dialect {other:?}; use postgres or sqlite"),
            )),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        })
    }
}

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Version number; applied in ascending order.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    postgres: &'static str,
    sqlite: &'static str,
}

impl Migration {
    /// The migration's SQL for `dialect`, with tables named `<prefix><table>`.
    pub fn sql(&self, dialect: Dialect, prefix: &str) -> String {
        let template = match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::Sqlite => self.sqlite,
        };
        template.replace("{prefix}", prefix)
    }
}

/// All migrations, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "idempotency_keys",
        postgres: include_str!("../migrations/postgres/0002_idempotency_keys.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_idempotency_keys.sql"),
    },
    Migration {
        version: 3,
        name: "routes",
        postgres: include_str!("../migrations/postgres/0003_routes.sql"),
        sqlite: include_str!("../migrations/sqlite/0003_routes.sql"),
    },
    Migration {
        version: 4,
        name: "parked_keys",
        postgres: include_str!("../migrations/postgres/0004_parked_keys.sql"),
        sqlite: include_str!("../migrations/sqlite/0004_parked_keys.sql"),
    },
];

/// Every table of the schema, without the prefix, in an order that drops
/// cleanly (`schema_migrations` last). `dead_letter_seqs` exists on SQLite
/// only (PostgreSQL keeps that position in a column of `dead_letters`).
pub const TABLES: &[&str] = &[
    "outbox",
    "dead_letters",
    "dead_letter_seqs",
    "inbox",
    "positions",
    "leases",
    "relay_instances",
    "log",
    "idempotency_keys",
    "route_leases",
    "relay_routes",
    "schema_migrations",
];

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The default table prefix.
pub const DEFAULT_PREFIX: &str = "relaybox_";

/// Checks a table prefix: lowercase letters, digits and `_`, starting with a
/// letter or `_`, at most 30 characters (so every table name fits PostgreSQL's 63).
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.len() <= 30
        && prefix
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_lowercase() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "table_prefix",
            format!("{prefix:?} must be at most 30 of [a-z0-9_], not starting with a digit"),
        ))
    }
}

/// The table that records applied migrations.
pub(crate) fn migrations_table_sql(dialect: Dialect, prefix: &str) -> String {
    let (ts, default) = match dialect {
        Dialect::Postgres => ("TIMESTAMPTZ", "now()"),
        Dialect::Sqlite => (
            "INTEGER",
            "(CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))",
        ),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {prefix}schema_migrations (\n    version    BIGINT PRIMARY KEY,\n    name       TEXT NOT NULL,\n    applied_at {ts} NOT NULL DEFAULT {default}\n);\n"
    )
}

/// Records a migration as applied (idempotent).
pub(crate) fn record_sql(prefix: &str, m: &Migration) -> String {
    format!(
        "INSERT INTO {prefix}schema_migrations (version, name) VALUES ({}, '{}') ON CONFLICT (version) DO NOTHING;\n",
        m.version, m.name
    )
}

/// Creates the lease rows of `partitions` partitions when the lease table is empty.
pub(crate) fn seed_leases_sql(dialect: Dialect, prefix: &str, partitions: u32) -> String {
    let last = partitions.max(1) - 1;
    match dialect {
        Dialect::Postgres => format!(
            "INSERT INTO {prefix}leases (partition, owner, epoch, expires_at)\n    SELECT g, NULL, 0, 'epoch'::timestamptz FROM generate_series(0, {last}) AS g\n    WHERE NOT EXISTS (SELECT 1 FROM {prefix}leases);\n"
        ),
        Dialect::Sqlite => format!(
            "INSERT INTO {prefix}leases (partition, owner, epoch, expires_at)\n    WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {last})\n    SELECT n, NULL, 0, 0 FROM g WHERE NOT EXISTS (SELECT 1 FROM {prefix}leases);\n"
        ),
    }
}

/// The whole schema as one SQL script for `dialect`: every migration, the
/// records of them in `<prefix>schema_migrations` (so a later `relaybox migrate`
/// knows they ran) and the lease rows of `partitions` partitions. Idempotent.
pub fn schema_sql(dialect: Dialect, prefix: &str, partitions: u32) -> Result<String> {
    check_prefix(prefix)?;
    let mut out = format!(
        "-- relaybox schema version {} ({dialect})\n",
        latest_version()
    );
    out.push_str(&migrations_table_sql(dialect, prefix));
    for m in MIGRATIONS {
        out.push('\n');
        out.push_str(&m.sql(dialect, prefix));
        out.push_str(&record_sql(prefix, m));
    }
    out.push('\n');
    out.push_str(&seed_leases_sql(dialect, prefix, partitions));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_applied_everywhere() {
        let sql = schema_sql(Dialect::Postgres, "app_", 8).unwrap();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS app_outbox"));
        assert!(!sql.contains("{prefix}"));
        assert!(!sql.contains("relaybox_outbox"));
        assert!(sql.contains("generate_series(0, 7)"));
    }

    #[test]
    fn every_created_table_is_listed() {
        let sql = schema_sql(Dialect::Sqlite, "p_", 1).unwrap();
        let created: Vec<&str> = sql
            .split("CREATE TABLE IF NOT EXISTS p_")
            .skip(1)
            .map(|rest| rest.split([' ', '(']).next().unwrap())
            .collect();
        assert_eq!(created.len(), TABLES.len(), "{created:?}");
        for table in created {
            assert!(TABLES.contains(&table), "{table}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("relaybox_").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("1x").is_err());
        assert!(check_prefix("a;drop").is_err());
    }
}
