//! Export of relaybox's spans over OTLP/HTTP (protobuf), configured by the
//! standard OpenTelemetry environment variables, for processes that have no
//! tracer provider of their own (the `relaybox relay` command).
//!
//! Tracing is on when `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, and off when neither is, or with `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`. The exporter reads the other `OTEL_EXPORTER_OTLP_*`
//! variables (headers, timeout, compression), and the SDK reads
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER*`;
//! the service name defaults to `relaybox`.

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::error::{Error, Result};

/// The tracer provider installed by [`from_env`]: keep it for the life of
/// the process and call [`Tracing::shutdown`] before exiting, which sends
/// the spans still buffered.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Sends the buffered spans and stops exporting; relaybox records no
    /// more spans afterwards.
    pub fn shutdown(self) {
        super::enable(false);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "relaybox could not send its last spans over OTLP");
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Installs an OTLP exporter as the global tracer provider and turns span
/// recording on, when the environment asks for traces (see the module
/// documentation); `None` when it does not. A setting relaybox cannot
/// honour (another exporter, a protocol other than `http/protobuf`) is an
/// [`Error::InvalidConfig`] naming the variable.
pub fn from_env() -> Result<Option<Tracing>> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter = var("OTEL_TRACES_EXPORTER");
    match exporter.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("none") => return Ok(None),
        Some("otlp") => {}
        Some(other) => {
            return Err(Error::config(
                "OTEL_TRACES_EXPORTER",
                format!(
                    "relaybox exports traces over OTLP only (\"otlp\" or \"none\"), not {other:?}"
                ),
            ))
        }
        None if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() =>
        {
            return Ok(None)
        }
        None => {}
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(name) {
            if protocol != "http/protobuf" {
                return Err(Error::config(
                    name,
                    format!("relaybox exports OTLP over HTTP with protobuf (\"http/protobuf\"), not {protocol:?}"),
                ));
            }
            break;
        }
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::config("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Client(client))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| Error::config("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    let mut resource = Resource::builder();
    if !named {
        resource = resource.with_service_name("relaybox");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    super::enable(true);
    Ok(Some(Tracing { provider }))
}

/// OTLP requests sent with reqwest on relaybox's runtime (the SDK's export
/// thread has no runtime of its own).
#[derive(Debug)]
struct Client(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> std::result::Result<http::Response<Bytes>, HttpError> {
        let client = self.0.clone();
        crate::runtime::spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = http::Response::builder().status(status).body(body)?;
            *out.headers_mut() = headers;
            Ok::<_, HttpError>(out)
        })
        .await?
    }
}
