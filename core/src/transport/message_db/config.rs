//! Message DB settings, shared by the sink and the source, with the
//! connection URL redacted wherever it is shown.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::mapping::DEFAULT_EXPECTED_VERSION_HEADER;
use crate::error::{Error, Result};
use crate::redact::DatabaseUrl;
use crate::schema::Dialect;
use crate::store::Store;
use crate::validate::check_header;

/// Settings of the Message DB transport.
///
/// JSON: `{"url": "postgres://...", "consumer_group_member": 0,
/// "consumer_group_size": 1, "expected_version_header": "expected_version",
/// "correlation": null, "poll_interval": "100ms", "max_connections": 5}`,
/// every field optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageDbConfig {
    /// The PostgreSQL database holding Message DB (schema `message_store`).
    /// Default: the relaybox store's own database, which must then be
    /// PostgreSQL with Message DB installed. Never shown unredacted. TLS
    /// settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) are URL
    /// parameters, as for the store's URL.
    #[serde(deserialize_with = "deserialize_url")]
    pub url: Option<DatabaseUrl>,
    /// This consumer's member number in its consumer group, `0..size` (default 0).
    pub consumer_group_member: u32,
    /// Number of members sharing a category (default 1: no split). Message DB
    /// gives member `m` the streams whose `@hash_64(cardinal_id) mod size = m`.
    pub consumer_group_size: u32,
    /// Header whose value is passed as `expected_version` to `write_message`
    /// (default `expected_version`); a mismatch is a permanent error.
    pub expected_version_header: String,
    /// Source only: read just the messages whose `correlationStreamName`
    /// metadata (a header of that name) belongs to this category.
    pub correlation: Option<String>,
    /// How often an idle source asks for new messages (default 100 ms).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// Connections of the pool to Message DB (default 5).
    pub max_connections: u32,
    /// How long to wait for a connection before a write or read fails,
    /// retryably (default 5 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
}

impl Default for MessageDbConfig {
    fn default() -> Self {
        MessageDbConfig {
            url: None,
            consumer_group_member: 0,
            consumer_group_size: 1,
            expected_version_header: DEFAULT_EXPECTED_VERSION_HEADER.into(),
            correlation: None,
            poll_interval: Duration::from_millis(100),
            max_connections: 5,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn deserialize_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DatabaseUrl>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(DatabaseUrl::new))
}

impl MessageDbConfig {
    /// Connects to Message DB at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        MessageDbConfig {
            url: Some(DatabaseUrl::new(url)),
            ..MessageDbConfig::default()
        }
    }

    /// Settings from a JSON object; unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: MessageDbConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("message_db", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Makes the source member `member` of a consumer group of `size`.
    pub fn member(mut self, member: u32, size: u32) -> Self {
        self.consumer_group_member = member;
        self.consumer_group_size = size;
        self
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.url {
            let u = url.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return Err(Error::config(
                    "message_db.url",
                    format!("must be a postgres:// URL, not {url}"),
                ));
            }
        }
        if self.consumer_group_size == 0 || self.consumer_group_member >= self.consumer_group_size {
            return Err(Error::config(
                "message_db.consumer_group_member",
                format!(
                    "member {} is not within a consumer group of size {}",
                    self.consumer_group_member, self.consumer_group_size
                ),
            ));
        }
        check_header(&self.expected_version_header, "0")
            .map_err(|e| Error::config("message_db.expected_version_header", e.to_string()))?;
        if let Some(c) = &self.correlation {
            super::mapping::check_category(c)
                .map_err(|e| Error::config("message_db.correlation", e.to_string()))?;
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config(
                "message_db.poll_interval",
                "must be at least 1 ms",
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::config(
                "message_db.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The URL in force: `url`, or else the store's when it is PostgreSQL.
    pub fn url_for(&self, store: &Store) -> Result<DatabaseUrl> {
        match &self.url {
            Some(url) => Ok(url.clone()),
            None if store.dialect() == Dialect::Postgres => Ok(store.url().clone()),
            None => Err(Error::config(
                "message_db.url",
                "required when the relaybox store is not PostgreSQL",
            )),
        }
    }

    /// A pool that connects on first use (and again after an outage), with
    /// `search_path` set to `message_store` as Message DB's functions need.
    pub(crate) fn pool(&self, url: &DatabaseUrl) -> Result<PgPool> {
        crate::store::tls::check_url(url, "message_db.url")?;
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|_| Error::config("message_db.url", format!("cannot parse {url}")))?
            .options([("search_path", "message_store,public")]);
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_and_redaction() {
        let c = MessageDbConfig::from_json(serde_json::json!({
            "url": "postgres://app:hunter2@db/message_store",
            "consumer_group_member": 1,
            "consumer_group_size": 2,
            "poll_interval": "50ms"
        }))
        .unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(50));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = MessageDbConfig::from_json(
            serde_json::json!({"consumer_group_member": 2, "consumer_group_size": 2}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("consumer_group_member"), "{e}");
        assert!(MessageDbConfig::from_json(serde_json::json!({"uri": "x"})).is_err());
        let e = MessageDbConfig::from_json(serde_json::json!({"url": "mysql://u:hunter3@h/d"}))
            .unwrap_err();
        assert!(!e.to_string().contains("hunter3"), "{e}");
    }
}
