//! A small in-test EventoDB server: the RPC calls relaybox makes
//! (`stream.write`, `category.get`) plus `stream.get` and `stream.version`
//! for reading back, with the semantics documented for EventoDB (compat.md
//! and EventoDB's API reference): `POST /rpc` with `["method", args...]`,
//! `Authorization: Bearer <token>`, errors as
//! `{"error": {"code", "message", "details"}}`, stream versions from -1,
//! `STREAM_VERSION_CONFLICT`, categories as the part of a stream name before
//! the first `-`, and consumer groups by `hash64(cardinal_id) mod size` with
//! Message DB's `@hash_64` (the first 8 bytes of MD5 as a signed int64).
//!
//! EventoDB's own server is a Go program that the Go module proxy does not
//! serve, so the tests run against this one. It keeps its messages across
//! [`EventoDbServer::stop`] / [`EventoDbServer::start`] (an outage).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use md5::{Digest, Md5};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

/// One stored message.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: String,
    pub stream_name: String,
    pub message_type: String,
    pub position: i64,
    pub global_position: i64,
    pub data: Json,
    pub metadata: Json,
    pub time: String,
}

#[derive(Default)]
struct State {
    messages: Vec<StoredMessage>,
    versions: HashMap<String, i64>,
    requests: u64,
}

/// The server: a loopback listener, a token and the stored messages.
pub struct EventoDbServer {
    pub port: u16,
    pub token: String,
    state: Arc<Mutex<State>>,
    tasks: Mutex<Option<JoinSet<()>>>,
    /// The runtime the server's tasks run on.
    handle: Handle,
}

impl EventoDbServer {
    /// Starts on a free loopback port with a fresh namespace token, on the
    /// current runtime (it lives as long as the test's runtime).
    pub async fn start_new() -> Arc<EventoDbServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let server = Arc::new(EventoDbServer {
            port,
            token: format!("ns_dGVzdA_{:016x}", rand::random::<u64>()),
            state: Arc::new(Mutex::new(State::default())),
            tasks: Mutex::new(None),
            handle: Handle::current(),
        });
        server.serve(listener);
        server
    }

    /// One server for the whole test binary, on a runtime of its own, so
    /// that it outlives each test's runtime.
    pub fn shared() -> Arc<EventoDbServer> {
        static SHARED: OnceLock<Arc<EventoDbServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .expect("server runtime");
                    runtime.block_on(async move {
                        tx.send(EventoDbServer::start_new().await)
                            .expect("hand over");
                        std::future::pending::<()>().await
                    });
                });
                rx.recv().expect("the in-test EventoDB server started")
            })
            .clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listener and every connection (the server goes down).
    pub fn stop(&self) {
        if let Some(mut tasks) = self.tasks.lock().unwrap().take() {
            tasks.abort_all();
        }
    }

    /// Listens again on the same port, with the messages it had.
    pub async fn start(&self) {
        let port = self.port;
        let listener = self
            .handle
            .spawn(async move {
                loop {
                    match TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(l) => break l,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
            })
            .await
            .expect("bind task");
        self.serve(listener);
    }

    /// Every stored message, in global order.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.state.lock().unwrap().messages.clone()
    }

    /// RPC requests answered so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let state = self.state.clone();
        let token = self.token.clone();
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let conns_for_accept = conns.clone();
        tasks.spawn_on(
            async move {
                let _keep = ConnsGuard(conns_for_accept.clone());
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    let token = token.clone();
                    conns_for_accept.lock().unwrap().spawn(async move {
                        let _ = serve_connection(socket, state, token).await;
                    });
                }
            },
            &self.handle,
        );
        *self.tasks.lock().unwrap() = Some(tasks);
    }
}

/// Aborts the connections when the accept loop is aborted.
struct ConnsGuard(Arc<Mutex<JoinSet<()>>>);

impl Drop for ConnsGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().abort_all();
    }
}

impl Drop for EventoDbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    token: String,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;
        let (status, answer) = if !request_line.starts_with("POST /rpc ") {
            (404, error("NOT_FOUND", "only POST /rpc is served"))
        } else if authorization.as_deref() != Some(&format!("Bearer {token}")) {
            (
                401,
                error("AUTH_REQUIRED", "a valid namespace token is required"),
            )
        } else {
            match serde_json::from_slice::<Json>(&body) {
                Ok(Json::Array(call)) => rpc(&state, &call),
                _ => (
                    400,
                    error("INVALID_REQUEST", "the body must be a JSON array"),
                ),
            }
        };
        let text = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            if status == 200 { "OK" } else { "Error" },
            text.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}

fn error(code: &str, message: &str) -> Json {
    json!({"error": {"code": code, "message": message, "details": null}})
}

fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

fn cardinal_id_of(stream: &str) -> &str {
    let id = stream.split_once('-').map_or("", |(_, id)| id);
    id.split_once('+').map_or(id, |(c, _)| c)
}

/// Message DB's `hash_64`: the first 8 bytes of the MD5 digest as a signed
/// big-endian int64.
pub fn hash_64(value: &str) -> i64 {
    let digest = Md5::digest(value.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap())
}

fn rpc(state: &Mutex<State>, call: &[Json]) -> (u16, Json) {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let method = call.first().and_then(Json::as_str).unwrap_or("");
    let arg = |i: usize| call.get(i).cloned().unwrap_or(Json::Null);
    match method {
        "stream.write" => {
            let (Some(stream), Json::Object(message)) =
                (arg(1).as_str().map(str::to_string), arg(2))
            else {
                return (
                    400,
                    error("INVALID_REQUEST", "stream.write(name, message, options)"),
                );
            };
            let Some(message_type) = message.get("type").and_then(Json::as_str) else {
                return (400, error("INVALID_REQUEST", "message.type is required"));
            };
            let Some(data) = message.get("data").cloned() else {
                return (400, error("INVALID_REQUEST", "message.data is required"));
            };
            if !stream.contains('-') {
                return (400, error("INVALID_REQUEST", "the stream name needs an id"));
            }
            let options = arg(3);
            let version = state.versions.get(&stream).copied().unwrap_or(-1);
            if let Some(expected) = options.get("expectedVersion").and_then(Json::as_i64) {
                if expected != version {
                    return (
                        409,
                        error(
                            "STREAM_VERSION_CONFLICT",
                            &format!(
                                "expected version {expected}, stream {stream} is at {version}"
                            ),
                        ),
                    );
                }
            }
            let global_position = state.messages.len() as i64 + 1;
            let id = options
                .get("id")
                .and_then(Json::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            state.messages.push(StoredMessage {
                id,
                stream_name: stream.clone(),
                message_type: message_type.to_string(),
                position: version + 1,
                global_position,
                data,
                metadata: message.get("metadata").cloned().unwrap_or(Json::Null),
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            });
            state.versions.insert(stream, version + 1);
            (
                200,
                json!({"position": version + 1, "globalPosition": global_position}),
            )
        }
        "stream.version" => {
            let stream = arg(1);
            let version = stream.as_str().and_then(|s| state.versions.get(s).copied());
            (200, json!(version))
        }
        "stream.get" => {
            let stream = arg(1).as_str().unwrap_or("").to_string();
            let options = arg(2);
            let from = options.get("position").and_then(Json::as_i64).unwrap_or(0);
            let batch = options
                .get("batchSize")
                .and_then(Json::as_i64)
                .unwrap_or(1000);
            let rows: Vec<Json> = state
                .messages
                .iter()
                .filter(|m| m.stream_name == stream && m.position >= from)
                .take(if batch < 0 {
                    usize::MAX
                } else {
                    batch as usize
                })
                .map(|m| {
                    json!([
                        m.id,
                        m.message_type,
                        m.position,
                        m.global_position,
                        m.data,
                        m.metadata,
                        m.time
                    ])
                })
                .collect();
            (200, Json::Array(rows))
        }
        "category.get" => {
            let Some(category) = arg(1).as_str().map(str::to_string) else {
                return (
                    400,
                    error("INVALID_REQUEST", "category.get(category, options)"),
                );
            };
            let options = arg(2);
            let from = options.get("position").and_then(Json::as_i64).unwrap_or(0);
            let batch = options
                .get("batchSize")
                .and_then(Json::as_i64)
                .unwrap_or(1000);
            let group = options.get("consumerGroup").map(|g| {
                (
                    g.get("member").and_then(Json::as_i64).unwrap_or(0),
                    g.get("size").and_then(Json::as_i64).unwrap_or(1),
                )
            });
            if let Some((member, size)) = group {
                if size < 1 || member < 0 || member >= size {
                    return (400, error("INVALID_REQUEST", "invalid consumer group"));
                }
            }
            let correlation = options.get("correlation").and_then(Json::as_str);
            let rows: Vec<Json> = state
                .messages
                .iter()
                .filter(|m| category_of(&m.stream_name) == category && m.global_position >= from)
                .filter(|m| {
                    group.is_none_or(|(member, size)| {
                        (hash_64(cardinal_id_of(&m.stream_name)).unsigned_abs() % size as u64)
                            == member as u64
                    })
                })
                .filter(|m| {
                    correlation.is_none_or(|c| {
                        m.metadata
                            .get("correlationStreamName")
                            .and_then(Json::as_str)
                            .is_some_and(|s| category_of(s) == c)
                    })
                })
                .take(if batch < 0 {
                    usize::MAX
                } else {
                    batch as usize
                })
                .map(|m| {
                    json!([
                        m.id,
                        m.stream_name,
                        m.message_type,
                        m.position,
                        m.global_position,
                        m.data,
                        m.metadata,
                        m.time
                    ])
                })
                .collect();
            (200, Json::Array(rows))
        }
        other => (
            400,
            error("METHOD_NOT_FOUND", &format!("unknown method {other:?}")),
        ),
    }
}
