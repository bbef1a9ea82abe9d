//! Event time per split: a source read in independent splits (Kafka partitions) keeps the largest
//! event time of each, and its watermark is the minimum over the splits that are not idle, so a
//! partition read behind the others does not see its rows judged late by the others' progress.
//! Owns that bookkeeping only; never reads input and never decides lateness itself.

use std::time::Instant;

use crate::error::Result;
use crate::ops::snapshot::{StateReader, StateWriter};
use crate::time::MIN_TS;

/// Splits a source keeps track of at most (more is refused by the reader's limit on partitions).
pub const MAX_SPLITS: usize = 1 << 16;

struct Split {
    id: u64,
    max_ts: i64,
    /// Last row, or when the split was first seen.
    last_row: Instant,
}

/// The event-time clock of a split source.
#[derive(Default)]
pub struct SplitClock {
    /// Sorted by id.
    splits: Vec<Split>,
    /// The highest watermark given so far: a split added later never moves the watermark back.
    floor: i64,
}

impl SplitClock {
    /// Makes the known splits equal `ids` (sorted, deduplicated): new ones start with no event
    /// time, and ones no longer assigned stop holding the watermark back.
    pub fn assign(&mut self, ids: &[u64]) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "split ids must be sorted and unique");
        if self.splits.len() == ids.len() && self.splits.iter().zip(ids).all(|(s, id)| s.id == *id) {
            return;
        }
        let now = Instant::now();
        let mut next = Vec::with_capacity(ids.len());
        for &id in ids.iter().take(MAX_SPLITS) {
            match self.splits.binary_search_by_key(&id, |s| s.id) {
                Ok(i) => next.push(Split { id, max_ts: self.splits[i].max_ts, last_row: self.splits[i].last_row }),
                Err(_) => next.push(Split { id, max_ts: MIN_TS, last_row: now }),
            }
        }
        self.splits = next;
    }

    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    fn index(&mut self, id: u64) -> usize {
        match self.splits.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => i,
            Err(i) => {
                self.splits.insert(i, Split { id, max_ts: MIN_TS, last_row: Instant::now() });
                i
            }
        }
    }

    fn is_idle(s: &Split, idle_timeout_ms: Option<i64>, now: Instant) -> bool {
        idle_timeout_ms.is_some_and(|t| now.saturating_duration_since(s.last_row).as_millis() as i64 >= t)
    }

    /// The lowest largest event time of the active splits other than `except` (`i64::MAX`: none).
    fn min_others(&self, except: Option<usize>, idle_timeout_ms: Option<i64>, now: Instant) -> i64 {
        self.splits
            .iter()
            .enumerate()
            .filter(|(i, s)| Some(*i) != except && !Self::is_idle(s, idle_timeout_ms, now))
            .map(|(_, s)| s.max_ts)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Starts a batch of rows from split `id`: returns a judge that tells row by row whether a row
    /// is late, raising the split's event time as rows are accepted.
    pub fn batch(&mut self, id: u64, delay: i64, idle_timeout_ms: Option<i64>) -> SplitBatch<'_> {
        let now = Instant::now();
        let i = self.index(id);
        let others = self.min_others(Some(i), idle_timeout_ms, now);
        self.splits[i].last_row = now;
        SplitBatch { clock: self, i, others, delay }
    }

    /// The watermark from event time: the minimum over active splits, never below what was given
    /// before. With every split idle, the largest event time of any (the source's idle rule then
    /// moves it on with the wall clock).
    pub fn watermark(&self, delay: i64, idle_timeout_ms: Option<i64>) -> i64 {
        let now = Instant::now();
        let min = self.min_others(None, idle_timeout_ms, now);
        let ts = if min == i64::MAX { self.max_ts() } else { min };
        let wm = if ts == MIN_TS { MIN_TS } else { ts.saturating_sub(delay) };
        wm.max(self.floor)
    }

    /// Largest event time of any split.
    pub fn max_ts(&self) -> i64 {
        self.splits.iter().map(|s| s.max_ts).max().unwrap_or(MIN_TS)
    }

    /// Remembers the watermark given, so it never goes back.
    pub fn settle(&mut self, delay: i64, idle_timeout_ms: Option<i64>) {
        self.floor = self.watermark(delay, idle_timeout_ms);
    }

    pub fn snapshot(&self, w: &mut StateWriter) {
        w.i64(self.floor);
        w.u64(self.splits.len() as u64);
        for s in &self.splits {
            w.u64(s.id);
            w.i64(s.max_ts);
        }
    }

    pub fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.floor = r.i64()?;
        let n = r.u64()? as usize;
        if n > MAX_SPLITS {
            return Err(r.err("a split count over the limit"));
        }
        let now = Instant::now();
        self.splits.clear();
        for _ in 0..n {
            let (id, max_ts) = (r.u64()?, r.i64()?);
            self.splits.push(Split { id, max_ts, last_row: now });
        }
        self.splits.sort_by_key(|s| s.id);
        Ok(())
    }
}

/// Judges the rows of one batch from one split.
pub struct SplitBatch<'a> {
    clock: &'a mut SplitClock,
    i: usize,
    others: i64,
    delay: i64,
}

impl SplitBatch<'_> {
    /// The watermark a row of this split is judged against now.
    pub fn watermark(&self) -> i64 {
        let ts = self.others.min(self.clock.splits[self.i].max_ts);
        let wm = if ts == MIN_TS { MIN_TS } else { ts.saturating_sub(self.delay) };
        wm.max(self.clock.floor)
    }

    /// A row at event time `t` was accepted.
    pub fn accept(&mut self, t: i64) {
        let s = &mut self.clock.splits[self.i];
        s.max_ts = s.max_ts.max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut SplitClock, id: u64, rows: &[i64]) -> Vec<bool> {
        let mut b = c.batch(id, 0, None);
        rows.iter()
            .map(|&t| {
                let late = t < b.watermark();
                if !late {
                    b.accept(t);
                }
                late
            })
            .collect()
    }

    #[test]
    fn a_lagging_split_holds_the_watermark_and_its_rows_are_not_late() {
        let mut c = SplitClock::default();
        c.assign(&[0, 1]);
        assert_eq!(feed(&mut c, 0, &[100, 200, 300]), [false, false, false]);
        // Split 1 has no rows yet: the watermark stays at the start.
        assert_eq!(c.watermark(0, None), MIN_TS);
        assert_eq!(feed(&mut c, 1, &[50, 150]), [false, false]);
        assert_eq!(c.watermark(0, None), 150);
        c.settle(0, None);
        // A row of split 0 below the other split's time is late only below the minimum.
        assert_eq!(feed(&mut c, 0, &[120, 160]), [true, false]);
    }

    #[test]
    fn a_split_added_later_never_moves_the_watermark_back() {
        let mut c = SplitClock::default();
        c.assign(&[0]);
        feed(&mut c, 0, &[1000]);
        c.settle(0, None);
        c.assign(&[0, 1]);
        assert_eq!(c.watermark(0, None), 1000);
        assert_eq!(feed(&mut c, 1, &[900, 1100]), [true, false]);
    }

    #[test]
    fn idle_splits_are_left_out_and_state_round_trips() {
        let mut c = SplitClock::default();
        c.assign(&[0, 1]);
        feed(&mut c, 0, &[500]);
        // With a zero idle timeout every split counts as idle: the largest time leads.
        assert_eq!(c.watermark(0, Some(0)), 500);
        assert_eq!(c.watermark(0, None), MIN_TS);
        c.settle(10, Some(0));
        let mut w = StateWriter::default();
        c.snapshot(&mut w);
        let mut back = SplitClock::default();
        let mut r = StateReader::new(&w.buf, "splits");
        back.restore(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(back.watermark(10, None), 490);
        assert_eq!(back.max_ts(), 500);
    }
}
