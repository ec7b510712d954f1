//! `NativeStore`: an open outbox store (PostgreSQL or SQLite).

use napi::Result;
use napi_derive::napi;
use relaybox::{DeadLetterFilter, Placeholders, Store, StoreOptions};
use uuid::Uuid;

use crate::bridge::{guard, run};
use crate::convert::{self, parse_config, report};
use crate::transaction::NativeTransaction;

/// An open store: a connection pool plus the outbox tables.
#[napi]
pub struct NativeStore(pub(crate) Store);

fn options(options_json: Option<String>) -> relaybox::Result<StoreOptions> {
    match options_json {
        None => Ok(StoreOptions::default()),
        Some(text) => StoreOptions::from_json(parse_config("store options", &text)?),
    }
}

fn dead_letter_filter(ids: Option<Vec<String>>) -> relaybox::Result<DeadLetterFilter> {
    match ids {
        None => Ok(DeadLetterFilter::All),
        Some(ids) => ids
            .iter()
            .map(|id| {
                Uuid::parse_str(id).map_err(|e| relaybox::Error::InvalidValue {
                    reason: format!("{id:?} is not a message id: {e}"),
                })
            })
            .collect::<relaybox::Result<Vec<_>>>()
            .map(DeadLetterFilter::Ids),
    }
}

#[napi]
impl NativeStore {
    /// Connects; `optionsJson` is a JSON object of store options and
    /// `migrate` applies the schema first.
    #[napi(catch_unwind)]
    pub async fn open(
        url: String,
        options_json: Option<String>,
        migrate: bool,
    ) -> Result<NativeStore> {
        run(async move {
            let store = Store::connect_with(&url, options(options_json)?).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(NativeStore(store))
        })
        .await
    }

    /// The database URL with its password redacted.
    #[napi(getter, catch_unwind)]
    pub fn url(&self) -> String {
        self.0.url().to_string()
    }

    /// `"postgres"` or `"sqlite"`.
    #[napi(getter, catch_unwind)]
    pub fn dialect(&self) -> String {
        self.0.dialect().to_string()
    }

    /// The table prefix.
    #[napi(getter, catch_unwind)]
    pub fn table_prefix(&self) -> String {
        self.0.options().table_prefix.clone()
    }

    /// Whether `close` was called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.0.is_closed()
    }

    /// A statement that, run in the caller's own transaction, wakes relays of
    /// every process when it commits (`null` on SQLite).
    #[napi(getter, catch_unwind)]
    pub fn wake_statement(&self) -> Option<String> {
        self.0.wake_statement()
    }

    /// Applies pending migrations.
    #[napi(catch_unwind)]
    pub async fn migrate(&self) -> Result<()> {
        let store = self.0.clone();
        run(async move { store.migrate().await }).await
    }

    /// Begins a transaction.
    #[napi(catch_unwind)]
    pub async fn begin(&self) -> Result<NativeTransaction> {
        let store = self.0.clone();
        run(async move { store.begin().await.map(NativeTransaction) }).await
    }

    /// The outbox INSERT for one message spec (JSON), for a host driver to
    /// run in its own transaction, as JSON text
    /// `{"sql", "params": [tagged values], "messageId"}`. `placeholders` is
    /// `"dollar"` (node-postgres), `"percent"` or `"question"`.
    #[napi(catch_unwind)]
    pub async fn insert_statement(
        &self,
        spec_json: String,
        placeholders: String,
    ) -> Result<String> {
        let store = self.0.clone();
        run(async move {
            let style: Placeholders = placeholders.parse()?;
            let message = convert::message(&spec_json)?;
            let statement = store.insert_statement(&message, style).await?;
            let params: Vec<serde_json::Value> =
                statement.params.iter().map(convert::tagged).collect();
            Ok(serde_json::json!({
                "sql": statement.sql,
                "params": params,
                "messageId": statement.message_id.to_string(),
            })
            .to_string())
        })
        .await
    }

    /// The outbox INSERTs writing every message of a JSON array of specs,
    /// for a host driver to run in order in its own transaction, as JSON
    /// text: an array of `{"sql", "params": [tagged values], "messageIds",
    /// "wake"}`, one per 1000 messages. Every message is validated before
    /// any statement is made.
    #[napi(catch_unwind)]
    pub async fn insert_batch_statements(
        &self,
        specs_json: String,
        placeholders: String,
    ) -> Result<String> {
        let store = self.0.clone();
        run(async move {
            let style: Placeholders = placeholders.parse()?;
            let messages = convert::messages(&specs_json)?;
            let statements = store.insert_batch_statements(&messages, style).await?;
            let out: Vec<serde_json::Value> = statements
                .iter()
                .map(|statement| {
                    let params: Vec<serde_json::Value> =
                        statement.params.iter().map(convert::tagged).collect();
                    let ids: Vec<String> = statement
                        .message_ids
                        .iter()
                        .map(|id| id.to_string())
                        .collect();
                    serde_json::json!({
                        "sql": statement.sql,
                        "params": params,
                        "messageIds": ids,
                        "wake": statement.wake,
                    })
                })
                .collect();
            Ok(serde_json::Value::Array(out).to_string())
        })
        .await
    }

    /// Wakes this process's relays on this store (after a host driver
    /// committed outbox rows).
    #[napi(catch_unwind)]
    pub fn wake_relays(&self) -> Result<()> {
        guard(|| {
            self.0.wake_relays();
            Ok(())
        })
    }

    /// Backlog, dead letters and lease owners, as JSON text.
    #[napi(catch_unwind)]
    pub async fn status(&self) -> Result<String> {
        let store = self.0.clone();
        run(async move { report(&store.status().await?) }).await
    }

    /// Undelivered outbox rows.
    #[napi(catch_unwind)]
    pub async fn pending_count(&self) -> Result<i64> {
        let store = self.0.clone();
        run(async move { store.pending_count().await }).await
    }

    /// Up to `limit` dead letters, oldest first, as JSON text.
    #[napi(catch_unwind)]
    pub async fn dead_letters(&self, limit: u32) -> Result<String> {
        let store = self.0.clone();
        run(async move { report(&store.dead_letters(limit).await?) }).await
    }

    /// Puts dead letters (all, or those of `ids`) back into the outbox;
    /// returns how many.
    #[napi(catch_unwind)]
    pub async fn retry_dead_letters(&self, ids: Option<Vec<String>>) -> Result<i64> {
        let store = self.0.clone();
        run(async move {
            let filter = dead_letter_filter(ids)?;
            store.retry_dead_letters(&filter).await.map(count)
        })
        .await
    }

    /// Deletes dead letters (all, or those of `ids`); returns how many.
    #[napi(catch_unwind)]
    pub async fn purge_dead_letters(&self, ids: Option<Vec<String>>) -> Result<i64> {
        let store = self.0.clone();
        run(async move {
            let filter = dead_letter_filter(ids)?;
            store.purge_dead_letters(&filter).await.map(count)
        })
        .await
    }

    /// Closes the pool; later calls reject with `ClosedError`.
    #[napi(catch_unwind)]
    pub async fn close(&self) -> Result<()> {
        let store = self.0.clone();
        run(async move {
            store.close().await;
            Ok(())
        })
        .await
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
