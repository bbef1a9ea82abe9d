//! The MQTT sink's outbox: messages a pipeline has committed and the broker has not acknowledged
//! yet, in order, bounded in bytes. In a durable pipeline it is kept in an encrypted WAL of its own
//! (`<state>/sinks/<sink>/`), so messages survive a crash and a broker outage; without durable state
//! it lives in memory only.
//!
//! Records: `1` a delivery (`end`, first sequence number, messages), `3` acknowledged through a
//! sequence number, with the counters a delivery record would give — next sequence number and
//! delivered `end` — because the segments holding only acknowledged messages are deleted, and
//! with them their delivery records (`2`, the same without those two, is still read). Recovery
//! replays them all. Never does network I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use eddy_engine::ops::snapshot::{StateReader, StateWriter};
use eddy_engine::storage::wal::{Wal, WalConfig};
use eddy_engine::{EngineError, Result};

use eddy_engine::connector::SinkStateDir;

const REC_DELIVERY: u8 = 1;
/// Written by earlier versions: acknowledged through, dropped.
const REC_ACKED_V1: u8 = 2;
/// Acknowledged through, dropped, next sequence number, delivered `end`.
const REC_ACKED: u8 = 3;

/// What to do with a delivery when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// The pipeline waits (and, through it, its sources: backpressure up to the broker).
    Block,
    /// The oldest messages make room; each one is counted in `dropped`.
    DropOldest,
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
        };
        let Some(st) = state else { return Ok(ob) };
        let mut cfg = WalConfig::new(st.dir.clone());
        cfg.segment_bytes = 16 << 20;
        cfg.max_record_bytes = limit.max(1 << 20) + (1 << 20);
        let wal = Wal::open(st.storage.clone(), Arc::clone(&st.cipher), cfg)?;
        wal.replay(0, &mut |lsn, payload| ob.apply(lsn, payload).map_err(|e| eddy_engine::storage::StorageError::Corrupt(e.to_string())))?;
        ob.logged_acked = ob.acked_seq;
        ob.wal = Some(wal);
        Ok(ob)
    }

    fn apply(&mut self, lsn: u64, payload: &[u8]) -> Result<()> {
        let mut r = StateReader::new(payload, "an outbox record");
        match r.u8()? {
            REC_DELIVERY => {
                self.durable_end = self.durable_end.max(r.u64()?);
                let first = r.u64()?;
                let n = r.u64()?;
                for i in 0..n {
                    let topic = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| EngineError::State("an outbox topic is not UTF-8".into()))?;
                    let payload = r.bytes()?.to_vec();
                    let seq = first + i;
                    if seq >= self.acked_seq {
                        self.push(OutMsg { seq, topic, payload, lsn });
                    }
                    self.next_seq = self.next_seq.max(seq + 1);
                }
                r.finish()
            }
            kind @ (REC_ACKED | REC_ACKED_V1) => {
                let acked = r.u64()?;
                self.dropped = r.u64()?;
                if kind == REC_ACKED {
                    self.next_seq = self.next_seq.max(r.u64()?);
                    self.durable_end = self.durable_end.max(r.u64()?);
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

    /// Takes a delivery of messages; durable outboxes append and fsync it before returning.
    /// Under `DropOldest`, the oldest messages are dropped to make room (returns how many).
    pub fn take(&mut self, end: u64, msgs: Vec<(String, Vec<u8>)>) -> Result<u64> {
        let add: usize = msgs.iter().map(|(t, p)| t.len() + p.len() + 32).sum();
        let mut dropped = 0;
        if self.policy == FullPolicy::DropOldest {
            while !self.queue.is_empty() && self.bytes + add > self.limit {
                if let Some(m) = self.queue.pop_front() {
                    self.bytes -= msg_bytes(&m);
                    self.acked_seq = self.acked_seq.max(m.seq + 1);
                    dropped += 1;
                }
            }
            self.dropped += dropped;
        }
        let first = self.next_seq;
        let n = msgs.len() as u64;
        let mut lsn = 0;
        if let Some(wal) = self.wal.as_mut() {
            let w = &mut self.scratch;
            w.buf.clear();
            w.u8(REC_DELIVERY);
            w.u64(end);
            w.u64(first);
            w.u64(msgs.len() as u64);
            for (t, p) in &msgs {
                w.bytes(t.as_bytes());
                w.bytes(p);
            }
            lsn = wal.append(&self.scratch.buf)?;
            wal.commit()?;
        }
        for (i, (topic, payload)) in msgs.into_iter().enumerate() {
            self.push(OutMsg { seq: first + i as u64, topic, payload, lsn });
        }
        self.next_seq = first + n;
        self.durable_end = self.durable_end.max(end);
        Ok(dropped)
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

    /// Writes the acknowledged point (when it moved) and deletes segments no longer needed.
    pub fn sync_acks(&mut self) -> Result<()> {
        let Some(wal) = self.wal.as_mut() else { return Ok(()) };
        if self.acked_seq == self.logged_acked {
            return Ok(());
        }
        let w = &mut self.scratch;
        w.buf.clear();
        w.u8(REC_ACKED);
        w.u64(self.acked_seq);
        w.u64(self.dropped);
        w.u64(self.next_seq);
        w.u64(self.durable_end);
        let lsn = wal.append(&self.scratch.buf)?;
        wal.commit()?;
        self.logged_acked = self.acked_seq;
        let keep = self.queue.front().map(|m| m.lsn).unwrap_or(lsn);
        wal.truncate_before(keep)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_engine::storage::crypto::Cipher;
    use eddy_engine::storage::fs::RealFs;

    fn dir(p: &std::path::Path) -> SinkStateDir {
        SinkStateDir { dir: p.to_path_buf(), storage: Arc::new(RealFs::new()), cipher: Arc::new(Cipher::plaintext()) }
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
        {
            let mut ob = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap();
            ob.take(100, msgs(0, 4)).unwrap();
            ob.acked_through(4);
            ob.sync_acks().unwrap();
        }
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
        ob.take(200, msgs(4, 1)).unwrap();
        assert_eq!(ob.queue.back().unwrap().seq, 4, "sequence numbers start again");
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
        use eddy_engine::storage::simfs::{Crash, SimFs};
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
            let cipher = Arc::new(eddy_engine::storage::crypto::Cipher::from_keys(&[(1, [9u8; 32])]).unwrap());
            let st = SinkStateDir { dir: "/outbox".into(), storage: Arc::new(fs.clone()), cipher: cipher.clone() };
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
                let st = SinkStateDir { dir: "/outbox".into(), storage: Arc::new(img), cipher: cipher.clone() };
                let rec = Outbox::open(Some(&st), 1 << 20, FullPolicy::Block).unwrap_or_else(|e| panic!("seed {seed} image {i}: {e}"));
                let got: Vec<(u64, String, Vec<u8>)> = rec.queue.iter().map(|x| (x.seq, x.topic.clone(), x.payload.clone())).collect();
                let all: Vec<&(String, Vec<u8>)> = m.taken.iter().chain(m.in_flight.iter()).collect();
                for w in got.windows(2) {
                    assert_eq!(w[0].0 + 1, w[1].0, "seed {seed} image {i}: a gap in the recovered messages");
                }
                for (seq, t, p) in &got {
                    let want = all.get(*seq as usize).unwrap_or_else(|| panic!("seed {seed} image {i}: message {seq} was never delivered"));
                    assert_eq!((t, p), (&want.0, &want.1), "seed {seed} image {i}: message {seq} differs");
                }
                let start = got.first().map(|g| g.0).unwrap_or(m.taken.len() as u64);
                assert!(start >= m.synced_acked.min(m.taken.len() as u64) || m.taken.is_empty(), "seed {seed} image {i}: acknowledged message {start} came back");
                assert!(start <= m.acked.max(m.synced_acked), "seed {seed} image {i}: unacknowledged messages from {} lost (recovered from {start})", m.acked);
                let end = got.last().map(|g| g.0 + 1).unwrap_or(start);
                assert!(end >= m.taken.len() as u64 || start > m.taken.len() as u64, "seed {seed} image {i}: delivered messages lost at the end ({end} < {})", m.taken.len());
                if m.last_end > 0 {
                    assert!(rec.has(m.last_end), "seed {seed} image {i}: a completed delivery is not recognised after recovery");
                }
            }
        }
    }
}
