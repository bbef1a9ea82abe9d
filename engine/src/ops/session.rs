//! `SESSION` windows aggregated per GROUP BY key. Rows t1 < t2 of a key share a session iff
//! t2 < t1 + gap (transitively); a session is [first ts, last ts + gap) and closes when the
//! watermark reaches its end. Sessions that a new row bridges are merged (accumulator states merge).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::TimestampMillisecondType;
use arrow::row::RowConverter;
use datafusion_expr::Accumulator;

use super::agg::{merge_group, restore_groups, snapshot_groups, update_group, AggregateExprs, RowAccs};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};

struct Session {
    start: i64,
    /// Last row time + gap.
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

pub struct SessionAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    time_col: usize,
    gap: i64,
    wm_offset: i64,
    limits: Limits,
    /// Open sessions per key, sorted by start, never overlapping.
    sessions: HashMap<Box<[u8]>, Vec<Session>, ahash::RandomState>,
    open: usize,
    closed_upto: i64,
    pub late_rows: u64,
}

impl SessionAggregate {
    pub fn new(exprs: AggregateExprs, time_col: usize, gap: i64, wm_offset: i64, limits: Limits) -> Result<Self> {
        Ok(SessionAggregate {
            converter: exprs.row_converter()?,
            exprs,
            time_col,
            gap,
            wm_offset,
            limits,
            sessions: HashMap::default(),
            open: 0,
            closed_upto: i64::MIN,
            late_rows: 0,
        })
    }
}

impl Operator for SessionAggregate {
    fn name(&self) -> String {
        "session aggregate".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        let batch = chunk.batch;
        let ts = batch.column(self.time_col).as_primitive::<TimestampMillisecondType>().clone();
        let input = self.exprs.evaluate(&self.converter, &batch)?;
        // Rows by key, then by time: each run of rows closer than `gap` is one piece of a session.
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).filter(|&i| ts.is_valid(i as usize)).collect();
        order.sort_by(|&a, &b| {
            input
                .keys
                .row(a as usize)
                .cmp(&input.keys.row(b as usize))
                .then(ts.value(a as usize).cmp(&ts.value(b as usize)))
        });
        let mut at = 0;
        while at < order.len() {
            let key = input.keys.row(order[at] as usize);
            let mut end = at + 1;
            while end < order.len()
                && input.keys.row(order[end] as usize) == key
                && ts.value(order[end] as usize) < ts.value(order[end - 1] as usize) + self.gap
            {
                end += 1;
            }
            let first = ts.value(order[at] as usize);
            let last = ts.value(order[end - 1] as usize);
            if last + self.gap <= self.closed_upto {
                self.late_rows += (end - at) as u64;
                at = end;
                continue;
            }
            let idx = UInt32Array::from(order[at..end].to_vec());
            let mut piece = Session { start: first, end: last + self.gap, accs: RowAccs::new_group(&self.exprs)? };
            update_group(&mut piece.accs, &input, &idx)?;
            let list = self.sessions.entry(key.as_ref().into()).or_default();
            // Merge every open session the piece touches: s.start < piece.end && piece.start < s.end.
            let mut i = 0;
            while i < list.len() {
                if list[i].start < piece.end && piece.start < list[i].end {
                    let mut s = list.remove(i);
                    self.open -= 1;
                    merge_group(&mut piece.accs, &mut s.accs)?;
                    piece.start = piece.start.min(s.start);
                    piece.end = piece.end.max(s.end);
                } else {
                    i += 1;
                }
            }
            let pos = list.iter().position(|s| s.start > piece.start).unwrap_or(list.len());
            list.insert(pos, piece);
            self.open += 1;
            if self.open > self.limits.max_groups {
                return Err(EngineError::Limit(format!("{} open sessions (limits.max_groups)", self.open)));
            }
            at = end;
        }
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        let w = wm.saturating_sub(self.wm_offset);
        let parser = self.converter.parser();
        let mut keys = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut closed: Vec<Vec<Box<dyn Accumulator>>> = Vec::new();
        self.sessions.retain(|key, list| {
            while list.first().is_some_and(|s| s.end <= w) {
                let s = list.remove(0);
                keys.push(key.clone());
                starts.push(s.start);
                ends.push(s.end);
                closed.push(s.accs);
            }
            !list.is_empty()
        });
        self.open -= closed.len();
        self.closed_upto = self.closed_upto.max(w);
        if closed.is_empty() {
            return Ok(wm);
        }
        let n = closed.len();
        let mut values = Vec::with_capacity(self.exprs.aggs.len());
        for a in 0..self.exprs.aggs.len() {
            let v = closed.iter_mut().map(|accs| Ok(accs[a].evaluate()?)).collect::<Result<Vec<_>>>()?;
            values.push(datafusion_common::ScalarValue::iter_to_array(v)?);
        }
        let key_cols = self.converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        let s: ArrayRef = Arc::new(TimestampMillisecondArray::from(starts));
        let e: ArrayRef = Arc::new(TimestampMillisecondArray::from(ends));
        out.push(Chunk::append(self.exprs.output_batch(key_cols, Some((s, e)), values, n)?));
        Ok(wm)
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.i64(self.closed_upto);
        w.u64(self.late_rows);
        w.u64(self.open as u64);
        for (key, list) in &self.sessions {
            for s in list {
                w.bytes(key);
                w.i64(s.start);
                w.i64(s.end);
            }
        }
        snapshot_groups(self.sessions.values_mut().flatten().map(|s| &mut s.accs), self.open, w)?;
        self.exprs.snapshot_arrival(w);
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.closed_upto = r.i64()?;
        self.late_rows = r.u64()?;
        let n = r.count(24)?;
        let mut heads = Vec::with_capacity(n);
        for _ in 0..n {
            heads.push((Box::<[u8]>::from(r.bytes()?), r.i64()?, r.i64()?));
        }
        let accs = restore_groups(&self.exprs, n, r)?;
        self.sessions.clear();
        // Sessions were written key by key, each key's list in start order.
        for ((key, start, end), accs) in heads.into_iter().zip(accs) {
            self.sessions.entry(key).or_default().push(Session { start, end, accs });
        }
        self.open = n;
        self.exprs.restore_arrival(r)
    }

    fn state_bytes(&self) -> usize {
        self.sessions.values().flatten().map(|s| s.accs.iter().map(|a| a.size()).sum::<usize>() + 64).sum()
    }
}
