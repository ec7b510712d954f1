//! Redis connection and stream settings, shared by the sink and the source,
//! with the URL's password redacted wherever they are shown.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::store::tls::{read_pem, PemKind};

/// The placeholder of stream name templates.
const TOPIC: &str = "{topic}";

/// Settings of a Redis Streams client.
///
/// As JSON: `{"url": "redis://127.0.0.1:6379", "maxlen": 10000, "stream":
/// "{topic}", "dead_letter_stream": "{topic}.dlq", "start_id": "0",
/// "block": "1s", "claim_idle": "30s", "claim_interval": "5s",
/// "command_timeout": "5s", "consumer": null, "tls_ca_file": null,
/// "tls_cert_file": null, "tls_key_file": null}`; every key is optional and
/// unknown keys are an error. The URL's password never appears in `Debug`,
/// logs or errors.
///
/// TLS: a `rediss://` URL connects over TLS and verifies the server's
/// certificate and host name, against the system's trusted CAs or, when
/// `tls_ca_file` is set, against the CAs of that file only. `rediss://` with
/// a `#insecure` fragment is refused: relaybox does not connect without
/// verifying.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://...` for
    /// TLS (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// Approximate cap on a stream's length (`XADD ... MAXLEN ~ N`, default
    /// 10000); `null` leaves streams untrimmed.
    pub maxlen: Option<u64>,
    /// Name of a topic's stream; `{topic}` is replaced by the topic (default `{topic}`).
    pub stream: String,
    /// Name of a topic's dead-letter stream; `{topic}` is replaced by the
    /// topic (default `{topic}.dlq`).
    pub dead_letter_stream: String,
    /// Where a consumer group created by relaybox starts: `0` (every entry
    /// in the stream, the default), `$` (only entries added later) or an
    /// entry id.
    pub start_id: String,
    /// Longest a single `XREADGROUP` blocks (default 1 s); a fetch blocks for
    /// the smaller of this and the consumer's own wait.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub block: Duration,
    /// How long an entry stays pending with a consumer before another
    /// consumer of the group takes it over with `XAUTOCLAIM` (default 30 s;
    /// keep it above the handler's longest run).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub claim_idle: Duration,
    /// How often a consumer looks for entries to take over (default 5 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub claim_interval: Duration,
    /// How long a command may take before it fails and is retried (default 5 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub command_timeout: Duration,
    /// Consumer name within the group. Default: unique per process
    /// (`relaybox-<host>-<pid>-<random>`). A stable name makes a restarted
    /// process read its own pending entries again at once instead of after
    /// `claim_idle`; never give two running processes the same name.
    pub consumer: Option<String>,
    /// PEM file of the certificate authorities that sign the server's
    /// certificate (`rediss://` only); instead of the system's trusted CAs.
    pub tls_ca_file: Option<String>,
    /// PEM file of a client certificate (chain) to present, for a server
    /// that asks for one (`tls-auth-clients`); needs `tls_key_file`.
    pub tls_cert_file: Option<String>,
    /// PEM file of the client certificate's private key. Its contents never
    /// appear in `Debug`, logs or errors.
    pub tls_key_file: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            maxlen: Some(10_000),
            stream: TOPIC.into(),
            dead_letter_stream: format!("{TOPIC}.dlq"),
            start_id: "0".into(),
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            consumer: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("maxlen", &self.maxlen)
            .field("stream", &self.stream)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("start_id", &self.start_id)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("claim_interval", &self.claim_interval)
            .field("command_timeout", &self.command_timeout)
            .field("consumer", &self.consumer)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl RedisConfig {
    /// Connects to `url` with default settings.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    /// Settings from a JSON object (as bindings pass them); unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: RedisConfig = serde_json::from_value(value)
            .map_err(|e| Error::config("redis", scrub_json_error(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        self.client()?;
        if self.maxlen == Some(0) {
            return Err(Error::config(
                "maxlen",
                "must be at least 1 (null leaves streams untrimmed)",
            ));
        }
        for (field, template) in [
            ("stream", &self.stream),
            ("dead_letter_stream", &self.dead_letter_stream),
        ] {
            if !template.contains(TOPIC) {
                return Err(Error::config(field, "must contain {topic}"));
            }
        }
        if self.stream == self.dead_letter_stream {
            return Err(Error::config(
                "dead_letter_stream",
                "must differ from stream",
            ));
        }
        if !valid_start_id(&self.start_id) {
            return Err(Error::config(
                "start_id",
                "must be 0, $ or a stream entry id such as 1700000000000-0",
            ));
        }
        if self.block < Duration::from_millis(1) {
            return Err(Error::config("block", "must be at least 1 ms"));
        }
        if self.claim_idle < Duration::from_millis(10) {
            return Err(Error::config("claim_idle", "must be at least 10 ms"));
        }
        if self.claim_interval < Duration::from_millis(10) {
            return Err(Error::config("claim_interval", "must be at least 10 ms"));
        }
        if self.command_timeout < Duration::from_millis(100) {
            return Err(Error::config("command_timeout", "must be at least 100 ms"));
        }
        if let Some(c) = &self.consumer {
            if c.trim().is_empty() {
                return Err(Error::config("consumer", "must not be empty"));
            }
        }
        Ok(())
    }

    /// The stream a topic's messages go to.
    pub fn stream_for(&self, topic: &str) -> String {
        self.stream.replace(TOPIC, topic)
    }

    /// The dead-letter stream of a topic.
    pub fn dead_letter_stream_for(&self, topic: &str) -> String {
        self.dead_letter_stream.replace(TOPIC, topic)
    }

    /// The URL's password, to keep out of error texts.
    pub(crate) fn password(&self) -> Option<String> {
        self.client().ok().and_then(|c| {
            c.get_connection_info()
                .redis_settings()
                .password()
                .map(str::to_string)
        })
    }

    /// A client for `url`, with the TLS files when set; a URL that does not
    /// parse is a configuration error that does not repeat it.
    pub(crate) fn client(&self) -> Result<redis::Client> {
        if self.url.trim().is_empty() {
            return Err(Error::config("url", "must not be empty"));
        }
        let bad_url = || {
            Error::config(
                "url",
                format!(
                    "{} is not a usable Redis URL (redis://[user:password@]host[:port][/db] or rediss://...)",
                    self.redacted_url()
                ),
            )
        };
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(|_| bad_url())?;
        let tls = match info.addr() {
            redis::ConnectionAddr::TcpTls { insecure, .. } => {
                if *insecure {
                    return Err(Error::config(
                        "url",
                        "rediss:// with #insecure (no certificate verification) is not supported; \
                         give the server's CA with tls_ca_file instead",
                    ));
                }
                true
            }
            _ => false,
        };
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        if !tls {
            if let Some((field, _)) = files.iter().find(|(_, f)| f.is_some()) {
                return Err(Error::config(
                    *field,
                    "is used with a rediss:// URL only (TLS)",
                ));
            }
            return redis::Client::open(info).map_err(|_| bad_url());
        }
        let root_cert = match &self.tls_ca_file {
            Some(path) => Some(read_pem("tls_ca_file", path, PemKind::Certificates)?),
            None => None,
        };
        let client_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("tls_cert_file", cert, PemKind::Certificates)?,
                client_key: read_pem("tls_key_file", key, PemKind::PrivateKey)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "tls_key_file",
                    "must be set with tls_cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "tls_cert_file",
                    "must be set with tls_key_file",
                ))
            }
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| Error::config("redis TLS", e.to_string()))
    }
}

/// serde's errors quote unknown keys and bad values; a URL value may carry a
/// password, so quoted strings that look like URLs are redacted.
fn scrub_json_error(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn valid_start_id(id: &str) -> bool {
    if id == "$" || id == "0" {
        return true;
    }
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    !ms.is_empty()
        && !seq.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        let c = RedisConfig::new("redis://:hunter2@cache:6379/0");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://:***@cache:6379/0"), "{shown}");
        assert_eq!(c.password().as_deref(), Some("hunter2"));
    }

    #[test]
    fn from_json_and_validation() {
        let c = RedisConfig::from_json(serde_json::json!({
            "url": "redis://r:6380", "maxlen": null, "block": "200ms",
            "stream": "app:{topic}"
        }))
        .unwrap();
        assert_eq!(c.maxlen, None);
        assert_eq!(c.block, Duration::from_millis(200));
        assert_eq!(c.stream_for("orders"), "app:orders");
        assert_eq!(c.dead_letter_stream_for("orders"), "orders.dlq");
        let field = |v: serde_json::Value| match RedisConfig::from_json(v).unwrap_err() {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(serde_json::json!({"maxlen": 0})), "maxlen");
        assert_eq!(field(serde_json::json!({"stream": "fixed"})), "stream");
        assert_eq!(field(serde_json::json!({"start_id": "latest"})), "start_id");
        assert_eq!(field(serde_json::json!({"url": "http://x"})), "url");
        assert_eq!(field(serde_json::json!({"claim_idle": "0s"})), "claim_idle");
        assert_eq!(field(serde_json::json!({"maxln": 5})), "redis");
        assert_eq!(
            field(serde_json::json!({"tls_ca_file": "/etc/ca.pem"})),
            "tls_ca_file"
        );
        assert_eq!(
            field(serde_json::json!({"url": "rediss://r", "tls_ca_file": "/no/such/ca.pem"})),
            "tls_ca_file"
        );
        assert_eq!(
            field(serde_json::json!({"url": "rediss://r", "tls_cert_file": "/c.pem"})),
            "tls_key_file"
        );
        assert_eq!(
            field(serde_json::json!({"url": "rediss://r/#insecure"})),
            "url"
        );
        assert!(valid_start_id("1700000000000-3"));
        assert!(valid_start_id("$"));
        assert!(!valid_start_id("-1"));
    }
}
