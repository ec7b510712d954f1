//! The database transport's consumer groups: members split a topic by key
//! hash with no overlap and no gap, positions survive restarts, and a rewind
//! redelivers without repeating side effects.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox::partition::member_owns;
use relaybox::{Consumer, ConsumerConfig, DatabaseSource, DatabaseSourceConfig, Message};
use uuid::Uuid;

dialect_tests!(consumer_group_members_split_the_topic_and_keep_positions);

const MEMBERS: u32 = 3;

fn source_config(topic: &str, group: &str, member: u32) -> DatabaseSourceConfig {
    DatabaseSourceConfig::new(topic, group).member(member, MEMBERS)
}

fn start_members(
    db: &TestDb,
    topic: &str,
    group: &str,
    recorders: &[Arc<Recorder>],
) -> Vec<Consumer> {
    (0..MEMBERS)
        .map(|m| {
            let source =
                DatabaseSource::new(db.store.clone(), source_config(topic, group, m)).unwrap();
            Consumer::start(
                db.store.clone(),
                source,
                recorders[m as usize].clone(),
                ConsumerConfig {
                    batch_size: 10,
                    concurrency: 2,
                    ..consumer_config(group)
                },
            )
            .unwrap()
        })
        .collect()
}

fn recorders(db: &TestDb) -> Vec<Arc<Recorder>> {
    (0..MEMBERS)
        .map(|m| Recorder::new(db).member(m.into()).arc())
        .collect()
}

fn gated_recorders(db: &TestDb, gate: &Arc<Gate>) -> Vec<Arc<Recorder>> {
    (0..MEMBERS)
        .map(|m| Recorder::new(db).member(m.into()).gate(gate.clone()).arc())
        .collect()
}

fn handled_total(recorders: &[Arc<Recorder>]) -> usize {
    recorders.iter().map(|r| r.handled_count()).sum()
}

async fn shutdown_all(consumers: &[Consumer]) {
    for c in consumers {
        c.shutdown().await.expect("graceful consumer shutdown");
    }
}

/// Each recorder only handled messages of keys that hash to its member, and
/// the messages of each key in log order.
fn assert_member_ownership(recorders: &[Arc<Recorder>], log_index: &HashMap<Uuid, usize>) {
    for (m, r) in recorders.iter().enumerate() {
        let mut last: HashMap<Option<String>, usize> = HashMap::new();
        for msg in r.handled() {
            assert!(
                member_owns(msg.key.as_deref(), &msg.id, m as u32, MEMBERS),
                "member {m} handled key {:?}, which belongs to another member",
                msg.key
            );
            let i = log_index[&msg.id];
            if let Some(prev) = last.insert(msg.key.clone(), i) {
                assert!(prev < i, "member {m} broke the order of key {:?}", msg.key);
            }
        }
    }
}

async fn consumer_group_members_split_the_topic_and_keep_positions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "grouped";
    let group = "workers";
    let all: Vec<Message> = messages(topic, 300, 60);
    for chunk in all.chunks(50) {
        db.store.append_log(chunk).await.unwrap();
    }
    let log_index: HashMap<Uuid, usize> = all.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();

    // Round 1: stop the group (gracefully) half way. The gate holds every
    // handler call after the 150th, so the group cannot finish before the
    // stop; it opens once every member has been told to stop, and the
    // deliveries in flight then finish.
    let gate = Gate::new(150);
    let round1 = gated_recorders(&db, &gate);
    let consumers = start_members(&db, topic, group, &round1);
    wait_for("150 handler calls let through", WAIT, async || {
        if gate.is_holding() {
            Ok(())
        } else {
            Err(format!("{} handled", handled_total(&round1)))
        }
    })
    .await;
    let stopping = futures::future::join_all(consumers.iter().map(|c| c.shutdown()));
    let opening = async {
        tokio::task::yield_now().await;
        gate.open();
    };
    let (stopped, ()) = futures::join!(stopping, opening);
    for s in stopped {
        s.expect("graceful consumer shutdown");
    }
    let first_half = handled_total(&round1);
    assert!(
        first_half < all.len(),
        "the group finished before it could be stopped midway ({first_half} handled)"
    );
    for m in 0..MEMBERS {
        let source = source_config(topic, group, m).position_source();
        assert_eq!(source, format!("log:{topic}:{m}/{MEMBERS}"));
        let pos = db.store.position(group, &source).await.unwrap();
        assert!(
            pos.is_some_and(|p| p > 0),
            "member {m} has no stored position after a graceful shutdown: {pos:?}"
        );
    }
    assert_eq!(db.count("handled").await as usize, first_half);

    // Round 2: restarted members resume from their positions.
    let round2 = recorders(&db);
    let consumers = start_members(&db, topic, group, &round2);
    wait_for("all 300 messages handled", WAIT, async || {
        let n = db.count("handled").await;
        if n >= all.len() as i64 {
            Ok(())
        } else {
            Err(format!("{n} business rows"))
        }
    })
    .await;
    shutdown_all(&consumers).await;
    let dup2: u64 = consumers.iter().map(|c| c.stats().duplicates).sum();
    assert_eq!(
        dup2, 0,
        "restarted members redelivered processed messages: positions were not kept"
    );
    let both: Vec<&Recorder> = round1.iter().chain(&round2).map(|r| r.as_ref()).collect();
    assert_handled_once(&db, &both, &ids).await;
    assert_member_ownership(&round1, &log_index);
    assert_member_ownership(&round2, &log_index);
    for m in 0..MEMBERS as usize {
        assert!(
            round1[m].handled_count() + round2[m].handled_count() > 0,
            "member {m} handled nothing"
        );
    }

    // Round 3: rewind every member to the start. Everything is delivered
    // again; the inbox skips it all and the handler is not called.
    for m in 0..MEMBERS {
        let source = source_config(topic, group, m).position_source();
        db.store.set_position(group, &source, 0).await.unwrap();
        assert_eq!(db.store.position(group, &source).await.unwrap(), Some(0));
    }
    let round3 = recorders(&db);
    let consumers = start_members(&db, topic, group, &round3);
    wait_for("all 300 redelivered as duplicates", WAIT, async || {
        let stats: Vec<_> = consumers.iter().map(|c| c.stats()).collect();
        let dups: u64 = stats.iter().map(|s| s.duplicates).sum();
        if dups >= all.len() as u64 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    shutdown_all(&consumers).await;
    let dups: u64 = consumers.iter().map(|c| c.stats().duplicates).sum();
    let processed: u64 = consumers.iter().map(|c| c.stats().processed).sum();
    assert_eq!(dups, all.len() as u64);
    assert_eq!(processed, 0);
    assert_eq!(
        round3.iter().map(|r| r.total_calls()).sum::<u64>(),
        0,
        "the handler ran again for a redelivered message"
    );
    assert_handled_once(&db, &both, &ids).await;
    db.cleanup().await;
}

dialect_tests!(two_consumers_of_one_member_handle_each_message_once);

/// Two consumers configured as the same member of the same group (a
/// misconfiguration, or a rolling restart) race for the same messages: the
/// inbox lets exactly one of them handle each message.
async fn two_consumers_of_one_member_handle_each_message_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let topic = "raced";
    let group = "racers";
    let all = messages(topic, 120, 12);
    db.store.append_log(&all).await.unwrap();
    let recorders = [
        Recorder::new(&db)
            .member(0)
            .delay(Duration::from_millis(2))
            .arc(),
        Recorder::new(&db)
            .member(1)
            .delay(Duration::from_millis(2))
            .arc(),
    ];
    let other_store = db.open_store().await;
    let consumers: Vec<Consumer> = [&db.store, &other_store]
        .iter()
        .zip(&recorders)
        .map(|(store, r)| {
            let source =
                DatabaseSource::new((*store).clone(), DatabaseSourceConfig::new(topic, group))
                    .unwrap();
            Consumer::start(
                (*store).clone(),
                source,
                r.clone(),
                ConsumerConfig {
                    batch_size: 20,
                    ..consumer_config(group)
                },
            )
            .unwrap()
        })
        .collect();
    wait_for("every message seen by both consumers", WAIT, async || {
        let stats: Vec<_> = consumers.iter().map(|c| c.stats()).collect();
        if stats
            .iter()
            .all(|s| s.processed + s.duplicates >= all.len() as u64)
        {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    shutdown_all(&consumers).await;
    let ids: Vec<Uuid> = all.iter().map(|m| m.id).collect();
    let refs: Vec<&Recorder> = recorders.iter().map(|r| r.as_ref()).collect();
    assert_handled_once(&db, &refs, &ids).await;
    let processed: u64 = consumers.iter().map(|c| c.stats().processed).sum();
    let duplicates: u64 = consumers.iter().map(|c| c.stats().duplicates).sum();
    assert_eq!(processed, all.len() as u64);
    assert_eq!(duplicates, all.len() as u64);
    db.cleanup().await;
}

dialect_tests!(consumer_positions_show_the_lag_of_log_sources);

/// The stored positions list every group and source; a source of the log
/// also shows the topic's last position and how far behind it is.
async fn consumer_positions_show_the_lag_of_log_sources(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = &db.store;
    let entries: Vec<Message> = (0..3)
        .map(|n| Message::new("orders", vec![n]).with_key("k"))
        .collect();
    store.append_log(&entries).await.unwrap();
    let log = store.read_log("orders", 0, 10).await.unwrap();
    store
        .set_position("g", "log:orders:0/1", log[0].position)
        .await
        .unwrap();
    store.set_position("g", "kafka:orders", 7).await.unwrap();
    let positions = store.consumer_positions().await.unwrap();
    assert_eq!(positions.len(), 2);
    let kafka = &positions[0];
    assert_eq!(
        (
            kafka.source.as_str(),
            kafka.topic.as_deref(),
            kafka.position
        ),
        ("kafka:orders", None, 7)
    );
    assert_eq!((kafka.head, kafka.lag), (None, None));
    let on_log = &positions[1];
    assert_eq!(on_log.group, "g");
    assert_eq!(on_log.topic.as_deref(), Some("orders"));
    assert_eq!(on_log.position, log[0].position);
    assert_eq!(on_log.head, Some(log[2].position));
    assert_eq!(on_log.lag, Some(2));
    assert!((chrono::Utc::now() - on_log.updated_at).num_seconds().abs() < 60);
    db.cleanup().await;
}
