//! Column values both dialects encode and decode alike: headers as JSON
//! text, durations as seconds.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::Message;

/// Seconds as f64, for interval arithmetic in SQL.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn parse_headers(text: &str) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| Error::InvalidValue {
        reason: format!("headers column is not a JSON object of strings: {e}"),
    })
}

pub(crate) fn headers_json(m: &Message) -> String {
    serde_json::to_string(&m.headers).expect("string maps serialise")
}
