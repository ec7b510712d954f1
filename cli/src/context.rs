//! The global options shared by every command and the settings resolved from
//! them: database URL, configuration file and store options, plus connecting.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use relaybox::{DatabaseUrl, Error, RelayConfig, Store, StoreOptions, TransportConfig};

use crate::config::{self, FileConfig};
use crate::output;

/// Options accepted by every command, before or after the command name.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Database URL: postgres://..., sqlite://path.db or sqlite::memory:
    ///
    /// For example postgres://user:password@host:5432/db or sqlite://path/to/file.db
    /// (created if missing). Takes precedence over `database_url` in the --config
    /// file. The password is never printed.
    #[arg(
        long,
        env = "RELAYBOX_DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// TOML configuration file (database_url, [store], [relay], [transport], [[route]])
    ///
    /// Keys: `database_url`; a [store] table with table_prefix, partitions,
    /// max_payload_bytes, max_connections, min_connections and
    /// connect_timeout; a [relay] table, a [transport] table and [[route]]
    /// tables (see `relaybox relay --help`). Unknown keys are an error.
    #[arg(
        long,
        env = "RELAYBOX_CONFIG",
        global = true,
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Prefix of every relaybox table name [default: relaybox_]
    ///
    /// Takes precedence over `table_prefix` in the [store] table of the --config
    /// file.
    #[arg(
        long,
        env = "RELAYBOX_TABLE_PREFIX",
        global = true,
        hide_env_values = true,
        value_name = "PREFIX"
    )]
    pub table_prefix: Option<String>,
}

/// Settings resolved from the global options and the configuration file.
#[derive(Debug)]
pub struct Context {
    database_url: Option<String>,
    table_prefix: Option<String>,
    file: FileConfig,
}

impl Context {
    /// Reads the configuration file, if one was given.
    pub fn load(args: GlobalArgs) -> anyhow::Result<Context> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Ok(Context {
            database_url: args.database_url.filter(|u| !u.trim().is_empty()),
            table_prefix: args.table_prefix.filter(|p| !p.is_empty()),
            file,
        })
    }

    /// The store options: the [store] table with `--table-prefix` applied.
    pub fn store_options(&self) -> relaybox::Result<StoreOptions> {
        config::store_options(&self.file, self.table_prefix.as_deref())
    }

    /// The relay settings: the [relay] table with the environment overrides applied.
    pub fn relay_config(&self) -> relaybox::Result<RelayConfig> {
        config::relay_config(&self.file, |name| std::env::var(name).ok())
    }

    /// The transport: the `[[route]]` tables, else RELAYBOX_TRANSPORT, else
    /// the file's `transport`, else the database transport.
    pub fn transport_config(&self) -> relaybox::Result<TransportConfig> {
        config::transport_config(&self.file, |name| std::env::var(name).ok())
    }

    /// The database URL: `--database-url`, RELAYBOX_DATABASE_URL or the file's `database_url`.
    pub fn database_url(&self) -> anyhow::Result<&str> {
        self.database_url
            .as_deref()
            .or(self.file.database_url.as_deref())
            .ok_or_else(|| {
                anyhow!(
                    "no database URL: pass --database-url or set RELAYBOX_DATABASE_URL \
                     (or `database_url` in the --config file)"
                )
            })
    }

    /// Connects to the database with the resolved store options.
    pub async fn connect(&self) -> anyhow::Result<Store> {
        let url = self.database_url()?;
        let options = self.store_options()?;
        let timeout = options.connect_timeout;
        let shown = DatabaseUrl::new(url).to_string();
        match Store::connect_with(url, options).await {
            Ok(store) => Ok(store),
            // sqlx keeps retrying unreachable servers until the timeout and then
            // reports neither the cause nor the time waited.
            Err(Error::Timeout { .. }) => Err(anyhow!(
                "cannot connect to {shown}: no connection within {} \
                 (is the server running and reachable? [store] connect_timeout sets the wait)",
                output::short_duration(timeout.as_secs_f64())
            )),
            // Configuration and database errors already name the setting or the
            // (redacted) URL; anything else gets the URL added.
            Err(e @ Error::InvalidConfig { .. }) => Err(e.into()),
            Err(e) if e.to_string().contains(&shown) => Err(e.into()),
            Err(e) => Err(e).with_context(|| format!("cannot connect to {shown}")),
        }
    }
}
