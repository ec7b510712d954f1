//! Connecting: reading the database URL (its dialect, SQLite's connect
//! options), opening the pool, and connection errors that name the URL
//! without its password.

use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::options::max_connections;
use super::sqlite_hooks::wake_on_sqlite_commit;
use super::{tls, PgSql, Pool, SqliteSql, Store, StoreInner, StoreOptions};
use crate::error::{Error, Result};
use crate::redact::DatabaseUrl;
use crate::schema::Dialect;
use crate::validate::Limits;
use crate::wake::Wake;

impl Store {
    /// Connects with default options. URLs: `postgres://user:pass@host/db`,
    /// `sqlite://path/to/file.db` (created if missing) or `sqlite::memory:`.
    ///
    /// PostgreSQL TLS comes from the URL as in libpq: `sslmode`
    /// (`disable`, `prefer` (the default), `require`, `verify-ca`,
    /// `verify-full`), `sslrootcert` (the CA file; it adds to the system's
    /// trusted CAs), `sslcert` and `sslkey` (a client certificate), or the
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` environment
    /// variables. A TLS failure is an [`Error::Database`] naming the cause
    /// (an unknown CA, a certificate for another host name, a server
    /// without TLS).
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    /// Connects with `options`. Connection errors never include the password.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store> {
        options.validate()?;
        let url = DatabaseUrl::new(url);
        let dialect = dialect_of(&url)?;
        let wake = Wake::default();
        let shutdown = CancellationToken::new();
        let pool = match dialect {
            Dialect::Postgres => {
                tls::check_url(&url, "")?;
                let connect = PgConnectOptions::from_str(url.expose()).map_err(|_| {
                    Error::config("url", format!("cannot parse PostgreSQL URL {url}"))
                })?;
                let pool = PgPoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(max_connections(&options, 10)?)
                    .min_connections(options.min_connections)
                    .acquire_timeout(options.connect_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| connect_error(e, &url))?;
                Pool::Postgres(pool, Arc::new(PgSql::new(&options.table_prefix)))
            }
            Dialect::Sqlite => {
                let connect = sqlite_options(&url)?;
                let pool = SqlitePoolOptions::new()
                    .test_before_acquire(false)
                    .after_connect(wake_on_sqlite_commit(&wake, &options.table_prefix))
                    .max_connections(max_connections(&options, 4)?)
                    .min_connections(options.min_connections)
                    .acquire_timeout(options.connect_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|e| connect_error(e, &url))?;
                Pool::Sqlite(pool, Arc::new(SqliteSql::new(&options.table_prefix)))
            }
        };
        if let Pool::Postgres(pg, _) = &pool {
            wake.attach_postgres(pg, &options.table_prefix, &shutdown);
        }
        tracing::debug!(url = %url, %dialect, "relaybox store connected");
        Ok(Store {
            scoped: None,
            inner: Arc::new(StoreInner {
                url,
                pool,
                limits: Limits {
                    max_payload_bytes: options.max_payload_bytes,
                },
                options,
                partitions: OnceCell::new(),
                wake,
                closed: AtomicBool::new(false),
                shutdown,
            }),
        })
    }
}

fn dialect_of(url: &DatabaseUrl) -> Result<Dialect> {
    let u = url.expose();
    if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        Ok(Dialect::Postgres)
    } else if u.starts_with("sqlite:") {
        Ok(Dialect::Sqlite)
    } else {
        Err(Error::config(
            "url",
            format!("unsupported database URL {url}; use postgres://... or sqlite://..."),
        ))
    }
}

fn sqlite_options(url: &DatabaseUrl) -> Result<SqliteConnectOptions> {
    let raw = url.expose();
    let in_memory = raw == "sqlite::memory:" || raw == "sqlite://:memory:";
    let options = if in_memory {
        // One shared in-memory database for every pooled connection of this store.
        SqliteConnectOptions::from_str(&format!(
            "sqlite:file:relaybox-{}?mode=memory&cache=shared",
            Uuid::now_v7().simple()
        ))
    } else {
        SqliteConnectOptions::from_str(raw)
    }
    .map_err(|_| Error::config("url", format!("cannot parse SQLite URL {url}")))?;
    let options = options
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    Ok(if in_memory {
        options
    } else {
        options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    })
}

fn connect_error(err: sqlx::Error, url: &DatabaseUrl) -> Error {
    if let Some(tls) = tls::pg_tls_error(&err, url) {
        return tls;
    }
    match Error::from(err) {
        Error::Database {
            message,
            sql_code,
            retryable,
        } => Error::Database {
            message: format!("cannot connect to {url}: {message}"),
            sql_code,
            retryable,
        },
        other => other,
    }
}
