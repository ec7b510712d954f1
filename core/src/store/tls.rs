//! TLS of PostgreSQL connections: the checks of a URL's `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` before connecting, and plain words
//! for a failed TLS handshake (an unknown certificate authority, a
//! certificate for another host name, a server without TLS). The Redis
//! transport, also on rustls, words its failures with [`rustls_cause`].

use std::error::Error as StdError;

use crate::error::{Error, Result};
use crate::redact::DatabaseUrl;

/// The `sslmode` values sqlx understands (libpq's, `allow` acting as `disable`).
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Checks a PostgreSQL URL's TLS parameters before connecting: `sslmode`
/// is a known mode, the files `sslrootcert`, `sslcert` and `sslkey` name
/// (or their environment variables `PGSSLROOTCERT`, `PGSSLCERT`,
/// `PGSSLKEY`) can be read, and a client certificate comes with its key.
/// `field_prefix` goes before the parameter name in errors (`message_db.url`
/// for Message DB's own URL).
pub(crate) fn check_url(url: &DatabaseUrl, field_prefix: &str) -> Result<()> {
    let params = query_params(url.expose());
    let field = |name: &str| {
        if field_prefix.is_empty() {
            name.to_string()
        } else {
            format!("{field_prefix}: {name}")
        }
    };
    let find = |names: &[&str], env: &str| -> Option<(String, String)> {
        params
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .or_else(|| std::env::var(env).ok().map(|v| (env.to_string(), v)))
    };
    if let Some((name, mode)) = find(&["sslmode", "ssl-mode"], "PGSSLMODE") {
        if !SSL_MODES.contains(&mode.to_ascii_lowercase().as_str()) {
            return Err(Error::config(
                field(&name),
                format!(
                    "unknown mode {mode:?}; use disable, prefer, require, verify-ca or verify-full"
                ),
            ));
        }
    }
    let root = find(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT");
    let cert = find(&["sslcert", "ssl-cert"], "PGSSLCERT");
    let key = find(&["sslkey", "ssl-key"], "PGSSLKEY");
    match (&cert, &key) {
        (Some((name, _)), None) => {
            return Err(Error::config(
                field(name),
                "a client certificate needs its key: set sslkey too",
            ))
        }
        (None, Some((name, _))) => {
            return Err(Error::config(
                field(name),
                "a client key needs its certificate: set sslcert too",
            ))
        }
        _ => {}
    }
    for (name, value) in [root, cert, key].into_iter().flatten() {
        let inline = value.trim_start().starts_with("-----BEGIN");
        if inline {
            continue;
        }
        if let Err(e) = std::fs::File::open(&value) {
            // The file name of a key is not secret; its contents never appear.
            return Err(Error::config(
                field(&name),
                format!("cannot read {value}: {e}"),
            ));
        }
    }
    Ok(())
}

/// The decoded `key=value` pairs of a URL's query string.
fn query_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls error somewhere in `err`'s chain of causes (looking inside
/// `std::io::Error`s and `Arc`ed errors, whose `source` skips the error
/// they wrap).
pub(crate) fn rustls_cause<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        next = if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io.get_ref().map(|inner| inner as &(dyn StdError + 'static))
        } else if let Some(shared) = e.downcast_ref::<std::sync::Arc<dyn StdError + Send + Sync>>()
        {
            // Shared errors (the Redis client's) hide the type they wrap.
            Some(&**shared as &(dyn StdError + 'static))
        } else {
            e.source()
        };
    }
    None
}

/// What a TLS handshake failure means, in words that name the cause and
/// what to change: `ca_setting` names the setting that gives the CA
/// (`sslrootcert`, `tls_ca_file`), `host` the name connected to, when known.
pub(crate) fn describe_rustls(err: &rustls::Error, host: Option<&str>, ca_setting: &str) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS: the server's certificate is not signed by a trusted certificate authority \
             (unknown issuer); give the CA that signed it with {ca_setting}"
        ),
        rustls::Error::InvalidCertificate(
            cert @ (C::NotValidForName | C::NotValidForNameContext { .. }),
        ) => {
            let host = host.map(|h| format!(" {h:?}")).unwrap_or_default();
            format!(
                "TLS: the server's certificate is not valid for the host name{host} ({cert}); \
                 connect with a name the certificate names"
            )
        }
        rustls::Error::InvalidCertificate(cert) => {
            format!("TLS: the server's certificate was rejected: {cert}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// The relaybox error of a PostgreSQL connection that failed for a TLS
/// reason, or `None` when TLS was not the cause.
pub(crate) fn pg_tls_error(err: &sqlx::Error, url: &DatabaseUrl) -> Option<Error> {
    let host = host_of(url.expose());
    let message = match err {
        sqlx::Error::Io(io) => {
            let cause = rustls_cause(io)?;
            describe_rustls(cause, Some(&host), "sslrootcert=/path/to/ca.pem")
        }
        sqlx::Error::Tls(tls) => match rustls_cause(tls.as_ref()) {
            Some(cause) => describe_rustls(cause, Some(&host), "sslrootcert=/path/to/ca.pem"),
            None if tls.to_string().contains("does not support TLS") => {
                "TLS: the server does not support TLS, and the sslmode of the URL requires it \
                 (require, verify-ca or verify-full); turn TLS on in the server (ssl = on)"
                    .to_string()
            }
            None => format!("TLS failed: {tls}"),
        },
        _ => return None,
    };
    Some(Error::Database {
        message: format!("cannot connect to {url}: {message}"),
        sql_code: None,
        retryable: false,
    })
}

/// The host of a `scheme://[user[:password]@]host[:port]/...` URL.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    percent_decode(host)
}

/// What a PEM file must hold.
#[cfg(any(feature = "rabbitmq", feature = "redis"))]
#[derive(Clone, Copy)]
pub(crate) enum PemKind {
    /// One certificate or more.
    Certificates,
    /// A private key.
    PrivateKey,
}

/// The contents of the PEM file `path` (setting `field`), checked to hold
/// at least one certificate, or a private key. Errors name the file, never
/// its contents.
#[cfg(any(feature = "rabbitmq", feature = "redis"))]
pub(crate) fn read_pem(field: &str, path: &str, kind: PemKind) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let data = std::fs::read(path)
        .map_err(|e| Error::config(field, format!("cannot read {path}: {e}")))?;
    let usable = match kind {
        PemKind::Certificates => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&data).collect();
            !certs.is_empty() && certs.iter().all(|c| c.is_ok())
        }
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&data).is_ok(),
    };
    if !usable {
        let what = match kind {
            PemKind::Certificates => "PEM certificates",
            PemKind::PrivateKey => "a PEM private key",
        };
        return Err(Error::config(field, format!("{path} does not hold {what}")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(url: &str) -> String {
        match check_url(&DatabaseUrl::new(url), "") {
            Err(Error::InvalidConfig { field, reason }) => {
                assert!(!reason.contains("s3cret"), "{reason}");
                field
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn tls_parameters_are_checked() {
        assert!(check_url(&DatabaseUrl::new("postgres://u:s3cret@h/db"), "").is_ok());
        assert!(check_url(
            &DatabaseUrl::new("postgres://u@h/db?sslmode=verify-full"),
            ""
        )
        .is_ok());
        assert_eq!(
            field_of("postgres://u:s3cret@h/db?sslmode=verify-everything"),
            "sslmode"
        );
        assert_eq!(
            field_of("postgres://u:s3cret@h/db?sslmode=require&sslrootcert=/no/such/ca.pem"),
            "sslrootcert"
        );
        assert_eq!(
            field_of("postgres://u:s3cret@h/db?sslcert=%2Fno%2Fcert.pem"),
            "sslcert"
        );
        assert_eq!(field_of("postgres://u:s3cret@h/db?sslkey=/k.pem"), "sslkey");
        let inline = "postgres://u@h/db?sslrootcert=-----BEGIN%20CERTIFICATE-----x";
        assert!(check_url(&DatabaseUrl::new(inline), "").is_ok());
    }

    #[test]
    fn hosts_and_decoding() {
        assert_eq!(host_of("postgres://u:p@db.example:5432/x"), "db.example");
        assert_eq!(host_of("postgres://[::1]:5432/x"), "::1");
        assert_eq!(host_of("rediss://localhost"), "localhost");
        assert_eq!(percent_decode("%2Fa%20b+c%"), "/a b c%");
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let cause = rustls_cause(&io).expect("the rustls error");
        let text = describe_rustls(cause, Some("db"), "sslrootcert");
        assert!(
            text.contains("not signed by a trusted certificate authority"),
            "{text}"
        );
    }
}
