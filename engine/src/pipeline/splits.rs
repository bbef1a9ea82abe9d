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
    /// Assigned now. A split the reader no longer lists (not yet connected after a restart, a
    /// topic gone) keeps its event time, in case it comes back, but holds nothing back.
    assigned: bool,
}

/// The event-time clock of a split source.
pub struct SplitClock {
    /// Sorted by id.
    splits: Vec<Split>,
    /// The highest watermark given so far: a split added later never moves the watermark back.
    floor: i64,
}

impl Default for SplitClock {
    fn default() -> Self {
        SplitClock { splits: Vec::new(), floor: MIN_TS }
    }
}

impl SplitClock {
    /// Marks the splits in `ids` (sorted, deduplicated) assigned and the others not: new ones
    /// start with no event time; known ones keep theirs (a restart restores them before the
    /// reader has found its partitions again).
    pub fn assign(&mut self, ids: &[u64]) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "split ids must be sorted and unique");
        let same = self.splits.iter().filter(|s| s.assigned).map(|s| s.id).eq(ids.iter().copied());
        if same {
            return;
        }
        let now = Instant::now();
        for s in &mut self.splits {
            s.assigned = ids.binary_search(&s.id).is_ok();
        }
        for &id in ids {
            if let Err(i) = self.splits.binary_search_by_key(&id, |s| s.id) {
                if self.splits.len() >= MAX_SPLITS {
                    // Forget splits no longer assigned first; assigned ones are bounded by the
                    // reader's own partition limit.
                    self.splits.retain(|s| s.assigned);
                }
                let i = self.splits.binary_search_by_key(&id, |s| s.id).unwrap_or_else(|e| e.min(i));
                self.splits.insert(i, Split { id, max_ts: MIN_TS, last_row: now, assigned: true });
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    fn index(&mut self, id: u64) -> usize {
        match self.splits.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => {
                self.splits[i].assigned = true;
                i
            }
            Err(i) => {
                self.splits.insert(i, Split { id, max_ts: MIN_TS, last_row: Instant::now(), assigned: true });
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
            .filter(|(i, s)| Some(*i) != except && s.assigned && !Self::is_idle(s, idle_timeout_ms, now))
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
    /// before. With every assigned split idle, the largest event time of any of them (the
    /// source's idle rule then moves it on with the wall clock); with none assigned (the reader
    /// has not found its partitions yet), what was given before.
    pub fn watermark(&self, delay: i64, idle_timeout_ms: Option<i64>) -> i64 {
        let now = Instant::now();
        let min = self.min_others(None, idle_timeout_ms, now);
        let assigned_max = self.splits.iter().filter(|s| s.assigned).map(|s| s.max_ts).max();
        let ts = match (min, assigned_max) {
            (_, None) => return self.floor,
            (i64::MAX, Some(m)) => m,
            (m, _) => m,
        };
        let wm = if ts == MIN_TS { MIN_TS } else { ts.saturating_sub(delay) };
        wm.max(self.floor)
    }

    /// Largest event time of any split.
    #[cfg(test)]
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

    /// After a restore no split is assigned until the reader says which are.
    fn restored(id: u64, max_ts: i64, now: Instant) -> Split {
        Split { id, max_ts, last_row: now, assigned: false }
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
            self.splits.push(Self::restored(id, max_ts, now));
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

    /// A restart restores the clocks before the reader has found its partitions again; a
    /// partition read to its end before the restart gives no more rows, and must not hold the
    /// watermark at the start (the fault the Kafka end-to-end test found).
    #[test]
    fn a_restart_keeps_the_event_time_of_splits_that_give_no_more_rows() {
        let mut c = SplitClock::default();
        c.assign(&[0, 1]);
        feed(&mut c, 0, &[5000]);
        feed(&mut c, 1, &[100]);
        c.settle(0, None);
        let mut w = StateWriter::default();
        c.snapshot(&mut w);
        let mut back = SplitClock::default();
        back.restore(&mut StateReader::new(&w.buf, "splits")).unwrap();
        // Not connected yet: nothing assigned, the watermark stays where it was.
        back.assign(&[]);
        assert_eq!(back.watermark(0, None), 100);
        back.assign(&[0, 1]);
        // Split 0 has nothing more; split 1 goes on past it.
        assert_eq!(feed(&mut back, 1, &[6000]), [false]);
        assert_eq!(back.watermark(0, None), 5000);
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
        back.assign(&[0, 1]);
        assert_eq!(back.watermark(10, None), 490);
        assert_eq!(back.max_ts(), 500);
    }
}
