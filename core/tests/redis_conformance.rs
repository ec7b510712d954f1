//! The conformance suite against a real redis-server, including a server
//! outage (this binary stops and restarts the server with `dev/services`;
//! cargo runs test binaries one after another).
//!
//! Needs `RELAYBOX_REDIS_URL` (or `REDIS_URL`) and the PostgreSQL test
//! database: `dev/services start postgres redis && eval "$(dev/services env)"`.
#![cfg(feature = "redis")]

#[macro_use]
mod common;
#[macro_use]
mod conformance;

use std::collections::HashMap;
use std::time::Duration;

use conformance::{Broker, SECRET};
use relaybox::transport::redis::RedisConfig;
use relaybox::{Message, TransportConfig};
use uuid::Uuid;

struct Redis {
    url: String,
}

impl Redis {
    fn new() -> Redis {
        let url = ["RELAYBOX_REDIS_URL", "REDIS_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
            .unwrap_or_else(|| {
                panic!(
                    "RELAYBOX_REDIS_URL is not set: the Redis conformance tests run against a \
                     real redis-server and are never skipped; start it with \
                     `dev/services start redis && eval \"$(dev/services env)\"`"
                )
            });
        Redis { url }
    }
}

#[async_trait::async_trait]
impl Broker for Redis {
    fn transport(&self) -> TransportConfig {
        TransportConfig::Redis(RedisConfig {
            // A stopped consumer's entries are taken over after a second.
            claim_idle: Duration::from_secs(1),
            claim_interval: Duration::from_millis(200),
            block: Duration::from_millis(200),
            ..RedisConfig::new(&self.url)
        })
    }

    /// Reads the dead-letter stream `<topic>.dlq`; the poison message's
    /// entry carries its payload, the handler's error and where it came from
    /// (the original stream and entry id), and nothing is left pending in
    /// the group.
    async fn dead_lettered(&self, topic: &str, group: &str, poison: &Message) -> Option<Vec<Uuid>> {
        let mut conn = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis");
        let entries = |conn: &mut redis::Connection,
                       stream: &str|
         -> Vec<(String, HashMap<String, String>)> {
            let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query(conn)
                .expect("XRANGE");
            raw.into_iter()
                .map(|(id, fields)| (id, fields.into_iter().collect()))
                .collect()
        };
        let dead = entries(&mut conn, &format!("{topic}.dlq"));
        let ids: Vec<Uuid> = dead
            .iter()
            .map(|(_, f)| Uuid::parse_str(&f["id"]).expect("dead letter id"))
            .collect();
        if let Some((_, f)) = dead.iter().find(|(_, f)| f["id"] == poison.id.to_string()) {
            assert_eq!(f["data"].as_bytes(), poison.payload.as_slice());
            assert!(f["error"].contains("refuses"), "{}", f["error"]);
            assert_eq!(f["original_stream"], topic);
            let original = entries(&mut conn, topic)
                .into_iter()
                .find(|(_, o)| o["id"] == poison.id.to_string())
                .expect("the original entry stays in its stream");
            assert_eq!(f["original_id"], original.0);
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(topic)
                .arg(group)
                .query(&mut conn)
                .expect("XPENDING");
            assert!(
                matches!(&pending, redis::Value::Array(p) if p.first() == Some(&redis::Value::Int(0))),
                "nothing pending in the group: {pending:?}"
            );
        }
        Some(ids)
    }

    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)> {
        use serde_json::json;
        [
            (json!({"url": ""}), "url"),
            (json!({"url": "memcached://x"}), "url"),
            (json!({"maxlen": 0}), "maxlen"),
            (json!({"stream": "all"}), "stream"),
            (
                json!({"dead_letter_stream": "{topic}"}),
                "dead_letter_stream",
            ),
            (json!({"start_id": "newest"}), "start_id"),
            (json!({"block": "0s"}), "block"),
            (json!({"command_timeout": "1ms"}), "command_timeout"),
            (json!({"consumer": " "}), "consumer"),
            (json!({"block": "soon"}), "transport"),
            (json!({"max_len": 5}), "transport"),
        ]
        .into_iter()
        .map(|(v, field)| (json!({ "redis": v }), field))
        .collect()
    }

    /// A password the server does not expect (it has none), and a port
    /// nobody listens on.
    fn secret_configs(&self) -> Vec<TransportConfig> {
        let (scheme, rest) = self.url.split_once("://").expect("a redis URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        [
            format!("{scheme}://:{SECRET}@{host}"),
            format!("redis://:{SECRET}@127.0.0.1:1"),
        ]
        .into_iter()
        .map(|url| {
            TransportConfig::Redis(RedisConfig {
                command_timeout: Duration::from_millis(500),
                ..RedisConfig::new(url)
            })
        })
        .collect()
    }

    fn service(&self) -> &'static str {
        "redis"
    }
}

conformance_tests!(Redis::new(), outage);
