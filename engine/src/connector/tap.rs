//! Live copies of a sink's output for viewers (`eddyctl tail`). The sink offers each chunk's rows
//! as JSON lines to every subscriber without waiting: a subscriber whose queue is full loses
//! them, counted. Owns the subscriber list; never blocks or slows the sink, and costs one atomic
//! load per chunk while nobody watches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
