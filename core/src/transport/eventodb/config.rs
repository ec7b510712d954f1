//! EventoDB settings, shared by the sink and the source; the namespace
//! token never appears in `Debug`, logs or errors.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::transport::message_db::mapping::{check_category, DEFAULT_EXPECTED_VERSION_HEADER};
use crate::validate::check_header;

/// An EventoDB namespace token (`ns_...`), sent as `Authorization: Bearer`;
/// shown as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The token itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Settings of the EventoDB transport.
///
/// JSON: `{"url": "http://127.0.0.1:8080", "token": "ns_...",
/// "consumer_group_member": 0, "consumer_group_size": 1,
/// "expected_version_header": "expected_version", "correlation": null,
/// "poll_interval": "100ms", "request_timeout": "10s"}`; only `url` is
/// needed (its default is `http://127.0.0.1:8080`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventoDbConfig {
    /// Base URL of the server; requests go to `<url>/rpc`.
    pub url: String,
    /// The namespace token (`Authorization: Bearer <token>`), if the server wants one.
    pub token: Option<Token>,
    /// This consumer's member number in its consumer group, `0..size` (default 0).
    pub consumer_group_member: u32,
    /// Number of members sharing a category (default 1: no split).
    pub consumer_group_size: u32,
    /// Header whose value is sent as `expectedVersion` (default `expected_version`).
    pub expected_version_header: String,
    /// Source only: read just the messages whose `correlationStreamName`
    /// metadata belongs to this category.
    pub correlation: Option<String>,
    /// How often an idle source asks for new messages (default 100 ms).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub poll_interval: Duration,
    /// Limit of one RPC call, connection included (default 10 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub request_timeout: Duration,
}

impl Default for EventoDbConfig {
    fn default() -> Self {
        EventoDbConfig {
            url: "http://127.0.0.1:8080".into(),
            token: None,
            consumer_group_member: 0,
            consumer_group_size: 1,
            expected_version_header: DEFAULT_EXPECTED_VERSION_HEADER.into(),
            correlation: None,
            poll_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for EventoDbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventoDbConfig")
            .field("url", &redact_url(&self.url))
            .field("token", &self.token)
            .field("consumer_group_member", &self.consumer_group_member)
            .field("consumer_group_size", &self.consumer_group_size)
            .field("expected_version_header", &self.expected_version_header)
            .field("correlation", &self.correlation)
            .field("poll_interval", &self.poll_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EventoDbConfig {
    /// Talks to the server at `url` with `token`.
    pub fn new(url: impl Into<String>, token: Option<&str>) -> Self {
        EventoDbConfig {
            url: url.into(),
            token: token.map(Token::new),
            ..EventoDbConfig::default()
        }
    }

    /// Settings from a JSON object; unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: EventoDbConfig =
            serde_json::from_value(value).map_err(|e| Error::config("eventodb", e.to_string()))?;
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
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
            return Err(Error::config(
                "eventodb.url",
                format!(
                    "must be an http:// or https:// URL, not {:?}",
                    redact_url(url)
                ),
            ));
        }
        if let Some(t) = &self.token {
            if t.0.is_empty() || t.0.chars().any(|c| c.is_control() || c == ' ') {
                return Err(Error::config(
                    "eventodb.token",
                    "must be a non-empty token without spaces",
                ));
            }
        }
        if self.consumer_group_size == 0 || self.consumer_group_member >= self.consumer_group_size {
            return Err(Error::config(
                "eventodb.consumer_group_member",
                format!(
                    "member {} is not within a consumer group of size {}",
                    self.consumer_group_member, self.consumer_group_size
                ),
            ));
        }
        check_header(&self.expected_version_header, "0")
            .map_err(|e| Error::config("eventodb.expected_version_header", e.to_string()))?;
        if let Some(c) = &self.correlation {
            check_category(c).map_err(|e| Error::config("eventodb.correlation", e.to_string()))?;
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::config(
                "eventodb.poll_interval",
                "must be at least 1 ms",
            ));
        }
        if self.request_timeout < Duration::from_millis(10) {
            return Err(Error::config(
                "eventodb.request_timeout",
                "must be at least 10 ms",
            ));
        }
        Ok(())
    }

    /// `<url>/rpc`.
    pub(crate) fn rpc_url(&self) -> String {
        format!("{}/rpc", self.url.trim().trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted() {
        let c = EventoDbConfig::from_json(serde_json::json!({
            "url": "http://127.0.0.1:9/", "token": "ns_ZGVmYXVsdA_hunter2"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.rpc_url(), "http://127.0.0.1:9/rpc");
        let e = EventoDbConfig::from_json(serde_json::json!({"url": "127.0.0.1:9"})).unwrap_err();
        assert!(e.to_string().contains("eventodb.url"), "{e}");
        assert!(EventoDbConfig::from_json(serde_json::json!({"tokn": "x"})).is_err());
    }
}
