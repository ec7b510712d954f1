//! The HTTP endpoints of `relaybox relay --listen`: `/healthz`, `/readyz`
//! and `/metrics` (Prometheus text format), served with axum, plus the
//! operator console under `/console` with `--console`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use relaybox::Relay;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the Prometheus recorder's upkeep runs (it drains histogram
/// samples so that memory stays bounded between scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The address of `--listen`: `PORT` (on 127.0.0.1), `:PORT` (also on
/// 127.0.0.1), `HOST:PORT` or `[IPV6]:PORT`, with an IP address as host.
pub fn parse_address(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        anyhow::anyhow!(
            "invalid --listen address {text:?}: use PORT (listens on 127.0.0.1), \
             or IP:PORT such as 127.0.0.1:9187, 0.0.0.0:9187 or [::1]:9187"
        )
    })
}

/// Installs the process's metrics recorder (Prometheus), with histogram
/// buckets for the relay's latency and batch size; the relay started after
/// this records into it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(relaybox::metrics::PUBLISH_LATENCY.into()),
            relaybox::metrics::PUBLISH_LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(relaybox::metrics::BATCH_SIZE.into()),
            relaybox::metrics::BATCH_SIZE_BUCKETS,
        )?
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")
}

/// Binds `address`, failing with a message naming it.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (--listen)"))
}

/// A running HTTP server; [`stop`](Server::stop) ends it.
pub struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    upkeep: JoinHandle<()>,
}

#[derive(Clone)]
struct App {
    relay: Arc<Relay>,
    metrics: PrometheusHandle,
}

impl Server {
    /// Serves the endpoints of `relay` and `metrics` on `listener`, and the
    /// routes of `console` (already under their path) when given.
    pub fn start(
        listener: TcpListener,
        relay: Arc<Relay>,
        metrics: PrometheusHandle,
        console: Option<Router>,
    ) -> Server {
        let upkeep = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    every.tick().await;
                    metrics.run_upkeep();
                }
            })
        };
        let mut app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(App { relay, metrics });
        if let Some(console) = console {
            app = app.merge(console);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Server { stop, task, upkeep }
    }

    /// Stops serving and waits for the requests in progress.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "relaybox HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "relaybox HTTP server task failed"),
        }
        self.upkeep.abort();
    }
}

/// The process is alive and serving.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the relay is ready, 503 otherwise; the body is the
/// [`relaybox::Health`] as JSON, with `ready` added.
async fn readyz(State(app): State<App>) -> Response {
    let health = app.relay.health().await;
    let status = if health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_value(&health).unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        object.insert("ready".into(), health.is_ready().into());
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The metrics in Prometheus's text exposition format.
async fn render_metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_listens_on_loopback() {
        assert_eq!(
            parse_address("9187").unwrap(),
            "127.0.0.1:9187".parse().unwrap()
        );
        assert_eq!(
            parse_address(":9187").unwrap(),
            "127.0.0.1:9187".parse().unwrap()
        );
        assert_eq!(
            parse_address("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]:9187").unwrap(),
            "[::1]:9187".parse().unwrap()
        );
        let err = parse_address("localhost:99999").unwrap_err().to_string();
        assert!(
            err.contains("--listen") && err.contains("localhost:99999"),
            "{err}"
        );
    }
}
