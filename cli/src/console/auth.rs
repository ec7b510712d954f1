//! Who may change anything through the console.
//!
//! Reading needs nothing (the console listens on loopback unless told
//! otherwise). Every change (retry, purge) needs the token of
//! `RELAYBOX_CONSOLE_TOKEN` in an `Authorization: Bearer <token>` header:
//! never in a URL, where it would end up in logs and browser history. A
//! custom header also means a page of another origin cannot send the
//! request without a CORS preflight, which the console never grants. With
//! no token configured, or with `--read-only`, every change is refused.
//!
//! A console on a loopback address answers only requests whose `Host` is
//! `localhost` or a loopback IP: a web page elsewhere cannot point a name
//! of its own at 127.0.0.1 (DNS rebinding) to read the console through the
//! operator's browser.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The access rules of a console.
#[derive(Clone)]
pub struct Access {
    token: Option<String>,
    read_only: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Whether changes are possible, as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Changes {
    /// Changes are accepted with the token.
    Token,
    /// `--read-only`: no change is accepted.
    ReadOnly,
    /// No token is configured: no change is accepted.
    NoToken,
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The console runs with `--read-only` (403).
    ReadOnly,
    /// No token is configured (403).
    NoToken,
    /// The request has no `Authorization: Bearer` header (401).
    MissingToken,
    /// The request's token is not the configured one (401).
    WrongToken,
}

impl Access {
    /// Changes need `token` (none when `None` or blank); `read_only` refuses every change.
    pub fn new(token: Option<String>, read_only: bool) -> Access {
        Access {
            token: token.filter(|t| !t.trim().is_empty()),
            read_only,
        }
    }

    /// The rules with the token of the environment variable [`super::TOKEN_ENV`].
    pub fn from_env(read_only: bool) -> Access {
        Access::new(std::env::var(super::TOKEN_ENV).ok(), read_only)
    }

    /// Whether and how changes are possible.
    pub fn changes(&self) -> Changes {
        match (&self.token, self.read_only) {
            (_, true) => Changes::ReadOnly,
            (None, false) => Changes::NoToken,
            (Some(_), false) => Changes::Token,
        }
    }

    /// Checks that a request with `headers` may change something.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let expected = match (&self.token, self.read_only) {
            (_, true) => return Err(Refusal::ReadOnly),
            (None, false) => return Err(Refusal::NoToken),
            (Some(token), false) => token,
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(bearer)
            .ok_or(Refusal::MissingToken)?;
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }
}

/// Whether a `Host` header (`name`, `name:port`, `[v6]:port`) names this
/// machine: `localhost` or a loopback IP address.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => v6,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without stopping at the first difference, so that the time
/// taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Refusal {
    /// The HTTP status: 403 when changes are off, 401 for a missing or wrong token.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::ReadOnly | Refusal::NoToken => StatusCode::FORBIDDEN,
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable code for the JSON body's `error`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "read_only",
            Refusal::NoToken => "no_token_configured",
            Refusal::MissingToken => "missing_token",
            Refusal::WrongToken => "wrong_token",
        }
    }

    /// What to tell the operator.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "the console runs with --read-only: retry and purge are disabled",
            Refusal::NoToken => {
                "the console is read-only: set RELAYBOX_CONSOLE_TOKEN where it runs to allow \
                 retry and purge"
            }
            Refusal::MissingToken => {
                "this change needs the console token: send it as `Authorization: Bearer <token>` \
                 (the value of RELAYBOX_CONSOLE_TOKEN)"
            }
            Refusal::WrongToken => "the token is wrong: it must equal RELAYBOX_CONSOLE_TOKEN",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response =
            super::api::error_response(self.status(), self.code(), self.message().to_string());
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"relaybox console\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = authorization {
            map.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_right_bearer_token_is_accepted() {
        let access = Access::new(Some("s3cret".into()), false);
        assert_eq!(access.changes(), Changes::Token);
        assert_eq!(access.check(&headers(Some("Bearer s3cret"))), Ok(()));
        assert_eq!(access.check(&headers(Some("bearer  s3cret "))), Ok(()));
    }

    #[test]
    fn missing_or_wrong_tokens_are_unauthorized() {
        let access = Access::new(Some("s3cret".into()), false);
        for (value, refusal) in [
            (None, Refusal::MissingToken),
            (Some("s3cret"), Refusal::MissingToken),
            (Some("Basic s3cret"), Refusal::MissingToken),
            (Some("Bearer "), Refusal::MissingToken),
            (Some("Bearer s3cre"), Refusal::WrongToken),
            (Some("Bearer s3cret2"), Refusal::WrongToken),
            (Some("Bearer S3CRET"), Refusal::WrongToken),
        ] {
            assert_eq!(access.check(&headers(value)), Err(refusal), "{value:?}");
            assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn without_a_token_or_in_read_only_mode_nothing_changes() {
        for token in [None, Some(String::new()), Some("  ".to_string())] {
            let access = Access::new(token, false);
            assert_eq!(access.changes(), Changes::NoToken);
            assert_eq!(
                access.check(&headers(Some("Bearer anything"))),
                Err(Refusal::NoToken)
            );
        }
        let access = Access::new(Some("s3cret".into()), true);
        assert_eq!(access.changes(), Changes::ReadOnly);
        assert_eq!(
            access.check(&headers(Some("Bearer s3cret"))),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(Refusal::ReadOnly.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn the_token_is_never_printed() {
        let access = Access::new(Some("s3cret".into()), false);
        assert!(!format!("{access:?}").contains("s3cret"));
    }

    #[test]
    fn only_local_host_names_pass() {
        for host in [
            "localhost",
            "LOCALHOST:8089",
            "127.0.0.1",
            "127.0.0.1:8089",
            "127.1.2.3:80",
            "[::1]:8089",
            "[::1]",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8089",
            "localhost.evil.example",
            "10.0.0.1:8089",
            "[::2]:80",
            "[::1",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
