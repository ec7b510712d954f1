//! RabbitMQ connection and topology settings, shared by the sink and the
//! source, with the URL's password redacted wherever they are shown.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::codec::Codec;
use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::store::tls::{read_pem, PemKind};
use crate::transport::cloudevents::CloudEvents;

/// Default broker URL (the default virtual host `/` is written `%2f`).
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672/%2f";

/// Settings of a RabbitMQ client.
///
/// In JSON: `{"url": "amqp://user:pass@host:5672/%2f", "exchange": "relaybox",
/// "codec": "relaybox", "prefetch": 100, ...}`; unknown keys are an error.
/// The password in `url` never appears in `Debug`, logs or errors.
///
/// TLS: an `amqps://` URL connects over TLS (OpenSSL) and verifies the
/// broker's certificate and host name against the system's trusted CAs and,
/// when `tls_ca_file` is set, the CAs of that file.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://` or `amqps://` URL of the broker (default `amqp://127.0.0.1:5672/%2f`).
    pub url: String,
    /// The durable topic exchange messages are published to (default `relaybox`).
    pub exchange: String,
    /// How a message becomes an AMQP body (default [`Codec::Relaybox`]).
    pub codec: Codec,
    /// Unacknowledged deliveries the broker hands a consumer at most (`basic.qos`, default 100).
    pub prefetch: u16,
    /// Declare the exchanges, queues and bindings relaybox uses (default true).
    /// When false they must exist, set up by the broker's operators.
    pub declare: bool,
    /// Declare consumer queues as quorum queues instead of classic ones (default false).
    pub quorum_queues: bool,
    /// The dead-letter exchange (default `<exchange>.dlx`).
    pub dead_letter_exchange: Option<String>,
    /// Publish with the `mandatory` flag (default true): a message no queue is
    /// bound for comes back and fails with a retryable error, so it stays in
    /// the outbox until a consumer group's queue exists. When false such a
    /// message is confirmed and dropped by the broker.
    pub mandatory: bool,
    /// How long connecting (TCP, TLS, AMQP handshake) may take (default 5 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
    /// How long the relay waits for a publisher confirm before failing the
    /// message with a retryable error (default 10 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub confirm_timeout: Duration,
    /// PEM file of certificate authorities to trust besides the system's,
    /// for the broker's certificate (`amqps://` only).
    pub tls_ca_file: Option<String>,
    /// Write CloudEvents binary-mode application properties
    /// (`cloudEvents_id`, `cloudEvents_source`, `cloudEvents_type`,
    /// `cloudEvents_specversion`, `cloudEvents_time`) beside the envelope
    /// headers: `true`, or the default source as a string (default false;
    /// see [`CloudEvents`]).
    pub cloudevents: CloudEvents,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            url: DEFAULT_URL.into(),
            exchange: "relaybox".into(),
            codec: Codec::Relaybox,
            prefetch: 100,
            declare: true,
            quorum_queues: false,
            dead_letter_exchange: None,
            mandatory: true,
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            tls_ca_file: None,
            cloudevents: CloudEvents::off(),
        }
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("codec", &self.codec)
            .field("prefetch", &self.prefetch)
            .field("declare", &self.declare)
            .field("quorum_queues", &self.quorum_queues)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("mandatory", &self.mandatory)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("cloudevents", &self.cloudevents)
            .finish()
    }
}

impl RabbitMqConfig {
    /// Connects to `url` with default settings.
    pub fn new(url: impl Into<String>) -> Self {
        RabbitMqConfig {
            url: url.into(),
            ..RabbitMqConfig::default()
        }
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: RabbitMqConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("rabbitmq", redact_url(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Settings from the environment: the URL from `RELAYBOX_RABBITMQ_URL`,
    /// else `RABBITMQ_URL`, else the default.
    pub fn from_env() -> Result<Self> {
        let url = std::env::var("RELAYBOX_RABBITMQ_URL")
            .or_else(|_| std::env::var("RABBITMQ_URL"))
            .unwrap_or_else(|_| DEFAULT_URL.into());
        let config = RabbitMqConfig::new(url);
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work. Errors name the field and never show the password.
    pub fn validate(&self) -> Result<()> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err(Error::config("url", "must not be empty"));
        }
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Error::config(
                "url",
                format!("{:?} is not an amqp:// or amqps:// URL", redact_url(url)),
            ));
        }
        if url.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(Error::config(
                "url",
                format!(
                    "{:?} is not a valid AMQP URL (amqp://user:password@host:port/vhost)",
                    redact_url(url)
                ),
            ));
        }
        check_name("exchange", &self.exchange)?;
        check_name("dead_letter_exchange", &self.dead_letter_exchange())?;
        if self.prefetch == 0 {
            return Err(Error::config("prefetch", "must be at least 1"));
        }
        if self.connect_timeout < Duration::from_millis(100) {
            return Err(Error::config("connect_timeout", "must be at least 100 ms"));
        }
        if self.confirm_timeout < Duration::from_millis(100) {
            return Err(Error::config("confirm_timeout", "must be at least 100 ms"));
        }
        if self.tls_ca_file.is_some() {
            if !url.starts_with("amqps://") {
                return Err(Error::config(
                    "tls_ca_file",
                    "is used with an amqps:// URL only (TLS)",
                ));
            }
            self.tls_config()?;
        }
        self.cloudevents.validate()
    }

    /// The TLS settings of the connection: the CAs of `tls_ca_file`, if set.
    pub(crate) fn tls_config(&self) -> Result<lapin::tcp::OwnedTLSConfig> {
        let cert_chain = match &self.tls_ca_file {
            Some(path) => {
                let pem = read_pem("tls_ca_file", path, PemKind::Certificates)?;
                Some(String::from_utf8(pem).map_err(|_| {
                    Error::config("tls_ca_file", format!("{path} is not a PEM text file"))
                })?)
            }
            None => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain,
        })
    }

    /// The dead-letter exchange in force.
    pub fn dead_letter_exchange(&self) -> String {
        self.dead_letter_exchange
            .clone()
            .unwrap_or_else(|| format!("{}.dlx", self.exchange))
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// `text` with the URL's password (raw or percent-decoded) replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.url, &self.redacted_url());
        if let Some(password) = url_password(&self.url) {
            if !password.is_empty() {
                out = out.replace(&password, "***");
                let decoded = percent_decode(&password);
                if !decoded.is_empty() {
                    out = out.replace(&decoded, "***");
                }
            }
        }
        out
    }
}

/// An exchange or queue name: 1 to 255 bytes.
pub(crate) fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    if name.len() > 255 {
        return Err(Error::config(field, "must be at most 255 bytes"));
    }
    Ok(())
}

fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(userinfo.split_once(':')?.1.to_string())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        let c = RabbitMqConfig::new("amqp://app:s3cr%40t@h:5672/%2f");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("amqp://app:***@h:5672/%2f"), "{shown}");
        assert_eq!(c.scrub("login s3cr@t refused"), "login *** refused");
    }

    #[test]
    fn from_json_and_validation() {
        let c = RabbitMqConfig::from_json(serde_json::json!({
            "url": "amqp://u:p@h:5672/%2f", "exchange": "ev", "codec": "envelope",
            "prefetch": 5, "confirm_timeout": "2s"
        }))
        .unwrap();
        assert_eq!(c.codec, Codec::Envelope);
        assert_eq!(c.dead_letter_exchange(), "ev.dlx");
        assert_eq!(c.confirm_timeout, Duration::from_secs(2));
        let field = |v: serde_json::Value| match RabbitMqConfig::from_json(v) {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(serde_json::json!({"url": "http://h"})), "url");
        assert_eq!(field(serde_json::json!({"exchange": ""})), "exchange");
        assert_eq!(field(serde_json::json!({"prefetch": 0})), "prefetch");
        assert_eq!(field(serde_json::json!({"queue": "x"})), "rabbitmq");
        assert_eq!(
            field(serde_json::json!({"tls_ca_file": "/etc/ca.pem"})),
            "tls_ca_file"
        );
        assert_eq!(
            field(serde_json::json!({"url": "amqps://h/%2f", "tls_ca_file": "/no/ca.pem"})),
            "tls_ca_file"
        );
        assert_eq!(
            field(serde_json::json!({"cloudevents": ["urn:shop"]})),
            "cloudevents"
        );
        assert_eq!(field(serde_json::json!({"cloudevents": ""})), "cloudevents");
        let c = RabbitMqConfig::from_json(serde_json::json!({"cloudevents": true})).unwrap();
        assert_eq!(c.cloudevents, CloudEvents::on());
    }
}
