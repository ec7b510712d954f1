//! The consumer in host-transaction mode, with an application that owns its
//! transactions: its own `sqlx::PgPool`, one `sqlx::Transaction` per
//! delivery holding the inbox row (from the statement relaybox hands over)
//! and a business row. Each message takes effect once; redeliveries are
//! skipped by the inbox; a failing handler leaves nothing, is retried and
//! dead-lettered; order per key holds; a crash after the commit and before
//! the acknowledgement is harmless; members of a group share the work.
//! Consecutive messages of a lane reach a host that handles runs in one call
//! (one transaction), acknowledged only after its commit; a failing message
//! rolls its run back, the messages before it go again one at a time, and
//! it is retried or dead-lettered alone.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use relaybox::consumer_host::{HostRun, HostRunOutcome};
use relaybox::sqlx::{self, AssertSqlSafe, PgPool, Row};
use relaybox::{
    Consumer, ConsumerConfig, DatabaseSource, DatabaseSourceConfig, HostDelivery, HostHandler,
    HostOutcome, Message, Placeholders, Store, Value,
};
use uuid::Uuid;

/// What the application's handler does with one message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Write the business row and commit.
    Commit,
    /// Write the business row, then fail (the transaction rolls back).
    Fail,
    /// Commit, then never report (the process "crashes" before the ack).
    CommitThenHang,
    /// Write the business row, then reject the message (rolls back).
    Reject,
}

/// The application: its own pool and a business table `<prefix>app_rows`.
struct App {
    pool: PgPool,
    table: String,
    decide: Box<dyn Fn(&Message) -> Act + Send + Sync>,
    calls: Mutex<HashMap<Uuid, u32>>,
    duplicates: AtomicU32,
    committed_then_hung: tokio::sync::Notify,
    hung: AtomicBool,
}

impl App {
    async fn new(db: &TestDb, decide: impl Fn(&Message) -> Act + Send + Sync + 'static) -> App {
        let pool = PgPool::connect(&db.url).await.expect("the app's own pool");
        let table = db.t("app_rows");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (seq bigserial PRIMARY KEY, message_id uuid NOT NULL, msg_key text, payload text NOT NULL)"
        )))
        .execute(&pool)
        .await
        .expect("business table");
        App {
            pool,
            table,
            decide: Box::new(decide),
            calls: Mutex::new(HashMap::new()),
            duplicates: AtomicU32::new(0),
            committed_then_hung: tokio::sync::Notify::new(),
            hung: AtomicBool::new(false),
        }
    }

    fn calls(&self, id: Uuid) -> u32 {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// Business rows per message id.
    async fn rows(&self) -> HashMap<Uuid, i64> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT message_id, count(*) AS n FROM {} GROUP BY message_id",
            self.table
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("message_id"), r.get("n")))
        .collect()
    }

    /// Payloads per key in the order they were written.
    async fn order_per_key(&self) -> HashMap<String, Vec<String>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT msg_key, payload FROM {} ORDER BY seq",
            self.table
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for r in rows {
            out.entry(r.get("msg_key"))
                .or_default()
                .push(r.get("payload"));
        }
        out
    }

    /// The protocol, with a failure anywhere reported as `Failed`.
    async fn run(&self, d: &HostDelivery) -> Result<HostOutcome, sqlx::Error> {
        let m = &d.message;
        *self.calls.lock().unwrap().entry(m.id).or_default() += 1;
        let mut tx = self.pool.begin().await?;
        // 1. The inbox row first, by hand: SQL and parameters as handed over.
        let mut q = sqlx::query(AssertSqlSafe(d.inbox.sql.clone()));
        for p in &d.inbox.params {
            q = match p {
                Value::Text(t) => q.bind(t.clone()),
                other => panic!("unexpected inbox parameter {other:?}"),
            };
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            tx.rollback().await?;
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(HostOutcome::Duplicate);
        }
        // 2. The business write in the same transaction.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (message_id, msg_key, payload) VALUES ($1, $2, $3)",
            self.table
        )))
        .bind(m.id)
        .bind(m.key.clone())
        .bind(String::from_utf8_lossy(&m.payload).into_owned())
        .execute(&mut *tx)
        .await?;
        match (self.decide)(m) {
            Act::Fail => {
                tx.rollback().await?;
                Ok(HostOutcome::Failed("the application refuses".into()))
            }
            Act::Reject => {
                tx.rollback().await?;
                Ok(HostOutcome::Rejected("the application rejects it".into()))
            }
            Act::Commit => {
                tx.commit().await?;
                Ok(HostOutcome::Processed)
            }
            Act::CommitThenHang => {
                tx.commit().await?;
                self.hung.store(true, Ordering::SeqCst);
                self.committed_then_hung.notify_one();
                std::future::pending().await
            }
        }
    }
}

#[async_trait::async_trait]
impl HostHandler for App {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        match self.run(&delivery).await {
            Ok(outcome) => outcome,
            Err(e) => HostOutcome::Failed(e.to_string()),
        }
    }
}

/// The application handling a run of deliveries in one transaction: per
/// delivery the inbox statement, then (a new message) the business row; one
/// commit. A failing or rejected message rolls the whole run back.
struct RunApp {
    app: App,
    store: Store,
    group: String,
    source_key: String,
    /// Log offset of each message (1-based, as the group's position counts).
    offsets: HashMap<Uuid, i64>,
    /// Size of each run handed over.
    runs: Mutex<Vec<usize>>,
    /// Runs of which something was acknowledged before their commit.
    acked_early: Mutex<Vec<String>>,
}

impl RunApp {
    async fn new(
        db: &TestDb,
        topic: &str,
        group: &str,
        msgs: &[Message],
        decide: impl Fn(&Message) -> Act + Send + Sync + 'static,
    ) -> RunApp {
        RunApp {
            app: App::new(db, decide).await,
            store: db.store.clone(),
            group: group.into(),
            source_key: format!("log:{topic}:0/1"),
            offsets: msgs
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i as i64 + 1))
                .collect(),
            runs: Mutex::new(Vec::new()),
            acked_early: Mutex::new(Vec::new()),
        }
    }

    fn runs(&self) -> Vec<usize> {
        self.runs.lock().unwrap().clone()
    }

    async fn run_all(&self, run: &HostRun) -> Result<HostRunOutcome, String> {
        let deliveries = &run.deliveries;
        let mut tx = self.app.pool.begin().await.map_err(|e| e.to_string())?;
        let mut new = run
            .insert_inbox_pg(&mut tx)
            .await
            .map_err(|e| e.to_string())?;
        let mut outcomes = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let m = &d.message;
            *self.app.calls.lock().unwrap().entry(m.id).or_default() += 1;
            if !new.remove(&m.id) {
                outcomes.push(HostOutcome::Duplicate);
                continue;
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (message_id, msg_key, payload) VALUES ($1, $2, $3)",
                self.app.table
            )))
            .bind(m.id)
            .bind(m.key.clone())
            .bind(String::from_utf8_lossy(&m.payload).into_owned())
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
            match (self.app.decide)(m) {
                Act::Commit => outcomes.push(HostOutcome::Processed),
                Act::Fail | Act::CommitThenHang => {
                    tx.rollback().await.map_err(|e| e.to_string())?;
                    let failed = HostOutcome::Failed("the application refuses".into());
                    return Ok(HostRunOutcome::RolledBackAt(i, failed));
                }
                Act::Reject => {
                    tx.rollback().await.map_err(|e| e.to_string())?;
                    let rejected = HostOutcome::Rejected("the application rejects it".into());
                    return Ok(HostRunOutcome::RolledBackAt(i, rejected));
                }
            }
        }
        let position = self
            .store
            .position(&self.group, &self.source_key)
            .await
            .map_err(|e| e.to_string())?;
        let first = self.offsets[&deliveries[0].message.id];
        if position.is_some_and(|p| p >= first) {
            self.acked_early.lock().unwrap().push(format!(
                "run from offset {first}: position {position:?} before the commit"
            ));
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(HostRunOutcome::Each(outcomes))
    }
}

#[async_trait::async_trait]
impl HostHandler for RunApp {
    async fn handle(&self, delivery: HostDelivery) -> HostOutcome {
        self.app.handle(delivery).await
    }

    async fn handle_run(&self, run: HostRun) -> HostRunOutcome {
        self.runs.lock().unwrap().push(run.deliveries.len());
        self.run_all(&run)
            .await
            .unwrap_or_else(HostRunOutcome::RolledBack)
    }
}

fn start(db: &TestDb, topic: &str, app: Arc<dyn HostHandler>, config: ConsumerConfig) -> Consumer {
    let source = DatabaseSource::new(
        db.store.clone(),
        DatabaseSourceConfig::new(topic, config.group.clone()),
    )
    .unwrap();
    Consumer::start_host(db.store.clone(), source, app, Placeholders::Dollar, config).unwrap()
}

async fn wait_settled(consumer: &Consumer, what: &str, n: u64) {
    wait_for(what, WAIT, async || {
        let s = consumer.stats();
        if s.processed + s.duplicates + s.dead_lettered >= n {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_once_and_a_redelivery_is_skipped() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 60, 6);
    db.store.append_log(&msgs).await.unwrap();
    let app = Arc::new(App::new(&db, |_| Act::Commit).await);

    let consumer = start(&db, topic, app.clone(), consumer_config(group));
    wait_settled(&consumer, "every message processed", 60).await;
    consumer.shutdown().await.unwrap();
    let stats = consumer.stats();
    assert_eq!((stats.processed, stats.duplicates), (60, 0), "{stats:?}");
    let rows = app.rows().await;
    assert_eq!(rows.len(), 60);
    assert!(msgs.iter().all(|m| rows.get(&m.id) == Some(&1)), "{rows:?}");
    assert_eq!(db.count("inbox").await, 60);

    // Rewind the group: every message comes again and the inbox skips it.
    db.store
        .set_position(group, &format!("log:{topic}:0/1"), 0)
        .await
        .unwrap();
    let again = start(&db, topic, app.clone(), consumer_config(group));
    wait_settled(&again, "every redelivery skipped", 60).await;
    again.shutdown().await.unwrap();
    let stats = again.stats();
    assert_eq!((stats.processed, stats.duplicates), (0, 60), "{stats:?}");
    assert_eq!(app.duplicates.load(Ordering::Relaxed), 60);
    assert_eq!(app.rows().await, rows, "no business row written twice");
    assert!(msgs.iter().all(|m| app.calls(m.id) == 2));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_writes_nothing_is_retried_then_dead_lettered() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let good = messages(topic, 10, 2);
    let bad = Message::new(topic, b"bad".to_vec()).with_key("key-0");
    let mut all = good[..5].to_vec();
    all.push(bad.clone());
    all.extend_from_slice(&good[5..]);
    db.store.append_log(&all).await.unwrap();
    let bad_id = bad.id;
    let app = Arc::new(
        App::new(&db, move |m| {
            if m.id == bad_id {
                Act::Fail
            } else {
                Act::Commit
            }
        })
        .await,
    );

    let consumer = start(
        &db,
        topic,
        app.clone(),
        ConsumerConfig {
            max_retries: 2,
            ..consumer_config(group)
        },
    );
    wait_settled(&consumer, "all settled", all.len() as u64).await;
    consumer.shutdown().await.unwrap();

    let stats = consumer.stats();
    assert_eq!(
        (stats.processed, stats.retried, stats.dead_lettered),
        (10, 2, 1),
        "{stats:?}"
    );
    assert_eq!(app.calls(bad.id), 3, "first attempt + max_retries");
    let dead = db.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message.id, bad.id);
    assert_eq!(dead[0].origin, format!("consumer:{group}"));
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].last_error.contains("the application refuses"));
    let rows = app.rows().await;
    assert!(
        !rows.contains_key(&bad.id),
        "the failed attempts wrote nothing"
    );
    assert!(good.iter().all(|m| rows.get(&m.id) == Some(&1)), "{rows:?}");
    let bad_inbox = db
        .scalar(&format!(
            "SELECT count(*) FROM {} WHERE message_id = '{}'",
            db.t("inbox"),
            bad.id
        ))
        .await;
    assert_eq!(bad_inbox, 0, "no inbox row for a rolled-back message");
    // The messages of the bad one's key after it waited for it: written after
    // it was given up, in order.
    let order = app.order_per_key().await;
    let key0: Vec<String> = all
        .iter()
        .filter(|m| m.key.as_deref() == Some("key-0") && m.id != bad.id)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(order["key-0"], key0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_across_many_keys() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 400, 40);
    db.store.append_log(&msgs).await.unwrap();
    let app = Arc::new(App::new(&db, |_| Act::Commit).await);
    let consumer = start(
        &db,
        topic,
        app.clone(),
        ConsumerConfig {
            concurrency: 8,
            batch_size: 50,
            ..consumer_config(group)
        },
    );
    wait_settled(&consumer, "every message processed", 400).await;
    consumer.shutdown().await.unwrap();
    assert_eq!(consumer.stats().processed, 400);

    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for m in &msgs {
        expected
            .entry(m.key.clone().unwrap())
            .or_default()
            .push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(app.order_per_key().await, expected);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_before_the_ack_is_deduplicated() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 30, 3);
    db.store.append_log(&msgs).await.unwrap();
    let victim = msgs[12].id;
    let crashing = Arc::new(
        App::new(&db, move |m| {
            if m.id == victim {
                Act::CommitThenHang
            } else {
                Act::Commit
            }
        })
        .await,
    );
    let consumer = start(&db, topic, crashing.clone(), consumer_config(group));
    tokio::time::timeout(WAIT, crashing.committed_then_hung.notified())
        .await
        .expect("the victim committed");
    assert!(crashing.hung.load(Ordering::SeqCst));
    // The victim's writes are committed, its outcome never reported: abort.
    drop(consumer);
    assert_eq!(crashing.rows().await.get(&victim), Some(&1));
    let source_key = format!("log:{topic}:0/1");
    let position = db.store.position(group, &source_key).await.unwrap();
    let victim_position = 13;
    assert!(
        position.is_none_or(|p| p < victim_position),
        "nothing acknowledged past an unreported delivery: {position:?}"
    );

    let app = Arc::new(App::new(&db, |_| Act::Commit).await);
    let restarted = start(&db, topic, app.clone(), consumer_config(group));
    wait_for("the rest processed", WAIT, async || {
        let rows = app.rows().await;
        let s = restarted.stats();
        if rows.len() == 30 && s.processed + s.duplicates == 30 - position.unwrap_or(0) as u64 {
            Ok(())
        } else {
            Err(format!("{} rows, {s:?}", rows.len()))
        }
    })
    .await;
    restarted.shutdown().await.unwrap();
    assert_eq!(app.calls(victim), 1, "the victim was delivered again");
    assert!(restarted.stats().duplicates >= 1, "{:?}", restarted.stats());
    let rows = app.rows().await;
    assert!(
        msgs.iter().all(|m| rows.get(&m.id) == Some(&1)),
        "every business row exactly once: {rows:?}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_group_share_the_messages() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 100, 20);
    db.store.append_log(&msgs).await.unwrap();
    let app = Arc::new(App::new(&db, |_| Act::Commit).await);
    let members: Vec<Consumer> = (0..2)
        .map(|member| {
            let source = DatabaseSource::new(
                db.store.clone(),
                DatabaseSourceConfig {
                    member,
                    size: 2,
                    ..DatabaseSourceConfig::new(topic, group)
                },
            )
            .unwrap();
            Consumer::start_host(
                db.store.clone(),
                source,
                app.clone(),
                Placeholders::Dollar,
                consumer_config(group),
            )
            .unwrap()
        })
        .collect();
    wait_for("every message processed", WAIT, async || {
        let n: u64 = members.iter().map(|c| c.stats().processed).sum();
        if n >= 100 {
            Ok(())
        } else {
            Err(format!("{n} processed"))
        }
    })
    .await;
    for c in &members {
        c.shutdown().await.unwrap();
    }
    assert!(members.iter().all(|c| c.stats().processed > 0));
    let total: u64 = members.iter().map(|c| c.stats().processed).sum();
    assert_eq!(total, 100);
    let rows = app.rows().await;
    assert!(msgs.iter().all(|m| rows.get(&m.id) == Some(&1)));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_statement_in_every_placeholder_style() {
    let db = TestDb::new(Backend::Postgres).await;
    let id = Message::new("t", b"x".to_vec()).id;
    let inbox = db.t("inbox");
    for (style, marks) in [
        (Placeholders::Dollar, ["$1", "$2"]),
        (Placeholders::Percent, ["%s", "%s"]),
        (Placeholders::Question, ["?", "?"]),
        (Placeholders::Pyformat, ["%(p1)s", "%(p2)s"]),
        (Placeholders::Named, [":p1", ":p2"]),
    ] {
        let s = db.store.inbox_statement("g", id, style).unwrap();
        assert!(
            s.sql.starts_with(&format!("INSERT INTO {inbox} ")),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains(&format!(
                "VALUES ({}, CAST(CAST({} AS text) AS uuid), now())",
                marks[0], marks[1]
            )),
            "{style:?}: {}",
            s.sql
        );
        assert!(!s.sql.contains("::"), "no `::` casts: {}", s.sql);
        assert_eq!(
            s.params,
            vec![Value::from("g"), Value::Text(id.to_string())]
        );
        let names: Vec<String> = if matches!(style, Placeholders::Pyformat | Placeholders::Named) {
            vec!["p1".into(), "p2".into()]
        } else {
            vec![]
        };
        assert_eq!(s.names, names);
    }
    // The SQLite store's statement, run on an application's own connection.
    let lite = TestDb::new(Backend::Sqlite).await;
    let s = lite
        .store
        .inbox_statement("g", id, Placeholders::Question)
        .unwrap();
    assert_eq!(s.params.len(), 3);
    let delivery = HostDelivery {
        message: Message::new("t", b"x".to_vec()),
        inbox: s,
    };
    let pool = sqlx::SqlitePool::connect(&lite.url).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert!(delivery.insert_inbox_sqlite(&mut conn).await.unwrap());
    assert!(!delivery.insert_inbox_sqlite(&mut conn).await.unwrap());
    drop(conn);
    pool.close().await;
    lite.cleanup().await;
    db.cleanup().await;
}

/// The run's one inbox statement inserts every new message once and returns
/// exactly those ids: not one the group processed before, and not a second
/// occurrence within the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_inbox_statement_returns_only_the_new_ids() {
    let db = TestDb::new(Backend::Postgres).await;
    let [old, a, b] = [(); 3].map(|_| Message::new("t", b"x".to_vec()).id);
    let pool = PgPool::connect(&db.url).await.unwrap();
    let first = db
        .store
        .inbox_run_statement("g", &[old], Placeholders::Dollar)
        .unwrap();
    let run = |inbox| HostRun {
        deliveries: Vec::new(),
        inbox,
    };
    let mut conn = pool.acquire().await.unwrap();
    let inserted = run(first).insert_inbox_pg(&mut conn).await.unwrap();
    assert_eq!(inserted, [old].into_iter().collect());
    let second = db
        .store
        .inbox_run_statement("g", &[a, old, b, a], Placeholders::Dollar)
        .unwrap();
    assert_eq!(second.params.len(), 2);
    assert!(second.sql.ends_with("RETURNING CAST(message_id AS text)"));
    // The text is the same for every run, so drivers can prepare it.
    let other = db
        .store
        .inbox_run_statement("g", &[b], Placeholders::Dollar)
        .unwrap();
    assert_eq!(other.sql, second.sql);
    let inserted = run(second).insert_inbox_pg(&mut conn).await.unwrap();
    assert_eq!(inserted, [a, b].into_iter().collect());
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {} WHERE consumer_group = 'g'",
        db.t("inbox")
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(rows, 3);
    for (style, mark) in [
        (
            Placeholders::Percent,
            "SELECT %s, CAST(id AS uuid), now() FROM unnest(string_to_array(CAST(%s AS text), ','))",
        ),
        (
            Placeholders::Named,
            "SELECT :p1, CAST(id AS uuid), now() FROM unnest(string_to_array(CAST(:p2 AS text), ','))",
        ),
    ] {
        let s = db.store.inbox_run_statement("g", &[a, b], style).unwrap();
        assert!(s.sql.contains(mark), "{style:?}: {}", s.sql);
    }
    assert!(db
        .store
        .inbox_run_statement("g", &[], Placeholders::Dollar)
        .is_err());
    drop(conn);
    pool.close().await;
    // SQLite: the same statement shape, returning the inserted ids.
    let lite = TestDb::new(Backend::Sqlite).await;
    let s = lite
        .store
        .inbox_run_statement("g", &[a, b, a], Placeholders::Question)
        .unwrap();
    assert_eq!(s.params.len(), 3);
    let pool = sqlx::SqlitePool::connect(&lite.url).await.unwrap();
    let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(s.sql.clone()));
    for p in &s.params {
        q = match p {
            Value::Text(t) => q.bind(t.clone()),
            Value::Int(i) => q.bind(*i),
            other => panic!("unexpected parameter {other:?}"),
        };
    }
    let mut ids = q.fetch_all(&pool).await.unwrap();
    ids.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(ids, want);
    pool.close().await;
    lite.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_to_the_host_in_one_call_and_is_acknowledged_after_its_commit() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 60, 1);
    db.store.append_log(&msgs).await.unwrap();
    let app = Arc::new(RunApp::new(&db, topic, group, &msgs, |_| Act::Commit).await);

    let consumer = start(&db, topic, app.clone(), consumer_config(group));
    wait_settled(&consumer, "every message processed", 60).await;
    consumer.shutdown().await.unwrap();

    let stats = consumer.stats();
    assert_eq!((stats.processed, stats.duplicates), (60, 0), "{stats:?}");
    let runs = app.runs();
    assert!(
        runs.iter().any(|&n| n > 1),
        "consecutive messages handed over together: {runs:?}"
    );
    assert!(
        runs.iter().sum::<usize>() <= 60,
        "no message twice: {runs:?}"
    );
    assert!(
        app.acked_early.lock().unwrap().is_empty(),
        "{:?}",
        app.acked_early.lock().unwrap()
    );
    assert_eq!(
        db.store
            .position(group, &format!("log:{topic}:0/1"))
            .await
            .unwrap(),
        Some(60),
        "everything acknowledged once committed"
    );
    let rows = app.app.rows().await;
    assert!(msgs.iter().all(|m| rows.get(&m.id) == Some(&1)), "{rows:?}");
    assert!(msgs.iter().all(|m| app.app.calls(m.id) == 1));
    let payloads: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(app.app.order_per_key().await["key-0"], payloads);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_in_a_run_is_retried_alone_and_the_others_take_effect_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (topic, group) = ("orders", "billing");
    let msgs = messages(topic, 40, 1);
    db.store.append_log(&msgs).await.unwrap();
    let (bad, rejected) = (msgs[10].id, msgs[25].id);
    let app = Arc::new(
        RunApp::new(&db, topic, group, &msgs, move |m| {
            if m.id == bad {
                Act::Fail
            } else if m.id == rejected {
                Act::Reject
            } else {
                Act::Commit
            }
        })
        .await,
    );

    let consumer = start(
        &db,
        topic,
        app.clone(),
        ConsumerConfig {
            max_retries: 2,
            ..consumer_config(group)
        },
    );
    wait_settled(&consumer, "all settled", 40).await;
    consumer.shutdown().await.unwrap();

    let stats = consumer.stats();
    assert_eq!(
        (
            stats.processed,
            stats.duplicates,
            stats.retried,
            stats.dead_lettered
        ),
        (38, 0, 2, 2),
        "{stats:?}"
    );
    let runs = app.runs();
    assert!(runs.iter().any(|&n| n > 1), "{runs:?}");
    assert_eq!(
        app.app.calls(bad),
        3,
        "first attempt (in its run) + max_retries"
    );
    assert_eq!(app.app.calls(rejected), 1, "rejected once, not tried again");
    let dead = db.store.dead_letters(10).await.unwrap();
    let attempts: HashMap<Uuid, u32> = dead.iter().map(|d| (d.message.id, d.attempts)).collect();
    assert_eq!(
        attempts,
        HashMap::from([(bad, 3), (rejected, 1)]),
        "the failing one retried, the rejected one dead-lettered at once"
    );
    let rows = app.app.rows().await;
    assert!(!rows.contains_key(&bad) && !rows.contains_key(&rejected));
    assert!(
        msgs.iter()
            .filter(|m| m.id != bad && m.id != rejected)
            .all(|m| rows.get(&m.id) == Some(&1)),
        "every other message took effect once: {rows:?}"
    );
    let good: Vec<String> = msgs
        .iter()
        .filter(|m| m.id != bad && m.id != rejected)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(app.app.order_per_key().await["key-0"], good, "order kept");
    assert_eq!(
        db.store
            .position(group, &format!("log:{topic}:0/1"))
            .await
            .unwrap(),
        Some(40)
    );
    db.cleanup().await;
}
