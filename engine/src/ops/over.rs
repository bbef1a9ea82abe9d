//! `OVER` windows: aggregates over ROWS / RANGE frames, `LAG`, `LEAD`, `ROW_NUMBER`, `RANK`,
//! `DENSE_RANK`.
//!
//! Two streaming shapes:
//! - ordered by event time (`ORDER BY ts`): a row is final, and evaluated, once the watermark passes
//!   it; per-partition state (frame contents, counters) carries over between watermarks and is bounded
//!   by the frame. `LEAD` rows wait for their successors (or the end of input).
//! - partitioned by a window column of a windowed aggregate (top-N per window): a partition is
//!   evaluated whole, in its ORDER BY order, once the watermark passes it; then its state is freed.
//!
//! Frames end at the current row (or, for whole partitions, at the partition's end).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use datafusion_common::ScalarValue;
use datafusion_expr::Accumulator;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;
use datafusion_physical_expr::PhysicalExpr;

use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};

/// Which rows, before the current one, a function sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame {
    /// ROWS BETWEEN n PRECEDING AND CURRENT ROW.
    Rows(u64),
    /// ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW.
    RowsUnbounded,
    /// RANGE BETWEEN INTERVAL d PRECEDING AND CURRENT ROW (peers included).
    Range(i64),
    /// RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW (peers included).
    RangeUnbounded,
    /// The whole partition (complete partitions only).
    Whole,
}

pub enum OverFn {
    Agg { agg: Arc<AggregateFunctionExpr>, args: Vec<Arc<dyn PhysicalExpr>>, frame: Frame },
    RowNumber,
    Rank,
    DenseRank,
    Lag { arg: Arc<dyn PhysicalExpr>, offset: usize, default: ScalarValue },
    Lead { arg: Arc<dyn PhysicalExpr>, offset: usize, default: ScalarValue },
}

/// When a partition's rows are final.
#[derive(Debug, Clone, Copy)]
pub enum Completion {
    /// Rows are final when their event time (column, lag) is below the watermark.
    ByRowTime { col: usize, offset: i64 },
    /// Whole partitions are final when this partition column is below the watermark.
    ByPartitionTime { col: usize, offset: i64 },
}

struct Pending {
    row: RecordBatch,
    values: Vec<Option<ScalarValue>>,
    /// Rows seen after this one, for LEAD.
    after: usize,
}

#[derive(Default)]
struct Part {
    accs: Vec<Option<Box<dyn Accumulator>>>,
    /// Per function: (order time, arguments of one row) in its frame.
    frames: Vec<VecDeque<(i64, Vec<ArrayRef>)>>,
    lag: Vec<VecDeque<ScalarValue>>,
    count: u64,
    dense: u64,
    waiting: VecDeque<Pending>,
}

pub struct Over {
    fns: Vec<OverFn>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    part_conv: RowConverter,
    /// ORDER BY expressions and their encoder (peers have equal bytes).
    order_conv: Option<RowConverter>,
    order_by: Vec<Arc<dyn PhysicalExpr>>,
    completion: Completion,
    schema: SchemaRef,
    buffered: Vec<RecordBatch>,
    parts: HashMap<Box<[u8]>, Part, ahash::RandomState>,
    limits: Limits,
}

impl Over {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fns: Vec<OverFn>,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        partition_types: Vec<arrow::datatypes::DataType>,
        order_by: Vec<(Arc<dyn PhysicalExpr>, arrow::datatypes::DataType, arrow::compute::SortOptions)>,
        completion: Completion,
        schema: SchemaRef,
        limits: Limits,
    ) -> Result<Self> {
        let mut pf: Vec<SortField> = partition_types.into_iter().map(SortField::new).collect();
        if pf.is_empty() {
            pf.push(SortField::new(arrow::datatypes::DataType::Boolean));
        }
        let order_conv = if order_by.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                order_by.iter().map(|(_, t, o)| SortField::new_with_options(t.clone(), *o)).collect(),
            )?)
        };
        Ok(Over {
            fns,
            partition_by,
            part_conv: RowConverter::new(pf)?,
            order_conv,
            order_by: order_by.into_iter().map(|(e, _, _)| e).collect(),
            completion,
            schema,
            buffered: vec![],
            parts: HashMap::default(),
            limits,
        })
    }

    fn new_part(&self) -> Result<Part> {
        let mut p = Part::default();
        for f in 0..self.fns.len() {
            p.accs.push(self.new_acc(f)?);
            p.frames.push(VecDeque::new());
            p.lag.push(VecDeque::new());
        }
        Ok(p)
    }

    /// A fresh accumulator for function `f` (none for ranking, LAG and LEAD).
    fn new_acc(&self, f: usize) -> Result<Option<Box<dyn Accumulator>>> {
        Ok(match &self.fns[f] {
            OverFn::Agg { agg, frame: Frame::Rows(_) | Frame::Range(_), .. } => Some(agg.create_sliding_accumulator()?),
            OverFn::Agg { agg, .. } => Some(agg.create_accumulator()?),
            _ => None,
        })
    }

    /// Evaluates the final rows `batch` (sorted by partition, order, arrival) and appends finished rows.
    fn evaluate(&mut self, batch: &RecordBatch, whole_partitions: bool, done: &mut Vec<Pending>) -> Result<()> {
        let n = batch.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> { Ok(e.evaluate(batch)?.into_array(n)?) };
        let parts = self.partition_rows(batch)?;
        let order = match &self.order_conv {
            Some(c) => Some(c.convert_columns(&self.order_by.iter().map(eval).collect::<Result<Vec<_>>>()?)?),
            None => None,
        };
        let ts: Option<Vec<i64>> = match self.completion {
            Completion::ByRowTime { col, .. } => {
                Some(batch.column(col).as_primitive::<TimestampMillisecondType>().values().to_vec())
            }
            Completion::ByPartitionTime { .. } => None,
        };
        // Per function, its argument arrays.
        let args: Vec<Vec<ArrayRef>> = self
            .fns
            .iter()
            .map(|f| match f {
                OverFn::Agg { args, .. } => args.iter().map(eval).collect(),
                OverFn::Lag { arg, .. } | OverFn::Lead { arg, .. } => Ok(vec![eval(arg)?]),
                _ => Ok(vec![]),
            })
            .collect::<Result<_>>()?;
        let mut i = 0;
        while i < n {
            let key = parts.row(i);
            let mut end = i + 1;
            while end < n && parts.row(end) == key {
                end += 1;
            }
            let mut part = match self.parts.remove(key.as_ref()) {
                Some(p) => p,
                None => self.new_part()?,
            };
            self.eval_partition(&mut part, batch, i, end, order.as_ref(), ts.as_deref(), &args, done)?;
            if whole_partitions {
                self.flush_leads(&mut part, done);
            } else {
                self.parts.insert(key.as_ref().into(), part);
                if self.parts.len() > self.limits.max_groups {
                    return Err(EngineError::Limit(format!(
                        "{} OVER partitions (limits.max_groups)",
                        self.parts.len()
                    )));
                }
            }
            i = end;
        }
        Ok(())
    }

    fn partition_rows(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let n = batch.num_rows();
        let cols = if self.partition_by.is_empty() {
            vec![super::constant_key(n)]
        } else {
            self.partition_by.iter().map(|e| Ok(e.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<_>>>()?
        };
        Ok(self.part_conv.convert_columns(&cols)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_partition(
        &self,
        part: &mut Part,
        batch: &RecordBatch,
        from: usize,
        to: usize,
        order: Option<&arrow::row::Rows>,
        ts: Option<&[i64]>,
        args: &[Vec<ArrayRef>],
        done: &mut Vec<Pending>,
    ) -> Result<()> {
        let slice = |i: usize, f: usize| -> Vec<ArrayRef> { args[f].iter().map(|a| a.slice(i, 1)).collect() };
        // Whole-partition aggregates see every row first.
        let mut whole: Vec<Option<ScalarValue>> = vec![None; self.fns.len()];
        for (f, func) in self.fns.iter().enumerate() {
            if let OverFn::Agg { frame: Frame::Whole, .. } = func {
                let acc = part.accs[f].as_mut().ok_or_else(|| EngineError::Internal("no accumulator".into()))?;
                for i in from..to {
                    acc.update_batch(&slice(i, f))?;
                }
                whole[f] = Some(acc.evaluate()?);
            }
        }
        let mut g = from;
        while g < to {
            // A peer group: rows with equal ORDER BY values.
            let mut g_end = g + 1;
            if let Some(o) = order {
                while g_end < to && o.row(g_end) == o.row(g) {
                    g_end += 1;
                }
            }
            let t = ts.map(|t| t[g]).unwrap_or(0);
            let mut values: Vec<Vec<Option<ScalarValue>>> = vec![vec![None; self.fns.len()]; g_end - g];
            for (f, func) in self.fns.iter().enumerate() {
                match func {
                    OverFn::Agg { frame, .. } => {
                        let acc =
                            part.accs[f].as_mut().ok_or_else(|| EngineError::Internal("no accumulator".into()))?;
                        match frame {
                            Frame::Whole => values.iter_mut().for_each(|v| v[f] = whole[f].clone()),
                            Frame::Rows(_) | Frame::RowsUnbounded => {
                                for (k, i) in (g..g_end).enumerate() {
                                    let a = slice(i, f);
                                    acc.update_batch(&a)?;
                                    if let Frame::Rows(p) = frame {
                                        part.frames[f].push_back((t, a));
                                        while part.frames[f].len() as u64 > p + 1 {
                                            if let Some((_, old)) = part.frames[f].pop_front() {
                                                acc.retract_batch(&old)?;
                                            }
                                        }
                                    }
                                    values[k][f] = Some(acc.evaluate()?);
                                }
                            }
                            Frame::Range(_) | Frame::RangeUnbounded => {
                                for i in g..g_end {
                                    let a = slice(i, f);
                                    acc.update_batch(&a)?;
                                    if let Frame::Range(_) = frame {
                                        part.frames[f].push_back((t, a));
                                    }
                                }
                                if let Frame::Range(d) = frame {
                                    while part.frames[f].front().is_some_and(|(ft, _)| *ft < t - d) {
                                        if let Some((_, old)) = part.frames[f].pop_front() {
                                            acc.retract_batch(&old)?;
                                        }
                                    }
                                }
                                let v = acc.evaluate()?;
                                values.iter_mut().for_each(|x| x[f] = Some(v.clone()));
                            }
                        }
                    }
                    OverFn::RowNumber => {
                        for (k, _) in (g..g_end).enumerate() {
                            values[k][f] = Some(ScalarValue::UInt64(Some(part.count + 1 + k as u64)));
                        }
                    }
                    OverFn::Rank => {
                        values.iter_mut().for_each(|v| v[f] = Some(ScalarValue::UInt64(Some(part.count + 1))));
                    }
                    OverFn::DenseRank => {
                        values.iter_mut().for_each(|v| v[f] = Some(ScalarValue::UInt64(Some(part.dense + 1))));
                    }
                    OverFn::Lag { offset, default, .. } => {
                        for (k, i) in (g..g_end).enumerate() {
                            let x = ScalarValue::try_from_array(&args[f][0], i)?;
                            let h = &mut part.lag[f];
                            values[k][f] = Some(if h.len() >= *offset && *offset > 0 {
                                h[h.len() - offset].clone()
                            } else if *offset == 0 {
                                x.clone()
                            } else {
                                default.clone()
                            });
                            h.push_back(x);
                            while h.len() > *offset {
                                h.pop_front();
                            }
                        }
                    }
                    OverFn::Lead { .. } => {}
                }
            }
            part.count += (g_end - g) as u64;
            part.dense += 1;
            // Rows in arrival order: each one resolves LEADs of rows waiting for it, then waits itself.
            for (k, i) in (g..g_end).enumerate() {
                for w in part.waiting.iter_mut() {
                    w.after += 1;
                    for (f, func) in self.fns.iter().enumerate() {
                        if let OverFn::Lead { offset, .. } = func {
                            if w.after == *offset {
                                w.values[f] = Some(ScalarValue::try_from_array(&args[f][0], i)?);
                            }
                        }
                    }
                }
                let mut vals = std::mem::take(&mut values[k]);
                for (f, func) in self.fns.iter().enumerate() {
                    if let OverFn::Lead { offset: 0, .. } = func {
                        vals[f] = Some(ScalarValue::try_from_array(&args[f][0], i)?);
                    }
                }
                part.waiting.push_back(Pending { row: batch.slice(i, 1), values: vals, after: 0 });
            }
            while part.waiting.front().is_some_and(|w| w.values.iter().all(Option::is_some)) {
                if let Some(w) = part.waiting.pop_front() {
                    done.push(w);
                }
            }
            g = g_end;
        }
        Ok(())
    }

    /// End of a partition: LEADs without successors take their default.
    fn flush_leads(&self, part: &mut Part, done: &mut Vec<Pending>) {
        while let Some(mut w) = part.waiting.pop_front() {
            for (f, func) in self.fns.iter().enumerate() {
                if let OverFn::Lead { default, .. } = func {
                    if w.values[f].is_none() {
                        w.values[f] = Some(default.clone());
                    }
                }
            }
            done.push(w);
        }
    }

    fn output(&self, done: Vec<Pending>) -> Result<Option<RecordBatch>> {
        if done.is_empty() {
            return Ok(None);
        }
        let rows: Vec<&RecordBatch> = done.iter().map(|p| &p.row).collect();
        let input = concat_batches(&rows[0].schema(), rows.iter().copied())?;
        let mut cols = input.columns().to_vec();
        let n_in = cols.len();
        for f in 0..self.fns.len() {
            let vals = done.iter().map(|p| p.values[f].clone().unwrap_or(ScalarValue::Null)).collect::<Vec<_>>();
            let target = self.schema.field(n_in + f).data_type();
            let arr =
                ScalarValue::iter_to_array(vals.into_iter().map(|v| v.cast_to(target).unwrap_or(ScalarValue::Null)))
                    .or_else(|_| {
                        Ok::<_, datafusion_common::DataFusionError>(arrow::array::new_null_array(target, done.len()))
                    })?;
            cols.push(arr);
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), cols)?))
    }
}

impl Operator for Over {
    fn name(&self) -> String {
        "over".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        if chunk.kinds.is_some() {
            return Err(EngineError::Internal("OVER on an updating stream".into()));
        }
        self.buffered.push(chunk.batch);
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        if self.buffered.is_empty() && wm != i64::MAX {
            return Ok(wm);
        }
        let (col, offset, whole) = match self.completion {
            Completion::ByRowTime { col, offset } => (col, offset, false),
            Completion::ByPartitionTime { col, offset } => (col, offset, true),
        };
        let w = wm.saturating_sub(offset);
        let mut done = Vec::new();
        if !self.buffered.is_empty() {
            let all = concat_batches(&self.buffered[0].schema(), &self.buffered)?;
            self.buffered.clear();
            let t = all.column(col).as_primitive::<TimestampMillisecondType>();
            let fin: Vec<bool> =
                (0..all.num_rows()).map(|i| wm == i64::MAX || (t.is_valid(i) && t.value(i) < w)).collect();
            let mask = arrow::array::BooleanArray::from(fin);
            let rest = arrow::compute::filter_record_batch(&all, &arrow::compute::not(&mask)?)?;
            if rest.num_rows() > 0 {
                self.buffered.push(rest);
            }
            let ready = arrow::compute::filter_record_batch(&all, &mask)?;
            if ready.num_rows() > 0 {
                let sorted = self.sort(&ready, col)?;
                self.evaluate(&sorted, whole, &mut done)?;
            }
        }
        if wm == i64::MAX {
            let mut parts: Vec<_> = self.parts.drain().collect();
            parts.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, mut p) in parts {
                self.flush_leads(&mut p, &mut done);
            }
        }
        if let Some(b) = self.output(done)? {
            out.push(Chunk::append(b));
        }
        // Rows still waiting for a LEAD successor are emitted later: hold the watermark below them.
        let mut held = wm;
        for p in self.parts.values() {
            if let Some(w) = p.waiting.front() {
                let t = w.row.column(col).as_primitive::<TimestampMillisecondType>();
                if t.is_valid(0) {
                    held = held.min(t.value(0).saturating_add(offset));
                }
            }
        }
        Ok(held)
    }

    fn state_bytes(&self) -> usize {
        let buffered: usize = self.buffered.iter().map(RecordBatch::get_array_memory_size).sum();
        buffered
            + self
                .parts
                .values()
                .map(|p| 64 + p.waiting.len() * 64 + p.frames.iter().map(VecDeque::len).sum::<usize>() * 32)
                .sum::<usize>()
    }

    fn checkpointable(&self) -> bool {
        true
    }

    /// Rows not yet final (as they came), then per partition (sorted by key): counters, then per
    /// function its accumulator's partial state (sliding MIN/MAX are rebuilt from the frame
    /// instead), frame contents and LAG history, then the rows waiting for a LEAD with the values
    /// they have so far.
    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.u64(self.buffered.len() as u64);
        for b in &self.buffered {
            w.batch(b)?;
        }
        let mut keys: Vec<Box<[u8]>> = self.parts.keys().cloned().collect();
        keys.sort();
        w.u64(keys.len() as u64);
        for key in keys {
            let fresh = (0..self.fns.len()).map(|f| self.new_acc(f)).collect::<Result<Vec<_>>>()?;
            let Some(p) = self.parts.get_mut(&key) else { continue };
            w.bytes(&key);
            w.u64(p.count);
            w.u64(p.dense);
            for (f, fresh) in fresh.into_iter().enumerate() {
                match (&mut p.accs[f], rebuilt_from_frame(&self.fns[f])) {
                    (Some(acc), false) => {
                        // Written, and merged into a fresh accumulator: the live one goes on
                        // exactly as a restored one would.
                        let state = acc
                            .state()?
                            .into_iter()
                            .map(|v| v.to_array())
                            .collect::<datafusion_common::Result<Vec<_>>>()?;
                        w.arrays(&state, 1)?;
                        if let Some(mut a) = fresh {
                            a.merge_batch(&state)?;
                            p.accs[f] = Some(a);
                        }
                    }
                    _ => w.arrays(&[], 0)?,
                }
                w.u64(p.frames[f].len() as u64);
                for (t, args) in &p.frames[f] {
                    w.i64(*t);
                    w.arrays(args, 1)?;
                }
                let lag: Vec<ScalarValue> = p.lag[f].iter().cloned().collect();
                let arrays = if lag.is_empty() { vec![] } else { vec![ScalarValue::iter_to_array(lag)?] };
                w.arrays(&arrays, p.lag[f].len())?;
            }
            w.u64(p.waiting.len() as u64);
            for pending in &p.waiting {
                w.batch(&pending.row)?;
                w.u64(pending.after as u64);
                for v in &pending.values {
                    w.bool(v.is_some());
                    let arrays = match v {
                        Some(v) => vec![v.to_array()?],
                        None => vec![],
                    };
                    w.arrays(&arrays, 1)?;
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        for _ in 0..r.count(16)? {
            self.buffered.push(r.batch()?);
        }
        for _ in 0..r.count(24)? {
            let key: Box<[u8]> = r.bytes()?.into();
            let mut p = self.new_part()?;
            p.count = r.u64()?;
            p.dense = r.u64()?;
            for f in 0..self.fns.len() {
                let (state, _) = r.arrays()?;
                if let Some(acc) = p.accs[f].as_mut() {
                    if !state.is_empty() {
                        acc.merge_batch(&state)?;
                    }
                }
                for _ in 0..r.count(16)? {
                    let t = r.i64()?;
                    let (args, _) = r.arrays()?;
                    if let Some(acc) = p.accs[f].as_mut().filter(|_| rebuilt_from_frame(&self.fns[f])) {
                        acc.update_batch(&args)?;
                    }
                    p.frames[f].push_back((t, args));
                }
                let (lag, n) = r.arrays()?;
                if let Some(a) = lag.first() {
                    for i in 0..n {
                        p.lag[f].push_back(ScalarValue::try_from_array(a, i)?);
                    }
                }
            }
            for _ in 0..r.count(16)? {
                let row = r.batch()?;
                let after = r.usize()?;
                let mut values = Vec::with_capacity(self.fns.len());
                for _ in 0..self.fns.len() {
                    let present = r.bool()?;
                    let (v, _) = r.arrays()?;
                    values.push(match (present, v.first()) {
                        (true, Some(a)) => Some(ScalarValue::try_from_array(a, 0)?),
                        (true, None) => return Err(r.err("a LEAD value without data")),
                        (false, _) => None,
                    });
                }
                p.waiting.push_back(Pending { row, values, after });
            }
            self.parts.insert(key, p);
        }
        Ok(())
    }
}

/// Whether function `f`'s accumulator is restored by feeding it its frame again rather than by
/// merging its partial state. Sliding MIN/MAX keep every candidate in the frame, which their
/// partial state (one value) does not hold; the others' state (sums, counts) continues exactly.
fn rebuilt_from_frame(f: &OverFn) -> bool {
    match f {
        OverFn::Agg { agg, frame: Frame::Rows(_) | Frame::Range(_), .. } => matches!(agg.fun().name(), "min" | "max"),
        _ => false,
    }
}

impl Over {
    /// Sorts final rows by partition, then ORDER BY (or event time), then arrival.
    fn sort(&self, batch: &RecordBatch, time_col: usize) -> Result<RecordBatch> {
        let parts = self.partition_rows(batch)?;
        let n = batch.num_rows();
        let order = match &self.order_conv {
            Some(c) => {
                let cols =
                    self.order_by.iter().map(|e| Ok(e.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<_>>>()?;
                Some(c.convert_columns(&cols)?)
            }
            None => None,
        };
        let t = batch.column(time_col).as_primitive::<TimestampMillisecondType>();
        let mut idx: Vec<u32> = (0..n as u32).collect();
        idx.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            parts.row(a).cmp(&parts.row(b)).then_with(|| match &order {
                Some(o) => o.row(a).cmp(&o.row(b)),
                None => t.value(a).cmp(&t.value(b)),
            })
        });
        Ok(arrow::compute::take_record_batch(batch, &UInt32Array::from(idx))?)
    }
}
