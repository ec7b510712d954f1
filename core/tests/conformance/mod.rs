//! The conformance suite every transport passes: the same scenarios, written
//! once, run against each transport's real server through its
//! [`TransportConfig`] (the relay publishes with `transport.sink`, the
//! consumer reads with `transport.source`).
//!
//! A transport's test file implements [`Broker`] and calls
//! [`conformance_tests!`], which generates one test per scenario:
//!
//! - `delivers_each_committed_message_once`: committed messages reach the
//!   handler once each; a rolled-back transaction's message never does;
//! - `keeps_the_order_of_each_key`: with concurrent lanes, each key's messages
//!   reach the handler in enqueue order;
//! - `deduplicates_a_message_delivered_twice`: the sink publishes a batch a
//!   second time (as a relay does when it dies between the broker's ack and
//!   its own bookkeeping); the handler still runs once per message;
//! - `redelivers_what_a_stopped_consumer_left_unacknowledged`: a consumer is
//!   dropped while handlers are stuck; a new consumer of the group gets the
//!   unacknowledged messages again, and every message is handled once;
//! - `dead_letters_a_poison_message_and_moves_on`: a message its handler
//!   always rejects is dead-lettered after `max_retries` (to the transport's
//!   own dead-letter destination, or the `dead_letters` table, where the
//!   transport also checks its wire format), and the messages after it, of
//!   its key too, are handled once each, in order per key;
//! - `refuses_bad_configs_naming_the_field`: every setting of
//!   [`Broker::bad_configs`] is refused by `TransportConfig::from_json` with
//!   an `InvalidConfig` error naming its field;
//! - `never_shows_secrets`: the configurations of [`Broker::secret_configs`]
//!   (a refused or unreachable server, [`SECRET`] where the transport keeps
//!   its password, key or token) fail to publish, and neither their
//!   `Debug` nor any error of the sink or the source shows the secret;
//! - with `outage`: `survives_a_broker_outage`: the server is stopped while
//!   the application keeps enqueuing and a consumer keeps running, then
//!   started again; everything is delivered and handled once, with no manual
//!   step.
//!
//! Scenarios run in parallel inside a test binary, except the outage, which
//! waits until the others are done (and they wait for it): see [`exclusive`].
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use relaybox::{
    Consumer, ConsumerConfig, Message, Relay, RelayConfig, Sink, Source, Store, TransportConfig,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::Instant;
use uuid::Uuid;

use crate::common::*;

/// Bound of every wait for deliveries: generous, for a loaded 2-core machine.
pub const CONFORMANCE_WAIT: Duration = Duration::from_secs(60);

/// The secret that [`Broker::secret_configs`] puts where each transport
/// keeps its password, key or token; it must never be shown.
pub const SECRET: &str = "Wr0ngPa55word";

/// A transport under test, with what the suite needs to know about its server.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The transport (one setting, as a user would give it).
    fn transport(&self) -> TransportConfig;

    /// A topic name no other test uses, valid for this broker. The default,
    /// `conf_<label>_<hex>`, suits every transport whose names allow
    /// letters, digits and underscores.
    fn topic(&self, label: &str) -> String {
        let r: u32 = rand::random();
        format!("conf_{label}_{r:08x}")
    }

    /// Makes `topic` consumable by `group` before anything is published to
    /// it (create a queue and its binding, a subscription, a consumer group
    /// at the start of a stream). The default does nothing.
    async fn prepare(&self, store: &Store, topic: &str, group: &str) {
        let _ = (store, topic, group);
    }

    /// Consumer settings for this broker; the default is the tests' usual
    /// fast-polling configuration. Brokers with timers (visibility timeouts,
    /// idle times before reclaiming) shorten them here.
    fn consumer_config(&self, group: &str) -> ConsumerConfig {
        consumer_config(group)
    }

    /// Whether the transport, as the suite configures it, keeps each key's
    /// messages in order (checked after the outage); the default is `true`.
    fn keeps_order_per_key(&self) -> bool {
        true
    }

    /// Whether the broker itself keeps one copy per message id (Message DB's
    /// unique id), so that a message published twice reaches the consumer
    /// once and the inbox has nothing to skip. The default is `false`.
    fn stores_each_id_once(&self) -> bool {
        false
    }

    /// The ids of the messages in the transport's own dead-letter
    /// destination for `topic` and `group`, or `None` when the transport
    /// dead-letters into relaybox's `dead_letters` table. A transport with a
    /// destination of its own also asserts there what its wire format says
    /// of `poison`, the message dead-lettered (the error, the original
    /// topic, the payload and headers). Brokers without a dead-letter
    /// destination of their own keep the default, `None`.
    async fn dead_lettered(&self, topic: &str, group: &str, poison: &Message) -> Option<Vec<Uuid>> {
        let _ = (topic, group, poison);
        None
    }

    /// Transport settings, as `TransportConfig::from_json` reads them, that
    /// must be refused, each with the field its `InvalidConfig` error names.
    fn bad_configs(&self) -> Vec<(serde_json::Value, &'static str)>;

    /// Configurations holding [`SECRET`] (a password, a key, a token) that
    /// cannot deliver: a server that refuses the secret, or an address
    /// nobody answers on (with short timeouts).
    fn secret_configs(&self) -> Vec<TransportConfig>;

    /// The `dev/services` name of the server, stopped and started by the
    /// outage scenario.
    fn service(&self) -> &'static str;

    /// Stops the server; the default runs `dev/services stop <service>`.
    async fn stop(&self) {
        services("stop", self.service()).await;
    }

    /// Starts the server again and waits until it is ready; the default
    /// runs `dev/services start <service>`.
    async fn start(&self) {
        services("start", self.service()).await;
    }
}

/// Runs `dev/services <action> <service>`; fails the test when it fails.
pub async fn services(action: &'static str, service: &'static str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev/services");
    let out =
        tokio::task::spawn_blocking(move || Command::new(&script).args([action, service]).output())
            .await
            .expect("dev/services thread")
            .unwrap_or_else(|e| panic!("cannot run dev/services: {e}"));
    assert!(
        out.status.success(),
        "dev/services {action} {service} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

static SERVER: RwLock<()> = RwLock::const_new(());

/// Held by every scenario but the outage (shared) and by the outage
/// (exclusive), so that stopping the server never breaks another scenario.
pub enum Exclusive {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

/// Takes the server lock; `alone` for the scenario that stops the server.
pub async fn exclusive(alone: bool) -> Exclusive {
    if alone {
        Exclusive::Alone(SERVER.write().await)
    } else {
        Exclusive::Shared(SERVER.read().await)
    }
}

/// Generates the conformance tests for `$broker` (an expression building a
/// [`Broker`]); add `outage` to include the outage scenario. A transport that
/// cannot offer a scenario's guarantee at all lists the others with
/// `conformance_tests!(@tests broker; scenario, ...)` and says why.
macro_rules! conformance_tests {
    ($broker:expr) => {
        conformance_tests!(@tests $broker;
            delivers_each_committed_message_once,
            keeps_the_order_of_each_key,
            deduplicates_a_message_delivered_twice,
            redelivers_what_a_stopped_consumer_left_unacknowledged,
            dead_letters_a_poison_message_and_moves_on,
            refuses_bad_configs_naming_the_field,
            never_shows_secrets);
    };
    ($broker:expr, outage) => {
        conformance_tests!($broker);
        conformance_tests!(@tests $broker; survives_a_broker_outage);
    };
    (@tests $broker:expr; $($scenario:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let broker = $broker;
                crate::conformance::$scenario(&broker).await
            }
        )*
    };
}

/// The relay settings of the suite: fast polling, short backoff.
fn suite_relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(10),
        max_attempts: 1000,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..RelayConfig::default()
    }
}

/// A database, a topic and a group for one scenario, with the broker's
/// relay and consumers.
struct Scene<'b, B: Broker> {
    broker: &'b B,
    db: TestDb,
    transport: TransportConfig,
    topic: String,
    group: String,
}

impl<'b, B: Broker> Scene<'b, B> {
    async fn new(broker: &'b B, label: &str) -> Scene<'b, B> {
        let db = TestDb::new(Backend::Postgres).await;
        let topic = broker.topic(label);
        let group = format!("{topic}_group");
        broker.prepare(&db.store, &topic, &group).await;
        Scene {
            broker,
            db,
            transport: broker.transport(),
            topic,
            group,
        }
    }

    fn sink(&self) -> Arc<dyn Sink> {
        self.transport
            .sink(&self.db.store)
            .unwrap_or_else(|e| panic!("{} sink: {e}", self.transport.name()))
    }

    fn relay(&self) -> Relay {
        Relay::start(self.db.store.clone(), self.sink(), suite_relay_config()).expect("relay start")
    }

    fn consumer(&self, handler: Arc<Recorder>) -> Consumer {
        self.consumer_with(handler, |_| {})
    }

    fn consumer_with(
        &self,
        handler: Arc<Recorder>,
        tweak: impl FnOnce(&mut ConsumerConfig),
    ) -> Consumer {
        let source = self
            .transport
            .source(&self.db.store, &self.topic, &self.group)
            .unwrap_or_else(|e| panic!("{} source: {e}", self.transport.name()));
        let mut config = self.broker.consumer_config(&self.group);
        tweak(&mut config);
        Consumer::start(self.db.store.clone(), source, handler, config).expect("consumer start")
    }

    /// `n` messages over `keys` keys with JSON payloads (every transport
    /// carries JSON).
    fn messages(&self, n: usize, keys: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                Message::new(&self.topic, format!("{{\"n\":{i}}}"))
                    .with_key(format!("key-{}", i % keys))
                    .with_type("ConformanceEvent")
            })
            .collect()
    }

    /// Enqueues `messages` in committed transactions of `per_tx`.
    async fn enqueue(&self, messages: &[Message], per_tx: usize) {
        for chunk in messages.chunks(per_tx) {
            self.db.enqueue_committed(chunk).await;
        }
    }

    /// Waits until the handlers committed a business row for every id.
    async fn wait_handled(&self, what: &str, ids: &[Uuid], timeout: Duration) {
        let want: HashSet<Uuid> = ids.iter().copied().collect();
        wait_for(what, timeout, async || {
            let rows = self.db.handled_rows().await;
            let missing = want.iter().filter(|id| !rows.contains_key(id)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} not handled yet", want.len()))
            }
        })
        .await;
    }
}

fn ids(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id).collect()
}

/// Asserts that each key's messages were handled in enqueue order.
fn assert_key_order(handled: &[Message], sent: &[Message]) {
    let mut expected: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for m in sent {
        expected
            .entry(m.key.as_deref().unwrap_or(""))
            .or_default()
            .push(m.id);
    }
    let mut seen: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for m in handled {
        seen.entry(m.key.as_deref().unwrap_or(""))
            .or_default()
            .push(m.id);
    }
    for (key, want) in &expected {
        let got = seen.get(key).cloned().unwrap_or_default();
        assert_eq!(&got, want, "key {key:?} was handled out of order");
    }
}

/// Committed messages reach the handler once each; a rolled-back one never.
pub async fn delivers_each_committed_message_once<B: Broker>(broker: &B) {
    let _server = exclusive(false).await;
    let scene = Scene::new(broker, "deliver").await;
    let recorder = Recorder::new(&scene.db).arc();
    let consumer = scene.consumer(recorder.clone());
    let relay = scene.relay();

    let committed = scene.messages(60, 6);
    scene.enqueue(&committed, 20).await;
    let rolled_back = scene.messages(1, 1);
    let tx = scene.db.store.begin().await.expect("begin");
    tx.enqueue(rolled_back[0].clone()).await.expect("enqueue");
    tx.rollback().await.expect("rollback");

    scene
        .wait_handled(
            "every committed message handled",
            &ids(&committed),
            CONFORMANCE_WAIT,
        )
        .await;
    // Let anything stray (a duplicate, the rolled-back message) arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.shutdown().await.expect("relay shutdown");
    consumer.shutdown().await.expect("consumer shutdown");
    assert_handled_once(&scene.db, &[&recorder], &ids(&committed)).await;
    let delivered = recorder.handled();
    let sent: HashMap<Uuid, &Message> = committed.iter().map(|m| (m.id, m)).collect();
    for m in &delivered {
        let original = sent[&m.id];
        assert_eq!(m.payload, original.payload, "payload of {}", m.id);
        assert_eq!(m.key, original.key, "key of {}", m.id);
        assert_eq!(m.event_type, original.event_type, "type of {}", m.id);
        assert_eq!(m.topic, scene.topic, "topic of {}", m.id);
    }
    scene.db.cleanup().await;
}

/// Each key's messages reach the handler in enqueue order, with lanes
/// running concurrently.
pub async fn keeps_the_order_of_each_key<B: Broker>(broker: &B) {
    let _server = exclusive(false).await;
    let scene = Scene::new(broker, "order").await;
    let recorder = Recorder::new(&scene.db).arc();
    let consumer = scene.consumer_with(recorder.clone(), |c| c.concurrency = 4);
    let relay = scene.relay();
    let sent = scene.messages(400, 16);
    scene.enqueue(&sent, 25).await;
    scene
        .wait_handled("all 400 messages handled", &ids(&sent), CONFORMANCE_WAIT)
        .await;
    relay.shutdown().await.expect("relay shutdown");
    consumer.shutdown().await.expect("consumer shutdown");
    assert_handled_once(&scene.db, &[&recorder], &ids(&sent)).await;
    assert_key_order(&recorder.handled(), &sent);
    scene.db.cleanup().await;
}

/// A batch published twice is handled once per message; the second copies
/// count as duplicates (or never reach the consumer, where the broker keeps
/// one copy per id).
pub async fn deduplicates_a_message_delivered_twice<B: Broker>(broker: &B) {
    let _server = exclusive(false).await;
    let scene = Scene::new(broker, "dedup").await;
    let recorder = Recorder::new(&scene.db).arc();
    let consumer = scene.consumer(recorder.clone());
    let sent = scene.messages(30, 3);
    let sink = scene.sink();
    for round in ["first", "second"] {
        let results = sink.publish(&sent).await;
        assert_eq!(results.len(), sent.len());
        for (m, r) in sent.iter().zip(results) {
            r.unwrap_or_else(|e| panic!("{round} publish of {}: {e}", m.id));
        }
    }
    scene
        .wait_handled("every message handled", &ids(&sent), CONFORMANCE_WAIT)
        .await;
    if broker.stores_each_id_once() {
        // Give a second copy time to arrive, were there one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(consumer.stats().duplicates, 0, "{:?}", consumer.stats());
    } else {
        wait_for(
            "the second copies seen as duplicates",
            CONFORMANCE_WAIT,
            async || {
                let stats = consumer.stats();
                if stats.duplicates >= sent.len() as u64 {
                    Ok(())
                } else {
                    Err(format!("{stats:?}"))
                }
            },
        )
        .await;
    }
    consumer.shutdown().await.expect("consumer shutdown");
    assert_handled_once(&scene.db, &[&recorder], &ids(&sent)).await;
    scene.db.cleanup().await;
}

/// A consumer dropped while its handlers are stuck acknowledged nothing it
/// did not finish; a new consumer of the group handles the rest, each
/// message once.
pub async fn redelivers_what_a_stopped_consumer_left_unacknowledged<B: Broker>(broker: &B) {
    let _server = exclusive(false).await;
    let scene = Scene::new(broker, "redeliver").await;
    let sent = scene.messages(40, 4);
    let gate = Gate::new(10);
    let first = Recorder::new(&scene.db).gate(gate.clone()).arc();
    let consumer = scene.consumer(first.clone());
    let relay = scene.relay();
    scene.enqueue(&sent, 40).await;
    wait_for(
        "the first consumer stuck after 10 calls",
        CONFORMANCE_WAIT,
        async || {
            if gate.is_holding() {
                Ok(())
            } else {
                Err(format!("{} handled", first.handled_count()))
            }
        },
    )
    .await;
    // A crash: no graceful shutdown, the stuck handlers never return.
    drop(consumer);
    let handled_first: HashSet<Uuid> = first.handled().iter().map(|m| m.id).collect();
    assert!(
        handled_first.len() < sent.len(),
        "the first consumer handled everything before it was dropped"
    );

    let second = Recorder::new(&scene.db).arc();
    let consumer = scene.consumer(second.clone());
    scene
        .wait_handled(
            "every message handled after the restart",
            &ids(&sent),
            CONFORMANCE_WAIT,
        )
        .await;
    relay.shutdown().await.expect("relay shutdown");
    consumer.shutdown().await.expect("consumer shutdown");
    let handled_second: HashSet<Uuid> = second.handled().iter().map(|m| m.id).collect();
    let missing_first: Vec<Uuid> = ids(&sent)
        .into_iter()
        .filter(|id| !handled_first.contains(id))
        .collect();
    assert!(
        missing_first.iter().all(|id| handled_second.contains(id)),
        "the new consumer did not get every message the dropped one left unfinished"
    );
    let rows = scene.db.handled_rows().await;
    for id in ids(&sent) {
        assert_eq!(rows.get(&id).copied(), Some(1), "business rows of {id}");
    }
    // Messages the stuck handlers were holding ran once in each consumer at
    // most, and committed once: the held calls never committed.
    gate.open();
    scene.db.cleanup().await;
}

/// A message its handler always rejects is dead-lettered after the retries;
/// the messages after it are handled.
pub async fn dead_letters_a_poison_message_and_moves_on<B: Broker>(broker: &B) {
    let _server = exclusive(false).await;
    let scene = Scene::new(broker, "poison").await;
    let sent: Vec<Message> = scene
        .messages(20, 2)
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.with_header("x-step", i.to_string()))
        .collect();
    let poison = sent[4].id;
    let recorder = Recorder::new(&scene.db)
        .failing(move |m| m.id == poison)
        .arc();
    let consumer = scene.consumer_with(recorder.clone(), |c| c.max_retries = 2);
    let relay = scene.relay();
    scene.enqueue(&sent, 20).await;
    let healthy: Vec<Uuid> = ids(&sent).into_iter().filter(|id| *id != poison).collect();
    scene
        .wait_handled("every healthy message handled", &healthy, CONFORMANCE_WAIT)
        .await;
    wait_for(
        "the poison message dead-lettered",
        CONFORMANCE_WAIT,
        async || {
            let stats = consumer.stats();
            if stats.dead_lettered == 1 {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    relay.shutdown().await.expect("relay shutdown");
    consumer.shutdown().await.expect("consumer shutdown");

    assert_eq!(
        recorder.calls().get(&poison).copied(),
        Some(3),
        "the poison message is tried once and retried max_retries (2) times"
    );
    let rows = scene.db.handled_rows().await;
    assert!(
        !rows.contains_key(&poison),
        "the poison message left a business row"
    );
    for id in &healthy {
        assert_eq!(rows.get(id).copied(), Some(1), "business rows of {id}");
    }
    let stats = consumer.stats();
    assert_eq!(
        (
            stats.processed,
            stats.dead_lettered,
            stats.retried,
            stats.duplicates
        ),
        (healthy.len() as u64, 1, 2, 0),
        "every healthy message processed once, the poison retried twice, nothing delivered \
         twice (every acknowledgement was taken): {stats:?}"
    );
    if broker.keeps_order_per_key() {
        // The poison's key went on around it, in order.
        let healthy_sent: Vec<Message> = sent.iter().filter(|m| m.id != poison).cloned().collect();
        assert_key_order(&recorder.handled(), &healthy_sent);
    }
    match broker
        .dead_lettered(&scene.topic, &scene.group, &sent[4])
        .await
    {
        Some(in_broker) => {
            assert_eq!(
                in_broker,
                vec![poison],
                "the broker's dead-letter destination holds exactly the poison message"
            );
            assert!(
                scene
                    .db
                    .store
                    .dead_letters(10)
                    .await
                    .expect("dead_letters")
                    .is_empty(),
                "the broker's destination took it, not the dead_letters table"
            );
        }
        None => {
            let table = scene.db.store.dead_letters(10).await.expect("dead_letters");
            let ids: Vec<Uuid> = table.iter().map(|d| d.message.id).collect();
            assert_eq!(
                ids,
                vec![poison],
                "the dead_letters table holds the poison message"
            );
            assert!(
                table[0].origin.starts_with("consumer"),
                "dead-lettered by {}",
                table[0].origin
            );
        }
    }
    scene.db.cleanup().await;
}

/// Starts the server when dropped, unless the scenario started it already,
/// so a failing outage test never leaves the machine without the server.
struct Restart<'b, B: Broker> {
    broker: &'b B,
    down: bool,
}

impl<B: Broker> Drop for Restart<'_, B> {
    fn drop(&mut self) {
        if self.down {
            let service = self.broker.service();
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dev/services");
            let _ =
                std::thread::spawn(move || Command::new(script).args(["start", service]).status())
                    .join();
        }
    }
}

/// Fails the test when the server still takes a message after `stop`
/// (another checkout's server on the same port, say): the outage scenario
/// would prove nothing.
async fn assert_down<B: Broker>(scene: &Scene<'_, B>) {
    let probe = scene.messages(1, 1);
    let accepted = match scene.transport.sink(&scene.db.store) {
        Err(_) => false,
        Ok(sink) => matches!(
            tokio::time::timeout(Duration::from_secs(10), sink.publish(&probe)).await,
            Ok(results) if results.iter().all(|r| r.is_ok())
        ),
    };
    assert!(
        !accepted,
        "the {} server still accepts messages after `dev/services stop {}`: it was not \
         started by this checkout; stop it where it was started and run the test again",
        scene.transport.name(),
        scene.broker.service()
    );
}

/// The server goes away while the application keeps enqueuing and a
/// consumer keeps running; once it is back, everything is delivered and
/// handled once, with no manual step.
pub async fn survives_a_broker_outage<B: Broker>(broker: &B) {
    let _server = exclusive(true).await;
    let scene = Scene::new(broker, "outage").await;
    let recorder = Recorder::new(&scene.db).arc();
    let consumer = scene.consumer(recorder.clone());
    let relay = scene.relay();

    let mut sent = scene.messages(20, 4);
    scene.enqueue(&sent, 20).await;
    scene
        .wait_handled(
            "the messages before the outage handled",
            &ids(&sent),
            CONFORMANCE_WAIT,
        )
        .await;

    let mut restart = Restart { broker, down: true };
    broker.stop().await;
    assert_down(&scene).await;
    let outage = Instant::now();
    let mut n = sent.len();
    while outage.elapsed() < Duration::from_secs(3) {
        let more: Vec<Message> = (n..n + 10)
            .map(|i| {
                Message::new(&scene.topic, format!("{{\"n\":{i}}}"))
                    .with_key(format!("key-{}", i % 4))
                    .with_type("ConformanceEvent")
            })
            .collect();
        scene.enqueue(&more, 10).await;
        n += more.len();
        sent.extend(more);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        scene.db.store.pending_count().await.expect("pending_count") > 0,
        "nothing enqueued during the outage can have been delivered"
    );
    assert!(relay.is_running(), "the relay stopped during the outage");
    assert!(
        consumer.is_running(),
        "the consumer stopped during the outage"
    );
    broker.start().await;
    restart.down = false;
    let restarted = Instant::now();
    scene
        .wait_handled(
            "everything enqueued during the outage handled after the restart",
            &ids(&sent),
            Duration::from_secs(120),
        )
        .await;
    eprintln!(
        "outage: {} messages, handled {:?} after the restart",
        sent.len(),
        restarted.elapsed()
    );
    relay.shutdown().await.expect("relay shutdown");
    consumer.shutdown().await.expect("consumer shutdown");
    assert_eq!(relay.stats().dead_lettered, 0, "{:?}", relay.stats());
    let rows = scene.db.handled_rows().await;
    for id in ids(&sent) {
        assert_eq!(rows.get(&id).copied(), Some(1), "business rows of {id}");
    }
    if broker.keeps_order_per_key() {
        assert_key_order(&recorder.handled(), &sent);
    }
    scene.db.cleanup().await;
}

/// Every bad setting the transport names is refused, naming its field.
pub async fn refuses_bad_configs_naming_the_field<B: Broker>(broker: &B) {
    let cases = broker.bad_configs();
    assert!(
        !cases.is_empty(),
        "the transport names no bad configuration"
    );
    for (json, field) in cases {
        match TransportConfig::from_json(json.clone()) {
            Err(relaybox::Error::InvalidConfig { field: named, .. }) => {
                assert_eq!(named, field, "the field named for {json}")
            }
            other => panic!("{json}: expected a configuration error naming {field}, got {other:?}"),
        }
    }
}

/// A configuration holding [`SECRET`] that cannot deliver: nothing is
/// published, and the secret shows neither in `Debug` nor in any error.
pub async fn never_shows_secrets<B: Broker>(broker: &B) {
    let configs = broker.secret_configs();
    assert!(
        !configs.is_empty(),
        "the transport names no secret-bearing configuration"
    );
    let _server = exclusive(false).await;
    let db = TestDb::new(Backend::Postgres).await;
    let topic = broker.topic("secret");
    let group = format!("{topic}_group");
    for transport in configs {
        let mut shown = format!("{transport:?}");
        let message = Message::new(&topic, "{}");
        match transport.sink(&db.store) {
            Err(e) => shown.push_str(&format!(" {e} {e:?}")),
            Ok(sink) => {
                let results = tokio::time::timeout(
                    CONFORMANCE_WAIT,
                    sink.publish(std::slice::from_ref(&message)),
                )
                .await
                .expect("a publish that cannot succeed returns");
                let e = results
                    .into_iter()
                    .next()
                    .expect("one result per message")
                    .expect_err("nothing is published with a refused or unreachable secret");
                shown.push_str(&format!(" {e} {e:?}"));
            }
        }
        match transport.source(&db.store, &topic, &group) {
            Err(e) => shown.push_str(&format!(" {e} {e:?}")),
            Ok(source) => {
                let fetched = tokio::time::timeout(
                    CONFORMANCE_WAIT,
                    source.fetch(10, Duration::from_millis(100)),
                )
                .await
                .expect("a fetch that cannot succeed returns");
                match fetched {
                    Err(e) => shown.push_str(&format!(" {e} {e:?}")),
                    Ok(got) => assert!(got.is_empty(), "read {} messages", got.len()),
                }
            }
        }
        assert!(!shown.contains(SECRET), "the secret shows: {shown}");
    }
    db.cleanup().await;
}
