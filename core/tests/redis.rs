//! The Redis Streams transport against a real redis-server: what the relay
//! writes is read back with raw `XRANGE`/`XLEN`/`XPENDING` (not relaybox's
//! source), and the consumer is driven through `RedisSource` with SQLite
//! stores.
//!
//! Needs `RELAYBOX_REDIS_URL` or `REDIS_URL` (`dev/services start redis &&
//! eval "$(dev/services env redis)"`); the tests fail, never skip, without a
//! server. Every test uses its own streams and groups (random suffix), so
//! they run in parallel and beside other users of the same server.
#![cfg(feature = "redis")]

mod common;
#[path = "support/private_redis.rs"]
mod private_redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_handled_once, consumer_config, messages, relay_config, Backend, Recorder, TestDb,
};
use private_redis::PrivateRedis;
use redis::Value;
use relaybox::transport::redis::{RedisConfig, RedisSink, RedisSource, RedisSourceConfig};
use relaybox::{Consumer, Error, Message, Relay, Sink, Source, TransportConfig};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

const START_HINT: &str =
    "start it with `dev/services start redis && eval \"$(dev/services env redis)\"`";

/// The test server's URL; fails the test when none is configured or it does
/// not answer.
fn url() -> String {
    let url = ["RELAYBOX_REDIS_URL", "REDIS_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| {
            panic!(
                "RELAYBOX_REDIS_URL is not set: the Redis tests run against a real redis-server \
                 and are never skipped; {START_HINT}"
            )
        });
    let pong: String = redis::cmd("PING")
        .query(&mut raw_conn(&url))
        .unwrap_or_else(|e| panic!("no Redis server answers at {url}: {e}; {START_HINT}"));
    assert_eq!(pong, "PONG");
    url
}

fn raw_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}; {START_HINT}"))
}

/// A name no other test uses: `relaybox-test-<name>-<random>`.
fn unique(name: &str) -> String {
    format!(
        "relaybox-test-{name}-{:010x}",
        rand::random::<u64>() & 0xff_ffff_ffff
    )
}

fn config(url: &str) -> RedisConfig {
    RedisConfig {
        block: Duration::from_millis(200),
        ..RedisConfig::new(url)
    }
}

/// Deletes the streams of a test when it ends.
struct Cleanup(String, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut c) = redis::Client::open(self.0.as_str()).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&self.1).query(&mut c);
        }
    }
}

/// An entry's fields in wire order.
type Fields = Vec<(String, Vec<u8>)>;

/// Every entry of `stream` as (entry id, fields in wire order).
fn xrange(url: &str, stream: &str) -> Vec<(String, Fields)> {
    let reply: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query::<Vec<(String, Vec<Vec<u8>>)>>(&mut raw_conn(url))
        .expect("XRANGE")
        .into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .map(|kv| (String::from_utf8(kv[0].clone()).unwrap(), kv[1].clone()))
                .collect();
            (id, fields)
        })
        .collect();
    reply
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a str {
    let v = fields
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"));
    std::str::from_utf8(&v.1).unwrap()
}

fn xlen(url: &str, stream: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query(&mut raw_conn(url))
        .expect("XLEN")
}

/// Entries of `group` on `stream` that are delivered and not acknowledged.
fn pending(url: &str, stream: &str, group: &str) -> i64 {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(&mut raw_conn(url))
        .expect("XPENDING");
    match reply {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("XPENDING summary {other:?}"),
        },
        other => panic!("XPENDING reply {other:?}"),
    }
}

async fn wait_until(what: &str, mut probe: impl FnMut() -> Result<(), String>) {
    common::wait_for(what, WAIT, async || probe()).await
}

fn start_consumer(
    db: &TestDb,
    source: Arc<dyn Source>,
    group: &str,
    recorder: Arc<Recorder>,
) -> Consumer {
    Consumer::start(db.store.clone(), source, recorder, consumer_config(group))
        .expect("consumer start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writes_the_field_layout_read_back_with_xrange_in_order_per_key() {
    let url = url();
    let topic = unique("relay");
    let _cleanup = Cleanup(url.clone(), vec![topic.clone()]);
    let db = TestDb::new(Backend::Sqlite).await;
    let mut batch = messages(&topic, 60, 3);
    for m in &mut batch {
        m.headers.insert("source".into(), "shop".into());
        m.headers
            .insert("traceparent".into(), "00-abc-def-01".into());
    }
    batch.push(
        Message::new(&topic, b"{\"k\":null}".to_vec())
            .with_type("Unkeyed")
            .with_content_type("application/json"),
    );
    let tx = db.store.begin().await.unwrap();
    for m in &batch {
        tx.enqueue(m.clone()).await.unwrap();
    }
    tx.commit().await.unwrap();

    let transport = TransportConfig::from_json(serde_json::json!({"redis": {"url": url}})).unwrap();
    let relay = Relay::start(
        db.store.clone(),
        transport.sink(&db.store).unwrap(),
        relay_config(),
    )
    .unwrap();
    wait_until("61 entries in the stream", || match xlen(&url, &topic) {
        61 => Ok(()),
        n => Err(format!("{n} entries")),
    })
    .await;
    relay.shutdown().await.unwrap();

    let entries = xrange(&url, &topic);
    let names: Vec<&str> = entries[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "data",
            "key",
            "headers",
            "id",
            "type",
            "content_type",
            "created_at",
            "topic"
        ]
    );
    let by_id: HashMap<Uuid, &Message> = batch.iter().map(|m| (m.id, m)).collect();
    let mut per_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (_, fields) in &entries {
        let id = Uuid::parse_str(field(fields, "id")).unwrap();
        let m = by_id[&id];
        assert_eq!(field(fields, "data").as_bytes(), m.payload.as_slice());
        assert_eq!(field(fields, "key"), m.key.as_deref().unwrap_or(""));
        assert_eq!(field(fields, "type"), m.event_type);
        assert_eq!(field(fields, "content_type"), m.content_type);
        assert_eq!(field(fields, "topic"), topic);
        let created = chrono::DateTime::parse_from_rfc3339(field(fields, "created_at")).unwrap();
        assert_eq!(created.to_utc(), m.created_at);
        let headers: HashMap<String, String> =
            serde_json::from_str(field(fields, "headers")).unwrap();
        assert_eq!(
            headers.get("traceparent").map(String::as_str),
            m.headers.get("traceparent").map(String::as_str)
        );
        if let Some(k) = &m.key {
            per_key.entry(k.clone()).or_default().push(id);
        }
    }
    for key in ["key-0", "key-1", "key-2"] {
        let expected: Vec<Uuid> = batch
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.id)
            .collect();
        assert_eq!(per_key[key], expected, "order of {key}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxlen_trims_streams_approximately_and_null_keeps_everything() {
    let url = url();
    let (trimmed, untrimmed) = (unique("trim"), unique("notrim"));
    let _cleanup = Cleanup(url.clone(), vec![trimmed.clone(), untrimmed.clone()]);
    let capped = RedisSink::new(RedisConfig {
        maxlen: Some(100),
        ..config(&url)
    })
    .unwrap();
    let uncapped = RedisSink::new(RedisConfig {
        maxlen: None,
        ..config(&url)
    })
    .unwrap();
    let a = messages(&trimmed, 1000, 7);
    let b = messages(&untrimmed, 1000, 7);
    for (ca, cb) in a.chunks(100).zip(b.chunks(100)) {
        assert!(capped.publish(ca).await.iter().all(Result::is_ok));
        assert!(uncapped.publish(cb).await.iter().all(Result::is_ok));
    }
    let len = xlen(&url, &trimmed);
    // `~` trims whole radix-tree nodes (100 entries each by default).
    assert!(
        (100..=200).contains(&len),
        "trimmed stream holds {len} entries"
    );
    let entries = xrange(&url, &trimmed);
    let last = Uuid::parse_str(field(&entries.last().unwrap().1, "id")).unwrap();
    assert_eq!(last, a[999].id, "the newest entries are kept");
    assert_eq!(xlen(&url, &untrimmed), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_handles_each_entry_once_and_acknowledges_it() {
    let url = url();
    let topic = unique("consume");
    let group = unique("group");
    let _cleanup = Cleanup(url.clone(), vec![topic.clone()]);
    let db = TestDb::new(Backend::Sqlite).await;
    let sink = RedisSink::new(config(&url)).unwrap();
    let batch = messages(&topic, 200, 5);
    for chunk in batch.chunks(50) {
        assert!(sink.publish(chunk).await.iter().all(Result::is_ok));
    }
    let recorder = Recorder::new(&db).arc();
    let source = RedisSource::new(RedisSourceConfig::new(config(&url), &topic, &group)).unwrap();
    let consumer = start_consumer(&db, source, &group, recorder.clone());
    wait_until("200 handled", || match recorder.handled_count() {
        200 => Ok(()),
        n => Err(format!("{n} handled")),
    })
    .await;
    wait_until("nothing pending", || match pending(&url, &topic, &group) {
        0 => Ok(()),
        n => Err(format!("{n} pending")),
    })
    .await;
    consumer.shutdown().await.unwrap();
    let consumers: Vec<Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&topic)
        .arg(&group)
        .query(&mut raw_conn(&url))
        .expect("XINFO CONSUMERS");
    assert!(
        consumers.is_empty(),
        "a closed consumer with nothing pending leaves the group: {consumers:?}"
    );
    let ids: Vec<Uuid> = batch.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    // Per key, handled in stream order.
    for key in 0..5 {
        let key = format!("key-{key}");
        let sent: Vec<Uuid> = batch
            .iter()
            .filter(|m| m.key.as_deref() == Some(&key))
            .map(|m| m.id)
            .collect();
        let got: Vec<Uuid> = recorder
            .handled()
            .iter()
            .filter(|m| m.key.as_deref() == Some(&key))
            .map(|m| m.id)
            .collect();
        assert_eq!(got, sent, "order of {key}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_consumer_are_taken_over_with_xautoclaim() {
    let url = url();
    let topic = unique("claim");
    let group = unique("group");
    let _cleanup = Cleanup(url.clone(), vec![topic.clone()]);
    let db = TestDb::new(Backend::Sqlite).await;
    let sink = RedisSink::new(config(&url)).unwrap();
    let batch = messages(&topic, 30, 3);
    assert!(sink.publish(&batch).await.iter().all(Result::is_ok));

    // A member reads everything and dies without acknowledging anything.
    let dead = RedisSource::new(RedisSourceConfig::new(config(&url), &topic, &group)).unwrap();
    let mut got = 0;
    while got < 30 {
        got += dead
            .fetch(100, Duration::from_millis(200))
            .await
            .unwrap()
            .len();
    }
    drop(dead);
    assert_eq!(pending(&url, &topic, &group), 30);

    let survivor_config = RedisConfig {
        claim_idle: Duration::from_millis(500),
        claim_interval: Duration::from_millis(100),
        ..config(&url)
    };
    let survivor =
        RedisSource::new(RedisSourceConfig::new(survivor_config, &topic, &group)).unwrap();
    let name = survivor.consumer().to_string();
    let recorder = Recorder::new(&db).arc();
    let consumer = start_consumer(&db, survivor, &group, recorder.clone());
    wait_until("30 handled by the survivor", || {
        match recorder.handled_count() {
            30 => Ok(()),
            n => Err(format!("{n} handled")),
        }
    })
    .await;
    wait_until("nothing pending", || match pending(&url, &topic, &group) {
        0 => Ok(()),
        n => Err(format!("{n} pending")),
    })
    .await;
    consumer.shutdown().await.unwrap();
    assert!(name.starts_with("relaybox-"), "{name}");
    let ids: Vec<Uuid> = batch.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_reads_its_own_pending_entries_at_once() {
    let url = url();
    let topic = unique("own");
    let group = unique("group");
    let _cleanup = Cleanup(url.clone(), vec![topic.clone()]);
    let sink = RedisSink::new(config(&url)).unwrap();
    let batch = messages(&topic, 5, 1);
    assert!(sink.publish(&batch).await.iter().all(Result::is_ok));
    let stable = RedisConfig {
        consumer: Some(unique("member")),
        claim_idle: Duration::from_secs(3600),
        ..config(&url)
    };
    let first = RedisSource::new(RedisSourceConfig::new(stable.clone(), &topic, &group)).unwrap();
    let read = first.fetch(100, Duration::from_millis(500)).await.unwrap();
    assert_eq!(read.len(), 5);
    first.ack(&[read[1].ack]).await.unwrap();
    drop(first);
    assert_eq!(pending(&url, &topic, &group), 3);

    let again = RedisSource::new(RedisSourceConfig::new(stable, &topic, &group)).unwrap();
    let reread = again.fetch(100, Duration::from_millis(500)).await.unwrap();
    let ids: Vec<Uuid> = reread.iter().map(|d| d.message.id).collect();
    assert_eq!(ids, batch[2..].iter().map(|m| m.id).collect::<Vec<_>>());
    again.ack(&[reread[2].ack]).await.unwrap();
    assert_eq!(pending(&url, &topic, &group), 0);
    assert!(again
        .fetch(100, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn a_source_without_a_group_is_an_error_naming_it() {
    let empty_group = RedisSource::new(RedisSourceConfig::new(RedisConfig::default(), "t", ""));
    assert!(matches!(empty_group, Err(Error::InvalidConfig { ref field, .. }) if field == "group"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_debug_or_errors() {
    let url = url();
    // A password the server does not expect (it has none): AUTH fails.
    let (scheme, rest) = url.split_once("://").unwrap();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let wrong = format!("{scheme}://:s3cret-pw@{rest}");
    let cfg = RedisConfig {
        command_timeout: Duration::from_millis(500),
        ..config(&wrong)
    };
    let transport = TransportConfig::Redis(cfg.clone());
    let sink = RedisSink::new(cfg.clone()).unwrap();
    let source = RedisSource::new(RedisSourceConfig::new(cfg.clone(), unique("pw"), "g")).unwrap();
    let mut shown = format!("{cfg:?} {transport:?} {sink:?} {source:?}");
    for r in sink.publish(&messages("pw", 2, 1)).await {
        let e = r.expect_err("publishing with a wrong password");
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        shown += &format!(" {e} {e:?}");
    }
    let e = source
        .fetch(10, Duration::from_millis(100))
        .await
        .expect_err("fetch");
    shown += &format!(" {e} {e:?}");
    // Nothing listening: connection errors.
    let closed = RedisConfig {
        command_timeout: Duration::from_millis(200),
        ..config("redis://:s3cret-pw@127.0.0.1:1")
    };
    for r in RedisSink::new(closed)
        .unwrap()
        .publish(&messages("pw", 1, 1))
        .await
    {
        let e = r.expect_err("publishing to a closed port");
        assert!(e.retryable(), "{e:?}");
        shown += &format!(" {e} {e:?}");
    }
    let bad = TransportConfig::from_json(
        serde_json::json!({"redis": {"url": "redis://:s3cret-pw@host:port"}}),
    )
    .unwrap_err();
    shown += &format!(" {bad} {bad:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(":***@"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_and_source_carry_on_after_the_server_was_down_for_seconds() {
    let mut server = PrivateRedis::start();
    let url = server.url();
    let topic = unique("outage");
    let group = unique("group");
    let cfg = RedisConfig {
        command_timeout: Duration::from_millis(500),
        ..config(&url)
    };
    let sink = RedisSink::new(cfg.clone()).unwrap();
    let source = RedisSource::new(RedisSourceConfig::new(cfg, &topic, &group)).unwrap();
    let before = messages(&topic, 3, 1);
    assert!(sink.publish(&before).await.iter().all(Result::is_ok));
    let got = source.fetch(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len(), 3);

    server.stop();
    let during = messages(&topic, 2, 1);
    let stopped_at = std::time::Instant::now();
    while stopped_at.elapsed() < Duration::from_secs(4) {
        for r in sink.publish(&during).await {
            let e = r.expect_err("publishing while the server is down");
            assert!(e.retryable(), "{e:?}");
        }
        let e = source
            .fetch(10, Duration::from_millis(100))
            .await
            .expect_err("fetch while down");
        assert!(e.retryable(), "{e:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.restart();

    // No manual step: the next attempts succeed once the server is back.
    common::wait_for("a publish after the restart", WAIT, async || {
        let results = sink.publish(&during).await;
        match results.iter().find(|r| r.is_err()) {
            None => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(())) => unreachable!(),
        }
    })
    .await;
    source.ack(&[got[2].ack]).await.unwrap();
    let mut after = Vec::new();
    common::wait_for("the new entries from the source", WAIT, async || {
        match source.fetch(10, Duration::from_millis(200)).await {
            Ok(d) => after.extend(d),
            Err(e) => return Err(e.to_string()),
        }
        if after.len() >= 2 {
            Ok(())
        } else {
            Err(format!("{} fetched", after.len()))
        }
    })
    .await;
    let ids: Vec<Uuid> = after.iter().map(|d| d.message.id).collect();
    assert_eq!(ids, during.iter().map(|m| m.id).collect::<Vec<_>>());
    // The append-only file kept what was written before the stop.
    assert_eq!(xlen(&url, &topic), 5);
    assert_eq!(pending(&url, &topic, &group), 2);
}
