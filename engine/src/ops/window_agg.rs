//! Aggregation over `TUMBLE`/`HOP`/`CUMULATE` windows.
//!
//! State is kept per open window and freed when the window closes, i.e. when the watermark of the
//! window's time column reaches `window_end`. Emission follows the EMIT mode:
//! - on window close: one final row per window and group (append-only output);
//! - on update: after every batch, the changed groups (upserts keyed by window and group);
//! - every interval: the changed groups whenever the watermark crosses a multiple of the interval,
//!   and the final rows on close (upserts).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::TimestampMillisecondType;
use arrow::row::RowConverter;

use super::agg::{AggregateExprs, Evaluated, GroupIndex, GroupsAccs, RowAccs};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator, RowKind};
use crate::error::{EngineError, Result};
use crate::sql::ddl::Emit;
use crate::time::MIN_TS;

enum Accs {
    Final(GroupsAccs),
    Updating { accs: RowAccs, dirty: Vec<u32>, is_dirty: Vec<bool> },
}

struct WindowState {
    groups: GroupIndex,
    accs: Accs,
}

pub struct WindowAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    start_col: usize,
    end_col: usize,
    /// The window time column's watermark lags the stream's by this much.
    wm_offset: i64,
    emit: Emit,
    limits: Limits,
    /// Open windows by (end, start): iteration order is closing order.
    windows: BTreeMap<(i64, i64), WindowState>,
    /// Windows ending at or before this are closed.
    closed_upto: i64,
    groups_total: usize,
    /// Rows for windows that had already closed (processing-time inputs only).
    pub late_rows: u64,
    group_scratch: Vec<usize>,
}

impl WindowAggregate {
    pub fn new(
        exprs: AggregateExprs,
        start_col: usize,
        end_col: usize,
        wm_offset: i64,
        emit: Emit,
        limits: Limits,
    ) -> Result<Self> {
        Ok(WindowAggregate {
            converter: exprs.row_converter()?,
            exprs,
            start_col,
            end_col,
            wm_offset,
            emit,
            limits,
            windows: BTreeMap::new(),
            closed_upto: MIN_TS,
            groups_total: 0,
            late_rows: 0,
            group_scratch: Vec::new(),
        })
    }

    fn new_state(&self) -> Result<WindowState> {
        let accs = match self.emit {
            Emit::OnWindowClose => Accs::Final(GroupsAccs::new(&self.exprs)?),
            Emit::OnUpdate | Emit::Every(_) => {
                Accs::Updating { accs: RowAccs::default(), dirty: vec![], is_dirty: vec![] }
            }
        };
        Ok(WindowState { groups: GroupIndex::default(), accs })
    }

    fn update_window(&mut self, key: (i64, i64), input: &Evaluated, rows: Option<Vec<u32>>, n: usize) -> Result<()> {
        if !self.windows.contains_key(&key) {
            if self.windows.len() >= self.limits.max_open_windows {
                return Err(EngineError::Limit(format!(
                    "{} open windows in one aggregation (limits.max_open_windows); is the watermark advancing?",
                    self.windows.len()
                )));
            }
            let st = self.new_state()?;
            self.windows.insert(key, st);
        }
        let st = self.windows.get_mut(&key).expect("inserted above");
        let before = st.groups.len();
        self.group_scratch.clear();
        match &rows {
            None => (0..n).for_each(|i| self.group_scratch.push(st.groups.intern(input.keys.row(i).as_ref()))),
            Some(r) => {
                r.iter().for_each(|&i| self.group_scratch.push(st.groups.intern(input.keys.row(i as usize).as_ref())))
            }
        }
        self.groups_total += st.groups.len() - before;
        if self.groups_total > self.limits.max_groups {
            return Err(EngineError::Limit(format!(
                "{} groups in one aggregation (limits.max_groups)",
                self.groups_total
            )));
        }
        match &mut st.accs {
            Accs::Final(accs) => {
                let idx = rows.map(UInt32Array::from);
                accs.update(input, idx.as_ref(), &self.group_scratch, st.groups.len())?;
            }
            Accs::Updating { accs, dirty, is_dirty } => {
                let all: Vec<u32>;
                let r: &[u32] = match &rows {
                    Some(r) => r,
                    None => {
                        all = (0..n as u32).collect();
                        &all
                    }
                };
                accs.update(&self.exprs, input, r, &self.group_scratch)?;
                is_dirty.resize(st.groups.len(), false);
                for &g in &self.group_scratch {
                    if !is_dirty[g] {
                        is_dirty[g] = true;
                        dirty.push(g as u32);
                    }
                }
            }
        }
        Ok(())
    }

    /// Emits the changed groups of every open window as upserts.
    fn emit_dirty(&mut self, out: &mut Vec<Chunk>) -> Result<()> {
        for (&key, st) in self.windows.iter_mut() {
            if let Accs::Updating { accs, dirty, is_dirty } = &mut st.accs {
                if !dirty.is_empty() {
                    let groups = std::mem::take(dirty);
                    groups.iter().for_each(|&g| is_dirty[g as usize] = false);
                    let values = accs.evaluate(&self.exprs, &groups)?;
                    let batch = window_rows(&self.exprs, &self.converter, key, &st.groups, Some(&groups), values)?;
                    out.push(upserts(batch));
                }
            }
        }
        Ok(())
    }
}

/// Rows of window `key` for `groups` (all, in index order, when `None`).
fn window_rows(
    exprs: &AggregateExprs,
    converter: &RowConverter,
    key: (i64, i64),
    groups: &GroupIndex,
    keys_of: Option<&[u32]>,
    values: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let n = keys_of.map(|g| g.len()).unwrap_or(groups.len());
    let key_cols = groups.key_columns(converter, keys_of)?;
    let starts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![key.1; n]));
    let ends: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![key.0; n]));
    exprs.output_batch(key_cols, Some((starts, ends)), values, n)
}

fn upserts(batch: RecordBatch) -> Chunk {
    let kinds: Arc<[RowKind]> = vec![RowKind::Upsert; batch.num_rows()].into();
    Chunk { batch, kinds: Some(kinds) }
}

impl Operator for WindowAggregate {
    fn name(&self) -> String {
        "window aggregate".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        let batch = chunk.batch;
        let n = batch.num_rows();
        let starts = batch.column(self.start_col).as_primitive::<TimestampMillisecondType>().clone();
        let ends = batch.column(self.end_col).as_primitive::<TimestampMillisecondType>().clone();
        let input = self.exprs.evaluate(&self.converter, &batch)?;
        // Bucket rows by window; a batch usually touches one or a few windows.
        let mut buckets: Vec<((i64, i64), Vec<u32>)> = Vec::new();
        for i in 0..n {
            let key = (ends.value(i), starts.value(i));
            if key.0 <= self.closed_upto {
                self.late_rows += 1;
                continue;
            }
            match buckets.iter_mut().find(|(k, _)| *k == key) {
                Some((_, rows)) => rows.push(i as u32),
                None => buckets.push((key, vec![i as u32])),
            }
        }
        let whole = buckets.len() == 1 && buckets[0].1.len() == n;
        for (key, rows) in buckets {
            let rows = if whole { None } else { Some(rows) };
            self.update_window(key, &input, rows, n)?;
        }
        if self.emit == Emit::OnUpdate {
            self.emit_dirty(out)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        let w = wm.saturating_sub(self.wm_offset);
        if let Emit::Every(every) = self.emit {
            let crossed =
                self.closed_upto == MIN_TS || w == i64::MAX || w.div_euclid(every) > self.closed_upto.div_euclid(every);
            if crossed {
                self.emit_dirty(out)?;
            }
        }
        while let Some((&key, _)) = self.windows.iter().next() {
            if key.0 > w {
                break;
            }
            let Some(mut st) = self.windows.remove(&key) else { break };
            self.groups_total -= st.groups.len();
            match &mut st.accs {
                Accs::Final(accs) => {
                    let values = accs.evaluate()?;
                    out.push(Chunk::append(window_rows(&self.exprs, &self.converter, key, &st.groups, None, values)?));
                }
                Accs::Updating { accs, dirty, .. } => {
                    // ON UPDATE already emitted every change (but those still pending); EVERY emits
                    // the final rows now.
                    let groups: Vec<u32> = if matches!(self.emit, Emit::Every(_)) {
                        (0..st.groups.len() as u32).collect()
                    } else {
                        std::mem::take(dirty)
                    };
                    if !groups.is_empty() {
                        let values = accs.evaluate(&self.exprs, &groups)?;
                        let rows = window_rows(&self.exprs, &self.converter, key, &st.groups, Some(&groups), values)?;
                        out.push(upserts(rows));
                    }
                }
            }
        }
        self.closed_upto = self.closed_upto.max(w);
        Ok(wm)
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.i64(self.closed_upto);
        w.u64(self.late_rows);
        w.u64(self.windows.len() as u64);
        for (&(end, start), st) in self.windows.iter_mut() {
            w.i64(end);
            w.i64(start);
            st.groups.snapshot(w);
            match &mut st.accs {
                Accs::Final(accs) => accs.snapshot(st.groups.len(), w)?,
                Accs::Updating { accs, dirty, .. } => {
                    accs.snapshot(w)?;
                    w.u64(dirty.len() as u64);
                    dirty.iter().for_each(|&g| w.u64(g as u64));
                }
            }
        }
        self.exprs.snapshot_arrival(w);
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.closed_upto = r.i64()?;
        self.late_rows = r.u64()?;
        self.windows.clear();
        self.groups_total = 0;
        for _ in 0..r.count(16)? {
            let key = (r.i64()?, r.i64()?);
            let groups = GroupIndex::restore(r)?;
            let accs = match self.emit {
                Emit::OnWindowClose => Accs::Final(GroupsAccs::restore(&self.exprs, groups.len(), r)?),
                Emit::OnUpdate | Emit::Every(_) => {
                    let accs = RowAccs::restore(&self.exprs, r)?;
                    let mut is_dirty = vec![false; groups.len()];
                    let mut dirty = Vec::new();
                    for _ in 0..r.count(8)? {
                        let g = r.usize()?;
                        let slot = is_dirty.get_mut(g).ok_or_else(|| r.err("a group out of range"))?;
                        *slot = true;
                        dirty.push(g as u32);
                    }
                    Accs::Updating { accs, dirty, is_dirty }
                }
            };
            self.groups_total += groups.len();
            self.windows.insert(key, WindowState { groups, accs });
        }
        self.exprs.restore_arrival(r)
    }

    fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .map(|w| {
                w.groups.bytes()
                    + match &w.accs {
                        Accs::Final(a) => a.bytes(),
                        Accs::Updating { accs, .. } => accs.bytes(),
                    }
            })
            .sum()
    }
}
