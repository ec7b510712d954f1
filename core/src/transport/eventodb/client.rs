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
    "AUTH_REQUIRED",
    "AUTH_INVALID",
    "AUTH_FAILED",
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

    /// Calls `method` with `args`; errors name `message_id` when given.
    /// Connection failures, timeouts, 5xx and unknown server errors are
    /// retryable; the codes in [`PERMANENT_CODES`] are not.
    pub(crate) async fn call(
        &self,
        method: &str,
        args: Vec<Json>,
        message_id: Option<Uuid>,
    ) -> Result<Json> {
        let mut body = vec![Json::String(method.to_string())];
        body.extend(args);
        let mut request = self.http.post(&self.rpc_url).json(&body);
        if let Some(a) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a);
        }
        let error = |message: String, retryable: bool| Error::Transport {
            transport: NAME.into(),
            message,
            retryable,
            message_id,
        };
        let response = request
            .send()
            .await
            .map_err(|e| error(format!("{method}: {}", e.without_url()), true))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| error(format!("{method}: {}", e.without_url()), true))?;
        let value: Option<Json> = serde_json::from_slice(&bytes).ok();
        if let Some(e) = value.as_ref().and_then(|v| v.get("error")) {
            let code = e.get("code").and_then(Json::as_str).unwrap_or("UNKNOWN");
            let text = e.get("message").and_then(Json::as_str).unwrap_or("");
            let retryable = !PERMANENT_CODES.contains(&code) && !status.is_client_error()
                || status.as_u16() == 429;
            return Err(error(format!("{method}: {code}: {text}"), retryable));
        }
        if !status.is_success() {
            return Err(error(
                format!("{method}: HTTP {status}"),
                status.is_server_error() || status.as_u16() == 429,
            ));
        }
        value.ok_or_else(|| error(format!("{method}: the response is not JSON"), true))
    }
}
