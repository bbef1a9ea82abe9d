//! A sink's outbox (MQTT, hub): messages a pipeline has committed and the receiver has not
//! acknowledged yet, in order, bounded in bytes. In a durable pipeline it is kept in an encrypted WAL of its own
//! (`<state>/sinks/<sink>/`), so messages survive a crash and a broker outage; without durable state
//! it lives in memory only.
//!
//! Records: `1` a delivery (`end`, first sequence number, messages), `3` acknowledged through a
//! sequence number, with the counters a delivery record would give — next sequence number and
//! delivered `end` — because the segments holding only acknowledged messages are deleted, and
//! with them their delivery records (`2`, the same without those two, is still read). A delivery
//! larger than [`PART_BYTES`] is written as `4` parts (first sequence number, messages) followed
//! by its `1` record; parts count only once that record follows them, so a delivery is recovered
//! whole or not at all. Recovery replays them all. Never does network I/O.
//!
//! Bounded on disk as in memory: messages dropped under `drop_oldest` are logged as acknowledged
//! in the same commit as the delivery that displaced them, and the segments holding only such
//! messages are deleted, so a broker outage cannot grow the log past the bound (plus a segment).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eddy_engine::storage::{StateReader, StateWriter, Wal, WalConfig};
use eddy_engine::{EngineError, Result};

use crate::metrics::ConnectorGauges;
use eddy_engine::connector::SinkStateDir;

const REC_DELIVERY: u8 = 1;
/// Written by earlier versions: acknowledged through, dropped.
const REC_ACKED_V1: u8 = 2;
/// Acknowledged through, dropped, next sequence number, delivered `end`.
const REC_ACKED: u8 = 3;
/// Part of a delivery: first sequence number, messages (the `REC_DELIVERY` that ends it follows).
const REC_DELIVERY_PART: u8 = 4;
/// The outbox's identity: a random u64 chosen when it is created.
const REC_IDENTITY: u8 = 5;
/// `REC_ACKED` followed by the identity, so it survives the deletion of the segment holding
/// `REC_IDENTITY`.
const REC_ACKED_ID: u8 = 6;
/// Bytes of messages one record holds at most: a commit of any size is split into records of a
/// bounded size (the WAL's record limit is set above it).
pub const PART_BYTES: usize = 4 << 20;

eddy_engine::connector::option_enum! {
    /// What to do with a delivery when the outbox is full (`outbox_full`; unset: `block`).
    pub enum FullPolicy {
        /// The pipeline waits (and, through it, its sources: backpressure up to the broker).
        Block = "block",
        /// The oldest messages make room; each one is counted in `dropped`.
        DropOldest = "drop_oldest" | "drop-oldest",
    }
}

#[derive(Debug, Clone)]
pub struct OutMsg {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    /// The WAL record holding it (durable outboxes).
    lsn: u64,
}

pub struct Outbox {
    wal: Option<Wal>,
    /// Unacknowledged messages, oldest first.
    pub queue: VecDeque<OutMsg>,
    pub bytes: usize,
    pub limit: usize,
    pub policy: FullPolicy,
    next_seq: u64,
    /// `end` of the last delivery taken (see `SinkWriter::deliver`).
    durable_end: u64,
    /// Everything below this sequence number is acknowledged (or dropped).
    acked_seq: u64,
    /// `acked_seq` as last written to the WAL.
    logged_acked: u64,
    pub dropped: u64,
    scratch: StateWriter,
    /// While replaying: messages of delivery parts not yet ended by their delivery record.
    parts: Vec<OutMsg>,
    /// Random, fixed for the outbox's life (0: in memory). Sequence numbers start again at 0 in
    /// a new outbox (a reset state dir), so consumers tell them apart by this id.
    pub id: u64,
}

fn msg_bytes(m: &OutMsg) -> usize {
    m.topic.len() + m.payload.len() + 32
}

impl Outbox {
    /// Opens (and recovers) the outbox; `state` is `None` for an in-memory one.
    pub fn open(state: Option<&SinkStateDir>, limit: usize, policy: FullPolicy) -> Result<Outbox> {
        let mut ob = Outbox {
            wal: None,
            queue: VecDeque::new(),
            bytes: 0,
            limit,
            policy,
            next_seq: 0,
            durable_end: 0,
            acked_seq: 0,
            logged_acked: 0,
            dropped: 0,
            scratch: StateWriter::default(),
            parts: Vec::new(),
            id: 0,
        };
        let Some(st) = state else { return Ok(ob) };
        let mut cfg = WalConfig::new(st.dir.clone());
        cfg.owner = st.owner;
        cfg.segment_bytes = 16 << 20;
        // A record holds at most PART_BYTES of messages, or one message (at most the MQTT limit
        // of 256 MiB) with its framing.
        cfg.max_record_bytes = 260 << 20;
        let wal = Wal::open(st.storage.clone(), Arc::clone(&st.cipher), cfg)?;
        wal.replay(0, &mut |lsn, payload| {
            ob.apply(lsn, payload).map_err(|e| eddy_engine::storage::StorageError::Corrupt(e.to_string()))
        })?;
        // Parts not ended by their delivery record: a crash cut that delivery short, so none of
        // it was taken (the pipeline delivers it again).
        ob.parts.clear();
        ob.logged_acked = ob.acked_seq;
        ob.wal = Some(wal);
        if ob.id == 0 {
            // A new outbox (or one written before identities): choose one, durably, before any
            // message is sent under it.
            ob.id = random_id()?;
            if let Some(wal) = ob.wal.as_mut() {
                let w = &mut ob.scratch;
                w.buf.clear();
                w.u8(REC_IDENTITY);
                w.u64(ob.id);
                wal.append(&w.buf)?;
                wal.commit()?;
            }
        }
        // A lowered bound applies at once under drop_oldest; under block nothing is ever dropped.
        if ob.policy == FullPolicy::DropOldest && ob.bytes > ob.limit {
            let dropped = ob.drop_oldest(0);
            tracing::warn!(
                dropped,
                bytes = ob.bytes,
                limit = ob.limit,
                "outbox over its (lowered) bound: oldest messages dropped"
            );
            ob.sync_acks()?;
        }
        Ok(ob)
    }

    /// Reads `n` messages numbered from `first` into `parts`.
    fn read_messages(&mut self, r: &mut StateReader, lsn: u64) -> Result<()> {
        let first = r.u64()?;
        let n = r.u64()?;
        // Parts of one delivery are contiguous; anything else left in `parts` was cut short.
        if self.parts.last().is_some_and(|m| m.seq + 1 != first) {
            self.parts.clear();
        }
        for i in 0..n {
            let topic = String::from_utf8(r.bytes()?.to_vec())
                .map_err(|_| EngineError::State("an outbox topic is not UTF-8".into()))?;
            let payload = r.bytes()?.to_vec();
            self.parts.push(OutMsg { seq: first + i, topic, payload, lsn });
        }
        Ok(())
    }

    fn apply(&mut self, lsn: u64, payload: &[u8]) -> Result<()> {
        let mut r = StateReader::new(payload, "an outbox record");
        match r.u8()? {
            REC_DELIVERY_PART => {
                self.read_messages(&mut r, lsn)?;
                r.finish()
            }
            REC_DELIVERY => {
                self.durable_end = self.durable_end.max(r.u64()?);
                self.read_messages(&mut r, lsn)?;
                r.finish()?;
                for m in std::mem::take(&mut self.parts) {
                    self.next_seq = self.next_seq.max(m.seq + 1);
                    if m.seq >= self.acked_seq {
                        self.push(m);
                    }
                }
                Ok(())
            }
            REC_IDENTITY => {
                self.parts.clear();
                self.id = r.u64()?;
                r.finish()
            }
            kind @ (REC_ACKED_ID | REC_ACKED | REC_ACKED_V1) => {
                self.parts.clear();
                let acked = r.u64()?;
                self.dropped = r.u64()?;
                if kind != REC_ACKED_V1 {
                    self.next_seq = self.next_seq.max(r.u64()?);
                    self.durable_end = self.durable_end.max(r.u64()?);
                }
                if kind == REC_ACKED_ID {
                    self.id = r.u64()?;
                }
                r.finish()?;
                self.acked_through(acked);
                Ok(())
            }
            _ => Err(EngineError::State("an outbox record of unknown kind".into())),
        }
    }

    fn push(&mut self, m: OutMsg) {
        self.bytes += msg_bytes(&m);
        self.queue.push_back(m);
    }

    /// Whether a delivery of `add` bytes fits now (an empty outbox takes any one delivery).
    pub fn fits(&self, add: usize) -> bool {
        self.queue.is_empty() || self.bytes + add <= self.limit
    }

    /// Whether the delivery ending at `end` is already in the outbox (a re-delivery after a crash).
    pub fn has(&self, end: u64) -> bool {
        end <= self.durable_end
    }

    /// Drops the oldest messages until `add` more bytes fit (or the outbox is empty); counts them.
    fn drop_oldest(&mut self, add: usize) -> u64 {
        let mut dropped = 0;
        while self.bytes + add > self.limit {
            let Some(m) = self.queue.pop_front() else { break };
            self.bytes -= msg_bytes(&m);
            self.acked_seq = self.acked_seq.max(m.seq + 1);
            dropped += 1;
        }
        self.dropped += dropped;
        dropped
    }

    /// Takes a delivery of messages; durable outboxes append and fsync it before returning.
    /// Under `DropOldest`, the oldest messages are dropped to make room (returns how many); the
    /// drop is logged in the same commit, and their segments are deleted.
    pub fn take(&mut self, end: u64, msgs: Vec<(String, Vec<u8>)>) -> Result<u64> {
        let add: usize = msgs.iter().map(|(t, p)| t.len() + p.len() + 32).sum();
        let dropped = if self.policy == FullPolicy::DropOldest { self.drop_oldest(add) } else { 0 };
        let first = self.next_seq;
        let n = msgs.len() as u64;
        let mut lsns = Vec::new();
        if let Some(wal) = self.wal.as_mut() {
            if dropped > 0 {
                Self::append_acked(
                    wal,
                    &mut self.scratch,
                    [self.acked_seq, self.dropped, self.next_seq, self.durable_end, self.id],
                )?;
            }
            // Records of at most PART_BYTES of messages (one message at least), all but the last
            // as parts; the last carries `end` (an empty delivery is that record alone). One
            // commit covers them all.
            let mut i = 0;
            loop {
                let (mut j, mut bytes) = (i, 0);
                while j < msgs.len() && (j == i || bytes + msgs[j].0.len() + msgs[j].1.len() <= PART_BYTES) {
                    bytes += msgs[j].0.len() + msgs[j].1.len();
                    j += 1;
                }
                let last = j == msgs.len();
                let w = &mut self.scratch;
                w.buf.clear();
                w.u8(if last { REC_DELIVERY } else { REC_DELIVERY_PART });
                if last {
                    w.u64(end);
                }
                w.u64(first + i as u64);
                w.u64((j - i) as u64);
                for (t, p) in &msgs[i..j] {
                    w.bytes(t.as_bytes());
                    w.bytes(p);
                }
                let lsn = wal.append(&w.buf)?;
                lsns.extend(std::iter::repeat_n(lsn, j - i));
                i = j;
                if last {
                    break;
                }
            }
            wal.commit()?;
            if dropped > 0 {
                self.logged_acked = self.acked_seq;
                let keep = self.queue.front().map(|m| m.lsn).or(lsns.first().copied()).unwrap_or(wal.next_lsn());
                wal.truncate_before(keep)?;
            }
        }
        for (i, (topic, payload)) in msgs.into_iter().enumerate() {
            let lsn = lsns.get(i).copied().unwrap_or(0);
            self.push(OutMsg { seq: first + i as u64, topic, payload, lsn });
        }
        self.next_seq = first + n;
        self.durable_end = self.durable_end.max(end);
        Ok(dropped)
    }

    /// Appends an acked record: acknowledged through, dropped, next sequence number, delivered
    /// `end`, identity.
    fn append_acked(wal: &mut Wal, w: &mut StateWriter, fields: [u64; 5]) -> Result<u64> {
        w.buf.clear();
        w.u8(REC_ACKED_ID);
        for f in fields {
            w.u64(f);
        }
        Ok(wal.append(&w.buf)?)
    }

    /// Shows the outbox's size in the sink's gauges.
    pub fn publish_gauges(&self, g: &ConnectorGauges) {
        g.outbox_messages.store(self.queue.len() as u64, Ordering::Relaxed);
        g.outbox_bytes.store(self.bytes as u64, Ordering::Relaxed);
        g.outbox_next_seq.store(self.next_seq, Ordering::Relaxed);
        g.outbox_acked_seq.store(self.acked_seq, Ordering::Relaxed);
        g.outbox_end.store(self.durable_end, Ordering::Relaxed);
        g.outbox_id.store(self.id, Ordering::Relaxed);
    }

    /// The broker acknowledged every message below `seq`.
    pub fn acked_through(&mut self, seq: u64) {
        self.acked_seq = self.acked_seq.max(seq);
        while self.queue.front().is_some_and(|m| m.seq < self.acked_seq) {
            if let Some(m) = self.queue.pop_front() {
                self.bytes -= msg_bytes(&m);
            }
        }
    }

    /// Records that the sink's deliveries through `end` were delivered and sent elsewhere: after
    /// a restore from a backup, by the device the backup came from (docs/hub.md). The recovery's
    /// roll-forward of the restored commit is then taken for the re-delivery it is.
    pub fn mark_delivered(&mut self, end: u64) -> Result<()> {
        let Some(wal) = self.wal.as_mut() else { return Ok(()) };
        self.durable_end = self.durable_end.max(end);
        Self::append_acked(
            wal,
            &mut self.scratch,
            [self.acked_seq, self.dropped, self.next_seq, self.durable_end, self.id],
        )?;
        wal.commit()?;
        Ok(())
    }

    /// Writes the acknowledged point (when it moved) and deletes segments no longer needed.
    pub fn sync_acks(&mut self) -> Result<()> {
        let Some(wal) = self.wal.as_mut() else { return Ok(()) };
        if self.acked_seq == self.logged_acked {
            return Ok(());
        }
        let lsn = Self::append_acked(
            wal,
            &mut self.scratch,
            [self.acked_seq, self.dropped, self.next_seq, self.durable_end, self.id],
        )?;
        wal.commit()?;
        self.logged_acked = self.acked_seq;
        let keep = self.queue.front().map(|m| m.lsn).unwrap_or(lsn);
        wal.truncate_before(keep)?;
        Ok(())
    }
}

/// An outbox shared by a sink (which fills it) and its sender thread (which empties it), with the
/// signal that it changed. The one place a sink waits for room.
pub struct SharedOutbox {
    outbox: Mutex<Outbox>,
    /// Signalled when the outbox gains or loses messages (and when the sender fails).
    pub changed: Condvar,
    /// Set when the sink closes (the pipeline stopped): the sender stops.
    closing: AtomicBool,
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> SharedOutbox {
        SharedOutbox { outbox: Mutex::new(outbox), changed: Condvar::new(), closing: AtomicBool::new(false) }
    }

    /// Whether the sender should stop.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits until the outbox is empty, `until` passes or `keep_waiting` says no more; returns
    /// how many messages are left.
    pub fn drain(&self, until: Instant, keep_waiting: impl Fn() -> bool) -> Result<usize> {
        let mut ob = self.lock()?;
        while !ob.queue.is_empty() && Instant::now() < until && keep_waiting() {
            ob = self.wait(ob, Duration::from_millis(50))?;
        }
        Ok(ob.queue.len())
    }

    /// Tells the sender to stop and waits for its thread; `what` names it in errors.
    pub fn stop_sender(&self, thread: Option<JoinHandle<Result<()>>>, what: &str) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_all();
        match thread.map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(EngineError::Internal(format!("the {what} thread panicked"))),
            None => Ok(()),
        }
    }

    pub fn lock(&self) -> Result<MutexGuard<'_, Outbox>> {
        self.outbox
            .lock()
            .map_err(|_| EngineError::Internal("the outbox lock is poisoned (its sender panicked)".into()))
    }

    /// Waits up to `timeout` for a change; returns the guard again.
    pub fn wait<'a>(&self, ob: MutexGuard<'a, Outbox>, timeout: Duration) -> Result<MutexGuard<'a, Outbox>> {
        Ok(self
            .changed
            .wait_timeout(ob, timeout)
            .map_err(|_| EngineError::Internal("the outbox lock is poisoned".into()))?
            .0)
    }

    /// Takes a delivery (unless it is a re-delivery already held): under `Block` it first waits
    /// for room, checking `sender_alive` while it waits; at shutdown it takes the delivery over
    /// the bound rather than lose it (the final checkpoint already counts it as delivered).
    /// Returns the outbox, still locked, for the caller to start sending at once.
    pub fn admit<'a>(
        &'a self,
        ctx: &str,
        end: u64,
        msgs: Vec<(String, Vec<u8>)>,
        stopping: &AtomicBool,
        gauges: &ConnectorGauges,
        sender_alive: impl Fn() -> Result<()>,
    ) -> Result<MutexGuard<'a, Outbox>> {
        sender_alive()?;
        let add: usize = msgs.iter().map(|(t, p)| t.len() + p.len() + 32).sum();
        let mut ob = self.lock()?;
        if ob.has(end) {
            return Ok(ob); // re-delivered after a crash: already in the outbox
        }
        let mut warned = false;
        while ob.policy == FullPolicy::Block && !ob.fits(add) {
            sender_alive()?;
            if stopping.load(Ordering::Acquire) {
                tracing::warn!(sink = %ctx, bytes = ob.bytes, limit = ob.limit, "outbox over its bound at shutdown");
                break;
            }
            if !warned {
                tracing::warn!(sink = %ctx, bytes = ob.bytes, limit = ob.limit, "outbox full: the pipeline waits for the receiver");
                warned = true;
            }
            gauges.backpressure.fetch_add(1, Ordering::Relaxed);
            gauges.blocked.store(true, Ordering::Relaxed);
            ob = self.wait(ob, Duration::from_millis(200))?;
        }
        gauges.blocked.store(false, Ordering::Relaxed);
        let dropped = ob.take(end, msgs)?;
        if dropped > 0 {
            gauges.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(sink = %ctx, dropped, "outbox full: oldest messages dropped (outbox_full = 'drop_oldest')");
        }
        ob.publish_gauges(gauges);
        self.changed.notify_all();
        Ok(ob)
    }
}

/// Starts a sink's sender thread. An error it ends with is logged, marked on the sink's gauges
/// (the pipeline fails on its next delivery; `/healthz` shows it at once) and `wake`s whoever
/// waits on the outbox.
pub fn spawn_sender(
    thread_name: String,
    ctx: String,
    gauges: Arc<ConnectorGauges>,
    wake: impl Fn() + Send + 'static,
    body: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let r = body();
            if let Err(e) = &r {
                tracing::error!(sink = %ctx, thread = %thread_name, error = %e, "sink sender stopped");
                gauges.fail(e.to_string());
                wake();
            }
            r
        })
        .map_err(|e| EngineError::io("<thread>", e))
}

/// A random, non-zero outbox identity.
pub fn random_id() -> Result<u64> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| EngineError::State("the system random generator failed".into()))?;
    Ok(u64::from_le_bytes(b).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_policy_option_reads_either_case_and_names_the_valid_values() {
        use eddy_engine::connector::OptionValue;
        assert_eq!(FullPolicy::parse_option("DROP_OLDEST"), Ok(FullPolicy::DropOldest));
        let e = FullPolicy::parse_option("drop_newest").unwrap_err();
        assert!(e.contains("block, drop_oldest"), "{e}");
    }
    use eddy_engine::storage::{Cipher, RealFs};

    fn dir(p: &std::path::Path) -> SinkStateDir {
        SinkStateDir {
            dir: p.to_path_buf(),
            storage: Arc::new(RealFs::new()),
            cipher: Arc::new(Cipher::plaintext()),
            owner: Default::default(),
        }
    }

    fn msgs(from: usize, n: usize) -> Vec<(String, Vec<u8>)> {
        (from..from + n).map(|i| (format!("t/{i}"), format!("{{\"i\":{i}}}").into_bytes())).collect()
    }

    #[test]
    fn recovers_unacknowledged_messages_in_order_and_skips_redelivered_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let st = dir(tmp.path());
        {
            let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            ob.take(100, msgs(0, 5)).unwrap();
            ob.take(200, msgs(5, 5)).unwrap();
            ob.acked_through(3);
            ob.sync_acks().unwrap();
            ob.acked_through(4); // not synced: redelivered after the crash
        }
        let ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
        let topics: Vec<_> = ob.queue.iter().map(|m| m.topic.clone()).collect();
        assert_eq!(topics, (3..10).map(|i| format!("t/{i}")).collect::<Vec<_>>());
        assert!(ob.has(200) && !ob.has(201));
        let mut ob = ob;
        ob.take(300, msgs(10, 1)).unwrap();
        assert_eq!(ob.queue.back().unwrap().seq, 10);
    }

    /// Everything acknowledged, then two restarts: the segments with the delivery records are
    /// gone, and the outbox must still know its sequence numbers and what was delivered.
    #[test]
    fn sequence_numbers_and_delivered_ends_survive_the_deletion_of_acknowledged_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let st = dir(tmp.path());
        let first_id = {
            let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            ob.take(100, msgs(0, 4)).unwrap();
            ob.acked_through(4);
            ob.sync_acks().unwrap();
            ob.id
        };
        assert_ne!(first_id, 0);
        for _ in 0..2 {
            let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            assert!(ob.queue.is_empty());
            // An acknowledgement record in the new segment lets the old one go.
            ob.acked_through(4);
            ob.logged_acked = 0;
            ob.sync_acks().unwrap();
        }
        let segments = std::fs::read_dir(tmp.path()).unwrap().count();
        let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
        assert!(ob.has(100), "the delivery ending at 100 is forgotten ({segments} files left)");
        assert_eq!(ob.id, first_id, "the outbox's identity changed");
        ob.take(200, msgs(4, 1)).unwrap();
        assert_eq!(ob.queue.back().unwrap().seq, 4, "sequence numbers start again");
    }

    /// Under drop_oldest during a long outage, the log on disk stays near the bound (it used to
    /// keep every delivery), a restart reloads at most the bound, and drops are counted once.
    #[test]
    fn drop_oldest_bounds_the_log_on_disk_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let st = dir(tmp.path());
        let limit = 64 << 10;
        let dir_bytes =
            || std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>();
        let payload = |i: usize| (format!("t/{i}"), vec![b'x'; 1000 + i % 7]);
        let mut total_dropped = 0;
        {
            let mut ob = Outbox::open(Some(&st), limit, FullPolicy::DropOldest).unwrap();
            for i in 0..40_000usize {
                total_dropped += ob.take(i as u64 + 1, vec![payload(i)]).unwrap();
            }
            assert!(ob.bytes <= limit);
            assert_eq!(ob.dropped, total_dropped);
        }
        // 40 MB went in; the log holds the bound plus at most its open segments.
        let on_disk = dir_bytes();
        assert!(on_disk < 2 * (16 << 20) + 2 * limit as u64, "outbox log grew to {on_disk} bytes");
        let ob = Outbox::open(Some(&st), limit, FullPolicy::DropOldest).unwrap();
        assert!(ob.bytes <= limit, "recovered {} bytes over the bound {limit}", ob.bytes);
        assert_eq!(ob.dropped, total_dropped, "drops counted again after the restart");
        assert_eq!(ob.queue.back().unwrap().topic, "t/39999");
        // A lowered bound at restart drops at once (drop_oldest), and says so in the count.
        drop(ob);
        let ob = Outbox::open(Some(&st), limit / 4, FullPolicy::DropOldest).unwrap();
        assert!(ob.bytes <= limit / 4);
        assert!(ob.dropped > total_dropped);
    }

    /// One commit of many large messages is split into records of bounded size, recovered whole
    /// or not at all from every crash image.
    #[test]
    fn a_large_delivery_is_split_and_recovered_whole_or_not_at_all() {
        use eddy_engine::storage::{Crash, SimFs};
        use std::sync::Mutex;
        let fs = SimFs::new();
        let cipher = Arc::new(eddy_engine::storage::Cipher::from_keys(&[(1, [7u8; 32])]).unwrap());
        let st = SinkStateDir {
            dir: "/outbox".into(),
            storage: Arc::new(fs.clone()),
            cipher: cipher.clone(),
            owner: Default::default(),
        };
        let images: Arc<Mutex<Vec<SimFs>>> = Arc::default();
        let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
        ob.take(1, msgs(0, 2)).unwrap();
        {
            let images = images.clone();
            fs.on_sync(move |fs| {
                let mut imgs = images.lock().unwrap();
                for n in 0..=fs.max_pending() {
                    imgs.push(fs.crash_image(Crash::Pending(n)));
                    imgs.push(fs.crash_image(Crash::Torn(n)));
                }
            });
        }
        // 6 messages of 3 MiB: 24 MiB in one delivery, over any single record's budget.
        let big: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("big/{i}"), vec![i as u8; 3 << 20])).collect();
        ob.take(2, big.clone()).unwrap();
        assert_eq!(ob.queue.len(), 8);
        let (mut whole, mut none) = (0, 0);
        // Every sync point of the delivery (a segment rolls within it), then the end state.
        let mut images = std::mem::take(&mut *images.lock().unwrap());
        images.push(fs.crash_image(Crash::DurableOnly));
        for img in images {
            let st = SinkStateDir {
                dir: "/outbox".into(),
                storage: Arc::new(img),
                cipher: cipher.clone(),
                owner: Default::default(),
            };
            let rec = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            match rec.queue.len() {
                2 => {
                    assert!(!rec.has(2));
                    none += 1;
                }
                8 => {
                    assert!(rec.has(2));
                    assert!(rec.queue.iter().skip(2).zip(&big).all(|(m, b)| m.topic == b.0 && m.payload == b.1));
                    whole += 1;
                }
                n => panic!("recovered {n} messages: a delivery cut in part"),
            }
        }
        assert!(whole > 0 && none > 0, "whole {whole}, none {none}");
        let reopened = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
        assert_eq!(reopened.queue.len(), 8);
    }

    /// A reset state dir starts sequence numbers at 0 again; its new identity keeps consumers
    /// that drop repeats by (sink, sequence number) from dropping its output as old.
    #[test]
    fn a_new_outbox_gets_a_new_identity() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let oa = Outbox::open(Some(&dir(a.path())), 1 << 20, FullPolicy::Block).unwrap();
        let ob = Outbox::open(Some(&dir(b.path())), 1 << 20, FullPolicy::Block).unwrap();
        assert!(oa.id != 0 && ob.id != 0 && oa.id != ob.id);
        assert_eq!(Outbox::open(Some(&dir(a.path())), 1 << 20, FullPolicy::Block).unwrap().id, oa.id);
    }

    #[test]
    fn drop_oldest_counts_what_it_drops() {
        let mut ob = Outbox::open(None, 200, FullPolicy::DropOldest).unwrap();
        ob.take(1, msgs(0, 3)).unwrap();
        let dropped = ob.take(2, msgs(3, 3)).unwrap();
        assert!(dropped > 0);
        assert_eq!(ob.dropped, dropped);
        assert!(ob.bytes <= 200);
        assert_eq!(ob.queue.back().unwrap().topic, "t/5");
    }

    /// The outbox against a model, under crashes: at every fsync of a random run of deliveries,
    /// acknowledgements and ack syncs, crash images are taken (durable only, plus some pending
    /// writes, plus a torn one). Each must recover to: the messages of every completed delivery
    /// from some point between the last synced acknowledgement and the newest one, in order, with
    /// their bytes — plus at most the delivery that was being written — and nothing else.
    #[test]
    fn crash_images_recover_a_suffix_of_the_delivered_messages() {
        use eddy_engine::storage::{Crash, SimFs};
        use std::sync::Mutex;

        #[derive(Clone, Default)]
        struct Model {
            /// Messages of completed deliveries, by sequence number.
            taken: Vec<(String, Vec<u8>)>,
            /// Messages of the delivery being written.
            in_flight: Vec<(String, Vec<u8>)>,
            synced_acked: u64,
            acked: u64,
            last_end: u64,
        }
        for seed in 0..24u64 {
            let fs = SimFs::new();
            let cipher = Arc::new(eddy_engine::storage::Cipher::from_keys(&[(1, [9u8; 32])]).unwrap());
            let st = SinkStateDir {
                dir: "/outbox".into(),
                storage: Arc::new(fs.clone()),
                cipher: cipher.clone(),
                owner: Default::default(),
            };
            let model = Arc::new(Mutex::new(Model::default()));
            let images: Arc<Mutex<Vec<(SimFs, Model)>>> = Arc::default();
            {
                let (model, images) = (model.clone(), images.clone());
                fs.on_sync(move |fs| {
                    let m = model.lock().unwrap().clone();
                    let mut imgs = images.lock().unwrap();
                    imgs.push((fs.crash_image(Crash::DurableOnly), m.clone()));
                    imgs.push((fs.crash_image(Crash::Pending(1)), m.clone()));
                    imgs.push((fs.crash_image(Crash::Torn(1)), m));
                });
            }
            let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            let mut rng = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for _ in 0..30 {
                match next() % 10 {
                    0..=4 => {
                        let first = model.lock().unwrap().taken.len();
                        let batch = msgs(first, 1 + (next() % 4) as usize);
                        let end = model.lock().unwrap().last_end + 100;
                        model.lock().unwrap().in_flight = batch.clone();
                        ob.take(end, batch.clone()).unwrap();
                        let mut m = model.lock().unwrap();
                        m.taken.extend(batch);
                        m.in_flight.clear();
                        m.last_end = end;
                    }
                    5..=7 => {
                        let n = model.lock().unwrap().taken.len() as u64;
                        let to = ob.acked_seq.max(next() % (n + 1));
                        ob.acked_through(to);
                        model.lock().unwrap().acked = to;
                    }
                    _ => {
                        ob.sync_acks().unwrap();
                        let mut m = model.lock().unwrap();
                        m.synced_acked = m.acked;
                    }
                }
            }
            let images = std::mem::take(&mut *images.lock().unwrap());
            assert!(images.len() > 10, "seed {seed}: too few sync points");
            for (i, (img, m)) in images.into_iter().enumerate() {
                let st = SinkStateDir {
                    dir: "/outbox".into(),
                    storage: Arc::new(img),
                    cipher: cipher.clone(),
                    owner: Default::default(),
                };
                let rec = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block)
                    .unwrap_or_else(|e| panic!("seed {seed} image {i}: {e}"));
                let got: Vec<(u64, String, Vec<u8>)> =
                    rec.queue.iter().map(|x| (x.seq, x.topic.clone(), x.payload.clone())).collect();
                let all: Vec<&(String, Vec<u8>)> = m.taken.iter().chain(m.in_flight.iter()).collect();
                for w in got.windows(2) {
                    assert_eq!(w[0].0 + 1, w[1].0, "seed {seed} image {i}: a gap in the recovered messages");
                }
                for (seq, t, p) in &got {
                    let want = all
                        .get(*seq as usize)
                        .unwrap_or_else(|| panic!("seed {seed} image {i}: message {seq} was never delivered"));
                    assert_eq!((t, p), (&want.0, &want.1), "seed {seed} image {i}: message {seq} differs");
                }
                let start = got.first().map(|g| g.0).unwrap_or(m.taken.len() as u64);
                assert!(
                    start >= m.synced_acked.min(m.taken.len() as u64) || m.taken.is_empty(),
                    "seed {seed} image {i}: acknowledged message {start} came back"
                );
                assert!(
                    start <= m.acked.max(m.synced_acked),
                    "seed {seed} image {i}: unacknowledged messages from {} lost (recovered from {start})",
                    m.acked
                );
                let end = got.last().map(|g| g.0 + 1).unwrap_or(start);
                assert!(
                    end >= m.taken.len() as u64 || start > m.taken.len() as u64,
                    "seed {seed} image {i}: delivered messages lost at the end ({end} < {})",
                    m.taken.len()
                );
                if m.last_end > 0 {
                    assert!(
                        rec.has(m.last_end),
                        "seed {seed} image {i}: a completed delivery is not recognised after recovery"
                    );
                }
            }
        }
    }
}
