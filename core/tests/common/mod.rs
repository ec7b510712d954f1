//! Helpers shared by the integration tests: databases (real PostgreSQL and a
//! SQLite temp file), unique table prefixes, a recording handler, test sinks,
//! log readers and a bounded `wait_for`.
//!
//! Every test opens its own [`TestDb`], whose tables carry a unique prefix
//! (`t_<random>_`), so tests run in parallel in one PostgreSQL database.
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaybox::sqlx::{self, AssertSqlSafe};
use relaybox::store::LogEntry;
use relaybox::{
    BoxError, Consumer, ConsumerConfig, DatabaseSink, DatabaseSource, DatabaseSourceConfig,
    Handler, Message, Relay, RelayConfig, Sink, Store, StoreOptions, Transaction, Value,
};
use tempfile::TempDir;
use tokio::time::Instant;
use uuid::Uuid;

/// The environment variable holding the test database URL.
pub const PG_ENV: &str = "RELAYBOX_TEST_DATABASE_URL";

/// Default bound of every wait: generous, for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// The PostgreSQL test database URL; fails the test loudly when it is not set.
pub fn pg_url() -> String {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{PG_ENV} is not set: relaybox's integration tests run against a real PostgreSQL \
             and are never skipped. Start it and export the URL with \
             `dev/services start && eval \"$(dev/services env)\"`, or set {PG_ENV} to e.g. \
             postgres://postgres@127.0.0.1:5432/relaybox_test"
        ),
    }
}

/// A table prefix no other test uses: `t_<10 hex digits>_`.
pub fn unique_prefix() -> String {
    let r: u64 = rand::random();
    format!("t_{:010x}_", r & 0xff_ffff_ffff)
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=relaybox=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs an `async fn scenario(backend: Backend)` once per backend, as the
/// tests `scenario::postgres` and `scenario::sqlite`.
macro_rules! dialect_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(crate::common::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::common::Backend::Sqlite).await
                }
            }
        )*
    };
}

/// A database with relaybox tables under a unique prefix, plus two test
/// tables: `<prefix>orders (id, note)` for business writes of producers and
/// `<prefix>handled (message_id, topic, msg_key, member)` for handlers.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub prefix: String,
    pub options: StoreOptions,
    pub store: Store,
    cleaned: AtomicBool,
    _dir: Option<Arc<TempDir>>,
}

impl TestDb {
    /// A migrated database with default options (but a unique prefix).
    pub async fn new(backend: Backend) -> TestDb {
        TestDb::with_options(backend, |_| {}).await
    }

    /// A migrated database; `tweak` adjusts the options (the prefix is set already).
    pub async fn with_options(backend: Backend, tweak: impl FnOnce(&mut StoreOptions)) -> TestDb {
        let db = TestDb::unmigrated(backend, tweak).await;
        db.store.migrate().await.expect("migrate");
        db.create_test_tables().await;
        db
    }

    /// Connected, nothing created yet.
    pub async fn unmigrated(backend: Backend, tweak: impl FnOnce(&mut StoreOptions)) -> TestDb {
        init_tracing();
        let prefix = unique_prefix();
        let mut options = StoreOptions {
            table_prefix: prefix.clone(),
            ..StoreOptions::default()
        };
        tweak(&mut options);
        let (url, dir) = match backend {
            Backend::Postgres => (pg_url(), None),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("relaybox.db");
                (format!("sqlite://{}", path.display()), Some(Arc::new(dir)))
            }
        };
        let store = Store::connect_with(&url, options.clone())
            .await
            .unwrap_or_else(|e| panic!("cannot open the {backend:?} test store: {e}"));
        TestDb {
            backend,
            url,
            prefix,
            options,
            store,
            cleaned: AtomicBool::new(false),
            _dir: dir,
        }
    }

    /// Another, independent handle (own pool) on the same database and prefix.
    pub async fn open_store(&self) -> Store {
        self.open_store_with(|_| {}).await
    }

    /// Like [`open_store`](Self::open_store) with adjusted options.
    pub async fn open_store_with(&self, tweak: impl FnOnce(&mut StoreOptions)) -> Store {
        let mut options = self.options.clone();
        tweak(&mut options);
        Store::connect_with(&self.url, options)
            .await
            .expect("second store handle")
    }

    /// A table name with this test's prefix.
    pub fn t(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The n-th (1-based) parameter placeholder of this dialect.
    pub fn ph(&self, n: usize) -> String {
        placeholder(self.backend, n)
    }

    async fn create_test_tables(&self) {
        self.exec(&format!(
            "CREATE TABLE {} (id TEXT PRIMARY KEY, note TEXT NOT NULL)",
            self.t("orders")
        ))
        .await;
        self.exec(&format!(
            "CREATE TABLE {} (message_id TEXT NOT NULL, topic TEXT NOT NULL, msg_key TEXT, member BIGINT NOT NULL)",
            self.t("handled")
        ))
        .await;
    }

    /// Runs SQL (no parameters, no result) outside any transaction.
    pub async fn exec(&self, sql: &str) {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_string()));
        let r = match self.backend {
            Backend::Postgres => q.execute(self.store.pg_pool().unwrap()).await.map(|_| ()),
            Backend::Sqlite => q
                .execute(self.store.sqlite_pool().unwrap())
                .await
                .map(|_| ()),
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs a query returning one integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()));
        let r = match self.backend {
            Backend::Postgres => q.fetch_one(self.store.pg_pool().unwrap()).await,
            Backend::Sqlite => {
                let q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()));
                q.fetch_one(self.store.sqlite_pool().unwrap()).await
            }
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Rows in `<prefix><table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {}", self.t(table)))
            .await
    }

    /// Business rows written by handlers, per message id.
    pub async fn handled_rows(&self) -> HashMap<Uuid, i64> {
        let sql = format!(
            "SELECT message_id, count(*) AS n FROM {} GROUP BY message_id",
            self.t("handled")
        );
        let rows: Vec<(String, i64)> = match self.backend {
            Backend::Postgres => sqlx::query_as(AssertSqlSafe(sql))
                .fetch_all(self.store.pg_pool().unwrap())
                .await
                .expect("handled rows"),
            Backend::Sqlite => sqlx::query_as(AssertSqlSafe(sql))
                .fetch_all(self.store.sqlite_pool().unwrap())
                .await
                .expect("handled rows"),
        };
        rows.into_iter()
            .map(|(id, n)| (Uuid::parse_str(&id).expect("uuid in handled"), n))
            .collect()
    }

    /// Inserts a business row and enqueues `messages` in the caller's own sqlx
    /// transaction (`store.enqueue(&mut *tx, ..)`), then commits or rolls back.
    /// Returns what the enqueue returned; the transaction is finished either way.
    pub async fn own_tx(
        &self,
        order_id: Option<&str>,
        messages: &[Message],
        commit: bool,
    ) -> relaybox::Result<Vec<Uuid>> {
        let insert = format!(
            "INSERT INTO {} (id, note) VALUES ({}, 'own tx')",
            self.t("orders"),
            self.ph(1)
        );
        let store = &self.store;
        let enqueue_result;
        match self.backend {
            Backend::Postgres => {
                let mut tx = store.pg_pool().unwrap().begin().await?;
                if let Some(id) = order_id {
                    sqlx::query(AssertSqlSafe(insert))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                enqueue_result = if let [m] = messages {
                    store.enqueue(&mut *tx, m.clone()).await.map(|id| vec![id])
                } else {
                    store.enqueue_batch(&mut *tx, messages).await
                };
                if commit {
                    tx.commit().await?
                } else {
                    tx.rollback().await?
                }
            }
            Backend::Sqlite => {
                let mut tx = store.sqlite_pool().unwrap().begin().await?;
                if let Some(id) = order_id {
                    sqlx::query(AssertSqlSafe(insert))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                enqueue_result = if let [m] = messages {
                    store.enqueue(&mut *tx, m.clone()).await.map(|id| vec![id])
                } else {
                    store.enqueue_batch(&mut *tx, messages).await
                };
                if commit {
                    tx.commit().await?
                } else {
                    tx.rollback().await?
                }
            }
        }
        enqueue_result
    }

    /// Enqueues `messages` in one owned transaction and commits.
    pub async fn enqueue_committed(&self, messages: &[Message]) {
        let tx = self.store.begin().await.expect("begin");
        tx.enqueue_batch(messages).await.expect("enqueue_batch");
        tx.commit().await.expect("commit");
    }

    /// Drops this test's tables (PostgreSQL; SQLite files go with their temp
    /// dir). Best effort: stop relays and consumers first. Dropping the
    /// `TestDb` does the same, so a failed test leaves nothing behind either.
    pub async fn cleanup(&self) {
        if self.backend == Backend::Postgres && !self.cleaned.swap(true, Ordering::SeqCst) {
            drop_prefixed_tables(&self.url, &self.prefix).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres || self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        // Possibly unwinding from a failed assertion inside a runtime: clean
        // up on a thread of our own.
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_prefixed_tables(&url, &prefix));
            }
        })
        .join();
    }
}

/// Drops every table (and trigger function) whose name starts with `prefix`,
/// on a connection of its own. Best effort: failures are only printed.
pub async fn drop_prefixed_tables(url: &str, prefix: &str) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return;
    };
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND left(tablename, length($1)) = $1",
    )
    .bind(prefix)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let mut sql = String::from("SET lock_timeout = '2s';");
    if !tables.is_empty() {
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {} CASCADE;",
            tables.join(", ")
        ));
    }
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
        eprintln!("cleanup of {prefix}* failed (ignored): {e}");
    }
    let _ = conn.close().await;
}

/// The n-th (1-based) parameter placeholder of a dialect.
pub fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => format!("?{n}"),
    }
}

/// Polls `probe` until it returns `Ok`, at most `timeout`; then fails the test
/// with what `probe` observed last (its `Err` text).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(observed) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observed: {observed}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Waits up to `timeout` until the outbox of `store` holds exactly `pending`
/// undelivered messages; on a timeout it panics naming `what`, the last
/// count and, when given, the relay's stats.
pub async fn wait_pending(
    store: &Store,
    pending: i64,
    what: &str,
    timeout: Duration,
    relay: Option<&Relay>,
) {
    wait_for(what, timeout, async || match store.pending_count().await {
        Ok(n) if n == pending => Ok(()),
        Ok(n) => Err(match relay {
            Some(relay) => format!("{n} pending, relay stats {:?}", relay.stats()),
            None => format!("{n} pending"),
        }),
        Err(e) => Err(e.to_string()),
    })
    .await
}

/// Waits up to `timeout` until every message in the outbox of `store` is
/// delivered (see [`wait_pending`]).
pub async fn wait_until_drained(store: &Store, timeout: Duration, relay: Option<&Relay>) {
    wait_pending(store, 0, "an empty outbox", timeout, relay).await
}

/// Relay settings for tests: short lease, fast polling, small backoff.
pub fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 200,
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(2),
        max_attempts: 10,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        ..RelayConfig::default()
    }
}

/// Consumer settings for tests: fast polling, small retry delays.
pub fn consumer_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 100,
        concurrency: 4,
        max_retries: 3,
        retry_delay: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        poll_interval: Duration::from_millis(100),
        ..ConsumerConfig::new(group)
    }
}

/// Starts a relay publishing to the log table of `store`.
pub fn start_db_relay(store: &Store, config: RelayConfig) -> Relay {
    Relay::start(
        store.clone(),
        Arc::new(DatabaseSink::new(store.clone())),
        config,
    )
    .expect("relay start")
}

/// Starts a single-member consumer of `topic` in `group` running `handler`.
pub fn start_consumer(store: &Store, topic: &str, group: &str, handler: Arc<Recorder>) -> Consumer {
    let source = DatabaseSource::new(store.clone(), DatabaseSourceConfig::new(topic, group))
        .expect("database source");
    Consumer::start(store.clone(), source, handler, consumer_config(group)).expect("consumer start")
}

/// Every log entry of `topic`, in position order.
pub async fn read_all_log(store: &Store, topic: &str) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.position);
        let page = store.read_log(topic, after, 5000).await.expect("read_log");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Distinct message ids in the log of `topic`.
pub async fn log_ids(store: &Store, topic: &str) -> HashSet<Uuid> {
    read_all_log(store, topic)
        .await
        .into_iter()
        .map(|e| e.message.id)
        .collect()
}

/// Waits until every id of `messages` is in the log of `topic`; returns the log.
pub async fn wait_in_log(
    store: &Store,
    topic: &str,
    messages: &[Message],
    timeout: Duration,
) -> Vec<LogEntry> {
    wait_for(
        &format!("{} messages in the log of {topic}", messages.len()),
        timeout,
        async || {
            let log = read_all_log(store, topic).await;
            let ids: HashSet<Uuid> = log.iter().map(|e| e.message.id).collect();
            let missing = messages.iter().filter(|m| !ids.contains(&m.id)).count();
            if missing == 0 {
                Ok(log)
            } else {
                Err(format!(
                    "{} log entries, {missing} of the expected messages missing, pending_count={:?}",
                    log.len(),
                    store.pending_count().await
                ))
            }
        },
    )
    .await
}

/// Asserts that every message is in `log` and that, per key, the first
/// appearance of each message comes in enqueue order (`messages` order).
pub fn assert_order_per_key(log: &[LogEntry], messages: &[Message]) {
    let mut first: HashMap<Uuid, i64> = HashMap::new();
    for e in log {
        first.entry(e.message.id).or_insert(e.position);
    }
    let mut last_per_key: HashMap<Option<&str>, (i64, Uuid)> = HashMap::new();
    for m in messages {
        let pos = *first
            .get(&m.id)
            .unwrap_or_else(|| panic!("message {} (key {:?}) was lost", m.id, m.key));
        if m.key.is_none() {
            continue;
        }
        if let Some((prev, prev_id)) = last_per_key.get(&m.key.as_deref()) {
            assert!(
                pos > *prev,
                "order of key {:?} broken: {} (enqueued later) is at log position {pos}, \
                 before {prev_id} at {prev}",
                m.key,
                m.id
            );
        }
        last_per_key.insert(m.key.as_deref(), (pos, m.id));
    }
}

/// `n` messages on `topic` over `keys` keys (`key-<i mod keys>`), payload `m<i>`.
pub fn messages(topic: &str, n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(topic, format!("m{i}").into_bytes())
                .with_key(format!("key-{}", i % keys))
                .with_type("TestEvent")
        })
        .collect()
}

type MessagePredicate = Box<dyn Fn(&Message) -> bool + Send + Sync>;

/// Lets a fixed number of handler calls through, then holds every further
/// call until [`Gate::open`]: a test can stop consumers midway through a
/// backlog however fast the machine runs.
pub struct Gate {
    limit: usize,
    admitted: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    pub fn new(limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limit,
            admitted: AtomicUsize::new(0),
            open: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether a call beyond the limit is being held.
    pub fn is_holding(&self) -> bool {
        self.admitted.load(Ordering::SeqCst) > self.limit && !*self.open.borrow()
    }

    /// Releases the held calls and every later one.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= self.limit {
            let mut open = self.open.subscribe();
            // The sender lives as long as the gate, so this cannot fail.
            let _ = open.wait_for(|o| *o).await;
        }
    }
}

/// A handler that counts its calls per message id and, unless told to fail,
/// writes one row per message to `<prefix>handled` through the consumer's
/// transaction (so the row commits atomically with the inbox row).
pub struct Recorder {
    table: String,
    backend: Backend,
    member: i64,
    delay: Duration,
    gate: Option<Arc<Gate>>,
    fail_when: Option<MessagePredicate>,
    calls: Mutex<HashMap<Uuid, u32>>,
    handled: Mutex<Vec<Message>>,
}

impl Recorder {
    pub fn new(db: &TestDb) -> Recorder {
        Recorder {
            table: db.t("handled"),
            backend: db.backend,
            member: 0,
            delay: Duration::ZERO,
            gate: None,
            fail_when: None,
            calls: Mutex::new(HashMap::new()),
            handled: Mutex::new(Vec::new()),
        }
    }

    /// Tags business rows with a group member number.
    pub fn member(mut self, member: i64) -> Recorder {
        self.member = member;
        self
    }

    /// Sleeps this long in every call.
    pub fn delay(mut self, delay: Duration) -> Recorder {
        self.delay = delay;
        self
    }

    /// Passes every call through `gate` before handling it.
    pub fn gate(mut self, gate: Arc<Gate>) -> Recorder {
        self.gate = Some(gate);
        self
    }

    /// Fails (returns `Err`) for every message matching `f`.
    pub fn failing(mut self, f: impl Fn(&Message) -> bool + Send + Sync + 'static) -> Recorder {
        self.fail_when = Some(Box::new(f));
        self
    }

    pub fn arc(self) -> Arc<Recorder> {
        Arc::new(self)
    }

    /// Calls per message id (failed calls included).
    pub fn calls(&self) -> HashMap<Uuid, u32> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls in total.
    pub fn total_calls(&self) -> u64 {
        self.calls
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    /// Messages handled successfully, in handling order.
    pub fn handled(&self) -> Vec<Message> {
        self.handled.lock().unwrap().clone()
    }

    pub fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, message: Message, tx: Transaction) -> Result<(), BoxError> {
        if let Some(gate) = &self.gate {
            gate.pass().await;
        }
        *self.calls.lock().unwrap().entry(message.id).or_default() += 1;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_when.as_ref().is_some_and(|f| f(&message)) {
            return Err(format!("test handler refuses message {}", message.id).into());
        }
        let ph = |n| placeholder(self.backend, n);
        let sql = format!(
            "INSERT INTO {} (message_id, topic, msg_key, member) VALUES ({}, {}, {}, {})",
            self.table,
            ph(1),
            ph(2),
            ph(3),
            ph(4)
        );
        tx.execute(
            &sql,
            &[
                Value::from(message.id.to_string()),
                Value::from(message.topic.clone()),
                Value::from(message.key.clone()),
                Value::from(self.member),
            ],
        )
        .await?;
        self.handled.lock().unwrap().push(message);
        Ok(())
    }
}

/// Asserts that each expected id was handled exactly once (calls and
/// committed business rows) and that nothing else was handled.
pub async fn assert_handled_once(db: &TestDb, recorders: &[&Recorder], expected: &[Uuid]) {
    let mut calls: HashMap<Uuid, u32> = HashMap::new();
    for r in recorders {
        for (id, n) in r.calls() {
            *calls.entry(id).or_default() += n;
        }
    }
    let expected_set: HashSet<Uuid> = expected.iter().copied().collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|id| calls.get(id).copied().unwrap_or(0) != 1)
        .take(5)
        .map(|id| (id, calls.get(id).copied().unwrap_or(0)))
        .collect();
    assert!(
        wrong.is_empty(),
        "handler not called exactly once for some messages (id, calls): {wrong:?}"
    );
    let extra: Vec<_> = calls
        .keys()
        .filter(|id| !expected_set.contains(id))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "handler called for unexpected ids {extra:?}"
    );
    let rows = db.handled_rows().await;
    let bad_rows: Vec<_> = expected
        .iter()
        .filter(|id| rows.get(id).copied().unwrap_or(0) != 1)
        .take(5)
        .map(|id| (id, rows.get(id).copied().unwrap_or(0)))
        .collect();
    assert!(
        bad_rows.is_empty(),
        "business rows not exactly one per message (id, rows): {bad_rows:?}"
    );
    assert_eq!(
        rows.len(),
        expected.len(),
        "business rows for unexpected messages"
    );
}

/// A sink that appends its first batch to the log table and then hangs (as a
/// relay that crashes after the broker acknowledged but before it recorded
/// the delivery). Later batches are appended normally, or hang too when
/// `hang_always` is set.
pub struct StallingSink {
    inner: DatabaseSink,
    hang_always: bool,
    calls: AtomicU64,
    stalled: AtomicBool,
}

impl StallingSink {
    pub fn new(store: &Store, hang_always: bool) -> Arc<StallingSink> {
        Arc::new(StallingSink {
            inner: DatabaseSink::new(store.clone()),
            hang_always,
            calls: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        })
    }

    /// Whether the first batch was appended and the sink is now hanging.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Sink for StallingSink {
    fn name(&self) -> &str {
        "stalling"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == 0 {
            let results = self.inner.publish(batch).await;
            assert!(results.iter().all(Result::is_ok), "first append failed");
            self.stalled.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return results;
        }
        if self.hang_always {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.inner.publish(batch).await
    }
}
