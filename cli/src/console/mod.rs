//! The operator console: a web page with the backlog, throughput, relays,
//! consumer positions and dead letters of one relaybox database, served
//! with axum by `relaybox console` or under `/console` by `relaybox relay
//! --listen ... --console`.
//!
//! - [`api`]: the JSON endpoints the page calls.
//! - [`auth`]: who may change anything (retry, purge): a bearer token.
//! - [`assets`]: the page, its script and style, and the vendored uPlot.
//! - [`sampling`]: the throughput samples behind the chart.

pub mod api;
pub mod assets;
pub mod auth;
pub mod sampling;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use relaybox::Store;

pub use auth::Access;

/// Environment variable holding the token that changes need.
pub const TOKEN_ENV: &str = "RELAYBOX_CONSOLE_TOKEN";

/// Where the console is served: `""` (the root, `relaybox console`) or a
/// path such as `/console` (inside the relay's server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount(String);

impl Mount {
    /// The root of the server.
    pub fn root() -> Mount {
        Mount(String::new())
    }

    /// Under `path` (`/console`): a leading `/`, no trailing `/`.
    pub fn at(path: &str) -> Mount {
        let trimmed = path.trim_matches('/');
        if trimmed.is_empty() {
            Mount::root()
        } else {
            Mount(format!("/{trimmed}"))
        }
    }

    /// The path of `suffix` (which starts with `/`) under the mount.
    pub fn path(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.0)
    }

    /// The page's base URL, which its relative links resolve against.
    pub fn base(&self) -> String {
        self.path("/")
    }
}

/// What every request handler shares.
pub struct Console {
    store: Store,
    access: Access,
    samples: sampling::Samples,
    mount: Mount,
    /// Answer only requests whose `Host` names this machine (the console
    /// listens on a loopback address).
    local_only: bool,
}

impl Console {
    /// A console on `store` with the given access rules, served at `mount`;
    /// with `local_only` (the server listens on a loopback address) it
    /// answers only requests for local host names. Starts sampling the
    /// throughput (the sampling stops when the router and every request
    /// using it are gone).
    pub fn router(store: Store, access: Access, mount: Mount, local_only: bool) -> Router {
        let console = Arc::new(Console {
            store,
            access,
            samples: sampling::Samples::new(sampling::CAPACITY),
            mount: mount.clone(),
            local_only,
        });
        sampling::spawn(Arc::downgrade(&console), sampling::EVERY);
        let mut router = Router::new();
        for page in pages(&mount) {
            router = router.route(&page, get(assets::page));
        }
        router
            .route(&mount.path("/assets/{name}"), get(assets::asset))
            .route(&mount.path("/api/overview"), get(api::overview))
            .route(&mount.path("/api/dead-letters"), get(api::dead_letters))
            .route(
                &mount.path("/api/dead-letters/retry"),
                post(api::retry_dead_letters),
            )
            .route(
                &mount.path("/api/dead-letters/purge"),
                post(api::purge_dead_letters),
            )
            .layer(middleware::from_fn_with_state(console.clone(), local_hosts))
            .with_state(console)
    }
}

/// Refuses, on a loopback console, requests for a `Host` that is not this
/// machine (see [`auth`]).
async fn local_hosts(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    if console.local_only {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !auth::is_local_host(host) {
            return api::error_response(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "the console listens on a loopback address and answers only requests for \
                     localhost or a loopback IP, not {host:?}; reach it as http://127.0.0.1:PORT/ \
                     (an SSH tunnel works), or listen on another address"
                ),
            );
        }
    }
    next.run(request).await
}

/// The paths that serve the page: `/`, or both `/console` and `/console/`.
fn pages(mount: &Mount) -> Vec<String> {
    if mount.0.is_empty() {
        vec!["/".to_string()]
    } else {
        vec![mount.0.clone(), mount.base()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_normalise_their_path() {
        assert_eq!(Mount::at("/console/"), Mount::at("console"));
        assert_eq!(
            Mount::at("/console").path("/api/overview"),
            "/console/api/overview"
        );
        assert_eq!(Mount::at("/console").base(), "/console/");
        assert_eq!(Mount::at("/"), Mount::root());
        assert_eq!(Mount::root().base(), "/");
        assert_eq!(pages(&Mount::root()), ["/"]);
        assert_eq!(pages(&Mount::at("console")), ["/console", "/console/"]);
    }
}
