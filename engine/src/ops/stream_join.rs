//! Joins of two append-only streams whose state the watermark bounds.
//!
//! - Interval: `R.t - L.t` within `[lo, hi]` (plus equal keys). A pair is emitted as soon as both
//!   rows are there; a row is freed once no future row of the other side can fall in its interval,
//!   and then, on an outer side, emitted with NULLs if it never matched.
//! - Window (event-time equi-join): both sides carry an equal event-time column (`window_end`);
//!   rows wait per value of it until the watermark passes it on both sides, then the value's rows
//!   are joined at once (inner or outer) and freed.
//!
//! An extra condition (`residual`) decides which key-and-time pairs match.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion_physical_expr::PhysicalExpr;

use super::rows::{eval_all, KeyEncoder, RowRef, RowStore};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};

/// How time bounds the join.
#[derive(Debug, Clone, Copy)]
pub enum JoinTiming {
    /// `R.t - L.t` in `[lo, hi]` ms.
    Interval { lo: i64, hi: i64 },
    /// Equal event-time columns; a value is complete when the watermark passes it.
    Window,
}

/// One input of the join.
pub struct JoinSide {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Event-time column (interval: the bounded column; window: the equal one).
    pub time_col: usize,
    /// How far the time column may lag behind the operator's input watermark.
    pub lag: i64,
    /// Whether unmatched rows of this side are emitted with NULLs (outer join).
    pub outer: bool,
    pub columns: usize,
}

struct Entry {
    row: RowRef,
    ts: i64,
    matched: bool,
    /// Key bytes index in `SideState::index` (interval mode).
    key: Option<Box<[u8]>>,
}

struct SideState {
    spec: JoinSide,
    schema: SchemaRef,
    store: RowStore,
    entries: HashMap<u64, Entry, ahash::RandomState>,
    next_id: u64,
    /// Interval mode: key → entry ids, oldest first.
    index: HashMap<Box<[u8]>, VecDeque<u64>, ahash::RandomState>,
    /// Interval mode: (deadline, id); an entry is freed when the watermark passes its deadline.
    expiry: BinaryHeap<Reverse<(i64, u64)>>,
}

pub struct StreamJoin {
    sides: [SideState; 2],
    timing: JoinTiming,
    encoder: KeyEncoder,
    residual: Option<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    /// Window mode: time value → entry ids per side.
    buckets: BTreeMap<i64, [Vec<u64>; 2]>,
    limits: Limits,
    label: String,
}

impl StreamJoin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: String,
        left: (JoinSide, SchemaRef),
        right: (JoinSide, SchemaRef),
        key_types: Vec<arrow::datatypes::DataType>,
        timing: JoinTiming,
        residual: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
        limits: Limits,
    ) -> Result<Self> {
        let side = |(spec, s): (JoinSide, SchemaRef)| SideState {
            spec,
            store: RowStore::new(&s),
            schema: s,
            entries: HashMap::default(),
            next_id: 0,
            index: HashMap::default(),
            expiry: BinaryHeap::new(),
        };
        Ok(StreamJoin {
            sides: [side(left), side(right)],
            timing,
            encoder: KeyEncoder::new(key_types)?,
            residual,
            schema,
            buckets: BTreeMap::new(),
            limits,
            label,
        })
    }

    fn held(&self) -> usize {
        self.sides[0].entries.len() + self.sides[1].entries.len()
    }

    /// Builds output rows from (left, right) pairs of entry rows; `None` is a NULL side.
    /// With a residual condition, returns which pairs pass it.
    fn output(&self, pairs: &[(Option<RowRef>, Option<RowRef>)]) -> Result<(RecordBatch, Option<BooleanArray>)> {
        let left: Vec<Option<RowRef>> = pairs.iter().map(|p| p.0).collect();
        let right: Vec<Option<RowRef>> = pairs.iter().map(|p| p.1).collect();
        let mut cols: Vec<ArrayRef> =
            self.sides[0].store.gather(&left, &(0..self.sides[0].spec.columns).collect::<Vec<_>>())?;
        cols.extend(self.sides[1].store.gather(&right, &(0..self.sides[1].spec.columns).collect::<Vec<_>>())?);
        let options = RecordBatchOptions::new().with_row_count(Some(pairs.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), cols, &options)?;
        let mask = match &self.residual {
            Some(r) if pairs.iter().all(|p| p.0.is_some() && p.1.is_some()) => {
                let v = r.evaluate(&batch)?.into_array(batch.num_rows())?;
                let b =
                    v.as_boolean_opt().ok_or_else(|| EngineError::Internal("join condition is not BOOLEAN".into()))?;
                Some(super::null_as_false(b))
            }
            _ => None,
        };
        Ok((batch, mask))
    }

    /// Emits matching pairs, marking their entries matched.
    fn emit_pairs(&mut self, pairs: Vec<(u64, u64)>, out: &mut Vec<Chunk>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let refs: Vec<(Option<RowRef>, Option<RowRef>)> = pairs
            .iter()
            .map(|(l, r)| (self.sides[0].entries.get(l).map(|e| e.row), self.sides[1].entries.get(r).map(|e| e.row)))
            .collect();
        let (batch, mask) = self.output(&refs)?;
        let batch = match mask {
            Some(m) => {
                for (i, (l, r)) in pairs.iter().enumerate() {
                    if m.value(i) {
                        self.mark(*l, *r);
                    }
                }
                if m.true_count() == 0 {
                    return Ok(());
                }
                arrow::compute::filter_record_batch(&batch, &m)?
            }
            None => {
                for (l, r) in &pairs {
                    self.mark(*l, *r);
                }
                batch
            }
        };
        out.push(Chunk::append(batch));
        Ok(())
    }

    fn mark(&mut self, l: u64, r: u64) {
        if let Some(e) = self.sides[0].entries.get_mut(&l) {
            e.matched = true;
        }
        if let Some(e) = self.sides[1].entries.get_mut(&r) {
            e.matched = true;
        }
    }

    /// Frees entries taken out of `side` (and unlinked from its index); emits the unmatched ones of
    /// an outer side.
    fn free(&mut self, side: usize, taken: Vec<Entry>, out: &mut Vec<Chunk>) -> Result<()> {
        if self.sides[side].spec.outer {
            let refs: Vec<(Option<RowRef>, Option<RowRef>)> = taken
                .iter()
                .filter(|e| !e.matched)
                .map(|e| if side == 0 { (Some(e.row), None) } else { (None, Some(e.row)) })
                .collect();
            if !refs.is_empty() {
                out.push(Chunk::append(self.output(&refs)?.0));
            }
        }
        for e in taken {
            self.sides[side].store.release(e.row);
        }
        Ok(())
    }
}

impl Operator for StreamJoin {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn on_chunk(&mut self, port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        let side = port.min(1);
        let batch = chunk.batch;
        let keys = eval_all(&self.sides[side].spec.keys, &batch)?;
        let (rows, null_key) = self.encoder.encode(&keys)?;
        let ts_col = batch.column(self.sides[side].spec.time_col).clone();
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let n = batch.num_rows();
        if self.held() + n > self.limits.max_groups {
            return Err(EngineError::Limit(format!(
                "{}: more than {} rows held waiting for matches (raise limits.max_groups, or narrow the join's time bound)",
                self.label, self.limits.max_groups
            )));
        }
        let slot = self.sides[side].store.add(batch);
        let mut pairs: Vec<(u64, u64)> = Vec::new();
        let mut found: Vec<u64> = Vec::new();
        let mut lone = Vec::new();
        for (i, &null) in null_key.iter().enumerate().take(n) {
            let row = RowRef { slot, row: i as u32 };
            let t = if ts.is_null(i) { None } else { Some(ts.value(i)) };
            let outer = self.sides[side].spec.outer;
            // A row with no time or a NULL key can match nothing; only an outer side keeps it (to emit).
            let Some(t) = t else {
                if outer {
                    lone.push(if side == 0 { (Some(row), None) } else { (None, Some(row)) });
                }
                continue;
            };
            match self.timing {
                JoinTiming::Interval { lo, hi } => {
                    let key: Option<Box<[u8]>> = (!null).then(|| rows.row(i).as_ref().into());
                    let other = 1 - side;
                    found.clear();
                    if let Some(k) = &key {
                        if let Some(ids) = self.sides[other].index.get(k.as_ref()) {
                            for &oid in ids {
                                let Some(o) = self.sides[other].entries.get(&oid) else { continue };
                                let d = if side == 0 { o.ts - t } else { t - o.ts };
                                if d >= lo && d <= hi {
                                    found.push(oid);
                                }
                            }
                        }
                    }
                    let id = self.insert(side, row, t, key);
                    pairs.extend(found.iter().map(|&oid| if side == 0 { (id, oid) } else { (oid, id) }));
                }
                JoinTiming::Window => {
                    if null && !outer {
                        continue;
                    }
                    self.insert(side, row, t, None);
                }
            }
        }
        if !lone.is_empty() {
            out.push(Chunk::append(self.output(&lone)?.0));
        }
        self.sides[side].store.seal(slot);
        self.emit_pairs(pairs, out)
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        match self.timing {
            JoinTiming::Interval { .. } => {
                for side in 0..2 {
                    // Each expired entry is looked up once: with many rows held, every lookup
                    // is a cache miss.
                    let mut expired = Vec::new();
                    let s = &mut self.sides[side];
                    while let Some(Reverse((deadline, id))) = s.expiry.peek().copied() {
                        if deadline >= wm {
                            break;
                        }
                        s.expiry.pop();
                        let Some(e) = s.entries.remove(&id) else { continue };
                        if let Some(k) = &e.key {
                            if let Some(ids) = s.index.get_mut(k.as_ref()) {
                                if let Some(p) = ids.iter().position(|x| *x == id) {
                                    ids.remove(p);
                                }
                                if ids.is_empty() {
                                    s.index.remove(k.as_ref());
                                }
                            }
                        }
                        expired.push(e);
                    }
                    self.free(side, expired, out)?;
                }
            }
            JoinTiming::Window => {
                let lag = self.sides[0].spec.lag.max(self.sides[1].spec.lag);
                while let Some((&v, _)) = self.buckets.first_key_value() {
                    if v.saturating_add(lag) >= wm {
                        break;
                    }
                    let Some((_, [l, r])) = self.buckets.pop_first() else { break };
                    self.join_bucket(l, r, out)?;
                }
            }
        }
        Ok(wm)
    }

    fn state_bytes(&self) -> usize {
        self.sides.iter().map(|s| s.store.bytes() + s.entries.len() * 48).sum()
    }

    fn checkpointable(&self) -> bool {
        true
    }

    /// Per side: the next entry id, then the held entries in id (arrival) order — their rows as
    /// one batch, and each entry's id, time, matched flag and key. Indexes, expiry deadlines and
    /// window buckets follow from those and are rebuilt on restore.
    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        for s in &self.sides {
            w.u64(s.next_id);
            let mut ids: Vec<u64> = s.entries.keys().copied().collect();
            ids.sort_unstable();
            w.u64(ids.len() as u64);
            if ids.is_empty() {
                continue;
            }
            let refs: Vec<RowRef> = ids.iter().filter_map(|id| s.entries.get(id).map(|e| e.row)).collect();
            s.store.write_rows(&s.schema, &refs, w)?;
            for id in &ids {
                let Some(e) = s.entries.get(id) else { continue };
                w.u64(*id);
                w.i64(e.ts);
                w.bool(e.matched);
                w.bool(e.key.is_some());
                w.bytes(e.key.as_deref().unwrap_or_default());
            }
        }
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        for side in 0..2 {
            let next_id = r.u64()?;
            let n = r.count(26)?;
            if n > 0 {
                let schema = self.sides[side].schema.clone();
                let slot = self.sides[side].store.read_rows(&schema, n, r)?;
                for i in 0..n {
                    let (id, ts, matched) = (r.u64()?, r.i64()?, r.bool()?);
                    let has_key = r.bool()?;
                    let key = r.bytes()?;
                    if id >= next_id {
                        return Err(r.err("a join entry id beyond the next id"));
                    }
                    self.sides[side].next_id = id;
                    self.insert(side, RowRef { slot, row: i as u32 }, ts, has_key.then(|| key.into()));
                    if let Some(e) = self.sides[side].entries.get_mut(&id) {
                        e.matched = matched;
                    }
                }
                self.sides[side].store.seal(slot);
            }
            self.sides[side].next_id = next_id;
        }
        Ok(())
    }
}

impl StreamJoin {
    /// Files a held row under the next id: key index and expiry (interval) or its time's bucket
    /// (window).
    fn insert(&mut self, side: usize, row: RowRef, ts: i64, key: Option<Box<[u8]>>) -> u64 {
        let id = self.sides[side].next_id;
        match self.timing {
            JoinTiming::Interval { lo, hi } => {
                // When no future row of the other side can fall in this row's interval.
                let deadline = if side == 0 {
                    ts.saturating_add(hi).saturating_add(self.sides[1].spec.lag)
                } else {
                    ts.saturating_sub(lo).saturating_add(self.sides[0].spec.lag)
                };
                self.sides[side].expiry.push(Reverse((deadline, id)));
            }
            JoinTiming::Window => self.buckets.entry(ts).or_insert_with(|| [Vec::new(), Vec::new()])[side].push(id),
        }
        let s = &mut self.sides[side];
        s.next_id += 1;
        s.store.hold(row);
        if let Some(k) = &key {
            match s.index.get_mut(k.as_ref()) {
                Some(ids) => ids.push_back(id),
                None => {
                    s.index.insert(k.clone(), VecDeque::from([id]));
                }
            }
        }
        s.entries.insert(id, Entry { row, ts, matched: false, key });
        id
    }

    /// Joins the complete rows of one time value, then frees them.
    fn join_bucket(&mut self, l: Vec<u64>, r: Vec<u64>, out: &mut Vec<Chunk>) -> Result<()> {
        let keys_of = |this: &Self, side: usize, ids: &[u64]| -> Result<(arrow::row::Rows, Vec<bool>)> {
            let refs: Vec<Option<RowRef>> =
                ids.iter().map(|id| this.sides[side].entries.get(id).map(|e| e.row)).collect();
            let cols: Vec<usize> = (0..this.sides[side].spec.columns).collect();
            let arrays = this.sides[side].store.gather(&refs, &cols)?;
            let options = RecordBatchOptions::new().with_row_count(Some(ids.len()));
            let batch = RecordBatch::try_new_with_options(this.sides[side].schema.clone(), arrays, &options)?;
            this.encoder.encode(&eval_all(&this.sides[side].spec.keys, &batch)?)
        };
        let mut pairs = Vec::new();
        if !l.is_empty() && !r.is_empty() {
            let (lk, lnull) = keys_of(self, 0, &l)?;
            let (rk, rnull) = keys_of(self, 1, &r)?;
            let mut table: HashMap<&[u8], Vec<u64>, ahash::RandomState> = HashMap::default();
            for (i, id) in r.iter().enumerate() {
                if !rnull[i] {
                    table.entry(rk.row(i).data()).or_default().push(*id);
                }
            }
            for (i, id) in l.iter().enumerate() {
                if lnull[i] {
                    continue;
                }
                if let Some(m) = table.get(lk.row(i).as_ref()) {
                    pairs.extend(m.iter().map(|rid| (*id, *rid)));
                }
            }
        }
        self.emit_pairs(pairs, out)?;
        for (side, ids) in [(0, l), (1, r)] {
            let taken = ids.iter().filter_map(|id| self.sides[side].entries.remove(id)).collect();
            self.free(side, taken, out)?;
        }
        Ok(())
    }
}
