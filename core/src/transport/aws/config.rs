//! SNS and SQS settings (region, endpoint, credentials, what relaybox may
//! create), their validation, and the AWS SDK clients built from them.
//! Secret values never appear in `Debug` output, logs or errors.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::transport::cloudevents::CloudEvents;

/// Settings of the SNS transport: the relay publishes to SNS topics, the
/// consumer reads an SQS queue subscribed to the topic.
///
/// JSON (`{"sns": {...}}`):
/// `region`, `endpoint_url`, `profile`, `access_key_id`, `secret_access_key`,
/// `session_token`, `topic_arn`, `create_topics`, `create_queues`,
/// `visibility_timeout`, `max_receive_count`, `cloudevents`; every field is optional.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnsConfig {
    /// AWS region; else `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's.
    pub region: Option<String>,
    /// Endpoint of a stand-in (moto, LocalStack), e.g. `http://127.0.0.1:5000`.
    pub endpoint_url: Option<String>,
    /// Named profile of the shared AWS config files.
    pub profile: Option<String>,
    /// Static access key id (with `secret_access_key`); else the SDK's default chain.
    pub access_key_id: Option<String>,
    /// Static secret access key; never shown.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials; never shown.
    pub session_token: Option<String>,
    /// Every message goes to this topic; without it, a message's topic is an
    /// SNS topic name resolved to its ARN.
    pub topic_arn: Option<String>,
    /// Create missing topics (CreateTopic is idempotent) instead of failing.
    pub create_topics: bool,
    /// Let sources create their queue, its dead-letter queue and the
    /// subscription to the topic instead of requiring them to exist.
    pub create_queues: bool,
    /// How long a received message stays invisible to other receivers
    /// (default 30 s); unprocessed, it is delivered again after it.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub visibility_timeout: Duration,
    /// Receives after which SQS moves a message to the dead-letter queue by
    /// itself (the queue's redrive policy, default 10).
    pub max_receive_count: u32,
    /// Write CloudEvents message attributes (`ce_id`, `ce_source`,
    /// `ce_type`, `ce_specversion`, `ce_time`, and `content-type` always)
    /// beside relaybox's: `true`, or the default source as a string
    /// (default false; see [`CloudEvents`]). They count against the limit
    /// of 10 attributes a message.
    pub cloudevents: CloudEvents,
}

/// Settings of the SQS transport: the relay sends to the queue named by the
/// message's topic, the consumer reads that queue.
///
/// JSON (`{"sqs": {...}}`): `region`, `endpoint_url`, `profile`,
/// `access_key_id`, `secret_access_key`, `session_token`, `queue_url_prefix`,
/// `create_queues`, `visibility_timeout`, `max_receive_count`, `cloudevents`;
/// every field is optional.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    /// AWS region; else `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's.
    pub region: Option<String>,
    /// Endpoint of a stand-in (moto, LocalStack), e.g. `http://127.0.0.1:5000`.
    pub endpoint_url: Option<String>,
    /// Named profile of the shared AWS config files.
    pub profile: Option<String>,
    /// Static access key id (with `secret_access_key`); else the SDK's default chain.
    pub access_key_id: Option<String>,
    /// Static secret access key; never shown.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials; never shown.
    pub session_token: Option<String>,
    /// Queue URLs are `<queue_url_prefix>/<topic>`; without it the URL of the
    /// queue named `<topic>` is looked up (GetQueueUrl).
    pub queue_url_prefix: Option<String>,
    /// Create missing queues (and the sources' dead-letter queues).
    pub create_queues: bool,
    /// How long a received message stays invisible to other receivers
    /// (default 30 s); unprocessed, it is delivered again after it.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub visibility_timeout: Duration,
    /// Receives after which SQS moves a message to the dead-letter queue by
    /// itself (the queue's redrive policy, default 10).
    pub max_receive_count: u32,
    /// Write CloudEvents message attributes (`ce_id`, `ce_source`,
    /// `ce_type`, `ce_specversion`, `ce_time`, and `content-type` always)
    /// beside relaybox's: `true`, or the default source as a string
    /// (default false; see [`CloudEvents`]). They count against the limit
    /// of 10 attributes a message.
    pub cloudevents: CloudEvents,
}

/// What both transports need to reach AWS.
#[derive(Clone)]
pub(crate) struct Connection {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub visibility_timeout: Duration,
    pub max_receive_count: u32,
}

const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_MAX_RECEIVES: u32 = 10;

fn secret(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "***")
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("region", &self.region)
            .field(
                "endpoint_url",
                &self.endpoint_url.as_deref().map(redact_url),
            )
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret(&self.secret_access_key))
            .field("session_token", &secret(&self.session_token))
            .finish()
    }
}

impl fmt::Debug for SnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsConfig")
            .field("region", &self.region)
            .field(
                "endpoint_url",
                &self.endpoint_url.as_deref().map(redact_url),
            )
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret(&self.secret_access_key))
            .field("session_token", &secret(&self.session_token))
            .field("topic_arn", &self.topic_arn)
            .field("create_topics", &self.create_topics)
            .field("create_queues", &self.create_queues)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_receive_count", &self.max_receive_count)
            .field("cloudevents", &self.cloudevents)
            .finish()
    }
}

impl fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConfig")
            .field("region", &self.region)
            .field(
                "endpoint_url",
                &self.endpoint_url.as_deref().map(redact_url),
            )
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret(&self.secret_access_key))
            .field("session_token", &secret(&self.session_token))
            .field("queue_url_prefix", &self.queue_url_prefix)
            .field("create_queues", &self.create_queues)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_receive_count", &self.max_receive_count)
            .field("cloudevents", &self.cloudevents)
            .finish()
    }
}

impl SnsConfig {
    /// Settings from a JSON object; unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let mut c: SnsConfig =
            serde_json::from_value(value).map_err(|e| Error::config("sns", e.to_string()))?;
        c.fill_defaults();
        c.validate()?;
        Ok(c)
    }

    /// From the environment: `RELAYBOX_AWS_ENDPOINT_URL` (else
    /// `AWS_ENDPOINT_URL`), `AWS_REGION` (else `AWS_DEFAULT_REGION`); creates
    /// topics and queues.
    pub fn from_env() -> Result<Self> {
        let mut c = SnsConfig {
            region: env_region(),
            endpoint_url: env_endpoint(),
            create_topics: true,
            create_queues: true,
            ..SnsConfig::default()
        };
        c.fill_defaults();
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn fill_defaults(&mut self) {
        if self.visibility_timeout.is_zero() {
            self.visibility_timeout = DEFAULT_VISIBILITY;
        }
        if self.max_receive_count == 0 {
            self.max_receive_count = DEFAULT_MAX_RECEIVES;
        }
    }

    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.connection().validate()?;
        if let Some(arn) = &self.topic_arn {
            if !arn.starts_with("arn:") || arn.split(':').count() != 6 {
                return Err(Error::config(
                    "topic_arn",
                    "must be an SNS topic ARN: arn:<partition>:sns:<region>:<account>:<name>",
                ));
            }
        }
        self.cloudevents.validate()
    }

    pub(crate) fn connection(&self) -> Connection {
        Connection {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            visibility_timeout: self.visibility_timeout,
            max_receive_count: self.max_receive_count,
        }
    }
}

impl SqsConfig {
    /// Settings from a JSON object; unknown keys are an error.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let mut c: SqsConfig =
            serde_json::from_value(value).map_err(|e| Error::config("sqs", e.to_string()))?;
        c.fill_defaults();
        c.validate()?;
        Ok(c)
    }

    /// From the environment, like [`SnsConfig::from_env`]; creates queues.
    pub fn from_env() -> Result<Self> {
        let mut c = SqsConfig {
            region: env_region(),
            endpoint_url: env_endpoint(),
            create_queues: true,
            ..SqsConfig::default()
        };
        c.fill_defaults();
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn fill_defaults(&mut self) {
        if self.visibility_timeout.is_zero() {
            self.visibility_timeout = DEFAULT_VISIBILITY;
        }
        if self.max_receive_count == 0 {
            self.max_receive_count = DEFAULT_MAX_RECEIVES;
        }
    }

    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.connection().validate()?;
        if let Some(prefix) = &self.queue_url_prefix {
            if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
                return Err(Error::config(
                    "queue_url_prefix",
                    "must be an http(s) URL such as https://sqs.eu-west-1.amazonaws.com/123456789012",
                ));
            }
        }
        self.cloudevents.validate()
    }

    pub(crate) fn connection(&self) -> Connection {
        Connection {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            visibility_timeout: self.visibility_timeout,
            max_receive_count: self.max_receive_count,
        }
    }

    /// The URL of the queue named `name` when `queue_url_prefix` is set.
    pub(crate) fn prefixed_url(&self, name: &str) -> Option<String> {
        self.queue_url_prefix
            .as_ref()
            .map(|p| format!("{}/{name}", p.trim_end_matches('/')))
    }
}

fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

fn env_endpoint() -> Option<String> {
    ["RELAYBOX_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

impl Connection {
    fn validate(&self) -> Result<()> {
        if let Some(r) = &self.region {
            if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(Error::config(
                    "region",
                    format!("{r:?} is not an AWS region such as eu-west-1"),
                ));
            }
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(
                    "endpoint_url",
                    format!("{:?} is not an http(s) URL", redact_url(url)),
                ));
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err(Error::config(
                    "secret_access_key",
                    "is required with access_key_id",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "access_key_id",
                    "is required with secret_access_key",
                ))
            }
            _ => {}
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err(Error::config(
                "session_token",
                "is only used with access_key_id and secret_access_key",
            ));
        }
        if self.visibility_timeout > Duration::from_secs(12 * 3600) {
            return Err(Error::config(
                "visibility_timeout",
                "must be at most 12 hours (the SQS limit)",
            ));
        }
        if self.visibility_timeout.subsec_nanos() != 0 {
            return Err(Error::config(
                "visibility_timeout",
                "must be whole seconds (SQS counts in seconds)",
            ));
        }
        if self.max_receive_count > 1000 {
            return Err(Error::config(
                "max_receive_count",
                "must be between 1 and 1000 (the SQS limit)",
            ));
        }
        Ok(())
    }

    /// The region in force: configured, else the environment, else the profile's.
    async fn resolve_region(&self) -> Result<String> {
        if let Some(r) = self.region.clone().or_else(env_region) {
            return Ok(r);
        }
        let mut provider = aws_config::profile::ProfileFileRegionProvider::builder();
        if let Some(p) = &self.profile {
            provider = provider.profile_name(p);
        }
        use aws_config::meta::region::ProvideRegion as _;
        match provider.build().region().await {
            Some(r) => Ok(r.to_string()),
            None => Err(Error::config(
                "region",
                "no region: set `region`, AWS_REGION or AWS_DEFAULT_REGION, or one in the profile",
            )),
        }
    }

    /// The SDK configuration: rustls (ring) HTTPS client, short connect
    /// timeout and two attempts per call, so an unreachable endpoint surfaces
    /// quickly as a retryable error and the caller's own retry takes over.
    pub(crate) async fn sdk_config(&self) -> Result<aws_config::SdkConfig> {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let region = self.resolve_region().await?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(region))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .read_timeout(Duration::from_secs(30))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let (Some(id), Some(key)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                id.clone(),
                key.clone(),
                self.session_token.clone(),
                None,
                "relaybox-config",
            ));
        }
        Ok(loader.load().await)
    }
}
