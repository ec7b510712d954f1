//! The console's JSON API, under the console's mount:
//!
//! - `GET api/overview`: backlog per topic, parked keys, relays and leases, consumer
//!   positions, the throughput series and whether changes are possible;
//! - `GET api/dead-letters?topic=&key=&error=&failed_after=&failed_before=&limit=`:
//!   the dead letters that match, most recent failure first;
//! - `POST api/dead-letters/retry` and `POST api/dead-letters/purge` with
//!   `{"ids": [...]}`: need the token (see [`super::auth`]).
//!
//! Errors are JSON: `{"error": "<code>", "message": "<text>"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use relaybox::store::{DeadLetterQuery, StoreOptions};
use relaybox::DeadLetterFilter;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::sampling::{self, Series};
use super::Console;

/// Dead letters listed when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most dead letters one request lists, retries or purges.
pub const MAX_LIMIT: u32 = 1000;

/// A JSON error response.
pub fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = (
        status,
        axum::Json(json!({ "error": code, "message": message })),
    )
        .into_response();
    no_store(&mut response);
    response
}

/// API answers are about now: no cache keeps them.
fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn ok_json(value: impl Serialize) -> Response {
    let mut response = axum::Json(value).into_response();
    no_store(&mut response);
    response
}

fn bad_request(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn database_error(e: relaybox::Error) -> Response {
    tracing::warn!(error = %e, "relaybox console: database request failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "database", e.to_string())
}

/// What the page shows at the top and refreshes every few seconds.
#[derive(Serialize)]
struct Overview {
    /// `postgres` or `sqlite` (never the URL).
    dialect: String,
    table_prefix: String,
    /// Whether retry and purge are possible.
    changes: super::auth::Changes,
    now: String,
    status: relaybox::Status,
    consumers: Vec<relaybox::store::ConsumerPosition>,
    throughput: Series,
    sample_every_seconds: f64,
}

/// `GET api/overview`.
pub async fn overview(State(console): State<Arc<Console>>) -> Response {
    let store = &console.store;
    let status = match store.status().await {
        Ok(status) => status,
        Err(e) => return database_error(e),
    };
    let consumers = match store.consumer_positions().await {
        Ok(positions) => positions,
        Err(e) => return database_error(e),
    };
    let options: &StoreOptions = store.options();
    ok_json(Overview {
        dialect: store.dialect().to_string(),
        table_prefix: options.table_prefix.clone(),
        changes: console.access.changes(),
        now: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        status,
        consumers,
        throughput: sampling::series(&console.samples.snapshot()),
        sample_every_seconds: sampling::EVERY.as_secs_f64(),
    })
}

/// The query string of `GET api/dead-letters`, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct DeadLetterParams {
    topic: Option<String>,
    key: Option<String>,
    error: Option<String>,
    failed_after: Option<String>,
    failed_before: Option<String>,
    limit: Option<String>,
}

impl DeadLetterParams {
    /// The store query and limit; blank fields are unset.
    pub fn parse(self) -> Result<(DeadLetterQuery, u32), String> {
        let limit = match given(self.limit) {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "limit must be between 1 and {MAX_LIMIT}, not {text:?}"
                    ))
                }
            },
        };
        let query = DeadLetterQuery {
            topic: given(self.topic),
            key: given(self.key),
            error_contains: given(self.error),
            failed_after: time("failed_after", self.failed_after)?,
            failed_before: time("failed_before", self.failed_before)?,
        };
        if let (Some(after), Some(before)) = (query.failed_after, query.failed_before) {
            if after >= before {
                return Err("failed_after must be earlier than failed_before".to_string());
            }
        }
        Ok((query, limit))
    }
}

/// A field's value, or `None` when missing or blank.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// An RFC 3339 time (`2026-01-31T12:00:00Z`) or nothing.
fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    given(value)
        .map(|text| {
            DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    format!(
                        "{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not {text:?}"
                    )
                })
        })
        .transpose()
}

/// `GET api/dead-letters`.
pub async fn dead_letters(
    State(console): State<Arc<Console>>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return bad_request(e.body_text()),
    };
    let (query, limit) = match params.parse() {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(message),
    };
    // One more than asked, to tell whether there are more.
    match console.store.search_dead_letters(&query, limit + 1).await {
        Ok(mut letters) => {
            let truncated = letters.len() > limit as usize;
            letters.truncate(limit as usize);
            ok_json(json!({ "dead_letters": letters, "limit": limit, "truncated": truncated }))
        }
        Err(e) => database_error(e),
    }
}

/// The body of a change: the message ids of the dead letters it applies to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    ids: Vec<String>,
}

/// The ids of a change's JSON body: 1 to [`MAX_LIMIT`] UUIDs.
pub fn parse_selection(body: &[u8]) -> Result<Vec<Uuid>, String> {
    let selection: Selection = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be {{\"ids\": [\"<message id>\", ...]}}: {e}"))?;
    if selection.ids.is_empty() {
        return Err("ids is empty: name at least one dead letter".to_string());
    }
    if selection.ids.len() > MAX_LIMIT as usize {
        return Err(format!("at most {MAX_LIMIT} ids per request"));
    }
    selection
        .ids
        .iter()
        .map(|id| Uuid::parse_str(id).map_err(|_| format!("{id:?} is not a message id (a UUID)")))
        .collect()
}

/// What a change does.
#[derive(Clone, Copy)]
enum Change {
    Retry,
    Purge,
}

async fn change(console: &Console, headers: &HeaderMap, body: &[u8], what: Change) -> Response {
    if let Err(refusal) = console.access.check(headers) {
        return refusal.into_response();
    }
    let ids = match parse_selection(body) {
        Ok(ids) => ids,
        Err(message) => return bad_request(message),
    };
    let filter = DeadLetterFilter::Ids(ids.clone());
    let (done, verb) = match what {
        Change::Retry => (console.store.retry_dead_letters(&filter).await, "retried"),
        Change::Purge => (console.store.purge_dead_letters(&filter).await, "purged"),
    };
    match done {
        Ok(n) => {
            tracing::info!(
                requested = ids.len(),
                done = n,
                "relaybox console: {verb} dead letters"
            );
            ok_json(json!({ verb: n, "requested": ids.len() }))
        }
        Err(e) => database_error(e),
    }
}

/// `POST api/dead-letters/retry`: moves the dead letters back to the outbox.
pub async fn retry_dead_letters(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(&console, &headers, &body, Change::Retry).await
}

/// `POST api/dead-letters/purge`: deletes the dead letters.
pub async fn purge_dead_letters(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(&console, &headers, &body, Change::Purge).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> DeadLetterParams {
        let text = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        Query::<DeadLetterParams>::try_from_uri(&format!("/x?{text}").parse().unwrap())
            .unwrap()
            .0
    }

    #[test]
    fn blank_fields_are_unset() {
        let (query, limit) = params(&[("topic", ""), ("key", "+"), ("error", "")])
            .parse()
            .unwrap();
        assert_eq!(query, DeadLetterQuery::default());
        assert_eq!(limit, DEFAULT_LIMIT);
    }

    #[test]
    fn every_filter_is_parsed() {
        let (query, limit) = params(&[
            ("topic", "orders"),
            ("key", "c-1"),
            ("error", "refused"),
            ("failed_after", "2026-01-31T12:00:00Z"),
            ("failed_before", "2026-01-31T13:30:00%2B01:00"),
            ("limit", "7"),
        ])
        .parse()
        .unwrap();
        assert_eq!(query.topic.as_deref(), Some("orders"));
        assert_eq!(query.key.as_deref(), Some("c-1"));
        assert_eq!(query.error_contains.as_deref(), Some("refused"));
        assert_eq!(
            query.failed_after.unwrap().to_rfc3339(),
            "2026-01-31T12:00:00+00:00"
        );
        assert_eq!(
            query.failed_before.unwrap().to_rfc3339(),
            "2026-01-31T12:30:00+00:00"
        );
        assert_eq!(limit, 7);
    }

    #[test]
    fn bad_filters_name_the_field() {
        for (pairs, field) in [
            (&[("failed_after", "yesterday")][..], "failed_after"),
            (&[("failed_before", "2026-01-31")][..], "failed_before"),
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "1001")][..], "limit"),
            (&[("limit", "many")][..], "limit"),
            (
                &[
                    ("failed_after", "2026-01-31T12:00:00Z"),
                    ("failed_before", "2026-01-31T11:00:00Z"),
                ][..],
                "failed_after",
            ),
        ] {
            let err = params(pairs).parse().unwrap_err();
            assert!(err.starts_with(field), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn selections_need_one_to_a_thousand_uuids() {
        let id = "0190a4b2-0000-7000-8000-000000000000";
        assert_eq!(
            parse_selection(format!("{{\"ids\": [\"{id}\"]}}").as_bytes()).unwrap(),
            [Uuid::parse_str(id).unwrap()]
        );
        for (body, says) in [
            ("", "the body must be"),
            ("{\"ids\": []}", "ids is empty"),
            ("{\"ids\": [\"x\"]}", "\"x\" is not a message id"),
            ("{\"all\": true}", "the body must be"),
        ] {
            let err = parse_selection(body.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
        let many = serde_json::to_vec(&json!({ "ids": vec![id; 1001] })).unwrap();
        assert!(parse_selection(&many).unwrap_err().contains("at most"));
    }
}
