//! The Kafka source. Partitions are *assigned* by eddyd, never taken from a consumer group: the
//! checkpoint's offsets say where each partition goes on, so after a crash the source reads again
//! exactly what the last checkpoint did not cover (the input is not copied to the WAL). Each
//! partition is a split with its own event-time clock; every poll decodes rows of one partition.
//! The group's offsets are committed after each durable checkpoint, for monitoring only.
//!
//! A discovery thread fetches metadata every `partition.discovery.interval` and resolves where new
//! partitions start (the startup mode at the first start, the earliest offset for partitions
//! added later); the pipeline's worker only ever polls librdkafka's queues without blocking.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client::{self, Context};
use super::position::{self, Offsets};
use super::{SourceSettings, Startup, Topics};
use crate::connectors::backoff::Backoff;
use crate::metrics::ConnectorGauges;
use eddy_engine::connector::{self, Poll, SourceReader, Wakeup};
use eddy_engine::connector::{MetaValue, RowDecoder};
use eddy_engine::{EngineError, Result};

/// Payload bytes one poll decodes at most.
const POLL_BYTES: usize = 8 << 20;
/// How long a metadata or offsets request of the discovery thread may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Without durable state, offsets handed on are committed to the group this often.
const COMMIT_EVERY: Duration = Duration::from_secs(5);

type Consumer_ = BaseConsumer<Context>;

struct Part {
    topic: String,
    partition: i32,
    split: u64,
    /// The next offset to read.
    next: i64,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<Context>,
}

/// What the discovery thread found: every partition of the matching topics, with where a
/// partition eddyd has no offset for starts.
struct Found {
    partitions: Vec<((String, i32), i64)>,
}

struct Discovery {
    rx: Receiver<Found>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct KafkaSource {
    s: SourceSettings,
    decoding: Decoding,
    gauges: Arc<ConnectorGauges>,
    wakeup: Option<Arc<Wakeup>>,
    durable: bool,
    consumer: Option<Arc<Consumer_>>,
    /// Assigned partitions, sorted by (topic, partition).
    parts: Vec<Part>,
    split_ids: Vec<u64>,
    /// Round robin over `parts`.
    turn: usize,
    /// Offsets resumed from a checkpoint, for partitions not (yet) assigned.
    resumed: Offsets,
    discovery: Option<Discovery>,
    last_split: Option<u64>,
    last_commit: Instant,
}

impl KafkaSource {
    pub fn new(
        s: SourceSettings,
        meta: Vec<String>,
        gauges: Arc<ConnectorGauges>,
        wakeup: Option<Arc<Wakeup>>,
        durable: bool,
    ) -> Self {
        KafkaSource {
            decoding: Decoding { meta, headers: String::new(), format: s.format },
            s,
            gauges,
            wakeup,
            durable,
            consumer: None,
            parts: Vec::new(),
            split_ids: Vec::new(),
            turn: 0,
            resumed: Offsets::new(),
            discovery: None,
            last_split: None,
            last_commit: Instant::now(),
        }
    }

    fn context(&self) -> Context {
        Context { ctx: self.s.ctx.clone(), gauges: self.gauges.clone() }
    }

    fn consumer_config(&self) -> rdkafka::ClientConfig {
        client::config(
            &self.s.client,
            &[
                ("group.id", self.s.group_id.clone()),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", "earliest".into()),
                ("enable.partition.eof", "false".into()),
                ("isolation.level", if self.s.read_committed { "read_committed" } else { "read_uncommitted" }.into()),
                // Prefetch per partition is bounded in bytes and records (librdkafka's defaults,
                // 64 MiB and 100,000 records, would hold far more than a gateway needs).
                ("queued.max.messages.kbytes", "8192".into()),
                ("queued.min.messages", "10000".into()),
            ],
        )
    }

    fn connect(&mut self) -> Result<()> {
        let consumer: Consumer_ = self
            .consumer_config()
            .create_with_context(self.context())
            .map_err(|e| EngineError::options(&self.s.ctx, format!("Kafka client: {e}")))?;
        let consumer = Arc::new(consumer);
        self.gauges.set_connected_as(&self.s.group_id);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let job = DiscoveryJob {
            s: self.s.clone(),
            config: self.consumer_config(),
            context: self.context(),
            use_startup: self.resumed.is_empty(),
            tx,
            stop: stop.clone(),
            wakeup: self.wakeup.clone(),
            gauges: self.gauges.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("kafka-meta {}", self.s.group_id))
            .spawn(move || job.run())
            .map_err(|e| EngineError::io("<thread>", e))?;
        self.discovery = Some(Discovery { rx, stop, thread: Some(thread) });
        self.consumer = Some(consumer);
        Ok(())
    }

    /// Makes the assignment equal what discovery found: partitions go on from the checkpoint's
    /// offsets, else from where discovery says they start.
    fn apply(&mut self, found: Found) -> Result<()> {
        let Some(consumer) = self.consumer.clone() else { return Ok(()) };
        let mut wanted: Vec<((String, i32), i64)> = found.partitions;
        wanted.sort();
        if wanted.len() > self.s.max_partitions {
            return Err(EngineError::options(
                &self.s.ctx,
                format!(
                    "the topics have {} partitions, over max_partitions = {}; raise it or read fewer topics",
                    wanted.len(),
                    self.s.max_partitions
                ),
            ));
        }
        let same = wanted.len() == self.parts.len()
            && wanted.iter().zip(&self.parts).all(|((k, _), p)| k.0 == p.topic && k.1 == p.partition);
        if same {
            return Ok(());
        }
        let mut next = Offsets::new();
        for p in &self.parts {
            next.insert((p.topic.clone(), p.partition), p.next);
        }
        for p in &self.parts {
            if !wanted.iter().any(|(k, _)| k.0 == p.topic && k.1 == p.partition) {
                // Its offset is dropped: a partition that comes back (the topic recreated)
                // is new, and is read from its start. (A topic missing from the metadata is gone;
                // one the metadata lists with an error keeps its partitions, see `round`.)
                tracing::warn!(source = %self.s.ctx, topic = %p.topic, partition = p.partition, offset = p.next, "partition gone (topic deleted or recreated with fewer partitions); no longer read");
            }
        }
        let mut tpl = TopicPartitionList::with_capacity(wanted.len());
        let mut plan = Vec::with_capacity(wanted.len());
        for ((topic, partition), start) in wanted {
            let key = (topic, partition);
            let from = next.get(&key).copied().or_else(|| self.resumed.remove(&key)).unwrap_or(start);
            if !next.contains_key(&key) {
                tracing::info!(source = %self.s.ctx, topic = %key.0, partition = key.1, offset = from, "partition assigned");
            }
            tpl.add_partition_offset(&key.0, key.1, Offset::Offset(from))
                .map_err(|e| EngineError::options(&self.s.ctx, format!("Kafka assignment: {e}")))?;
            plan.push((key, from));
        }
        self.parts.clear();
        consumer.assign(&tpl).map_err(|e| EngineError::options(&self.s.ctx, format!("Kafka assignment: {e}")))?;
        for ((topic, partition), from) in plan {
            let mut queue = consumer.split_partition_queue(&topic, partition).ok_or_else(|| {
                EngineError::Internal(format!("no queue for the assigned partition {topic}/{partition}"))
            })?;
            if let Some(w) = self.wakeup.clone() {
                queue.set_nonempty_callback(move || w.wake());
            }
            let split = position::split_id(&topic, partition);
            self.parts.push(Part { topic, partition, split, next: from, queue });
        }
        self.split_ids = self.parts.iter().map(|p| p.split).collect();
        self.split_ids.sort_unstable();
        self.split_ids.dedup();
        self.turn = 0;
        Ok(())
    }

    fn commit(&self, offsets: &Offsets) {
        let Some(c) = &self.consumer else { return };
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((t, p), next) in offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*next));
        }
        if tpl.count() == 0 {
            return;
        }
        // For monitoring only (lag in the group): a failed commit loses nothing.
        if let Err(e) = c.commit(&tpl, CommitMode::Async) {
            tracing::debug!(source = %self.s.ctx, error = %e, "offsets not committed to the group");
        }
    }

    fn offsets(&self) -> Offsets {
        let mut o = self.resumed.clone();
        for p in &self.parts {
            o.insert((p.topic.clone(), p.partition), p.next);
        }
        o
    }
}

/// Marks the link up; says so when it was down after a failure (not at the first connect).
fn mark_connected(gauges: &ConnectorGauges, ctx: &impl std::fmt::Display) {
    if !gauges.connected.swap(true, Ordering::AcqRel) && gauges.connect_errors.load(Ordering::Relaxed) > 0 {
        tracing::info!(source = %ctx, "Kafka brokers reachable again");
    }
}

impl SourceReader for KafkaSource {
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll> {
        if self.consumer.is_none() {
            self.connect()?;
        }
        let found = match self.discovery.as_ref().map(|d| d.rx.try_recv()) {
            Some(Ok(f)) => Some(f),
            Some(Err(TryRecvError::Disconnected)) => {
                return Err(EngineError::Internal("the Kafka discovery thread stopped".into()));
            }
            _ => None,
        };
        if let Some(f) = found {
            self.apply(f)?;
        }
        let Some(consumer) = self.consumer.clone() else { return Ok(Poll::Idle) };
        // Events (errors) arrive on the consumer's own queue; messages only on the partitions'.
        if let Some(r) = consumer.poll(Duration::ZERO) {
            match r {
                Ok(m) => {
                    return Err(EngineError::Internal(format!(
                        "a Kafka message of {}/{} arrived outside its partition queue",
                        m.topic(),
                        m.partition()
                    )))
                }
                Err(e) => tracing::warn!(source = %self.s.ctx, error = %e, "Kafka consumer error"),
            }
        }
        self.last_split = None;
        let now = eddy_engine::time::now_ms();
        let n = self.parts.len();
        for step in 0..n {
            let i = (self.turn + step) % n;
            let mut bytes = 0usize;
            let mut got = 0usize;
            while dec.rows() < max_rows && bytes < POLL_BYTES {
                let Some(r) = self.parts[i].queue.poll(Duration::ZERO) else { break };
                match r {
                    Ok(m) => {
                        let offset = m.offset();
                        bytes += decode(&mut self.decoding, dec, &m, now);
                        self.parts[i].next = offset + 1;
                        got += 1;
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.s.ctx, partition = self.parts[i].partition, error = %e, "Kafka fetch error")
                    }
                }
            }
            if got > 0 {
                mark_connected(&self.gauges, &self.s.ctx);
                self.gauges.messages.fetch_add(got as u64, Ordering::Relaxed);
                self.last_split = Some(self.parts[i].split);
                self.turn = (i + 1) % n;
                return Ok(Poll::Rows);
            }
        }
        Ok(Poll::Idle)
    }

    fn bounded(&self) -> bool {
        false
    }

    fn position(&self) -> Vec<u8> {
        let mut out = Vec::new();
        position::encode(&self.offsets(), &mut out);
        out
    }

    fn resume(&mut self, pos: &[u8], _dec: &mut RowDecoder) -> Result<()> {
        self.resumed = position::decode(pos)?;
        Ok(())
    }

    fn handed_on(&mut self, mark: Option<u64>) {
        if mark.is_none() && !self.durable && self.last_commit.elapsed() >= COMMIT_EVERY {
            self.last_commit = Instant::now();
            self.commit(&self.offsets());
        }
    }

    fn replayable(&self) -> bool {
        true
    }

    fn checkpointed(&mut self, pos: &[u8]) {
        if let Ok(o) = position::decode(pos) {
            self.commit(&o);
        }
    }

    fn split(&self) -> Option<u64> {
        self.last_split
    }

    fn splits(&self) -> &[u64] {
        &self.split_ids
    }

    fn connected(&self) -> Option<bool> {
        Some(self.gauges.connected.load(Ordering::Relaxed))
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Some(d) = self.discovery.as_mut() {
            d.stop.store(true, Ordering::Release);
            // Unblocks a send waiting for room.
            while d.rx.try_recv().is_ok() {}
            if let Some(t) = d.thread.take() {
                let _ = t.join();
            }
        }
        self.parts.clear();
    }
}

/// The discovery thread's work.
struct DiscoveryJob {
    s: SourceSettings,
    config: rdkafka::ClientConfig,
    context: Context,
    /// No checkpoint: partitions found in the first round start by the startup mode.
    use_startup: bool,
    tx: SyncSender<Found>,
    stop: Arc<AtomicBool>,
    wakeup: Option<Arc<Wakeup>>,
    gauges: Arc<ConnectorGauges>,
}

impl DiscoveryJob {
    fn run(self) {
        let consumer: Consumer_ = match self
            .config
            .create_with_context(Context { ctx: self.context.ctx.clone(), gauges: self.context.gauges.clone() })
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(source = %self.s.ctx, error = %e, "Kafka client not created");
                return;
            }
        };
        let mut backoff = Backoff::new();
        let mut first = true;
        let mut missing_warned: Vec<String> = Vec::new();
        let mut known: Vec<(String, i32)> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            match self.round(&consumer, first, &known, &mut missing_warned) {
                Ok(found) => {
                    backoff.reset();
                    mark_connected(&self.gauges, &self.s.ctx);
                    first = false;
                    known = found.partitions.iter().map(|(k, _)| k.clone()).collect();
                    if !self.send(found) {
                        return;
                    }
                    if let Some(w) = &self.wakeup {
                        w.wake();
                    }
                    self.sleep_while_connected(self.s.discovery_interval);
                }
                Err(e) => {
                    self.gauges.connected.store(false, Ordering::Release);
                    self.gauges.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %self.s.ctx, error = %e, "Kafka metadata not read; retrying");
                    backoff.sleep(&self.stop);
                }
            }
        }
    }

    fn send(&self, mut found: Found) -> bool {
        loop {
            match self.tx.try_send(found) {
                Ok(()) => return true,
                Err(std::sync::mpsc::TrySendError::Full(f)) => {
                    found = f;
                    if self.stop.load(Ordering::Acquire) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Sleeps `d`, or until stopping or until the client reports every broker down: the next
    /// metadata round, retried with backoff, then finds out when they are back (an idle topic
    /// would otherwise show its link down until the next discovery).
    fn sleep_while_connected(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until
            && !self.stop.load(Ordering::Acquire)
            && self.gauges.connected.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One metadata round: the partitions of matching topics, and where new ones start.
    fn round(
        &self,
        c: &Consumer_,
        first: bool,
        known: &[(String, i32)],
        missing_warned: &mut Vec<String>,
    ) -> std::result::Result<Found, rdkafka::error::KafkaError> {
        let md = c.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut partitions: Vec<(String, i32)> = Vec::new();
        for t in md.topics() {
            if t.name().starts_with("__") || !self.s.topics.matches(t.name()) {
                continue;
            }
            if t.error().is_some() || t.partitions().is_empty() {
                // Not readable just now (a leader election, a broker restarting): what was
                // known of it stands. Only a topic missing from the metadata is gone.
                partitions.extend(known.iter().filter(|(kt, _)| kt == t.name()).cloned());
                continue;
            }
            partitions.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
        }
        if let Topics::List(list) = &self.s.topics {
            for want in list {
                let present = partitions.iter().any(|(t, _)| t == want);
                if !present && !missing_warned.contains(want) {
                    tracing::warn!(
                        source = %self.s.ctx,
                        topic = %want,
                        every_ms = self.s.discovery_interval.as_millis() as u64,
                        "topic not found (yet); looked for again every 'partition.discovery.interval' and read once it exists"
                    );
                    missing_warned.push(want.clone());
                } else if present {
                    missing_warned.retain(|t| t != want);
                }
            }
        }
        let startup = if first && self.use_startup { Some(self.s.startup) } else { None };
        let mut out = Vec::with_capacity(partitions.len());
        let new: Vec<&(String, i32)> = partitions.iter().filter(|k| !known.contains(k)).collect();
        let mut by_time: Option<TopicPartitionList> = None;
        let mut committed: Option<TopicPartitionList> = None;
        match startup {
            Some(Startup::Timestamp(ts)) => {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &new {
                    tpl.add_partition_offset(t, *p, Offset::Offset(ts))?;
                }
                by_time = Some(c.offsets_for_times(tpl, REQUEST_TIMEOUT)?);
            }
            Some(Startup::GroupOffsets) => {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &new {
                    tpl.add_partition(t, *p);
                }
                committed = Some(c.committed_offsets(tpl, REQUEST_TIMEOUT)?);
            }
            _ => {}
        }
        let found_in = |tpl: &Option<TopicPartitionList>, t: &str, p: i32| {
            tpl.as_ref().and_then(|l| l.find_partition(t, p)).map(|e| e.offset())
        };
        for (t, p) in partitions.iter().cloned() {
            if !new.contains(&&(t.clone(), p)) {
                out.push(((t, p), 0));
                continue;
            }
            let (low, high) = c.fetch_watermarks(&t, p, REQUEST_TIMEOUT)?;
            let start = match startup {
                None | Some(Startup::Earliest) => low,
                Some(Startup::Latest) => high,
                Some(Startup::GroupOffsets) => match found_in(&committed, &t, p) {
                    Some(Offset::Offset(n)) if n >= low => n,
                    _ => low,
                },
                Some(Startup::Timestamp(_)) => match found_in(&by_time, &t, p) {
                    Some(Offset::Offset(n)) => n,
                    _ => high,
                },
            };
            out.push(((t, p), start));
        }
        Ok(Found { partitions: out })
    }
}

/// What decoding a record needs, apart from the source.
struct Decoding {
    meta: Vec<String>,
    headers: String,
    format: eddy_engine::connector::Format,
}

fn set_meta(meta: &[String], headers: &mut String, dec: &mut RowDecoder, m: &BorrowedMessage<'_>) {
    for (slot, key) in meta.iter().enumerate() {
        match key.as_str() {
            "topic" => dec.set_meta_text(slot, m.topic()),
            "partition" => dec.set_meta(slot, MetaValue::Int(m.partition() as i64)),
            "offset" => dec.set_meta(slot, MetaValue::Int(m.offset())),
            "timestamp" => dec.set_meta(slot, m.timestamp().to_millis().map_or(MetaValue::Null, MetaValue::Int)),
            "key" => match m.key() {
                Some(k) => dec.set_meta_text(slot, &String::from_utf8_lossy(k)),
                None => dec.set_meta(slot, MetaValue::Null),
            },
            "headers" => {
                // A JSON object: header name → value as text (null for a header without one).
                headers.clear();
                headers.push('{');
                if let Some(h) = m.headers() {
                    for (i, hd) in h.iter().enumerate() {
                        if i > 0 {
                            headers.push(',');
                        }
                        let name = serde_json::Value::String(hd.key.to_string());
                        let value = hd
                            .value
                            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()))
                            .unwrap_or(serde_json::Value::Null);
                        // Written in place: no string per header per record.
                        let _ = write!(headers, "{name}:{value}");
                    }
                }
                headers.push('}');
                dec.set_meta_text(slot, headers);
            }
            _ => dec.set_meta(slot, MetaValue::Null),
        }
    }
}

/// Decodes one record (metadata, then payload); returns its payload bytes.
fn decode(src: &mut Decoding, dec: &mut RowDecoder, m: &BorrowedMessage<'_>, now: i64) -> usize {
    set_meta(&src.meta, &mut src.headers, dec, m);
    match m.payload() {
        Some(p) => {
            connector::decode_payload(dec, src.format, p, now);
            p.len()
        }
        None => {
            dec.reject(b"", "a record with no value (a tombstone)", now);
            0
        }
    }
}
