//! The SNS and SQS transports (official AWS SDK for Rust): an [`SnsSink`] and
//! an [`SqsSink`] for the relay, and an [`SqsSource`] for the idempotent
//! consumer, reading either a queue subscribed to an SNS topic or a plain
//! queue.
//!
//! On the wire a relaybox message is an ordinary SNS/SQS message that any
//! client reads: the body is the payload as text, and the envelope and the
//! headers travel as String message attributes (see [`codec`](self) for the
//! names). FIFO topics and queues (names ending in `.fifo`) get
//! `MessageGroupId` = key and `MessageDeduplicationId` = relaybox id.
//!
//! Topics and queues that relaybox may create (`create_topics`,
//! `create_queues`) are created idempotently and created again when a call
//! finds them missing, so an endpoint that lost its state (a restarted
//! stand-in) recovers without a manual step.

mod codec;
mod config;
mod registry;
mod sink;
mod source;

pub use codec::{
    is_attribute_name, ATTR_CONTENT_TYPE, ATTR_ENCODING, ATTR_ERROR, ATTR_ID, ATTR_KEY, ATTR_TYPE,
    MAX_ATTRIBUTES,
};
pub use config::{SnsConfig, SqsConfig};
pub use sink::{SnsSink, SqsSink};
pub use source::{source_queue_name, SqsSource, SqsSourceConfig};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::error::{Error, Result};

/// An AWS call that failed: the relaybox error, and whether the topic or
/// queue it addressed does not exist.
pub(crate) struct Failure {
    pub error: Error,
    pub missing: bool,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// Error codes that mean the addressed topic, queue or subscription is gone.
fn is_missing_code(code: &str) -> bool {
    matches!(
        code,
        "AWS.SimpleQueueService.NonExistentQueue"
            | "QueueDoesNotExist"
            | "NonExistentQueue"
            | "NotFound"
            | "NotFoundException"
            | "ResourceNotFoundException"
    )
}

/// Error codes worth retrying besides connection failures and timeouts.
fn is_retryable_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "ServiceUnavailable"
            | "InternalError"
            | "InternalFailure"
            | "KMSThrottling"
            | "RequestTimeout"
            | "AWS.SimpleQueueService.ServiceUnavailable"
    )
}

/// An SDK error as a relaybox transport error. `what` names the call and
/// its target (never a credential).
pub(crate) fn aws_failure<E, R>(
    transport: &str,
    what: &str,
    err: SdkError<E, R>,
    message_id: Option<uuid::Uuid>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let (retryable, missing) = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            (true, false)
        }
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or_default();
            let missing = is_missing_code(code);
            (missing || is_retryable_code(code), missing)
        }
        _ => (false, false),
    };
    Failure {
        error: Error::Transport {
            transport: transport.into(),
            message: format!("{what}: {}", DisplayErrorContext(&err)),
            retryable,
            message_id,
        },
        missing,
    }
}

/// A transport error not coming from the SDK.
pub(crate) fn transport_error(
    transport: &str,
    message: impl Into<String>,
    retryable: bool,
    message_id: Option<uuid::Uuid>,
) -> Error {
    Error::Transport {
        transport: transport.into(),
        message: message.into(),
        retryable,
        message_id,
    }
}

/// Whether a topic or queue name denotes a FIFO one.
pub(crate) fn is_fifo(name: &str) -> bool {
    name.ends_with(".fifo")
}

/// The SNS topic name of an ARN (its last `:` field).
pub(crate) fn topic_name_of_arn(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// Queue URLs by name, looked up or created once and forgotten when a call
/// finds the queue missing.
#[derive(Default)]
pub(crate) struct QueueUrls {
    urls: Mutex<HashMap<String, String>>,
}

impl QueueUrls {
    pub fn forget(&self, name: &str) {
        self.urls.lock().unwrap().remove(name);
    }

    /// The URL of queue `name`: `fixed` when given (a configured prefix), else
    /// CreateQueue when `create` (idempotent: only `FifoQueue` is set at
    /// creation, so any relaybox process gets the same queue), else GetQueueUrl.
    pub async fn get(
        &self,
        sqs: &aws_sdk_sqs::Client,
        transport: &str,
        name: &str,
        fixed: Option<String>,
        create: bool,
    ) -> Result<String, Failure> {
        if let Some(url) = self.urls.lock().unwrap().get(name) {
            return Ok(url.clone());
        }
        let url = match fixed {
            Some(url) if !create => url,
            _ if create => create_queue(sqs, transport, name).await?,
            _ => sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| {
                    let mut f = aws_failure(transport, &format!("queue {name:?}"), e, None);
                    if f.missing {
                        f.error = transport_error(
                            transport,
                            format!(
                                "queue {name:?} does not exist (create it, or set create_queues)"
                            ),
                            false,
                            None,
                        );
                    }
                    f
                })?
                .queue_url
                .unwrap_or_default(),
        };
        self.urls
            .lock()
            .unwrap()
            .insert(name.to_string(), url.clone());
        Ok(url)
    }
}

/// CreateQueue `name` (FIFO when it ends in `.fifo`); returns its URL.
pub(crate) async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    transport: &str,
    name: &str,
) -> Result<String, Failure> {
    let mut req = sqs.create_queue().queue_name(name);
    if is_fifo(name) {
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let out = req
        .send()
        .await
        .map_err(|e| aws_failure(transport, &format!("creating queue {name:?}"), e, None))?;
    Ok(out.queue_url.unwrap_or_default())
}

/// The ARN of the queue at `url`.
pub(crate) async fn queue_arn(
    sqs: &aws_sdk_sqs::Client,
    transport: &str,
    url: &str,
) -> Result<String, Failure> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws_failure(transport, "reading a queue ARN", e, None))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| Failure {
            error: transport_error(transport, "the queue has no QueueArn attribute", true, None),
            missing: false,
        })
}

/// Topic ARNs by name, resolved once and forgotten when a call finds the
/// topic missing; with the names of the topics found missing whose
/// subscribers have not been set up again since.
#[derive(Default)]
pub(crate) struct TopicArns {
    arns: Mutex<HashMap<String, String>>,
    lost: Mutex<HashSet<String>>,
}

impl TopicArns {
    /// Whether the ARN of the topic `name` is known.
    pub fn knows(&self, name: &str) -> bool {
        self.arns.lock().unwrap().contains_key(name)
    }

    pub fn forget(&self, name: &str) {
        self.arns.lock().unwrap().remove(name);
    }

    /// Records that the endpoint lost the topic `name` (and with it, its
    /// subscriptions): see [`TopicArns::is_lost`].
    pub fn mark_lost(&self, name: &str) {
        self.lost.lock().unwrap().insert(name.to_string());
    }

    /// Whether the topic `name` was found missing and its subscribers have
    /// not been set up again since ([`TopicArns::found_again`]).
    pub fn is_lost(&self, name: &str) -> bool {
        self.lost.lock().unwrap().contains(name)
    }

    /// Records that the subscribers of the topic `name` were set up again.
    pub fn found_again(&self, name: &str) {
        self.lost.lock().unwrap().remove(name);
    }

    /// The ARN of the topic `name`: CreateTopic when `create` (idempotent),
    /// else found with ListTopics.
    pub async fn get(
        &self,
        sns: &aws_sdk_sns::Client,
        name: &str,
        create: bool,
    ) -> Result<String, Failure> {
        if let Some(arn) = self.arns.lock().unwrap().get(name) {
            return Ok(arn.clone());
        }
        let arn = if create {
            create_topic(sns, name).await?
        } else {
            find_topic(sns, name).await?
        };
        self.arns
            .lock()
            .unwrap()
            .insert(name.to_string(), arn.clone());
        Ok(arn)
    }
}

/// CreateTopic `name` (FIFO when it ends in `.fifo`); returns its ARN.
pub(crate) async fn create_topic(sns: &aws_sdk_sns::Client, name: &str) -> Result<String, Failure> {
    let mut req = sns.create_topic().name(name);
    if is_fifo(name) {
        req = req.attributes("FifoTopic", "true");
    }
    let out = req
        .send()
        .await
        .map_err(|e| aws_failure("sns", &format!("creating topic {name:?}"), e, None))?;
    Ok(out.topic_arn.unwrap_or_default())
}

async fn find_topic(sns: &aws_sdk_sns::Client, name: &str) -> Result<String, Failure> {
    let mut token: Option<String> = None;
    loop {
        let out = sns
            .list_topics()
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| aws_failure("sns", "listing topics", e, None))?;
        for t in out.topics.unwrap_or_default() {
            if let Some(arn) = t.topic_arn {
                if topic_name_of_arn(&arn) == name {
                    return Ok(arn);
                }
            }
        }
        match out.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => {
                return Err(Failure {
                    error: transport_error(
                        "sns",
                        format!("topic {name:?} does not exist (create it, or set create_topics)"),
                        false,
                        None,
                    ),
                    missing: true,
                })
            }
        }
    }
}
