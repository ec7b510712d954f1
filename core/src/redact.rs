//! Database URLs with their secrets hidden, for `Debug`, `Display`, logs and errors.

use std::fmt;

/// A connection URL that never prints its password.
///
/// `postgres://app:s3cret@db/app?sslpassword=x` prints as
/// `postgres://app:***@db/app?sslpassword=***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The URL with its secrets, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with passwords replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host` and the values of
/// query parameters that carry secrets with `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.contains("token") || n == "sslkey"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords() {
        let u = DatabaseUrl::new("postgres://app:s3cr@t@db:5432/app?sslmode=require&password=p2");
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("p2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/app?sslmode=require&password=***"));
        assert_eq!(redact_url("sqlite://data.db"), "sqlite://data.db");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        // TLS URLs: the client key (a path or the PEM itself) and its password too.
        assert_eq!(
            redact_url("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=/ca.pem&sslkey=/k.pem&sslpassword=x"),
            "postgres://u:***@h/d?sslmode=verify-full&sslrootcert=/ca.pem&sslkey=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("rediss://:pw@cache:6380/0"),
            "rediss://:***@cache:6380/0"
        );
        assert_eq!(
            redact_url("amqps://u:pw@mq:5671/%2f"),
            "amqps://u:***@mq:5671/%2f"
        );
    }
}
