//! The page and its static files, embedded in the binary: the console's own
//! HTML, script and style (plain files, no build step) and uPlot
//! (`cli/assets/uplot/`, MIT, from the `uplot` npm package) for the chart.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Console;

const INDEX_HTML: &str = include_str!("../../assets/console/index.html");

/// The files under `assets/`, by name: content type and contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/console/console.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/uplot/uPlot.min.css"),
    ),
];

/// The page's security headers: its own scripts only (uPlot sets inline
/// styles), no framing, no referrer, no content sniffing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'self'; form-action 'none'; \
                   frame-ancestors 'none'";

fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The page, with its base URL set to the console's mount so that its
/// relative links work at `/` and under `/console`.
pub async fn page(State(console): State<Arc<Console>>) -> Response {
    let html = INDEX_HTML.replace("{{BASE}}", &console.mount.base());
    secure(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
    )
}

/// One file of `assets/`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => secure(
            (
                [
                    (header::CONTENT_TYPE, *content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                *body,
            )
                .into_response(),
        ),
        None => super::api::error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no asset {name:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_embedded_assets() {
        for link in INDEX_HTML.split("assets/").skip(1) {
            let name = link.split('"').next().unwrap();
            assert!(
                FILES.iter().any(|(file, _, _)| *file == name),
                "index.html links assets/{name}, which is not embedded"
            );
        }
        assert!(INDEX_HTML.contains("<base href=\"{{BASE}}\">"));
    }
}
