//! ASOF join: each left row with the latest right row of the same key at or before its time
//! (strictly before for `>`). A left row waits until the right side's watermark passes its time,
//! when no later right row can change the answer; right rows older than the latest one any waiting
//! or future left row can need are freed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion_physical_expr::PhysicalExpr;

use super::rows::{eval_all, KeyEncoder, RowRef, RowStore};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};

pub struct AsofSide {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub time_col: usize,
    pub lag: i64,
    pub schema: SchemaRef,
}

/// Rows by (event time, arrival).
type ByTime = BTreeMap<(i64, u64), RowRef>;

pub struct AsofJoin {
    label: String,
    left: AsofSide,
    right: AsofSide,
    /// `left.t > right.t` rather than `>=`.
    strict: bool,
    encoder: KeyEncoder,
    left_store: RowStore,
    right_store: RowStore,
    /// Left rows waiting, by (time, arrival).
    pending: ByTime,
    /// Right rows per key, by (time, arrival).
    right_rows: HashMap<Box<[u8]>, ByTime>,
    /// Keys whose old right rows may be freeable.
    dirty: HashSet<Box<[u8]>>,
    seq: u64,
    held_right: usize,
    schema: SchemaRef,
    limits: Limits,
}

impl AsofJoin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: String,
        left: AsofSide,
        right: AsofSide,
        key_types: Vec<DataType>,
        strict: bool,
        schema: SchemaRef,
        limits: Limits,
    ) -> Result<Self> {
        Ok(AsofJoin {
            label,
            left_store: RowStore::new(&left.schema),
            right_store: RowStore::new(&right.schema),
            left,
            right,
            strict,
            encoder: KeyEncoder::new(key_types)?,
            pending: BTreeMap::new(),
            right_rows: HashMap::new(),
            dirty: HashSet::new(),
            seq: 0,
            held_right: 0,
            schema,
            limits,
        })
    }

    fn check_limit(&self, more: usize) -> Result<()> {
        if self.pending.len() + self.held_right + more > self.limits.max_groups {
            return Err(EngineError::Limit(format!(
                "{}: more than {} rows held (raise limits.max_groups; a stalled watermark on one input holds the other's rows)",
                self.label, self.limits.max_groups
            )));
        }
        Ok(())
    }

    /// Emits the waiting left rows whose answer is final at watermark `wm`.
    fn emit(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<()> {
        let limit = wm.saturating_sub(self.right.lag);
        let mut ready: Vec<RowRef> = Vec::new();
        let mut times: Vec<i64> = Vec::new();
        while let Some((&(t, _), _)) = self.pending.first_key_value() {
            let done = if self.strict { t <= limit } else { t < limit };
            if !done {
                break;
            }
            if let Some(((t, _), r)) = self.pending.pop_first() {
                ready.push(r);
                times.push(t);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let refs: Vec<Option<RowRef>> = ready.iter().map(|r| Some(*r)).collect();
        let left_cols: Vec<usize> = (0..self.left.schema.fields().len()).collect();
        let left = self.left_store.gather(&refs, &left_cols)?;
        let options = RecordBatchOptions::new().with_row_count(Some(ready.len()));
        let left_batch = RecordBatch::try_new_with_options(self.left.schema.clone(), left, &options)?;
        let (keys, null_key) = self.encoder.encode(&eval_all(&self.left.keys, &left_batch)?)?;
        let mut take_left = Vec::new();
        let mut matches: Vec<Option<RowRef>> = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            if null_key[i] {
                continue;
            }
            let Some(rows) = self.right_rows.get(keys.row(i).as_ref()) else { continue };
            let found =
                if self.strict { rows.range(..(t, 0)).next_back() } else { rows.range(..=(t, u64::MAX)).next_back() };
            if let Some((_, r)) = found {
                take_left.push(i as u32);
                matches.push(Some(*r));
            }
        }
        for r in &ready {
            self.left_store.release(*r);
        }
        if take_left.is_empty() {
            return Ok(());
        }
        let idx = arrow::array::UInt32Array::from(take_left);
        let mut cols: Vec<ArrayRef> = left_batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        let right_cols: Vec<usize> = (0..self.right.schema.fields().len()).collect();
        cols.extend(self.right_store.gather(&matches, &right_cols)?);
        let options = RecordBatchOptions::new().with_row_count(Some(idx.len()));
        out.push(Chunk::append(RecordBatch::try_new_with_options(self.schema.clone(), cols, &options)?));
        Ok(())
    }

    /// Frees right rows no waiting or future left row can pick.
    fn prune(&mut self, wm: i64) {
        let future = wm.saturating_sub(self.left.lag);
        let horizon = self.pending.first_key_value().map(|((t, _), _)| *t).unwrap_or(future).min(future);
        let dirty: Vec<Box<[u8]>> = self.dirty.drain().collect();
        for k in dirty {
            let Some(rows) = self.right_rows.get_mut(k.as_ref()) else { continue };
            // Keep the latest row at or before the horizon (strict: before), and all later ones.
            let keep_from = if self.strict {
                rows.range(..(horizon, 0)).next_back()
            } else {
                rows.range(..=(horizon, u64::MAX)).next_back()
            }
            .map(|(k, _)| *k);
            if let Some(from) = keep_from {
                let newer = rows.split_off(&from);
                for (_, r) in std::mem::replace(rows, newer) {
                    self.right_store.release(r);
                    self.held_right -= 1;
                }
            }
            if rows.range(..).nth(1).is_some() {
                self.dirty.insert(k);
            }
        }
    }
}

impl Operator for AsofJoin {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn on_chunk(&mut self, port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        let batch = chunk.batch;
        let n = batch.num_rows();
        self.check_limit(n)?;
        if port == 0 {
            let ts_col = batch.column(self.left.time_col).clone();
            let ts = ts_col.as_primitive::<TimestampMillisecondType>();
            let slot = self.left_store.add(batch);
            for i in 0..n {
                // A row without time has no answer (inner join).
                if ts.is_null(i) {
                    continue;
                }
                let r = RowRef { slot, row: i as u32 };
                self.left_store.hold(r);
                self.pending.insert((ts.value(i), self.seq), r);
                self.seq += 1;
            }
            self.left_store.seal(slot);
        } else {
            let (keys, null_key) = self.encoder.encode(&eval_all(&self.right.keys, &batch)?)?;
            let ts_col = batch.column(self.right.time_col).clone();
            let ts = ts_col.as_primitive::<TimestampMillisecondType>();
            let slot = self.right_store.add(batch);
            for (i, &null) in null_key.iter().enumerate().take(n) {
                if ts.is_null(i) || null {
                    continue;
                }
                let r = RowRef { slot, row: i as u32 };
                self.right_store.hold(r);
                self.held_right += 1;
                let k = keys.row(i);
                let rows = match self.right_rows.get_mut(k.as_ref()) {
                    Some(rows) => rows,
                    None => self.right_rows.entry(k.as_ref().into()).or_default(),
                };
                rows.insert((ts.value(i), self.seq), r);
                self.seq += 1;
                if rows.len() > 1 && !self.dirty.contains(k.as_ref()) {
                    self.dirty.insert(k.as_ref().into());
                }
            }
            self.right_store.seal(slot);
        }
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        self.emit(wm, out)?;
        self.prune(wm);
        Ok(wm)
    }

    fn state_bytes(&self) -> usize {
        self.left_store.bytes() + self.right_store.bytes() + (self.pending.len() + self.held_right) * 40
    }

    fn checkpointable(&self) -> bool {
        true
    }

    /// The arrival counter; the waiting left rows (rows, then each one's time and arrival); the
    /// right rows per key (rows, then each one's key, time and arrival).
    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.u64(self.seq);
        w.u64(self.pending.len() as u64);
        let refs: Vec<RowRef> = self.pending.values().copied().collect();
        self.left_store.write_rows(&self.left.schema, &refs, w)?;
        for (t, seq) in self.pending.keys() {
            w.i64(*t);
            w.u64(*seq);
        }
        let right: Vec<(&[u8], &(i64, u64), &RowRef)> =
            self.right_rows.iter().flat_map(|(k, rows)| rows.iter().map(move |(at, r)| (&k[..], at, r))).collect();
        w.u64(right.len() as u64);
        let refs: Vec<RowRef> = right.iter().map(|(_, _, r)| **r).collect();
        self.right_store.write_rows(&self.right.schema, &refs, w)?;
        for (k, (t, seq), _) in &right {
            w.bytes(k);
            w.i64(*t);
            w.u64(*seq);
        }
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.seq = r.u64()?;
        let n = r.count(16)?;
        let slot = self.left_store.read_rows(&self.left.schema, n, r)?;
        for i in 0..n {
            let row = RowRef { slot, row: i as u32 };
            self.left_store.hold(row);
            self.pending.insert((r.i64()?, r.u64()?), row);
        }
        self.left_store.seal(slot);
        let n = r.count(24)?;
        let slot = self.right_store.read_rows(&self.right.schema, n, r)?;
        for i in 0..n {
            let row = RowRef { slot, row: i as u32 };
            let key: Box<[u8]> = r.bytes()?.into();
            let at = (r.i64()?, r.u64()?);
            self.right_store.hold(row);
            self.held_right += 1;
            let rows = self.right_rows.entry(key.clone()).or_default();
            rows.insert(at, row);
            if rows.len() > 1 {
                self.dirty.insert(key);
            }
        }
        self.right_store.seal(slot);
        Ok(())
    }
}
