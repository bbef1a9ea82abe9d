//! Requests to a live pipeline from other threads: "checkpoint now". The pipeline's own thread
//! serves them between steps; the requester never touches pipeline state and never blocks the
//! pipeline (it only counts tickets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::connector::Wakeup;

/// Shared between a live pipeline and whoever manages it.
pub struct LiveControl {
    wanted: AtomicU64,
    done: AtomicU64,
    wakeup: Arc<Wakeup>,
}

impl LiveControl {
    pub(super) fn new(wakeup: Arc<Wakeup>) -> Self {
        LiveControl { wanted: AtomicU64::new(0), done: AtomicU64::new(0), wakeup }
    }

    /// Asks for a checkpoint; returns the ticket that [`LiveControl::checkpoint_done`] reaches
    /// once a checkpoint taken after this call is durable.
    pub fn request_checkpoint(&self) -> u64 {
        let ticket = self.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        self.wakeup.wake();
        ticket
    }

    /// The highest ticket served.
    pub fn checkpoint_done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// The pipeline's thread: the ticket to serve, if one is pending.
    pub(super) fn pending(&self) -> Option<u64> {
        let w = self.wanted.load(Ordering::Acquire);
        (w > self.done.load(Ordering::Acquire)).then_some(w)
    }

    pub(super) fn served(&self, ticket: u64) {
        self.done.fetch_max(ticket, Ordering::AcqRel);
    }
}
