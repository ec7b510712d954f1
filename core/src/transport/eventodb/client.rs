//! The EventoDB RPC client: `POST <url>/rpc` with a JSON array
//! `["method", args...]`, a bearer token, and errors as
//! `{"error": {"code", "message", "details"}}`.

use serde_json::Value as Json;
use uuid::Uuid;

use super::config::EventoDbConfig;
use crate::error::{Error, Result};

pub(crate) const NAME: &str = "eventodb";

/// Error codes that the same request would get again: not retryable.
const PERMANENT_CODES: &[&str] = &[
    "STREAM_VERSION_CONFLICT",
    "INVALID_REQUEST",
    "NAMESPACE_NOT_FOUND",
    "METHOD_NOT_FOUND",
];

/// An HTTP client bound to one server and namespace.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    rpc_url: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// An error answer of the server: `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub(crate) struct ServerError {
    /// The server's code, such as `STREAM_VERSION_CONFLICT` (`UNKNOWN` if none).
    pub code: String,
    /// The server's message.
    pub message: String,
    /// `details.namespace`, when the server names one.
    pub namespace: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// Why a call failed: the server answered with an error, or no usable
/// answer came (connection, timeout, a body that is not JSON).
#[derive(Debug)]
pub(crate) enum CallError {
    /// The server's error answer.
    Server(ServerError),
    /// Anything else, already a relaybox error.
    Failed(Error),
}

impl ServerError {
    /// Whether the server refused the token (or its absence).
    pub(crate) fn is_auth(&self) -> bool {
        self.code.starts_with("AUTH_") || self.status == 401 || self.status == 403
    }

    /// The relaybox error for this answer to `method`, about `message_id`.
    ///
    /// An authentication failure is [`Error::InvalidConfig`] of
    /// `eventodb.token` (the setting to fix; the token itself is never
    /// shown); the codes in [`PERMANENT_CODES`] and other 4xx answers are
    /// permanent transport errors; the rest (`BACKEND_ERROR`, 5xx, 429) are
    /// retryable.
    pub(crate) fn into_error(self, method: &str, message_id: Option<Uuid>) -> Error {
        let auth = self.is_auth();
        let ServerError {
            code,
            message,
            namespace,
            status,
        } = self;
        if auth {
            let namespace = namespace
                .map(|n| format!(" of namespace {n:?}"))
                .unwrap_or_default();
            return Error::InvalidConfig {
                field: "eventodb.token".into(),
                reason: format!(
                    "the EventoDB server refused the namespace token{namespace} \
                     ({method}: {code}: {message}); set the token that the server's \
                     `ns.create` returned for the namespace"
                ),
            };
        }
        let retryable = if PERMANENT_CODES.contains(&code.as_str()) {
            false
        } else {
            !(400..500).contains(&status) || status == 429 || status == 408
        };
        Error::Transport {
            transport: NAME.into(),
            message: format!("{method}: {code}: {message}"),
            retryable,
            message_id,
        }
    }
}

impl CallError {
    /// The relaybox error of this failure of `method`.
    pub(crate) fn into_error(self, method: &str, message_id: Option<Uuid>) -> Error {
        match self {
            CallError::Server(e) => e.into_error(method, message_id),
            CallError::Failed(e) => e,
        }
    }
}

impl Client {
    pub(crate) fn new(config: &EventoDbConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| Error::config("eventodb", e.without_url().to_string()))?;
        Ok(Client {
            http,
            rpc_url: config.rpc_url(),
            authorization: config
                .token
                .as_ref()
                .map(|t| format!("Bearer {}", t.expose())),
        })
    }

    /// Calls `method` with `args`; errors name `message_id` when given (see
    /// [`ServerError::into_error`] for how server errors map). Connection
    /// failures, timeouts and answers that are not JSON are retryable.
    pub(crate) async fn call(
        &self,
        method: &str,
        args: Vec<Json>,
        message_id: Option<Uuid>,
    ) -> Result<Json> {
        self.try_call(method, args, message_id)
            .await
            .map_err(|e| e.into_error(method, message_id))
    }

    /// Calls `method` with `args`, keeping the server's error answer apart.
    pub(crate) async fn try_call(
        &self,
        method: &str,
        args: Vec<Json>,
        message_id: Option<Uuid>,
    ) -> Result<Json, CallError> {
        let mut body = vec![Json::String(method.to_string())];
        body.extend(args);
        let mut request = self.http.post(&self.rpc_url).json(&body);
        if let Some(a) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a);
        }
        let failed = |message: String, retryable: bool| {
            CallError::Failed(Error::Transport {
                transport: NAME.into(),
                message,
                retryable,
                message_id,
            })
        };
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("{method}: {}", e.without_url()), true))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| failed(format!("{method}: {}", e.without_url()), true))?;
        let value: Option<Json> = serde_json::from_slice(&bytes).ok();
        if let Some(e) = value.as_ref().and_then(|v| v.get("error")) {
            let text = |field: &str| e.get(field).and_then(Json::as_str).map(str::to_string);
            return Err(CallError::Server(ServerError {
                code: text("code").unwrap_or_else(|| "UNKNOWN".into()),
                message: text("message").unwrap_or_default(),
                namespace: e
                    .get("details")
                    .and_then(|d| d.get("namespace"))
                    .and_then(Json::as_str)
                    .map(str::to_string),
                status: status.as_u16(),
            }));
        }
        if !status.is_success() {
            let server = ServerError {
                code: format!("HTTP {}", status.as_u16()),
                message: status.canonical_reason().unwrap_or_default().to_string(),
                namespace: None,
                status: status.as_u16(),
            };
            return Err(CallError::Server(server));
        }
        value.ok_or_else(|| failed(format!("{method}: the response is not JSON"), true))
    }
}
