//! The MQTT source: a rumqttc connection on its own thread hands messages to the pipeline over a
//! bounded queue; the pipeline decodes them (JSON object or array, CSV, raw) with their metadata.
//!
//! Acknowledgement: QoS 1/2 messages are acknowledged by hand, only once the WAL record holding
//! their rows is durable (`handed_on` then `durable`), so a crash never loses an acknowledged
//! message; the session is persistent, so the broker keeps what was not acknowledged.
//!
//! Duplicates: a message logged but not yet acknowledged when eddyd dies (or the connection
//! drops) is delivered again by the broker with DUP set. The source remembers the packet id and a
//! hash of topic and payload of the last [`DEDUPE_WINDOW`] logged messages; its WAL positions are
//! those entries (deltas, folded into the checkpoint's copy), so after a restart a redelivered
//! message that is already in the log is acknowledged and skipped instead of counted twice. The
//! hash is persisted, so it is XXH3 (a specified function), never a per-process seeded one. A new
//! session (the broker kept nothing) starts the window afresh: a reset entry in the log says so.
//!
//! Backpressure: when the queue is full the connection thread blocks; it stops reading the socket
//! and the broker holds the messages. Nothing is dropped here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;

use super::settings::Connection;
use super::wire::{self, Message as Publish, WireClient as Client, WireConnection, WireEvent};
use crate::connectors::backoff::Backoff;
use crate::metrics::ConnectorGauges;
use eddy_engine::connector::Format;
use eddy_engine::connector::{self, OpenedState, Poll, SourceReader, Wakeup};
use eddy_engine::connector::{MetaValue, RowDecoder};
use eddy_engine::Result;

/// Logged messages remembered for duplicate detection (packet id + hash each). The broker can have
/// at most 65535 messages in flight to one client; brokers' defaults are far lower (Mosquitto: 20).
pub const DEDUPE_WINDOW: usize = 8192;
const ENTRY: usize = 10;
/// Packet id 0 is never used for QoS 1/2, so an entry with it marks a new session: the broker
/// redelivers nothing from before it, so entries before it are forgotten.
const RESET_PKID: u16 = 0;

/// Metadata a source column can take with `METADATA FROM 'key'`.
pub const METADATA_KEYS: &[&str] = &["topic", "qos", "retain", "dup", "message_id"];

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub conn: Connection,
    pub topics: Vec<String>,
    pub format: Format,
    pub clean_session: bool,
    /// Messages waiting between the connection thread and the pipeline...
    pub queue_messages: usize,
    /// ...and their payload bytes (one message is always let through, whatever its size).
    pub queue_bytes: usize,
}

/// Payload bytes one poll takes at most (it always takes one message): keeps a batch, and the
/// WAL record logging it, to a size that does not depend on how much the broker had queued.
const POLL_BYTES: usize = 8 << 20;

/// Requests the client queues for its connection: acknowledgements, plus a few subscriptions and
/// the disconnect. Each acknowledgement answers a message the broker holds in flight on this
/// connection under its own packet id, and there are at most 65535 of those, so with this room an
/// acknowledgement always fits. The queue allocates as it fills, so the room costs nothing unused.
const REQUEST_QUEUE: usize = u16::MAX as usize + 64;

struct Delivered {
    publish: Publish,
    generation: u64,
}

/// What the connection thread hands to the reader, in the order the broker sent it.
#[allow(clippy::large_enum_variant)] // nearly every value is a message; boxing would allocate per message
enum Handoff {
    Message(Delivered),
    /// The broker has no session for us: nothing from before will be delivered again.
    NewSession,
}

/// What the connection thread and the reader share.
struct Shared {
    stop: AtomicBool,
    /// Bumped at every CONNACK: acknowledgements of an older connection are not sent (the broker
    /// delivers those messages again, and they are recognised as duplicates).
    generation: AtomicU64,
    gauges: Arc<ConnectorGauges>,
    /// Wakes the pipeline's worker when a message is handed over.
    wakeup: Option<Arc<Wakeup>>,
}

pub struct MqttSource {
    settings: SourceSettings,
    shared: Arc<Shared>,
    client: Option<Client>,
    rx: Option<Receiver<Handoff>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Messages of the last poll, to be acknowledged once their rows are durable.
    this_poll: Vec<Delivered>,
    /// (durable mark, message) in arrival order.
    awaiting: VecDeque<(u64, Delivered)>,
    /// Durable messages whose acknowledgement the client's request queue refused, in order, tried
    /// again at the next poll. [`REQUEST_QUEUE`] leaves room for every acknowledgement a broker
    /// can be owed; were one dropped, it would hold one of the broker's in-flight slots until the
    /// next session, and once all are held the subscription stalls.
    unsent_acks: VecDeque<Delivered>,
    /// Dedupe entries of logged messages (pkid, hash), oldest first.
    window: VecDeque<(u16, u64)>,
    /// Entries added by the last poll: the position logged with its rows.
    delta: Vec<(u16, u64)>,
    meta: Vec<String>,
}

/// Persisted in the WAL and checkpoints: its output must never change between runs or versions.
fn message_hash(topic: &str, payload: &[u8]) -> u64 {
    use twox_hash::XxHash3_64;
    XxHash3_64::oneshot_with_seed(XxHash3_64::oneshot(topic.as_bytes()), payload)
}

fn encode_entries<'a>(entries: impl Iterator<Item = &'a (u16, u64)>, out: &mut Vec<u8>) {
    for (id, h) in entries {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&h.to_le_bytes());
    }
}

fn decode_entries(b: &[u8]) -> impl Iterator<Item = (u16, u64)> + '_ {
    b.chunks_exact(ENTRY).map(|c| {
        let mut h = [0u8; 8];
        h.copy_from_slice(&c[2..]);
        (u16::from_le_bytes([c[0], c[1]]), u64::from_le_bytes(h))
    })
}

/// Folds a logged delta into the saved window, keeping the newest [`DEDUPE_WINDOW`] entries of
/// the current session.
pub fn fold_position(acc: &mut Vec<u8>, logged: &[u8]) {
    let logged = &logged[..logged.len() - logged.len() % ENTRY];
    match logged.chunks_exact(ENTRY).rposition(|c| c[..2] == RESET_PKID.to_le_bytes()) {
        Some(i) => {
            acc.clear();
            acc.extend_from_slice(&logged[(i + 1) * ENTRY..]);
        }
        None => acc.extend_from_slice(logged),
    }
    let keep = DEDUPE_WINDOW * ENTRY;
    if acc.len() > keep {
        acc.drain(..acc.len() - keep);
    }
}

impl MqttSource {
    pub fn new(
        settings: SourceSettings,
        meta: Vec<String>,
        gauges: Arc<ConnectorGauges>,
        wakeup: Option<Arc<Wakeup>>,
    ) -> Self {
        MqttSource {
            settings,
            shared: Arc::new(Shared { stop: AtomicBool::new(false), generation: AtomicU64::new(0), gauges, wakeup }),
            client: None,
            rx: None,
            thread: None,
            this_poll: Vec::new(),
            awaiting: VecDeque::new(),
            unsent_acks: VecDeque::new(),
            window: VecDeque::new(),
            delta: Vec::new(),
            meta,
        }
    }

    fn connect(&mut self) -> Result<()> {
        let s = &self.settings;
        // QoS 1/2 messages are acknowledged by `ack`, once their rows are durable — never by
        // rumqttc on receipt (that would lose them in a crash; the crash test catches it).
        let (client, mut connection) = wire::open(&s.conn, !s.clean_session, true, REQUEST_QUEUE)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(s.queue_messages.max(1));
        let shared = self.shared.clone();
        let topics = s.topics.clone();
        let queue_bytes = s.queue_bytes;
        // QoS 2 is subscribed as QoS 1. Exactly-once comes from acknowledging only durable input
        // and recognising redeliveries, which QoS 1 gives; a QoS 2 handshake the broker resumes
        // after a restart (PUBREL for a PUBREC sent before it) is refused by rumqttc as
        // unsolicited, and the connection would fail on it at every reconnect.
        let qos = match s.conn.qos {
            QoS::ExactlyOnce => {
                tracing::info!(source = %s.conn.ctx, "qos = 2: subscribing at QoS 1; durable acknowledgement and duplicate detection count every message exactly once");
                QoS::AtLeastOnce
            }
            q => q,
        };
        let sub_client = client.clone();
        let ctx = s.conn.ctx.clone();
        // The name the broker keeps this source's session under: for finding it there.
        tracing::info!(source = %ctx, client_id = %s.conn.client_id, persistent = !s.clean_session, "MQTT connecting");
        self.shared.gauges.set_connected_as(&s.conn.client_id);
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-in {}", s.conn.client_id))
            .spawn(move || run_connection(&mut connection, &sub_client, &topics, qos, &tx, &shared, &ctx, queue_bytes))
            .map_err(|e| eddy_engine::EngineError::io("<thread>", e))?;
        self.client = Some(client);
        self.rx = Some(rx);
        self.thread = Some(thread);
        Ok(())
    }

    fn set_meta(&self, dec: &mut RowDecoder, p: &Publish) {
        for (slot, key) in self.meta.iter().enumerate() {
            match key.as_str() {
                "topic" => dec.set_meta_text(slot, &p.topic),
                "qos" => dec.set_meta(slot, MetaValue::Int(p.qos as i64)),
                "retain" => dec.set_meta(slot, MetaValue::Bool(p.retain)),
                "dup" => dec.set_meta(slot, MetaValue::Bool(p.dup)),
                "message_id" => dec.set_meta(slot, MetaValue::Int(p.pkid as i64)),
                _ => dec.set_meta(slot, MetaValue::Null),
            }
        }
    }

    fn decode(&self, dec: &mut RowDecoder, p: &Publish, now: i64) {
        self.set_meta(dec, p);
        connector::decode_payload(dec, self.settings.format, &p.payload, now);
    }

    /// Whether `p` is a redelivery of a message already in the log: its packet id's *newest*
    /// logged entry has the same hash. The broker reuses a packet id once it is acknowledged, so
    /// older entries of that id belong to other, finished messages; matching them would drop a
    /// new message that repeats an old payload (`{"door":"open"}`). The entry stays: the same
    /// message comes again if the connection drops before this redelivery is acknowledged.
    ///
    /// What remains ambiguous (docs/mqtt-source.md): a new message with the same packet id, topic
    /// and payload as the newest logged one, never logged itself, then redelivered with DUP. The
    /// broker sends it only after our acknowledgement of the logged one, and that one was
    /// acknowledged only once durable; so it takes a crash between the broker's send and our
    /// log of the new copy *and* byte-identical content — then the copy is taken as the logged one.
    fn is_duplicate(&self, p: &Publish, hash: u64) -> bool {
        p.dup
            && p.qos != QoS::AtMostOnce
            && self.window.iter().rev().find(|e| e.0 == p.pkid).is_some_and(|e| e.1 == hash)
    }

    /// The broker kept no session: what it delivers from now on is new.
    fn new_session(&mut self) {
        self.window.clear();
        self.delta.push((RESET_PKID, 0));
    }

    /// Acknowledges a durable message, after any acknowledgements still waiting (the broker
    /// expects them in order). One that does not fit the client's request queue waits for the
    /// next try ([`MqttSource::retry_acks`]).
    fn ack(&mut self, d: Delivered) {
        self.unsent_acks.push_back(d);
        self.retry_acks();
    }

    /// Queues waiting acknowledgements until the client's request queue is full. Those of an
    /// earlier connection are dropped: that session's broker delivers them again, and they are
    /// skipped as duplicates.
    fn retry_acks(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        while let Some(d) = self.unsent_acks.front() {
            if d.publish.qos == QoS::AtMostOnce || d.generation != generation {
                self.unsent_acks.pop_front();
                continue;
            }
            let Some(c) = &self.client else { return };
            if let Err(e) = c.ack(&d.publish) {
                tracing::debug!(source = %self.settings.conn.ctx, error = %e, waiting = self.unsent_acks.len(), "acknowledgements wait for the client's request queue");
                return;
            }
            self.unsent_acks.pop_front();
        }
    }
}

impl SourceReader for MqttSource {
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll> {
        if self.rx.is_none() {
            self.connect()?;
        }
        self.retry_acks();
        let now = eddy_engine::time::now_ms();
        let mut got = 0;
        let mut bytes = 0;
        while got < max_rows && dec.rows() < max_rows && bytes < POLL_BYTES {
            let Some(rx) = &self.rx else { break };
            let d = match rx.try_recv() {
                Ok(Handoff::Message(d)) => d,
                Ok(Handoff::NewSession) => {
                    got += 1;
                    self.new_session();
                    continue;
                }
                Err(_) => break,
            };
            got += 1;
            bytes += d.publish.payload.len();
            self.shared.gauges.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.shared.gauges.queue_bytes.fetch_sub(d.publish.payload.len() as u64, Ordering::Relaxed);
            tracing::trace!(source = %self.settings.conn.ctx, pkid = d.publish.pkid, dup = d.publish.dup, generation = d.generation, bytes = d.publish.payload.len(), "message");
            if d.publish.qos != QoS::AtMostOnce {
                let hash = message_hash(&d.publish.topic, &d.publish.payload);
                if self.is_duplicate(&d.publish, hash) {
                    tracing::debug!(source = %self.settings.conn.ctx, pkid = d.publish.pkid, "redelivered message already logged: acknowledged, not counted again");
                    self.shared.gauges.duplicates.fetch_add(1, Ordering::Relaxed);
                    self.this_poll.push(d);
                    continue;
                }
                self.window.push_back((d.publish.pkid, hash));
                if self.window.len() > DEDUPE_WINDOW {
                    self.window.pop_front();
                }
                self.delta.push((d.publish.pkid, hash));
            }
            self.shared.gauges.messages.fetch_add(1, Ordering::Relaxed);
            self.decode(dec, &d.publish, now);
            self.this_poll.push(d);
        }
        Ok(if got > 0 { Poll::Rows } else { Poll::Idle })
    }

    fn bounded(&self) -> bool {
        false
    }

    /// The dedupe entries of the messages in the rows being logged.
    fn position(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.delta.len() * ENTRY);
        encode_entries(self.delta.iter(), &mut out);
        out
    }

    fn resume(&mut self, position: &[u8], _dec: &mut RowDecoder) -> Result<()> {
        // A folded position holds no reset entries: `fold_position` applied them.
        self.window = decode_entries(position).collect();
        Ok(())
    }

    fn handed_on(&mut self, mark: Option<u64>) {
        self.delta.clear();
        match mark {
            None => {
                for d in std::mem::take(&mut self.this_poll) {
                    self.ack(d);
                }
            }
            Some(m) => self.awaiting.extend(self.this_poll.drain(..).map(|d| (m, d))),
        }
    }

    fn durable(&mut self, lsn: u64) {
        while self.awaiting.front().is_some_and(|(m, _)| *m <= lsn) {
            if let Some((_, d)) = self.awaiting.pop_front() {
                self.ack(d);
            }
        }
    }

    fn bind_state(&mut self, state: &OpenedState) {
        self.settings.conn.bind_state(state);
    }

    fn connected(&self) -> Option<bool> {
        Some(self.shared.gauges.connected.load(Ordering::Relaxed))
    }
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Dropping the receiver unblocks a connection thread waiting on a full queue.
        self.rx = None;
        if let Some(c) = self.client.take() {
            c.disconnect();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The connection thread: (re)connects with backoff, subscribes, and passes messages on,
/// blocking while the queue is full (in messages or in bytes).
#[allow(clippy::too_many_arguments)] // one thread's whole context, passed once at spawn
fn run_connection(
    connection: &mut WireConnection,
    client: &Client,
    topics: &[String],
    qos: QoS,
    tx: &SyncSender<Handoff>,
    shared: &Shared,
    ctx: &str,
    queue_bytes: usize,
) {
    let mut backoff = Backoff::new();
    // Whether this process subscribed on the session the broker still holds.
    let mut subscribed = false;
    while !shared.stop.load(Ordering::Acquire) {
        match connection.recv(Duration::from_millis(200)) {
            None => continue,
            Some(WireEvent::Connected { session_present }) => {
                let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
                shared.gauges.connected.store(true, Ordering::Relaxed);
                shared.gauges.connects.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
                if !session_present {
                    if generation > 1 {
                        // We had a session on this broker and it is gone: whatever it held for us
                        // (messages published while we were away) is lost. Say so loudly.
                        shared.gauges.sessions_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(source = %ctx, generation, "MQTT broker lost the persistent session (expiry or restart without persistence); messages it held for this source are gone");
                    } else {
                        tracing::info!(source = %ctx, "MQTT connected; the broker has no session for this client yet (first start, or it expired)");
                    }
                    subscribed = false;
                    if !hand_off(tx, Handoff::NewSession, 0, queue_bytes, shared) {
                        return;
                    }
                } else {
                    tracing::info!(source = %ctx, generation, "MQTT connected; persistent session resumed");
                }
                // Subscribe once per process on a resumed session (the topics may have changed
                // since the session was made; MQTT replaces an existing subscription), and on
                // every new session. Not again on a reconnect to the same session: a subscribe
                // makes the broker send retained messages again, which would count them twice.
                // MQTT 5 asks for retained messages only when the subscription is new.
                if !subscribed {
                    for t in topics {
                        if let Err(e) = client.subscribe(t, qos) {
                            tracing::error!(source = %ctx, topic = %t, error = %e, "cannot subscribe");
                        }
                    }
                    subscribed = true;
                }
            }
            Some(WireEvent::SubscribeRefused) => {
                tracing::error!(source = %ctx, "the broker refused a subscription (check the topic filters and ACLs)");
            }
            Some(WireEvent::Message(p)) => {
                let d = Delivered { publish: p, generation: shared.generation.load(Ordering::Acquire) };
                let len = d.publish.payload.len();
                if !hand_off(tx, Handoff::Message(d), len, queue_bytes, shared) {
                    return;
                }
            }
            Some(WireEvent::Error(e)) => {
                if shared.gauges.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(source = %ctx, error = %e, "MQTT connection lost; reconnecting");
                } else {
                    tracing::debug!(source = %ctx, error = %e, "MQTT connect failed");
                }
                shared.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
                backoff.sleep(&shared.stop);
            }
            Some(_) => {}
        }
    }
}

/// Passes `h` (carrying `len` payload bytes) to the reader, blocking while the queue is full —
/// in messages, or in bytes unless it is empty (backpressure: the socket is not read, so the
/// broker holds the messages). False once the source is stopping.
fn hand_off(tx: &SyncSender<Handoff>, mut h: Handoff, len: usize, queue_bytes: usize, shared: &Shared) -> bool {
    let g = &shared.gauges;
    loop {
        let queued = g.queue_bytes.load(Ordering::Relaxed) as usize;
        if len > 0 && queued > 0 && queued + len > queue_bytes {
            g.backpressure.fetch_add(1, Ordering::Relaxed);
            if shared.stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        // Counted before the send, so the reader never subtracts what was not yet added.
        if len > 0 {
            g.queue_depth.fetch_add(1, Ordering::Relaxed);
            g.queue_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        match tx.try_send(h) {
            Ok(()) => {
                if let Some(w) = &shared.wakeup {
                    w.wake();
                }
                return true;
            }
            Err(TrySendError::Full(back)) => {
                if len > 0 {
                    g.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    g.queue_bytes.fetch_sub(len as u64, Ordering::Relaxed);
                }
                g.backpressure.fetch_add(1, Ordering::Relaxed);
                h = back;
                if shared.stop.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_engine::connector::DecodeColumn;
    use eddy_engine::connector::Options;

    /// A source fed by hand: its queue is the test's, it never connects (no client, so no acks).
    fn source() -> (MqttSource, SyncSender<Handoff>, RowDecoder) {
        let o = Options { entries: vec![("url".into(), "mqtt://127.0.0.1:1".into(), Default::default())] };
        let conn =
            Connection::resolve(eddy_engine::connector::Role::Source, "p", "s", &o, &Default::default()).unwrap();
        let settings = SourceSettings {
            conn,
            topics: vec!["t/#".into()],
            format: Format::Raw,
            clean_session: false,
            queue_messages: 64,
            queue_bytes: 1 << 20,
        };
        let mut src = MqttSource::new(settings, Vec::new(), Arc::default(), None);
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        src.rx = Some(rx);
        let col = DecodeColumn {
            name: "raw".into(),
            data_type: arrow::datatypes::DataType::Utf8,
            nullable: true,
            metadata_key: None,
        };
        (src, tx, RowDecoder::new(vec![col], None).unwrap())
    }

    fn send(tx: &SyncSender<Handoff>, pkid: u16, dup: bool, payload: &str) {
        let publish = Publish::for_test("t/a", payload.as_bytes(), pkid, dup);
        tx.send(Handoff::Message(Delivered { publish, generation: 1 })).unwrap();
    }

    /// Polls what is queued and "logs" it: returns the rows read and folds the logged position.
    fn poll_and_log(src: &mut MqttSource, dec: &mut RowDecoder, saved: &mut Vec<u8>) -> usize {
        src.poll(dec, 1024).unwrap();
        fold_position(saved, &src.position());
        src.handed_on(None);
        dec.finish().unwrap().map_or(0, |b| b.num_rows())
    }

    #[test]
    fn the_persisted_hash_never_changes() {
        // Written into WAL records and checkpoints: a hash seeded per process (or changed by an
        // upgrade) would let every redelivery after a restart through as a new message. The value
        // is XXH3-64 as the reference implementation (Python xxhash) computes it.
        assert_eq!(message_hash("plant/line1/telemetry", b"{\"t\":21.5}"), 0x712c_9a4b_3ba6_b074);
        assert_ne!(message_hash("a", b"bc"), message_hash("ab", b"c"));
    }

    #[test]
    fn redeliveries_after_a_restart_are_skipped_every_time() {
        let mut saved = Vec::new();
        let (mut first, tx, mut dec) = source();
        for i in 1..=5 {
            send(&tx, i, false, &format!("m{i}"));
        }
        assert_eq!(poll_and_log(&mut first, &mut dec, &mut saved), 5);
        drop(first);

        // A restart: the broker delivers the unacknowledged ones again, with DUP, and a new one.
        let (mut second, tx, mut dec) = source();
        second.resume(&saved, &mut dec).unwrap();
        for i in 3..=5 {
            send(&tx, i, true, &format!("m{i}"));
        }
        send(&tx, 6, false, "m6");
        // A redelivery of a message that never reached the log (DUP, but unknown) counts.
        send(&tx, 7, true, "m7");
        assert_eq!(poll_and_log(&mut second, &mut dec, &mut saved), 2);
        assert_eq!(second.shared.gauges.duplicates.load(Ordering::Relaxed), 3);
        // The connection drops before those were acknowledged: they come a second time.
        for i in 3..=7 {
            send(&tx, i, true, &format!("m{i}"));
        }
        assert_eq!(poll_and_log(&mut second, &mut dec, &mut saved), 0);
        // Same packet id, other content: a different message, not a duplicate.
        send(&tx, 4, true, "other");
        assert_eq!(poll_and_log(&mut second, &mut dec, &mut saved), 1);
    }

    /// The queue between the connection and the pipeline is bounded in bytes too: a large
    /// message waits while others fill it (the socket is not read, so the broker holds it), and
    /// goes through once the reader takes what is queued; an empty queue takes any one message.
    #[test]
    fn the_queue_is_bounded_in_bytes_as_well_as_messages() {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            gauges: Arc::default(),
            wakeup: None,
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(100);
        let msg = |n: usize| {
            let publish = Publish::for_test("t/a", &vec![b'x'; n], 1, false);
            Handoff::Message(Delivered { publish, generation: 1 })
        };
        // Larger than the bound, into an empty queue: passes.
        assert!(hand_off(&tx, msg(3000), 3000, 1000, &shared));
        let (sh, tx2) = (shared.clone(), tx.clone());
        let waiting = std::thread::spawn(move || hand_off(&tx2, msg(600), 600, 1000, &sh));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "a message over the byte bound was queued");
        // The reader takes the first message.
        let _ = rx.recv().unwrap();
        shared.gauges.queue_bytes.fetch_sub(3000, Ordering::Relaxed);
        assert!(waiting.join().unwrap());
        assert_eq!(shared.gauges.queue_bytes.load(Ordering::Relaxed), 600);
        assert!(shared.gauges.backpressure.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_reused_packet_id_matches_only_its_newest_message() {
        let mut saved = Vec::new();
        let (mut first, tx, mut dec) = source();
        // The broker reuses packet id 1 once "on" is acknowledged.
        send(&tx, 1, false, "on");
        send(&tx, 1, false, "off");
        assert_eq!(poll_and_log(&mut first, &mut dec, &mut saved), 2);
        drop(first);
        // After a restart, id 1 comes with DUP and "on" again: that is a new message whose first
        // delivery never reached the log ("off" was the last message with id 1).
        let (mut second, tx, mut dec) = source();
        second.resume(&saved, &mut dec).unwrap();
        send(&tx, 1, true, "on");
        assert_eq!(poll_and_log(&mut second, &mut dec, &mut saved), 1);
        // Its own redelivery now is a duplicate.
        send(&tx, 1, true, "on");
        assert_eq!(poll_and_log(&mut second, &mut dec, &mut saved), 0);
    }

    #[test]
    fn a_new_session_forgets_what_came_before() {
        let mut saved = Vec::new();
        let (mut src, tx, mut dec) = source();
        send(&tx, 1, false, "same");
        assert_eq!(poll_and_log(&mut src, &mut dec, &mut saved), 1);
        // The broker lost our session: its packet ids start over, so an equal (id, payload) is new.
        tx.send(Handoff::NewSession).unwrap();
        assert_eq!(poll_and_log(&mut src, &mut dec, &mut saved), 0);
        send(&tx, 1, true, "same");
        assert_eq!(poll_and_log(&mut src, &mut dec, &mut saved), 1);
        // The reset is in the logged position too: a restart keeps only the new session's entry.
        assert_eq!(decode_entries(&saved).collect::<Vec<_>>(), vec![(1, message_hash("t/a", b"same"))]);
    }

    #[test]
    fn positions_fold_to_the_newest_window() {
        let mut acc = Vec::new();
        for i in 0..(DEDUPE_WINDOW as u64 + 10) {
            let mut d = Vec::new();
            encode_entries([(i as u16, i)].iter(), &mut d);
            fold_position(&mut acc, &d);
        }
        let entries: Vec<_> = decode_entries(&acc).collect();
        assert_eq!(entries.len(), DEDUPE_WINDOW);
        assert_eq!(entries[0].1, 10);
        assert_eq!(entries.last().unwrap().1, DEDUPE_WINDOW as u64 + 9);
    }
}
