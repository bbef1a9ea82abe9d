//! Live copies of a sink's output for viewers (`eddyctl tail`). The sink offers each chunk's rows
//! as JSON lines to every subscriber without waiting: a subscriber whose queue is full loses
//! them, counted. Owns the subscriber list; never blocks or slows the sink, and costs one atomic
//! load per chunk while nobody watches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::array::RecordBatch;

use crate::format::encode::JsonRowWriter;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Subscribers one sink serves at most.
pub const MAX_SUBSCRIBERS: usize = 16;

/// One chunk of a sink's output.
#[derive(Debug, Clone)]
pub struct TapRows {
    /// One JSON object per line, as a file sink writes them (upsert sinks add `_op`); shared by
    /// every subscriber.
    pub json_lines: Arc<[u8]>,
    pub rows: usize,
}

struct Subscriber {
    tx: SyncSender<TapRows>,
    dropped_rows: Arc<AtomicU64>,
}

/// A sink's tap: where viewers subscribe.
#[derive(Default)]
pub struct TapPoint {
    subscribers: Mutex<Vec<Subscriber>>,
    active: AtomicUsize,
}

/// The rows a source's taps carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRows {
    /// Rows that passed the lateness rule.
    Accepted,
    /// Rows behind the watermark (what `LATE(source)` gets).
    Late,
    /// Input that could not be decoded (what `ERRORS(source)` gets).
    Errors,
}

/// A source's three taps, and the encoders built for them once someone watches.
#[derive(Default)]
pub struct SourceTaps {
    pub accepted: Arc<TapPoint>,
    pub late: Arc<TapPoint>,
    pub errors: Arc<TapPoint>,
    rows_writer: Option<JsonRowWriter>,
    errors_writer: Option<JsonRowWriter>,
    buf: Vec<u8>,
}

impl SourceTaps {
    pub fn point(&self, rows: SourceRows) -> Arc<TapPoint> {
        match rows {
            SourceRows::Accepted => self.accepted.clone(),
            SourceRows::Late => self.late.clone(),
            SourceRows::Errors => self.errors.clone(),
        }
    }

    /// Offers `batch` to the tap of `rows`, if anyone watches it.
    pub fn offer(&mut self, rows: SourceRows, batch: &RecordBatch) {
        let point = match rows {
            SourceRows::Accepted => &self.accepted,
            SourceRows::Late => &self.late,
            SourceRows::Errors => &self.errors,
        };
        if !point.active() {
            return;
        }
        let slot = if rows == SourceRows::Errors { &mut self.errors_writer } else { &mut self.rows_writer };
        let writer = slot.get_or_insert_with(|| {
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            JsonRowWriter::new(&names)
        });
        point.offer_batch(batch, writer, |_| b"", &mut self.buf);
    }
}

/// A viewer's end: chunks in order, and the rows it lost by falling behind.
pub struct TapReceiver {
    pub rx: Receiver<TapRows>,
    pub dropped_rows: Arc<AtomicU64>,
}

impl TapPoint {
    /// A new viewer with room for `queue_chunks` chunks; `None` when the sink already serves
    /// [`MAX_SUBSCRIBERS`]. Dropping the receiver unsubscribes (at the next offer).
    pub fn subscribe(&self, queue_chunks: usize) -> Option<TapReceiver> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = sync_channel(queue_chunks.max(1));
        let dropped_rows = Arc::new(AtomicU64::new(0));
        subs.push(Subscriber { tx, dropped_rows: dropped_rows.clone() });
        self.active.store(subs.len(), Ordering::Release);
        Some(TapReceiver { rx, dropped_rows })
    }

    /// Whether anyone watches (the sink builds rows for the tap only then).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Encodes `batch` as JSON lines (each row followed by `extra(row)` inside its object) and
    /// offers it. Call only when [`TapPoint::active`]: this allocates.
    pub fn offer_batch(
        &self,
        batch: &RecordBatch,
        writer: &JsonRowWriter,
        extra: impl Fn(usize) -> &'static [u8],
        buf: &mut Vec<u8>,
    ) {
        buf.clear();
        let rows = writer.batch(batch);
        for row in 0..batch.num_rows() {
            rows.write_row(row, extra(row), buf);
            buf.push(b'\n');
        }
        self.offer(TapRows { json_lines: Arc::from(&buf[..]), rows: batch.num_rows() });
    }

    /// Hands `rows` to every subscriber that has room; never waits.
    pub fn offer(&self, rows: TapRows) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| match s.tx.try_send(rows.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.dropped_rows.fetch_add(rows.rows as u64, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.active.store(subs.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> TapRows {
        TapRows { json_lines: b"{}\n".repeat(n).into(), rows: n }
    }

    #[test]
    fn source_taps_encode_only_what_is_watched() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let mut t = SourceTaps::default();
        t.offer(SourceRows::Accepted, &b);
        assert!(t.rows_writer.is_none(), "nobody watches: nothing is encoded");
        let late = t.late.subscribe(4).unwrap();
        t.offer(SourceRows::Accepted, &b);
        t.offer(SourceRows::Late, &b);
        let got = late.rx.try_recv().unwrap();
        let text = std::str::from_utf8(&got.json_lines).unwrap();
        assert_eq!((got.rows, text.lines().count()), (2, 2), "{text}");
        assert!(text.contains("\"a\":1") && text.contains("\"a\":2"), "{text}");
        assert!(late.rx.try_recv().is_err(), "accepted rows went to the late tap");
    }

    #[test]
    fn a_slow_viewer_loses_rows_counted_and_never_blocks() {
        let t = TapPoint::default();
        assert!(!t.active());
        let slow = t.subscribe(2).unwrap();
        let fast = t.subscribe(100).unwrap();
        for _ in 0..10 {
            t.offer(rows(3));
        }
        assert_eq!(slow.rx.try_iter().count(), 2);
        assert_eq!(slow.dropped_rows.load(Ordering::Relaxed), 24);
        assert_eq!(fast.rx.try_iter().map(|r| r.rows).sum::<usize>(), 30);
        drop(slow);
        drop(fast);
        t.offer(rows(1));
        assert!(!t.active(), "gone viewers are dropped");
        let all: Vec<_> = (0..MAX_SUBSCRIBERS).map(|_| t.subscribe(1).unwrap()).collect();
        assert!(t.subscribe(1).is_none());
        drop(all);
    }
}
