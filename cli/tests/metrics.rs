//! What a real `relaybox relay` process tells its operators: `--listen`'s
//! /healthz, /readyz and /metrics, scraped by a real Prometheus server whose
//! HTTP API the test queries, and its spans, exported over OTLP/HTTP to a
//! receiver that decodes them with the OpenTelemetry protocol's own
//! definitions (`opentelemetry-proto`).
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` (PostgreSQL), and
//! `RELAYBOX_PROMETHEUS_URL` and `RELAYBOX_PROMETHEUS_TARGETS_DIR` from
//! `dev/services start prometheus && eval "$(dev/services env)"`: the test
//! registers its relay as a scrape target by writing a file_sd file there.
//! The tests fail, never skip, without them. Each test uses its own table
//! prefix and port.

#[path = "../../core/tests/support/private_redis.rs"]
mod private_redis;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaybox::sqlx::{self, AssertSqlSafe};
use relaybox::{Message, Store, StoreOptions};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use private_redis::PrivateRedis;
use prost::Message as _;

/// Bound of every wait: generous, for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests run a real relay against a real PostgreSQL and a \
             real Prometheus and are never skipped; run `dev/services start postgres prometheus \
             && eval \"$(dev/services env)\"`"
        ),
    }
}

fn unique_prefix() -> String {
    format!("m_{:010x}_", rand_u64() & 0xff_ffff_ffff)
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    u64::from_le_bytes(bytes)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Polls `probe` until it returns `Ok`, at most [`WAIT`]; then fails with
/// what it observed last.
async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last observed: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A migrated store under a table prefix of its own; the tables are dropped
/// by [`TestDb::cleanup`].
struct TestDb {
    url: String,
    prefix: String,
    store: Store,
}

impl TestDb {
    async fn new() -> TestDb {
        let url = env("RELAYBOX_TEST_DATABASE_URL");
        let prefix = unique_prefix();
        let options = StoreOptions {
            table_prefix: prefix.clone(),
            ..StoreOptions::default()
        };
        let store = Store::connect_with(&url, options).await.expect("connect");
        store.migrate().await.expect("migrate");
        TestDb { url, prefix, store }
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        let tx = self.store.begin().await.expect("begin");
        tx.enqueue_batch(&messages).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }

    async fn cleanup(self) {
        let pool = self.store.pg_pool().expect("PostgreSQL store").clone();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             AND starts_with(tablename, $1)",
        )
        .bind(&self.prefix)
        .fetch_all(&pool)
        .await
        .expect("list tables");
        for t in tables {
            sqlx::query(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS \"{t}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .expect("drop table");
        }
        self.store.close().await;
    }
}

/// A `relaybox relay --listen` process; killed when dropped, its log
/// printed when the test fails.
struct RelayProcess {
    child: Option<Child>,
    address: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start(database_url: &str, prefix: &str) -> RelayProcess {
        RelayProcess::start_with(database_url, prefix, "")
    }

    /// A relay whose configuration file ends with `more` (a `[transport]`).
    fn start_with(database_url: &str, prefix: &str, more: &str) -> RelayProcess {
        RelayProcess::start_with_env(database_url, prefix, more, &[])
    }

    /// Like [`start_with`](Self::start_with), with more environment variables.
    fn start_with_env(
        database_url: &str,
        prefix: &str,
        more: &str,
        vars: &[(&str, &str)],
    ) -> RelayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[relay]\npoll_interval = \"200ms\"\nlease_ttl = \"3s\"\nmetrics_interval = \"200ms\"\n{more}"
            ),
        )
        .expect("write relay.toml");
        let log = dir.path().join("relay.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_relaybox"))
            .args(["relay", "--listen", &port.to_string(), "--config"])
            .arg(&config)
            .env("RELAYBOX_DATABASE_URL", database_url)
            .env("RELAYBOX_TABLE_PREFIX", prefix)
            .env("RUST_LOG", "info")
            .env_remove("RELAYBOX_LISTEN")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("relay log"))
            .spawn()
            .expect("run relaybox relay");
        RelayProcess {
            child: Some(child),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// GETs `path`: the status code and body, or the connection error.
    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let response = http()
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    }

    /// Waits until GET `path` answers `status`; returns the body.
    async fn wait_status(&self, path: &str, status: u16) -> String {
        wait_for(
            &format!("GET {path} to answer {status}"),
            async || match self.get(path).await {
                Ok((s, body)) if s == status => Ok(body),
                other => Err(format!("{other:?}\n{}", self.log_text())),
            },
        )
        .await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for exit status 0.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait for the relay");
        assert!(
            status.success(),
            "relay exited {status}\n{}",
            self.log_text()
        );
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("relay log:\n{}", self.log_text());
            }
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// A scrape target registered with the test Prometheus (a file_sd file),
/// labelled `relaybox_test=<name>`; removed when dropped.
struct Target {
    file: PathBuf,
    name: String,
}

impl Target {
    fn add(address: SocketAddr, name: &str) -> Target {
        let dir = PathBuf::from(env("RELAYBOX_PROMETHEUS_TARGETS_DIR"));
        std::fs::create_dir_all(&dir).expect("targets dir");
        let file = dir.join(format!("{name}.json"));
        let body = serde_json::json!([{
            "targets": [address.to_string()],
            "labels": {"relaybox_test": name},
        }]);
        // Written whole, then renamed: Prometheus never reads half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body.to_string()).expect("write target file");
        std::fs::rename(&tmp, &file).expect("rename target file");
        Target {
            file,
            name: name.to_string(),
        }
    }

    /// The value of instant query `name{relaybox_test="...",extra}`, when
    /// Prometheus has exactly one series for it.
    async fn query(&self, name: &str, extra: &str) -> Result<f64, String> {
        let query = format!("{name}{{relaybox_test=\"{}\"{extra}}}", self.name);
        let url = format!("{}/api/v1/query", env("RELAYBOX_PROMETHEUS_URL"));
        let body: serde_json::Value = http()
            .get(url)
            .query(&[("query", &query)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let result = body["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("{query}: {body}"))?;
        match result.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{query}: {body}")),
            _ => Err(format!("{query}: {body}")),
        }
    }

    /// Waits until `query(name, extra)` is `want`.
    async fn wait_value(&self, name: &str, extra: &str, want: f64) {
        wait_for(
            &format!("Prometheus to show {name}{extra} = {want}"),
            async || match self.query(name, extra).await {
                Ok(v) if v == want => Ok(()),
                Ok(v) => Err(format!("{v}")),
                Err(e) => Err(e),
            },
        )
        .await
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_backlog_fill_and_drain() {
    let db = TestDb::new().await;
    let relay = RelayProcess::start(&db.url, &db.prefix);
    assert_eq!(relay.wait_status("/healthz", 200).await, "ok\n");
    relay.wait_status("/readyz", 200).await;
    let target = Target::add(relay.address, db.prefix.trim_end_matches('_'));
    target.wait_value("up", "", 1.0).await;

    // The relay cannot deliver while the log table is locked: the messages
    // stay in the outbox, and the backlog gauge shows them.
    let topic = "metrics.orders";
    let pool = db.store.pg_pool().expect("PostgreSQL store").clone();
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE {}log IN EXCLUSIVE MODE",
        db.prefix
    )))
    .execute(&mut *lock)
    .await
    .expect("lock the log table");
    let n = 25;
    db.enqueue(
        (0..n)
            .map(|i| {
                Message::new(topic, format!("m{i}").into_bytes()).with_key(format!("k{}", i % 5))
            })
            .collect(),
    )
    .await;
    let by_topic = format!(",topic=\"{topic}\"");
    target
        .wait_value("relaybox_backlog_messages", &by_topic, f64::from(n))
        .await;
    let age = target
        .query("relaybox_oldest_pending_age_seconds", &by_topic)
        .await
        .expect("oldest pending age");
    assert!(age >= 0.0, "{age}");
    let held = target
        .query("relaybox_leases_held", "")
        .await
        .expect("leases held");
    assert!(held > 0.0, "{held}");

    // Delivery resumes: the backlog drains and every message counts once.
    lock.rollback().await.expect("unlock");
    target
        .wait_value("relaybox_backlog_messages", &by_topic, 0.0)
        .await;
    target
        .wait_value("relaybox_delivered_total", &by_topic, f64::from(n))
        .await;
    let last = target
        .query("relaybox_last_publish_timestamp_seconds", "")
        .await
        .expect("last publish time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > now - 600.0 && last <= now + 1.0, "{last} vs {now}");
    let batches = target
        .query("relaybox_batch_size_count", "")
        .await
        .expect("batch size histogram");
    assert!(batches >= 1.0, "{batches}");

    // The endpoint itself: Prometheus text, with help lines.
    let (status, text) = relay.get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE relaybox_delivered_total counter"),
        "{text}"
    );
    drop(target);
    relay.stop();
    db.cleanup().await;
}

/// A TCP proxy in front of PostgreSQL that the test can cut (refusing new
/// connections and closing the open ones) and restore on the same port.
struct Proxy {
    port: u16,
    upstream: String,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let mut proxy = Proxy {
            port: free_port(),
            upstream,
            accept: None,
            conns: Arc::default(),
        };
        proxy.restore().await;
        proxy
    }

    async fn restore(&mut self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .expect("bind the proxy port");
        let listener = socket.listen(64).expect("listen");
        let upstream = self.upstream.clone();
        let conns = self.conns.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `postgres://user@host:port/db` with `host:port` replaced by `address`.
fn through(url: &str, address: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match auth.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), auth),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    (format!("{scheme}://{user}{address}/{path}"), host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_while_the_database_is_unreachable() {
    let db = TestDb::new().await;
    let (_, upstream) = through(&db.url, "");
    let mut proxy = Proxy::start(upstream).await;
    let (proxied, _) = through(&db.url, &format!("127.0.0.1:{}", proxy.port));
    let relay = RelayProcess::start(&proxied, &db.prefix);

    let body = relay.wait_status("/readyz", 200).await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(ready["ready"], true, "{body}");
    assert_eq!(ready["problems"], serde_json::json!([]), "{body}");

    proxy.cut();
    let body = relay.wait_status("/readyz", 503).await;
    let unready: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(unready["ready"], false, "{body}");
    assert_eq!(unready["database"], false, "{body}");
    let problems = unready["problems"].to_string();
    assert!(problems.contains("database:"), "{body}");
    // The relay's transport is the database transport: it is down too.
    assert!(problems.contains("transport database:"), "{body}");
    // The process is alive all the same.
    assert_eq!(relay.get("/healthz").await.expect("GET /healthz").0, 200);

    proxy.restore().await;
    relay.wait_status("/readyz", 200).await;
    relay.stop();
    drop(proxy);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_going_away_and_coming_back() {
    let db = TestDb::new().await;
    let mut redis = PrivateRedis::start();
    let transport = format!(
        "[transport.redis]\nurl = \"redis://127.0.0.1:{}\"\n",
        redis.port
    );
    let relay = RelayProcess::start_with(&db.url, &db.prefix, &transport);
    relay.wait_status("/readyz", 200).await;

    redis.kill();
    let body = relay.wait_status("/readyz", 503).await;
    let unready: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(unready["database"], true, "{body}");
    assert!(
        unready["problems"].to_string().contains("transport redis"),
        "{body}"
    );
    assert_eq!(relay.get("/healthz").await.expect("GET /healthz").0, 200);

    redis.restart();
    relay.wait_status("/readyz", 200).await;
    relay.stop();
    db.cleanup().await;
}

/// An OTLP/HTTP receiver on a free port: every span of every
/// `POST /v1/traces` it decodes, with its resource's `service.name`.
struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let received = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP request");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                received.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    prost::Message::encode_to_vec(&ExportTraceServiceResponse::default())
                }
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("OTLP receiver");
        });
        OtlpReceiver {
            endpoint,
            spans,
            server,
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_exports_publish_spans_over_otlp_in_the_producers_trace() {
    let db = TestDb::new().await;
    let receiver = OtlpReceiver::start().await;
    let relay = RelayProcess::start_with_env(
        &db.url,
        &db.prefix,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_SERVICE_NAME", "relay-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    relay.wait_status("/readyz", 200).await;

    // A producer in another process and language wrote its trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let message = Message::new("traces.orders", b"{}".to_vec())
        .with_header("traceparent", format!("00-{trace}-{parent}-01"));
    let id = message.id;
    db.enqueue(vec![message]).await;

    let span = wait_for(
        "the relay's publish span at the OTLP receiver",
        async || {
            let spans = receiver.spans.lock().unwrap();
            spans
                .iter()
                .find(|(_, s)| s.name == "publish traces.orders")
                .cloned()
                .ok_or_else(|| format!("{} spans so far\n{}", spans.len(), relay.log_text()))
        },
    )
    .await;
    let (service, span) = span;
    assert!(
        service.contains("relay-under-test"),
        "service.name {service}"
    );
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), parent);
    let attribute = |key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default()
    };
    assert!(attribute("messaging.message.id").contains(&id.to_string()));
    assert!(attribute("messaging.system").contains("relaybox.database"));
    relay.stop();
    db.cleanup().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
