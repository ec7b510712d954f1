//! [`ReportingProducer`]: a librdkafka producer that routes each record's
//! delivery report to whoever waits for it, keyed by message id, with a
//! thread that serves the reports and sleeps while there are none.
//!
//! rdkafka's own `ThreadedProducer` (and the `FutureProducer` built on it)
//! serves reports by polling with a 100 ms timeout that librdkafka receives
//! rounded down to whole milliseconds, so every poll ends with a busy loop
//! through its last millisecond: about 1% of a core per producer while
//! nothing is produced. Here librdkafka writes a byte to a socket when its
//! event queue goes from empty to non-empty (`rd_kafka_queue_io_event_enable`),
//! and the thread blocks reading that socket.
//!
//! A report can arrive after the relay stopped waiting for it (the broker was
//! down longer than `delivery_timeout`, and the record stayed queued). A
//! successful one that nobody received is remembered for a while, so that
//! the relay's retry of that message learns it is in Kafka already instead
//! of producing it a second time. So is a delivery the relay received but
//! did not record, because an earlier record of its key failed. Neither is
//! remembered when a record of its key was refused in its report lately:
//! then the record may be in Kafka ahead of the refused one's retry, and is
//! produced again to land after it (see [`Reports::remember_delivered`]).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::oneshot;
use uuid::Uuid;

/// A record's delivery report as the producer hands it on.
pub(crate) type Report = std::result::Result<(), KafkaError>;

/// A record as [`ReportingProducer::hand_over`] takes it; its delivery
/// opaque is the message id its report is routed by.
pub(crate) type Record<'a> = BaseRecord<'a, str, [u8], Box<Uuid>>;

/// How long the report thread sleeps at most without a wake-up before it
/// looks at the event queue again (a safety net; wake-ups come by socket).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a delivery that no waiter received is remembered for a retry of
/// its message: longer than any retry backoff the relay allows by default
/// (5 min), so the retry finds it.
const UNCLAIMED_FOR: Duration = Duration::from_secs(3600);

/// At most this many unreceived deliveries are remembered (about 32 MB); the
/// oldest are forgotten first.
const UNCLAIMED_MAX: usize = 1_000_000;

/// At most this many refused keys are remembered; the oldest are forgotten first.
const REFUSED_KEYS_MAX: usize = 100_000;

/// The producer's context: routes each delivery report to whoever waits for
/// the record, keyed by message id. An id is here from the moment its record
/// is handed to librdkafka until its report arrives, which is how a retry
/// finds a record that is still queued.
#[derive(Default)]
pub(crate) struct Reports {
    waiting: Mutex<HashMap<Uuid, Vec<oneshot::Sender<Report>>>>,
    unclaimed: Mutex<Unclaimed>,
    refused_keys: Mutex<RefusedKeys>,
    /// The client's last error of its own (a failed TLS handshake, an
    /// unreachable broker) and when it came, for the errors it explains.
    last_error: Mutex<Option<(Instant, String)>>,
}

impl Reports {
    fn waiting(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<oneshot::Sender<Report>>>> {
        // The map stays consistent whatever panicked while holding it.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unclaimed(&self) -> MutexGuard<'_, Unclaimed> {
        self.unclaimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused_keys(&self) -> MutexGuard<'_, RefusedKeys> {
        self.refused_keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Entries remembered for a while: those at most `keep_for` old, at most
/// `max` of them (the oldest are forgotten first).
struct Recent<K> {
    at: HashMap<K, Instant>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<(Instant, K)>,
    keep_for: Duration,
    max: usize,
}

impl<K: Hash + Eq + Clone> Recent<K> {
    fn new(keep_for: Duration, max: usize) -> Self {
        Recent {
            at: HashMap::new(),
            order: VecDeque::new(),
            keep_for,
            max,
        }
    }

    fn insert(&mut self, k: K, now: Instant) {
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) < self.keep_for && self.order.len() < self.max {
                break;
            }
            if self.at.get(old) == Some(at) {
                self.at.remove(old);
            }
            self.order.pop_front();
        }
        self.at.insert(k.clone(), now);
        self.order.push_back((now, k));
    }

    /// Whether `k` is remembered, forgetting it.
    fn take<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.at
            .remove(k)
            .is_some_and(|at| at.elapsed() < self.keep_for)
    }

    /// Whether `k` is remembered.
    fn contains<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.at
            .get(k)
            .is_some_and(|at| at.elapsed() < self.keep_for)
    }
}

/// Messages whose record was delivered after every waiter had given up on
/// its report: a later attempt of the message takes the delivery instead of
/// producing the record again.
type Unclaimed = Recent<Uuid>;

impl Default for Unclaimed {
    fn default() -> Self {
        Recent::new(UNCLAIMED_FOR, UNCLAIMED_MAX)
    }
}

/// Keys of which a record was refused in its delivery report: a later
/// record of such a key may be in Kafka ahead of the refused one's retry.
type RefusedKeys = Recent<Vec<u8>>;

impl Default for RefusedKeys {
    fn default() -> Self {
        Recent::new(UNCLAIMED_FOR, REFUSED_KEYS_MAX)
    }
}

impl Reports {
    /// Remembers the delivered records of `messages` (id and key) as
    /// delivered while nobody received their report, so that the next
    /// [`hand_over`](ReportingProducer::hand_over) of each reports it
    /// delivered without producing it again; except those of a key refused
    /// in a delivery report lately, which may be in Kafka ahead of the
    /// refused record's retry: produced again, they land after it.
    pub(crate) fn remember_delivered<'a>(
        &self,
        messages: impl IntoIterator<Item = (Uuid, Option<&'a [u8]>)>,
    ) {
        let now = Instant::now();
        let refused = self.refused_keys();
        let mut unclaimed = self.unclaimed();
        for (id, key) in messages {
            if !key.is_some_and(|k| refused.contains(k)) {
                unclaimed.insert(id, now);
            }
        }
    }
}

/// How long the client's last error explains the sink's failures.
const LAST_ERROR_FOR: Duration = Duration::from_secs(60);

impl Reports {
    /// The client's last error of its own, if it came within the last minute.
    pub(crate) fn recent_error(&self) -> Option<String> {
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < LAST_ERROR_FOR)
            .map(|(_, reason)| reason.clone())
    }
}

impl ClientContext for Reports {
    /// Logs the client's error, as librdkafka's default does, and keeps it:
    /// a delivery that times out or a metadata request that fails says only
    /// that the broker was not reached, this says why (e.g. "SSL handshake
    /// failed: ... certificate verify failed").
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        // "1/1 brokers are down" sums up the errors that say why: keep those.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some((Instant::now(), reason.to_string()));
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Uuid>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<Uuid>) {
        let (report, key) = match result {
            Ok(message) => (Ok(()), message.key()),
            Err((e, message)) => {
                if let Some(key) = message.key() {
                    self.refused_keys().insert(key.to_vec(), Instant::now());
                }
                (Err(e.clone()), message.key())
            }
        };
        // Under the `waiting` lock throughout, so that a retry handing the
        // message over meanwhile finds either its waiters or its delivery.
        let mut waiting = self.waiting();
        let mut received = false;
        for waiter in waiting.remove(&id).unwrap_or_default() {
            // A waiter that gave up has dropped its receiver.
            received |= waiter.send(report.clone()).is_ok();
        }
        if !received && report.is_ok() {
            self.remember_delivered([(*id, key)]);
        }
    }
}

/// A librdkafka producer whose delivery reports reach per-message waiters
/// (see the module header).
pub(crate) struct ReportingProducer {
    producer: Arc<BaseProducer<Reports>>,
    server: ReportServer,
}

/// The thread serving delivery reports and what wakes it.
struct ReportServer {
    /// A handle on librdkafka's main event queue, where the reports arrive.
    queue: EventQueue,
    /// The socket librdkafka writes its wake-ups to.
    wake: UnixStream,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// librdkafka's main event queue of one client (a handle of its own, given
/// back in [`ReportingProducer`]'s `Drop`).
#[derive(Clone, Copy)]
struct EventQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue functions are thread-safe, and the handle lives
// until the producer's `Drop` has joined the thread that uses it.
unsafe impl Send for EventQueue {}
unsafe impl Sync for EventQueue {}

impl EventQueue {
    fn len(self) -> usize {
        // SAFETY: a live queue handle (see the type's comment).
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

impl ReportingProducer {
    /// Creates the producer from `config` and starts its report thread.
    pub(crate) fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Reports>> =
            Arc::new(config.create_with_context(Reports::default())?);
        let (wake, woken) = UnixStream::pair().map_err(|e| thread_error("socket pair", e))?;
        // librdkafka writes from its own threads and must never block on it.
        wake.set_nonblocking(true)
            .map_err(|e| thread_error("socket mode", e))?;
        woken
            .set_read_timeout(Some(IDLE_CHECK))
            .map_err(|e| thread_error("socket mode", e))?;
        // SAFETY: the client is alive; the handle is given back in `Drop`.
        let queue =
            EventQueue(unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) });
        // SAFETY: a live queue handle; one byte is copied from a live slice.
        // The socket outlives the registration, which `Drop` removes first.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(
                queue.0,
                wake.as_raw_fd(),
                b"1".as_ptr().cast(),
                1,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("relaybox-kafka-reports".into())
                .spawn(move || serve_reports(&producer, queue, woken, &stop))
        };
        let server = ReportServer {
            queue,
            wake,
            stop,
            thread: None,
        };
        // From here on `Drop` gives the queue handle back, whatever happens.
        let mut this = ReportingProducer { producer, server };
        this.server.thread = Some(thread.map_err(|e| thread_error("report thread", e))?);
        Ok(this)
    }

    /// The librdkafka client (metadata, flush).
    pub(crate) fn client(&self) -> &Client<Reports> {
        self.producer.client()
    }

    /// The producer itself, for librdkafka's transactions API (whose calls
    /// block: run them off the async threads).
    pub(crate) fn transactions(&self) -> &BaseProducer<Reports> {
        &self.producer
    }

    /// Waits until every record handed over is delivered or failed.
    pub(crate) fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }

    /// Hands `record` to librdkafka, or, when a record with the same message
    /// id (its delivery opaque) is still queued there, waits for that one's
    /// report instead; when such a record was delivered after its waiters had
    /// given up, the report is that success. A full queue is waited out; any
    /// other refusal is returned.
    pub(crate) async fn hand_over(
        &self,
        mut record: Record<'_>,
    ) -> std::result::Result<oneshot::Receiver<Report>, KafkaError> {
        let id = *record.delivery_opaque;
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        loop {
            let refused = {
                let mut waiting = self.producer.context().waiting();
                // Under the `waiting` lock, which `delivery` holds while it
                // decides that nobody received a report.
                if self.producer.context().unclaimed().take(&id) {
                    tracing::debug!(%id, "relaybox Kafka record delivered after its attempt timed out; not producing it again");
                    let _ = tx.take().expect("one waiter per call").send(Ok(()));
                    return Ok(rx);
                }
                if let Some(waiters) = waiting.get_mut(&id) {
                    waiters.push(tx.take().expect("one waiter per call"));
                    return Ok(rx);
                }
                // Registered before the record is handed over, and under the
                // lock the report's delivery takes, so the report finds it.
                waiting.insert(id, vec![tx.take().expect("one waiter per call")]);
                match self.producer.send(record) {
                    Ok(()) => return Ok(rx),
                    Err((e, back)) => {
                        tx = waiting.remove(&id).and_then(|mut w| w.pop());
                        record = back;
                        e
                    }
                }
            };
            match refused {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                e => return Err(e),
            }
        }
    }
}

impl Drop for ReportingProducer {
    fn drop(&mut self) {
        let server = &mut self.server;
        server.stop.store(true, Ordering::Release);
        // Wakes the thread; a full socket has a wake-up in it already.
        let _ = (&server.wake).write(b"0");
        if let Some(thread) = server.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: the handle is live and no thread uses it any more. The
        // registration goes before the socket closes (after this body), so
        // librdkafka never writes to a closed (or reused) descriptor.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(server.queue.0, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(server.queue.0);
        }
        // The producer itself drops next: librdkafka purges what is still
        // queued and reports it as failed, through `flush`'s own polling.
    }
}

/// The report thread: serves every event queued, then sleeps until
/// librdkafka's next wake-up (or [`IDLE_CHECK`]), until told to stop.
fn serve_reports(
    producer: &BaseProducer<Reports>,
    queue: EventQueue,
    mut woken: UnixStream,
    stop: &AtomicBool,
) {
    let mut wakeups = [0u8; 64];
    let mut failed = false;
    loop {
        // Serving marks the queue served, so the next event to arrive in an
        // empty queue writes a wake-up again. Every wake-up (or timeout) polls
        // at least once, so nothing depends on the length alone.
        loop {
            producer.poll(Duration::ZERO);
            if queue.len() == 0 {
                break;
            }
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        match woken.read(&mut wakeups) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if !failed {
                    tracing::error!(error = %e, "relaybox Kafka report thread cannot wait for wake-ups; polling every 10 ms instead");
                    failed = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// An OS resource the report thread needs could not be had.
fn thread_error(what: &str, e: std::io::Error) -> KafkaError {
    KafkaError::ClientCreation(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreceived_delivery_is_taken_by_one_retry() {
        let mut unclaimed = Unclaimed::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        unclaimed.insert(a, Instant::now());
        assert!(!unclaimed.take(&b));
        assert!(unclaimed.take(&a));
        assert!(!unclaimed.take(&a), "a second retry produces the record");
    }

    #[test]
    fn a_delivery_behind_a_refused_record_of_its_key_is_not_remembered() {
        let reports = Reports::default();
        reports
            .refused_keys()
            .insert(b"refused".to_vec(), Instant::now());
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        reports.remember_delivered([
            (a, Some(&b"refused"[..])),
            (b, Some(&b"other"[..])),
            (c, None),
        ]);
        let mut unclaimed = reports.unclaimed();
        assert!(
            !unclaimed.take(&a),
            "produced again, to land after the refused record's retry"
        );
        assert!(unclaimed.take(&b));
        assert!(unclaimed.take(&c));
    }

    #[test]
    fn old_unreceived_deliveries_are_forgotten() {
        let mut unclaimed = Unclaimed::new(Duration::from_millis(20), 100);
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        unclaimed.insert(old, Instant::now());
        std::thread::sleep(Duration::from_millis(40));
        unclaimed.insert(new, Instant::now());
        assert_eq!(unclaimed.at.len(), 1);
        assert!(!unclaimed.take(&old));
        assert!(unclaimed.take(&new));
    }

    #[test]
    fn the_oldest_unreceived_deliveries_go_first_when_full() {
        let mut unclaimed = Unclaimed::new(UNCLAIMED_FOR, 2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            unclaimed.insert(*id, Instant::now());
        }
        assert!(!unclaimed.take(&ids[0]));
        assert!(unclaimed.take(&ids[1]));
        assert!(unclaimed.take(&ids[2]));
    }
}
