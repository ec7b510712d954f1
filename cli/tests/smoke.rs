//! The `relaybox` command end to end, as a user runs it: every command's
//! help, the schema, one-line errors without passwords, and the whole life
//! of a message on SQLite and on PostgreSQL (`RELAYBOX_TEST_DATABASE_URL`,
//! exported by `dev/services env`): migrate, status, dead letters listed,
//! retried and purged, a relay delivering, `tail` and `tail --follow`, and
//! signals stopping the long-running commands with exit status 0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use relaybox::sqlx::{self, Connection as _, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_relaybox");
const TOPIC: &str = "smoke.orders";

/// Variables that must not leak settings into the commands under test.
const CLEARED: [&str; 9] = [
    "RELAYBOX_DATABASE_URL",
    "RELAYBOX_CONFIG",
    "RELAYBOX_TABLE_PREFIX",
    "RELAYBOX_TRANSPORT",
    "RUST_LOG",
    "RELAYBOX_RELAY_BATCH_SIZE",
    "RELAYBOX_RELAY_POLL_INTERVAL",
    "RELAYBOX_RELAY_LEASE_TTL",
    "RELAYBOX_RELAY_MAX_ATTEMPTS",
];

/// A `relaybox` command with a clean environment.
fn rb(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in CLEARED {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd`; its output with stdout and stderr as text.
fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("run relaybox");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, out, err)
}

/// Runs `args`, which must succeed; returns stdout.
fn ok(args: &[&str]) -> String {
    ok_cmd(&mut rb(args))
}

fn ok_cmd(cmd: &mut Command) -> String {
    let (output, out, err) = run(cmd);
    assert!(output.status.success(), "{cmd:?} failed: {out}\n{err}");
    out
}

/// Runs `cmd`, which must fail with one `relaybox: ...` line on stderr; returns that line.
fn fails(cmd: &mut Command) -> String {
    let (output, out, err) = run(cmd);
    assert!(!output.status.success(), "{cmd:?} succeeded: {out}");
    assert_eq!(err.lines().count(), 1, "{cmd:?}: expected one line: {err}");
    assert!(err.starts_with("relaybox: "), "{cmd:?}: {err}");
    err
}

/// A fresh temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "relaybox-smoke-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn sqlite(&self, name: &str) -> String {
        format!("sqlite://{}", self.0.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A background `relaybox` process, killed if the test ends before it stops.
struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    fn start(dir: &TempDir, name: &str, args: &[&str]) -> Background {
        let stdout = dir.0.join(format!("{name}.out"));
        let stderr = dir.0.join(format!("{name}.err"));
        let child = rb(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn relaybox");
        Background {
            child,
            stdout,
            stderr,
        }
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` and returns the exit code (the process must exit within 30 s).
    fn stop(&mut self, signal: &str) -> i32 {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "no exit within 30 s of {signal}: {}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until true; fails naming `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn matches_line(text: &str, starts: &str, contains: &[&str]) -> bool {
    text.lines()
        .any(|l| l.starts_with(starts) && contains.iter().all(|c| l.contains(c)))
}

#[test]
fn help_lists_every_command_and_setting() {
    assert!(ok(&["--version"]).starts_with("relaybox 0."));
    let help = ok(&["--help"]);
    for cmd in [
        "migrate",
        "schema",
        "relay",
        "status",
        "dead-letters",
        "tail",
        "consumer",
    ] {
        assert!(help.contains(&format!("\n  {cmd} ")), "--help lists {cmd}");
    }
    for cmd in [
        &["migrate"][..],
        &["schema"],
        &["relay"],
        &["status"],
        &["dead-letters"],
        &["dead-letters", "list"],
        &["dead-letters", "retry"],
        &["dead-letters", "purge"],
        &["tail"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let text = ok(&args);
        assert!(text.contains("Usage: relaybox "), "{cmd:?}");
        assert!(text.contains("RELAYBOX_DATABASE_URL"), "{cmd:?}");
    }
    let relay = ok(&["relay", "--help"]);
    for var in [
        "RELAYBOX_RELAY_BATCH_SIZE",
        "RELAYBOX_RELAY_POLL_INTERVAL",
        "RELAYBOX_RELAY_LEASE_TTL",
        "RELAYBOX_RELAY_MAX_ATTEMPTS",
        "RELAYBOX_TRANSPORT",
        "[[route]]",
        "--check",
    ] {
        assert!(relay.contains(var), "relay --help documents {var}");
    }
}

#[test]
fn consumer_is_the_python_packages() {
    let err = fails(rb(&["consumer", "--app", "x"]).env("RELAYBOX_PYTHON", "/nonexistent/python3"));
    assert!(err.contains("RELAYBOX_PYTHON"), "{err}");
    // dev/test builds the package into the repository's .venv before this runs.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import relaybox"])
        .status()
        .is_ok_and(|s| s.success());
    if importable {
        let help = ok_cmd(rb(&["consumer", "--help"]).env("RELAYBOX_PYTHON", &python));
        assert!(help.starts_with("usage: relaybox consumer"), "{help}");
        assert!(help.contains("--app MODULE"), "{help}");
    }
}

#[test]
fn schema_prints_sql_and_rejects_bad_input() {
    let sqlite = ok(&["schema", "--dialect", "sqlite"]);
    assert!(sqlite.contains("CREATE TABLE IF NOT EXISTS relaybox_outbox"));
    let pg = ok(&[
        "schema",
        "--dialect",
        "postgres",
        "--prefix",
        "app_",
        "--partitions",
        "4",
    ]);
    assert!(pg.contains("CREATE TABLE IF NOT EXISTS app_outbox"));
    assert!(pg.contains("generate_series(0, 3)"));
    assert!(!pg.contains("relaybox_outbox"));
    let (output, _, _) = run(&mut rb(&["schema", "--dialect", "mysql"]));
    assert!(!output.status.success());
    let err = fails(&mut rb(&[
        "schema",
        "--dialect",
        "sqlite",
        "--prefix",
        "Bad-Prefix",
    ]));
    assert!(err.contains("table_prefix"), "{err}");
}

#[test]
fn errors_are_one_line_without_passwords() {
    let dir = TempDir::new("errors");
    let sqlite = dir.sqlite("e.db");
    let err = fails(&mut rb(&["status"]));
    assert!(err.contains("--database-url") && err.contains("RELAYBOX_DATABASE_URL"));

    let fast = dir.file("fast.toml", "[store]\nconnect_timeout = \"1s\"\n");
    let err = fails(&mut rb(&[
        "--config",
        &fast,
        "--database-url",
        "postgres://u:topsecret@127.0.0.1:1/x",
        "status",
    ]));
    assert!(!err.contains("topsecret"), "{err}");
    assert!(err.contains("postgres://u:***@127.0.0.1:1/x"), "{err}");
    let pg_port = std::env::var("RELAYBOX_TEST_DATABASE_URL")
        .ok()
        .and_then(|u| {
            u.rsplit_once(':')
                .map(|(_, rest)| rest.split('/').next().unwrap_or("5432").to_string())
        })
        .unwrap_or_else(|| "5432".into());
    let err = fails(&mut rb(&[
        "--database-url",
        &format!("postgres://smoke_nobody:topsecret@127.0.0.1:{pg_port}/relaybox_smoke_missing"),
        "migrate",
    ]));
    assert!(!err.contains("topsecret"), "{err}");

    let zero = dir.file("zero.toml", "[relay]\nbatch_size = 0\n");
    let err = fails(&mut rb(&[
        "--database-url",
        &sqlite,
        "--config",
        &zero,
        "relay",
    ]));
    assert!(err.contains("batch_size"), "{err}");
    let err =
        fails(rb(&["--database-url", &sqlite, "relay"]).env("RELAYBOX_RELAY_BATCH_SIZE", "lots"));
    assert!(
        err.contains("batch_size") && err.contains("RELAYBOX_RELAY_BATCH_SIZE"),
        "{err}"
    );
    let typo = dir.file("typo.toml", "[relay]\nbatch = 5\n");
    let err = fails(&mut rb(&[
        "--database-url",
        &sqlite,
        "--config",
        &typo,
        "relay",
    ]));
    assert!(err.contains("unknown field `batch`"), "{err}");
    let route = dir.file("route.toml", "[[route]]\ntopics = [\"a b\"]\n");
    let err = fails(&mut rb(&[
        "--database-url",
        &sqlite,
        "--config",
        &route,
        "relay",
        "--check",
    ]));
    assert!(
        err.contains("topic pattern") && err.contains("[[route]] #1"),
        "{err}"
    );

    let (output, _, _) = run(&mut rb(&[
        "--database-url",
        &sqlite,
        "dead-letters",
        "retry",
    ]));
    assert!(!output.status.success(), "retry needs ids or --all");
}

#[test]
fn sqlite_life_of_the_schema_and_a_relay() {
    let dir = TempDir::new("sqlite");
    let sqlite = dir.sqlite("smoke.db");

    let (output, _, err) = run(rb(&[
        "--log-format",
        "json",
        "--database-url",
        &dir.sqlite("json.db"),
        "migrate",
    ])
    .env("RUST_LOG", "info"));
    assert!(output.status.success(), "{err}");
    let first: serde_json::Value = serde_json::from_str(err.lines().next().unwrap()).unwrap();
    assert_eq!(first["level"], "INFO");
    assert!(first["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("migration applied"));

    let out = ok(&["--database-url", &sqlite, "migrate"]);
    assert!(
        out.starts_with("migrated sqlite://") && out.contains("smoke.db (schema version "),
        "{out}"
    );
    ok(&["--database-url", &sqlite, "migrate"]);

    let status = ok(&["--database-url", &sqlite, "status"]);
    assert!(matches_line(&status, "partitions", &[" 16 "]), "{status}");
    assert!(status.contains("no undelivered messages"));
    assert!(ok(&["--database-url", &sqlite, "status", "--json"]).contains("\"partitions\": 16"));
    assert!(ok(&["--database-url", &sqlite, "dead-letters", "list"]).contains("no dead letters"));
    assert_eq!(ok(&["--database-url", &sqlite, "tail", TOPIC]), "");

    // --check with routes: validates, connects, prints where topics go.
    let routes = dir.file(
        "routes.toml",
        "[[route]]\ntopics = [\"orders.*\"]\ndestination = \"eu.{topic}\"\n\
         [[route]]\ntopics = [\"billing\"]\n",
    );
    let check = ok(&[
        "--database-url",
        &sqlite,
        "--config",
        &routes,
        "relay",
        "--check",
    ]);
    assert!(
        check.contains("orders.* -> database (as eu.{topic}); billing -> database"),
        "{check}"
    );
    assert!(check.contains("16 partitions): ok"), "{check}");

    let mut relay = Background::start(&dir, "relay", &["--database-url", &sqlite, "relay"]);
    wait_for("the SQLite relay starts", Duration::from_secs(30), || {
        relay.err().contains("relay running")
    });
    assert_eq!(relay.stop("TERM"), 0, "{}", relay.err());
}

/// SQL on the test database.
struct Pg {
    rt: tokio::runtime::Runtime,
    conn: PgConnection,
}

impl Pg {
    fn connect(url: &str) -> Pg {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(PgConnection::connect(url))
            .expect("connect to the test database");
        Pg { rt, conn }
    }

    fn scalar(&mut self, sql: &str) -> String {
        let Pg { rt, conn } = self;
        rt.block_on(
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SELECT ({sql})::text")))
                .fetch_one(conn),
        )
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs an `INSERT ... RETURNING id` and returns the id as text.
    fn insert(&mut self, sql: &str) -> String {
        let Pg { rt, conn } = self;
        rt.block_on(
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "{sql} RETURNING id::text"
            )))
            .fetch_one(conn),
        )
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn drop_tables(&mut self, prefix: &str) {
        let tables: Vec<String> = relaybox::schema::TABLES
            .iter()
            .map(|t| format!("{prefix}{t}"))
            .collect();
        let sql = format!("DROP TABLE IF EXISTS {} CASCADE", tables.join(", "));
        let Pg { rt, conn } = self;
        rt.block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn))
            .expect("drop the test's tables");
    }
}

fn insert_dead_letter(
    pg: &mut Pg,
    p: &str,
    origin: &str,
    key: &str,
    payload: &str,
    error: &str,
) -> String {
    pg.insert(&format!(
        "INSERT INTO {p}dead_letters (id, origin, topic, key, partition, type, payload, \
         content_type, headers, created_at, attempts, last_error, failed_at) \
         VALUES (gen_random_uuid(), '{origin}', '{TOPIC}', {key}, 0, 'OrderPlaced', {payload}, \
         'application/json', '{{}}', now(), 10, '{error}', now())"
    ))
}

#[test]
fn postgres_life_of_a_dead_letter_through_a_relay() {
    let url = std::env::var("RELAYBOX_TEST_DATABASE_URL")
        .expect("RELAYBOX_TEST_DATABASE_URL is not set: eval \"$(dev/services env)\"");
    let p = format!("smoke_{}_", std::process::id());
    let dir = TempDir::new("pg");
    let mut pg = Pg::connect(&url);
    pg.drop_tables(&p);
    let rbpg = |args: &[&str]| {
        let mut all = vec!["--database-url", url.as_str(), "--table-prefix", p.as_str()];
        all.extend_from_slice(args);
        ok(&all)
    };

    let out = rbpg(&["migrate"]);
    assert!(
        out.starts_with("migrated postgres://") && out.contains("(schema version "),
        "{out}"
    );
    rbpg(&["migrate"]);
    assert_eq!(pg.scalar(&format!("SELECT count(*) FROM {p}leases")), "16");

    let status = ok_cmd(
        rb(&["status"])
            .env("RELAYBOX_DATABASE_URL", &url)
            .env("RELAYBOX_TABLE_PREFIX", &p),
    );
    assert!(matches_line(&status, "table prefix", &[&p]), "{status}");
    assert!(matches_line(&status, "dead letters", &[" 0"]), "{status}");

    // A dead letter, as a relay leaves one behind.
    let id = insert_dead_letter(
        &mut pg,
        &p,
        "relay",
        "'customer-42'",
        "convert_to('{\"order\":42}', 'UTF8')",
        "broker unavailable: connection reset by peer",
    );
    let list = rbpg(&["dead-letters", "list"]);
    assert!(
        list.lines().next().unwrap().split_whitespace().eq([
            "ID",
            "ORIGIN",
            "TOPIC",
            "KEY",
            "TYPE",
            "ATTEMPTS",
            "FAILED_AT",
            "LAST_ERROR"
        ]),
        "{list}"
    );
    assert!(
        matches_line(
            &list,
            &id,
            &[
                "relay",
                TOPIC,
                "customer-42",
                "OrderPlaced",
                " 10 ",
                "broker unavailable"
            ]
        ),
        "{list}"
    );
    assert!(rbpg(&["dead-letters", "list", "--json"]).contains(&format!("\"id\": \"{id}\"")));
    let status = rbpg(&["status"]);
    assert!(matches_line(&status, "dead letters", &[" 1"]), "{status}");
    // The relay's dead letter parks its key.
    assert!(matches_line(&status, "parked keys", &[" 1"]), "{status}");
    assert!(
        matches_line(&status, "customer-42", &[TOPIC, " 0 ", &id]),
        "{status}"
    );
    assert!(rbpg(&["status", "--json"]).contains(&format!("\"dead_letter_id\": \"{id}\"")));

    assert_eq!(
        rbpg(&["dead-letters", "retry", "--all"]).trim(),
        "retried 1 dead letter"
    );
    assert_eq!(
        pg.scalar(&format!(
            "SELECT count(*) FROM {p}outbox WHERE id = '{id}' AND sent_at IS NULL"
        )),
        "1"
    );
    assert_eq!(
        pg.scalar(&format!("SELECT count(*) FROM {p}dead_letters")),
        "0"
    );
    let status = rbpg(&["status"]);
    assert!(
        matches_line(&status, TOPIC, &[" 1 ", " 0 ", "no relay"]),
        "{status}"
    );
    assert!(matches_line(&status, "parked keys", &[" 0"]), "{status}");

    // Follow the topic while a relay delivers the message.
    let db = ["--database-url", url.as_str(), "--table-prefix", p.as_str()];
    let mut follow = Background::start(
        &dir,
        "follow",
        &[&db[..], &["tail", TOPIC, "--follow"][..]].concat(),
    );
    let instance = format!("smoke-relay-{}", std::process::id());
    let config = dir.file(
        "relay.toml",
        &format!("[relay]\npoll_interval = \"200ms\"\nlease_ttl = \"3s\"\ninstance_id = \"{instance}\"\n"),
    );
    let mut relay = Background::start(
        &dir,
        "relay",
        &[&db[..], &["--config", config.as_str(), "relay"][..]].concat(),
    );
    wait_for(
        "the relay delivers the retried message",
        Duration::from_secs(60),
        || pg.scalar(&format!("SELECT count(*) FROM {p}log WHERE id = '{id}'")) == "1",
    );
    wait_for(
        "the relay holds every partition",
        Duration::from_secs(30),
        || matches_line(&rbpg(&["status"]), &instance, &[" 16 ", "in "]),
    );
    let status = rbpg(&["status"]);
    assert!(matches_line(&status, "live relays", &[" 1"]), "{status}");
    assert!(status.contains("no undelivered messages"), "{status}");

    let tail = rbpg(&["tail", TOPIC]);
    let fields: Vec<&str> = tail.trim_end().split('\t').collect();
    assert_eq!(
        fields[1..],
        [id.as_str(), "customer-42", "OrderPlaced", "{\"order\":42}"],
        "{tail}"
    );
    let position: i64 = fields[0].parse().unwrap();
    let json = rbpg(&["tail", TOPIC, "--json", "--limit", "1"]);
    assert!(
        json.starts_with(&format!(
            "{{\"position\":{position},\"id\":\"{id}\",\"topic\":\"{TOPIC}\""
        )),
        "{json}"
    );
    assert!(json.contains("\"payload\":\"eyJvcmRlciI6NDJ9\""), "{json}");
    assert_eq!(
        rbpg(&[
            "tail",
            TOPIC,
            "--from-position",
            &(position + 1).to_string()
        ]),
        ""
    );

    wait_for(
        "tail --follow prints the message",
        Duration::from_secs(10),
        || follow.out().contains(&id),
    );
    assert_eq!(follow.stop("INT"), 0, "{}", follow.err());

    assert_eq!(relay.stop("TERM"), 0, "{}", relay.err());
    assert!(relay.err().contains("relay stopped"), "{}", relay.err());
    assert_eq!(
        pg.scalar(&format!(
            "SELECT count(*) FROM {p}leases WHERE owner IS NOT NULL"
        )),
        "0"
    );
    assert_eq!(
        pg.scalar(&format!(
            "SELECT count(*) FROM {p}outbox WHERE sent_at IS NULL"
        )),
        "0"
    );

    // Purge by id.
    let id2 = insert_dead_letter(
        &mut pg,
        &p,
        "consumer:billing",
        "NULL",
        "'\\xfffe'::bytea",
        "handler failed",
    );
    assert_eq!(
        rbpg(&["dead-letters", "purge", &id2]).trim(),
        "purged 1 dead letter"
    );
    assert_eq!(
        pg.scalar(&format!("SELECT count(*) FROM {p}dead_letters")),
        "0"
    );
    pg.drop_tables(&p);
}
