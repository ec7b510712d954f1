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

use std::time::Duration;

use conformance::Broker;
use relaybox::transport::redis::RedisConfig;
use relaybox::TransportConfig;
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

    async fn dead_lettered(&self, topic: &str, _group: &str) -> Option<Vec<Uuid>> {
        let dlq = format!("{topic}.dlq");
        let mut conn = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis");
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&dlq)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("XRANGE of the dead-letter stream");
        Some(
            entries
                .iter()
                .map(|(_, fields)| {
                    let id = fields
                        .iter()
                        .find(|(k, _)| k == "id")
                        .map(|(_, v)| v.as_str())
                        .expect("dead letter without an id field");
                    Uuid::parse_str(id).expect("dead letter id")
                })
                .collect(),
        )
    }

    fn service(&self) -> &'static str {
        "redis"
    }
}

conformance_tests!(Redis::new(), outage);
