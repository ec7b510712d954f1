//! The shared cross-language fixtures in `tests/fixtures/` (see its README):
//! canonical envelopes, key partitions and invalid messages.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::*;
use relaybox::partition::{key_hash, member_owns, partition_for};
use relaybox::{Limits, Message};
use serde::Deserialize;
use uuid::Uuid;

dialect_tests!(
    envelopes_survive_enqueue_relay_and_log,
    invalid_messages_are_refused_by_store_enqueue,
);

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every envelope fixture: (file name, canonical JSON without the trailing newline).
fn envelopes() -> Vec<(String, String)> {
    let dir = fixtures_dir().join("envelopes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = read(&p);
            let line = text.strip_suffix('\n').unwrap_or(&text).to_string();
            (p.file_name().unwrap().to_string_lossy().into_owned(), line)
        })
        .collect()
}

fn envelope(name: &str) -> Message {
    let (_, text) = envelopes()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture envelopes/{name} is missing"));
    Message::from_canonical_json(&text).unwrap()
}

#[test]
fn envelopes_round_trip_byte_for_byte() {
    let all = envelopes();
    assert!(
        all.len() >= 4,
        "expected at least 4 envelopes, found {}",
        all.len()
    );
    for (name, text) in &all {
        assert!(!text.contains('\n'), "{name}: one line of compact JSON");
        let m = Message::from_canonical_json(text)
            .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        assert_eq!(
            &m.to_canonical_json(),
            text,
            "{name} does not re-serialise identically"
        );
        Limits::default()
            .check(&m)
            .unwrap_or_else(|e| panic!("{name} is not a valid message: {e}"));
        assert_eq!(m.id.get_version_num(), 7, "{name}: ids are UUID v7");
    }
}

#[test]
fn envelopes_cover_the_documented_cases() {
    let basic = envelope("basic.json");
    assert!(basic.key.is_some() && !basic.headers.is_empty());
    assert_eq!(basic.content_type, "application/json");
    serde_json::from_slice::<serde_json::Value>(&basic.payload).expect("a JSON payload");

    let binary = envelope("binary_no_key.json");
    assert_eq!(binary.key, None);
    assert!(std::str::from_utf8(&binary.payload).is_err(), "not UTF-8");
    assert!(binary.payload.contains(&0));

    let delayed = envelope("delayed.json");
    assert!(delayed.available_at > delayed.created_at);

    let unicode = envelope("unicode_key.json");
    let key = unicode.key.as_deref().unwrap();
    assert!(!key.is_ascii());
    assert!(
        key.chars().any(|c| c.len_utf8() == 4),
        "includes a 4-byte character"
    );
}

#[derive(Deserialize)]
struct PartitionCase {
    key: String,
    partitions: u32,
    partition: u32,
}

#[test]
fn partitions_match_the_crc32_fixture() {
    let cases: Vec<PartitionCase> =
        serde_json::from_str(&read(&fixtures_dir().join("partitions.json"))).unwrap();
    assert!(cases.len() >= 50);
    for c in &cases {
        // Any id: a message with a key is placed by its key alone.
        for id in [Uuid::nil(), Uuid::now_v7()] {
            assert_eq!(
                partition_for(Some(&c.key), &id, c.partitions),
                c.partition,
                "key {:?} among {} partitions",
                c.key,
                c.partitions
            );
        }
        assert_eq!(key_hash(&c.key) % c.partitions, c.partition);
        assert!(member_owns(
            Some(&c.key),
            &Uuid::nil(),
            c.partition,
            c.partitions
        ));
    }
}

#[derive(Deserialize)]
struct InvalidCase {
    name: String,
    message: serde_json::Value,
    error_code: String,
    max_payload_bytes: Option<usize>,
}

fn invalid_cases() -> Vec<(InvalidCase, Message)> {
    let cases: Vec<InvalidCase> =
        serde_json::from_str(&read(&fixtures_dir().join("invalid_messages.json"))).unwrap();
    let codes: std::collections::HashSet<&str> =
        cases.iter().map(|c| c.error_code.as_str()).collect();
    for code in [
        "invalid_topic",
        "payload_too_large",
        "invalid_header",
        "invalid_message",
    ] {
        assert!(codes.contains(code), "no invalid message with code {code}");
    }
    cases
        .into_iter()
        .map(|c| {
            let m = Message::from_canonical_json(&c.message.to_string())
                .unwrap_or_else(|e| panic!("{}: the fixture message does not parse: {e}", c.name));
            (c, m)
        })
        .collect()
}

fn limits_of(case: &InvalidCase) -> Limits {
    Limits {
        max_payload_bytes: case
            .max_payload_bytes
            .unwrap_or(Limits::default().max_payload_bytes),
    }
}

#[test]
fn invalid_messages_fail_limits_check_with_the_stated_code() {
    for (case, m) in invalid_cases() {
        let err = limits_of(&case)
            .check(&m)
            .expect_err(&format!("{}: accepted", case.name));
        assert_eq!(err.code(), case.error_code, "{}: {err}", case.name);
        if let Some(limit) = case.max_payload_bytes {
            // Under a limit that fits it, the same message is fine.
            let roomy = Limits {
                max_payload_bytes: limit.max(m.payload.len()),
            };
            roomy.check(&m).unwrap();
            match err {
                relaybox::Error::PayloadTooLarge { size, limit: l } => {
                    assert_eq!((size, l), (m.payload.len(), limit));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

async fn invalid_messages_are_refused_by_store_enqueue(backend: Backend) {
    let cases = invalid_cases();
    // One store limit for every case: the stated one (the other cases' payloads fit it).
    let mut limits: Vec<usize> = cases
        .iter()
        .filter_map(|(c, _)| c.max_payload_bytes)
        .collect();
    limits.dedup();
    assert!(
        limits.len() <= 1,
        "one stated payload limit expected: {limits:?}"
    );
    let limit = limits.first().copied();
    let db = TestDb::with_options(backend, |o| {
        if let Some(limit) = limit {
            o.max_payload_bytes = limit;
        }
    })
    .await;
    for (case, m) in &cases {
        let tx = db.store.begin().await.unwrap();
        let err = tx
            .enqueue(m.clone())
            .await
            .expect_err(&format!("{}: accepted by Transaction::enqueue", case.name));
        assert_eq!(err.code(), case.error_code, "{}: {err}", case.name);
        tx.commit().await.unwrap();
        let err = db
            .own_tx(None, std::slice::from_ref(m), true)
            .await
            .expect_err(&format!("{}: accepted by Store::enqueue", case.name));
        assert_eq!(err.code(), case.error_code, "{}: {err}", case.name);
    }
    assert_eq!(db.count("outbox").await, 0, "nothing written");
    db.cleanup().await;
}

async fn envelopes_survive_enqueue_relay_and_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    let fixtures: Vec<Message> = envelopes()
        .iter()
        .map(|(_, text)| Message::from_canonical_json(text).unwrap())
        .collect();
    db.enqueue_committed(&fixtures).await;
    let relay = start_db_relay(&db.store, relay_config());
    for m in &fixtures {
        let log = wait_in_log(&db.store, &m.topic, std::slice::from_ref(m), WAIT).await;
        assert_eq!(log.len(), 1, "{}: {log:?}", m.topic);
        assert_eq!(&log[0].message, m, "read back from the log");
        assert_eq!(
            log[0].message.to_canonical_json(),
            m.to_canonical_json(),
            "canonical JSON after the round trip"
        );
    }
    relay.shutdown().await.unwrap();
    db.cleanup().await;
}
