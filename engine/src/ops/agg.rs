//! What every aggregating operator shares: the compiled aggregate expressions, group keys encoded
//! with Arrow's row format, and two accumulator stores:
//! - [`GroupsAccs`]: DataFusion `GroupsAccumulator`s, one call per batch for all groups, emitted once
//!   (final results, `EMIT ON WINDOW CLOSE`);
//! - [`RowAccs`]: one `Accumulator` per group, which can be read again and again (updating results).
//!
//! Both add a group's rows one by one in arrival order, so that results (floating-point sums
//! above all) do not depend on batch boundaries.

use std::sync::Arc;

use arrow::array::{make_builder, Array, ArrayBuilder, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::GroupsAccumulatorAdapter;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;
use datafusion_physical_expr::PhysicalExpr;

use super::range_count::{self, Maker, RangeAccumulator};
use super::snapshot::{StateReader, StateWriter};
use super::{float_sum, range_prim};
use crate::error::{EngineError, Result};

/// Where a GROUP BY column of the output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCol {
    /// The i-th evaluated key.
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// Arrival numbers for an aggregation whose FIRST_VALUE / LAST_VALUE order by event time: the
/// spec breaks ties by arrival (first / last), and DataFusion's accumulators keep the first of
/// equal orderings, so each input row gets the next number as a second ordering column, appended
/// last. The next number is part of the operator's checkpointed state, so a recovered operator
/// numbers on where it left off.
pub struct Arrival {
    /// The input schema with the arrival column appended.
    pub schema: SchemaRef,
    next: std::sync::atomic::AtomicU64,
}

impl Arrival {
    pub fn new(schema: SchemaRef) -> Self {
        Arrival { schema, next: std::sync::atomic::AtomicU64::new(0) }
    }
}

/// A compiled `GROUP BY ... aggregates` over one input schema.
pub struct AggregateExprs {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_fields: Vec<FieldRef>,
    /// Output GROUP BY columns in order.
    pub group_layout: Vec<GroupCol>,
    pub aggs: Vec<Arc<AggregateFunctionExpr>>,
    /// Inputs of each aggregate: its arguments, then its ORDER BY expressions.
    pub args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    pub output: SchemaRef,
    /// Set when an aggregate orders by (event time, arrival).
    pub arrival: Option<Arrival>,
}

/// Keys and aggregate inputs of one batch, evaluated once.
pub struct Evaluated {
    pub keys: Rows,
    pub args: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
}

impl AggregateExprs {
    pub fn row_converter(&self) -> Result<RowConverter> {
        let mut fields: Vec<SortField> =
            self.key_fields.iter().map(|f| SortField::new(f.data_type().clone())).collect();
        if fields.is_empty() {
            // No GROUP BY keys: one constant key column, so that every row has the same key.
            fields.push(SortField::new(arrow::datatypes::DataType::Boolean));
        }
        Ok(RowConverter::new(fields)?)
    }

    /// The next arrival number, for a checkpoint (written only when arrivals are numbered).
    pub fn snapshot_arrival(&self, w: &mut StateWriter) {
        if let Some(a) = &self.arrival {
            w.u64(a.next.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    /// Restores the next arrival number (state written before arrivals were numbered has none:
    /// numbering starts at 0, and only ties with rows restored from it can break differently).
    pub fn restore_arrival(&self, r: &mut StateReader) -> Result<()> {
        if let Some(a) = &self.arrival {
            let next = if r.at_end() { 0 } else { r.u64()? };
            a.next.store(next, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn evaluate(&self, converter: &RowConverter, batch: &RecordBatch) -> Result<Evaluated> {
        let numbered;
        let batch = match &self.arrival {
            None => batch,
            Some(a) => {
                let n = batch.num_rows() as u64;
                let first = a.next.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                let mut cols = batch.columns().to_vec();
                cols.push(Arc::new(arrow::array::UInt64Array::from_iter_values(first..first + n)));
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                numbered = RecordBatch::try_new_with_options(a.schema.clone(), cols, &options)?;
                &numbered
            }
        };
        let n = batch.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> { Ok(e.evaluate(batch)?.into_array(n)?) };
        let key_cols = self.keys.iter().map(eval).collect::<Result<Vec<_>>>()?;
        let keys = if key_cols.is_empty() {
            converter.convert_columns(&[super::constant_key(n)])?
        } else {
            converter.convert_columns(&key_cols)?
        };
        let args =
            self.args.iter().map(|a| a.iter().map(eval).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(f) => {
                    let v = eval(f)?;
                    let b = v.as_boolean_opt().ok_or_else(|| EngineError::Internal("FILTER is not BOOLEAN".into()))?;
                    Ok(Some(crate::ops::null_as_false(b)))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Evaluated { keys, args, filters })
    }

    /// Builds output rows from group columns and aggregate values.
    pub fn output_batch(
        &self,
        key_cols: Vec<ArrayRef>,
        window: Option<(ArrayRef, ArrayRef)>,
        values: Vec<ArrayRef>,
        num_rows: usize,
    ) -> Result<RecordBatch> {
        let mut cols = Vec::with_capacity(self.output.fields().len());
        for g in &self.group_layout {
            cols.push(match g {
                GroupCol::Key(i) => key_cols[*i].clone(),
                GroupCol::WindowStart => window.as_ref().map(|w| w.0.clone()).ok_or_else(no_window)?,
                GroupCol::WindowEnd => window.as_ref().map(|w| w.1.clone()).ok_or_else(no_window)?,
            });
        }
        cols.extend(values);
        // Aggregate results may differ in nullability from the planned schema; cast where needed.
        let cols = cols
            .into_iter()
            .zip(self.output.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow::compute::cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(num_rows));
        Ok(RecordBatch::try_new_with_options(self.output.clone(), cols, &options)?)
    }
}

fn no_window() -> EngineError {
    EngineError::Internal("window columns requested from a non-windowed aggregate".into())
}

/// Group keys of one state (a window, or all of a non-windowed aggregate) mapped to dense indices.
///
/// Keys live back to back in one byte arena, so a group costs no allocation of its own (with
/// many groups, allocating and freeing one or two boxes per key cost more than the lookups).
#[derive(Default)]
pub struct GroupIndex {
    /// Group indices, found by their key's hash and compared by their bytes in `bytes`.
    table: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    /// Every group's key bytes, in index order.
    bytes: Vec<u8>,
    /// `ends[g]`: where group `g`'s key ends in `bytes` (it starts where `g - 1`'s ends).
    ends: Vec<usize>,
}

impl GroupIndex {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn key(&self, g: usize) -> &[u8] {
        key_in(&self.bytes, &self.ends, g)
    }

    #[inline]
    pub fn intern(&mut self, key: &[u8]) -> usize {
        let hash = self.hasher.hash_one(key);
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        let key_of = |g: &u32| key_in(bytes, ends, *g as usize);
        match self.table.entry(hash, |g| key_of(g) == key, |g| hasher.hash_one(key_of(g))) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get() as usize,
            hashbrown::hash_table::Entry::Vacant(e) => {
                let g = ends.len();
                e.insert(g as u32);
                self.bytes.extend_from_slice(key);
                self.ends.push(self.bytes.len());
                g
            }
        }
    }

    /// Key columns of `groups` (all groups, in index order, when `None`).
    pub fn key_columns(&self, converter: &RowConverter, groups: Option<&[u32]>) -> Result<Vec<ArrayRef>> {
        let parser = converter.parser();
        let rows: Vec<_> = match groups {
            None => (0..self.len()).map(|g| parser.parse(self.key(g))).collect(),
            Some(g) => g.iter().map(|&i| parser.parse(self.key(i as usize))).collect(),
        };
        Ok(converter.convert_rows(rows)?)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * size_of::<usize>() + self.table.capacity() * 5
    }
}

/// Group `g`'s key in a [`GroupIndex`]'s arena.
fn key_in<'a>(bytes: &'a [u8], ends: &[usize], g: usize) -> &'a [u8] {
    let start = if g == 0 { 0 } else { ends[g - 1] };
    &bytes[start..ends[g]]
}

fn take_all(arrays: &[ArrayRef], rows: Option<&UInt32Array>) -> Result<Vec<ArrayRef>> {
    match rows {
        None => Ok(arrays.to_vec()),
        Some(r) => arrays.iter().map(|a| Ok(arrow::compute::take(a, r, None)?)).collect(),
    }
}

fn take_filter(f: &Option<BooleanArray>, rows: Option<&UInt32Array>) -> Result<Option<BooleanArray>> {
    match (f, rows) {
        (None, _) => Ok(None),
        (Some(f), None) => Ok(Some(f.clone())),
        (Some(f), Some(r)) => Ok(Some(arrow::compute::take(f, r, None)?.as_boolean().clone())),
    }
}

/// One `GroupsAccumulator` per aggregate; results are read once.
pub struct GroupsAccs {
    accs: Vec<Box<dyn GroupsAccumulator>>,
}

impl GroupsAccs {
    pub fn new(exprs: &AggregateExprs) -> Result<Self> {
        let accs = exprs
            .aggs
            .iter()
            .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    Ok(a.create_groups_accumulator()?)
                } else {
                    let a = a.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || a.create_accumulator())))
                }
            })
            .collect::<Result<_>>()?;
        Ok(GroupsAccs { accs })
    }

    /// Adds the rows `rows` (all rows when `None`) of `input`; `groups[i]` is the group of the i-th row.
    pub fn update(
        &mut self,
        input: &Evaluated,
        rows: Option<&UInt32Array>,
        groups: &[usize],
        total: usize,
    ) -> Result<()> {
        for (i, acc) in self.accs.iter_mut().enumerate() {
            let args = take_all(&input.args[i], rows)?;
            let filter = take_filter(&input.filters[i], rows)?;
            acc.update_batch(&args, groups, filter.as_ref(), total)?;
        }
        Ok(())
    }

    /// Final values of all groups, in group index order.
    pub fn evaluate(&mut self) -> Result<Vec<ArrayRef>> {
        self.accs.iter_mut().map(|a| Ok(a.evaluate(EmitTo::All)?)).collect()
    }

    pub fn bytes(&self) -> usize {
        self.accs.iter().map(|a| a.size()).sum()
    }

    /// Every group's partial state, per aggregate; the accumulators are left empty.
    pub fn take_state(&mut self) -> Result<Vec<Vec<ArrayRef>>> {
        self.accs.iter_mut().map(|a| Ok(a.state(EmitTo::All)?)).collect()
    }

    /// Folds rows `rows` of `state` (from [`GroupsAccs::take_state`]) into groups, in row order:
    /// the i-th taken row into `groups[i]`.
    pub fn merge(&mut self, state: &[Vec<ArrayRef>], rows: &UInt32Array, groups: &[usize], total: usize) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        for (acc, state) in self.accs.iter_mut().zip(state) {
            let taken = take_all(state, Some(rows))?;
            acc.merge_batch(&taken, groups, total)?;
        }
        Ok(())
    }
}

/// One group's accumulator for one aggregate.
pub enum GroupAcc {
    /// Takes a range of the gathered input in place: [`range_count`]'s, [`range_prim`]'s or
    /// [`float_sum`]'s.
    Range(Box<dyn RangeAccumulator>),
    /// Takes slices, fed one row at a time where an argument is a float: DataFusion's.
    Slices(Box<dyn Accumulator>),
}

impl GroupAcc {
    pub fn acc(&mut self) -> &mut dyn Accumulator {
        match self {
            GroupAcc::Range(a) => a.as_mut(),
            GroupAcc::Slices(a) => a.as_mut(),
        }
    }

    fn size(&self) -> usize {
        match self {
            GroupAcc::Range(a) => a.size(),
            GroupAcc::Slices(a) => a.size(),
        }
    }
}

/// One `Accumulator` per group and aggregate; values can be read any number of times.
#[derive(Default)]
pub struct RowAccs {
    /// `[group][aggregate]`
    accs: Vec<Vec<GroupAcc>>,
    /// Per aggregate, set on the first update (the aggregates never change).
    makers: Vec<Option<Maker>>,
    scratch: UpdateScratch,
}

/// [`RowAccs::update`]'s buffers, kept from batch to batch.
#[derive(Default)]
struct UpdateScratch {
    order: Vec<u32>,
    runs: Vec<(usize, usize)>,
    slices: Vec<ArrayRef>,
}

impl RowAccs {
    pub fn len(&self) -> usize {
        self.accs.len()
    }

    /// Per aggregate, the maker of its range accumulators: [`range_count`]'s for `COUNT` and
    /// `COUNT(DISTINCT BIGINT)`, [`range_prim`]'s for `SUM(BIGINT)` and integer or timestamp
    /// `MIN`/`MAX`, [`float_sum`]'s for `SUM`/`AVG` over DOUBLE; `None` for DataFusion's own.
    pub fn makers(exprs: &AggregateExprs) -> Vec<Option<Maker>> {
        let maker = |a: &Arc<AggregateFunctionExpr>| {
            range_count::maker(a).or_else(|| range_prim::maker(a)).or_else(|| float_sum::maker(a))
        };
        exprs.aggs.iter().map(maker).collect()
    }

    /// One group's accumulators, from [`RowAccs::makers`] of the same `exprs`.
    pub fn new_group(exprs: &AggregateExprs, makers: &[Option<Maker>]) -> Result<Vec<GroupAcc>> {
        debug_assert_eq!(exprs.aggs.len(), makers.len());
        exprs
            .aggs
            .iter()
            .zip(makers)
            .map(|(a, maker)| match maker {
                Some(make) => Ok(GroupAcc::Range(make())),
                None => Ok(GroupAcc::Slices(a.create_accumulator()?)),
            })
            .collect()
    }

    /// Adds rows to groups: `rows[i]` of `input` belongs to group `groups[i]`; each group takes
    /// its rows in their order in `rows`.
    ///
    /// Per aggregate, the rows it takes (its `FILTER` applied) are gathered once in group order,
    /// and each group's accumulator gets a slice of them: one `take` per aggregate and batch, not
    /// one `take` and one `filter` per aggregate and group, which with many small groups per
    /// batch (an updating `GROUP BY` over many keys) cost more than the aggregation itself.
    pub fn update(&mut self, exprs: &AggregateExprs, input: &Evaluated, rows: &[u32], groups: &[usize]) -> Result<()> {
        debug_assert_eq!(rows.len(), groups.len());
        let needed = groups.iter().copied().max().map(|m| m + 1).unwrap_or(0);
        if self.makers.len() != exprs.aggs.len() {
            self.makers = Self::makers(exprs);
        }
        while self.accs.len() < needed {
            self.accs.push(Self::new_group(exprs, &self.makers)?);
        }
        // Positions in `rows`, by group; the sort is stable, so a group's rows keep their order.
        let order = &mut self.scratch.order;
        order.clear();
        order.extend(0..rows.len() as u32);
        order.sort_by_key(|&i| groups[i as usize]);
        for (a, (args, filter)) in input.args.iter().zip(&input.filters).enumerate() {
            // This aggregate's input rows in group order, and (group, end in `taken`) per run.
            let mut taken_rows = Vec::with_capacity(order.len());
            let runs = &mut self.scratch.runs;
            runs.clear();
            for &i in order.iter() {
                let row = rows[i as usize];
                // FILTER keeps the rows where it is true (NULL is not).
                if filter.as_ref().is_some_and(|f| !(f.is_valid(row as usize) && f.value(row as usize))) {
                    continue;
                }
                taken_rows.push(row);
                let g = groups[i as usize];
                match runs.last_mut() {
                    Some((last, end)) if *last == g => *end += 1,
                    _ => runs.push((g, taken_rows.len())),
                }
            }
            if taken_rows.is_empty() {
                continue;
            }
            let taken = take_all(args, Some(&UInt32Array::from(taken_rows)))?;
            let one = &mut self.scratch.slices;
            let mut start = 0;
            for &(g, end) in runs.iter() {
                match &mut self.accs[g][a] {
                    GroupAcc::Range(acc) => acc.update_range(&taken, start, end - start)?,
                    GroupAcc::Slices(acc) => {
                        one.clear();
                        one.extend(taken.iter().map(|c| c.slice(start, end - start)));
                        update_in_order(acc.as_mut(), one)?;
                    }
                }
                start = end;
            }
        }
        Ok(())
    }

    /// Current values of `groups`, one column per aggregate.
    ///
    /// Group by group, so that each group's accumulators (made together, so near each other in
    /// memory) are read while in cache, rather than once per aggregate. Range accumulators append
    /// to a builder of the result type; DataFusion's give `ScalarValue`s.
    pub fn evaluate(&mut self, exprs: &AggregateExprs, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        enum Column {
            Built(Box<dyn ArrayBuilder>),
            Scalars(Vec<ScalarValue>),
        }
        let first = groups.first().map(|&g| &self.accs[g as usize]);
        let mut columns: Vec<Column> = exprs
            .aggs
            .iter()
            .enumerate()
            .map(|(a, agg)| match first.map(|accs| &accs[a]) {
                Some(GroupAcc::Range(_)) => Column::Built(make_builder(agg.field().data_type(), groups.len())),
                _ => Column::Scalars(Vec::with_capacity(groups.len())),
            })
            .collect();
        for &g in groups {
            for (acc, column) in self.accs[g as usize].iter_mut().zip(columns.iter_mut()) {
                let appended = match (column, acc) {
                    (Column::Built(b), GroupAcc::Range(acc)) => acc.append_value(b.as_any_mut()),
                    (Column::Scalars(values), acc) => {
                        values.push(acc.acc().evaluate()?);
                        true
                    }
                    _ => false,
                };
                // An aggregate's groups all have accumulators from one maker, whose results are of
                // the aggregate's type.
                if !appended {
                    return Err(EngineError::Internal("an aggregate's groups differ in accumulator".into()));
                }
            }
        }
        columns
            .into_iter()
            .zip(&exprs.aggs)
            .map(|(column, agg)| {
                Ok(match column {
                    Column::Built(mut b) => b.finish(),
                    Column::Scalars(values) if values.is_empty() => {
                        arrow::array::new_empty_array(agg.field().data_type())
                    }
                    Column::Scalars(values) => ScalarValue::iter_to_array(values)?,
                })
            })
            .collect()
    }

    pub fn bytes(&self) -> usize {
        self.accs.iter().flatten().map(GroupAcc::size).sum()
    }
}

/// Adds rows `idx` of `input` to one group's accumulators, in `idx` order: what
/// [`RowAccs::update`] does for one group, kept as the plain form for tests to compare with.
#[cfg(test)]
pub fn update_group(accs: &mut [GroupAcc], input: &Evaluated, idx: &UInt32Array) -> Result<()> {
    for (a, acc) in accs.iter_mut().enumerate() {
        let mut args = take_all(&input.args[a], Some(idx))?;
        if let Some(f) = take_filter(&input.filters[a], Some(idx))? {
            args = args.iter().map(|c| Ok(arrow::compute::filter(c, &f)?)).collect::<Result<_>>()?;
        }
        update_in_order(acc.acc(), &args)?;
    }
    Ok(())
}

/// `update_batch`, but adding floating-point values one at a time. DataFusion's `Accumulator`s
/// sum a batch as a block (in lanes) and then add the block, so with floats the result would
/// move with batch boundaries; `GroupsAccumulator`s add row by row, and this keeps both equal.
fn update_in_order(acc: &mut dyn Accumulator, args: &[ArrayRef]) -> Result<()> {
    let rows = args.first().map_or(0, |a| a.len());
    if rows <= 1 || !args.iter().any(|a| a.data_type().is_floating()) {
        return Ok(acc.update_batch(args)?);
    }
    let mut one = Vec::with_capacity(args.len());
    for i in 0..rows {
        one.clear();
        one.extend(args.iter().map(|a| a.slice(i, 1)));
        acc.update_batch(&one)?;
    }
    Ok(())
}

impl GroupIndex {
    pub fn snapshot(&self, w: &mut StateWriter) {
        w.u64(self.len() as u64);
        (0..self.len()).for_each(|g| w.bytes(self.key(g)));
    }

    pub fn restore(r: &mut StateReader) -> Result<Self> {
        let mut g = GroupIndex::default();
        for _ in 0..r.count(8)? {
            g.intern(r.bytes()?);
        }
        Ok(g)
    }
}

impl GroupsAccs {
    /// Writes every group's partial state. Taking the state resets a `GroupsAccumulator`, so it is
    /// merged straight back.
    pub fn snapshot(&mut self, groups: usize, w: &mut StateWriter) -> Result<()> {
        let all: Vec<usize> = (0..groups).collect();
        for acc in &mut self.accs {
            let state = acc.state(EmitTo::All)?;
            w.arrays(&state, groups)?;
            if groups > 0 {
                acc.merge_batch(&state, &all, groups)?;
            }
        }
        Ok(())
    }

    /// Rebuilds `n` groups from states written by [`snapshot_groups`] (one `Accumulator` per
    /// group: its state has the same fields as the `GroupsAccumulator`'s).
    pub fn restore_row_states(exprs: &AggregateExprs, n: usize, r: &mut StateReader) -> Result<Self> {
        let aggs = r.count(8)?;
        if n == 0 {
            // `snapshot_groups` writes no states for no groups.
            return GroupsAccs::new(exprs);
        }
        if aggs != exprs.aggs.len() {
            return Err(r.err("an aggregate count mismatch"));
        }
        GroupsAccs::restore(exprs, n, r)
    }

    pub fn restore(exprs: &AggregateExprs, groups: usize, r: &mut StateReader) -> Result<Self> {
        let mut accs = GroupsAccs::new(exprs)?;
        let all: Vec<usize> = (0..groups).collect();
        for acc in &mut accs.accs {
            let (state, rows) = r.arrays()?;
            if rows != groups {
                return Err(r.err("a group count mismatch"));
            }
            if groups > 0 {
                acc.merge_batch(&state, &all, groups)?;
            }
        }
        Ok(accs)
    }
}

impl RowAccs {
    pub fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.u64(self.accs.len() as u64);
        let n = self.accs.len();
        snapshot_groups(self.accs.iter_mut(), n, w)
    }

    pub fn restore(exprs: &AggregateExprs, r: &mut StateReader) -> Result<Self> {
        let n = r.count(0)?;
        let makers = Self::makers(exprs);
        Ok(RowAccs { accs: restore_groups(exprs, &makers, n, r)?, makers, scratch: UpdateScratch::default() })
    }
}

/// Writes the partial states of `n` groups of per-group accumulators, one IPC batch per aggregate.
pub fn snapshot_groups<'a>(
    groups: impl Iterator<Item = &'a mut Vec<GroupAcc>>,
    n: usize,
    w: &mut StateWriter,
) -> Result<()> {
    let mut per_agg: Vec<Vec<Vec<ScalarValue>>> = Vec::new();
    for accs in groups {
        if per_agg.is_empty() {
            per_agg = (0..accs.len()).map(|_| Vec::new()).collect();
        }
        for (a, acc) in accs.iter_mut().enumerate() {
            let st = acc.acc().state()?;
            if per_agg[a].is_empty() {
                per_agg[a] = st.iter().map(|_| Vec::with_capacity(n)).collect();
            }
            for (j, v) in st.into_iter().enumerate() {
                per_agg[a][j].push(v);
            }
        }
    }
    w.u64(per_agg.len() as u64);
    for fields in per_agg {
        let arrays =
            fields.into_iter().map(|vals| Ok(ScalarValue::iter_to_array(vals)?)).collect::<Result<Vec<_>>>()?;
        w.arrays(&arrays, n)?;
    }
    Ok(())
}

/// Rebuilds `n` groups written by [`snapshot_groups`]: fresh accumulators merged with their state.
pub fn restore_groups(
    exprs: &AggregateExprs,
    makers: &[Option<Maker>],
    n: usize,
    r: &mut StateReader,
) -> Result<Vec<Vec<GroupAcc>>> {
    let mut groups = (0..n).map(|_| RowAccs::new_group(exprs, makers)).collect::<Result<Vec<_>>>()?;
    let aggs = r.count(8)?;
    if n > 0 && aggs != exprs.aggs.len() {
        return Err(r.err("an aggregate count mismatch"));
    }
    for a in 0..aggs {
        let (state, rows) = r.arrays()?;
        if rows != n {
            return Err(r.err("a group count mismatch"));
        }
        for (g, accs) in groups.iter_mut().enumerate() {
            let slices: Vec<ArrayRef> = state.iter().map(|s| s.slice(g, 1)).collect();
            accs[a].acc().merge_batch(&slices)?;
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion_functions_aggregate::min_max::{max_udaf, min_udaf};
    use datafusion_functions_aggregate::{average::avg_udaf, count::count_udaf, sum::sum_udaf};
    use datafusion_physical_expr::aggregate::AggregateExprBuilder;
    use datafusion_physical_expr::expressions::col;
    use proptest::prelude::*;

    use super::*;

    /// `SUM(v), SUM(v) FILTER (WHERE f), COUNT(DISTINCT x) FILTER (WHERE f), COUNT(x),
    /// AVG(v) FILTER (WHERE f), SUM(x), MIN(x) FILTER (WHERE f), MAX(x), MIN(v)`: every kind of
    /// range accumulator, and one of DataFusion's (`MIN` over DOUBLE). The filters are given as
    /// evaluated columns, so only the aggregates are built here.
    fn exprs() -> AggregateExprs {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("x", DataType::Int64, true),
        ]));
        let (v, x) = (col("v", &schema).unwrap(), col("x", &schema).unwrap());
        let build =
            |b: AggregateExprBuilder, alias: &str| Arc::new(b.schema(schema.clone()).alias(alias).build().unwrap());
        let aggs = vec![
            build(AggregateExprBuilder::new(sum_udaf(), vec![v.clone()]), "s"),
            build(AggregateExprBuilder::new(sum_udaf(), vec![v.clone()]), "sf"),
            build(AggregateExprBuilder::new(count_udaf(), vec![x.clone()]).distinct(), "df"),
            build(AggregateExprBuilder::new(count_udaf(), vec![x.clone()]), "c"),
            build(AggregateExprBuilder::new(avg_udaf(), vec![v.clone()]), "af"),
            build(AggregateExprBuilder::new(sum_udaf(), vec![x.clone()]), "si"),
            build(AggregateExprBuilder::new(min_udaf(), vec![x.clone()]), "mi"),
            build(AggregateExprBuilder::new(max_udaf(), vec![x.clone()]), "ma"),
            build(AggregateExprBuilder::new(min_udaf(), vec![v.clone()]), "mv"),
        ];
        AggregateExprs {
            keys: vec![],
            key_fields: vec![],
            group_layout: vec![],
            args: per_aggregate(v, x),
            filters: vec![None; aggs.len()],
            aggs,
            output: schema,
            arrival: None,
        }
    }

    /// The arguments of [`exprs`]' aggregates, in order, given `v`'s and `x`'s.
    fn per_aggregate<T: Clone>(v: T, x: T) -> Vec<Vec<T>> {
        [&v, &v, &x, &x, &v, &x, &x, &x, &v].into_iter().map(|a| vec![a.clone()]).collect()
    }

    fn values(accs: &mut RowAccs, groups: usize) -> Vec<Vec<ScalarValue>> {
        (0..groups).map(|g| accs.accs[g].iter_mut().map(|a| a.acc().evaluate().unwrap()).collect()).collect()
    }

    proptest::proptest! {
        /// Gathering an aggregate's rows once per batch gives every group what taking its own
        /// rows (and filtering them) and feeding them one at a time to DataFusion's accumulators
        /// gives it: the same rows in the same order, so even float sums and averages agree to
        /// the bit. Over two batches, with rows in any order and some left out.
        #[test]
        fn gathered_updates_equal_one_group_at_a_time(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::option::of(-1e12f64..1e12), proptest::option::of(0i64..6),
                     proptest::option::of(any::<bool>()), 0usize..5, any::<bool>()),
                    0..40,
                ).prop_shuffle(),
                2,
            ),
        ) {
            let exprs = exprs();
            let converter = exprs.row_converter().unwrap();
            let (mut gathered, mut plain) = (RowAccs::default(), RowAccs::default());
            for rows in &batches {
                let v = Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.0))) as ArrayRef;
                let x = Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1))) as ArrayRef;
                let f = BooleanArray::from_iter(rows.iter().map(|r| r.2));
                let input = Evaluated {
                    keys: converter.empty_rows(0, 0),
                    args: per_aggregate(v, x),
                    filters: vec![
                        None, Some(f.clone()), Some(f.clone()), None, Some(f.clone()), None, Some(f), None, None,
                    ],
                };
                // Rows taken (the last field) in batch order, with their groups.
                let taken: Vec<u32> = (0..rows.len() as u32).filter(|&i| rows[i as usize].4).collect();
                let groups: Vec<usize> = taken.iter().map(|&i| rows[i as usize].3).collect();
                gathered.update(&exprs, &input, &taken, &groups).unwrap();
                for g in 0..5 {
                    while plain.accs.len() <= g {
                        plain.accs.push(exprs.aggs.iter().map(|a| GroupAcc::Slices(a.create_accumulator().unwrap())).collect());
                    }
                    let idx: Vec<u32> = taken.iter().zip(&groups).filter(|(_, &gi)| gi == g).map(|(&i, _)| i).collect();
                    update_group(&mut plain.accs[g], &input, &UInt32Array::from(idx)).unwrap();
                }
            }
            let n = gathered.len();
            let expected = values(&mut plain, 5);
            prop_assert_eq!(values(&mut gathered, n), expected[..n].to_vec());
            // Result columns, built by the range accumulators and from DataFusion's scalars, for
            // groups in another order than made.
            let some: Vec<u32> = (0..n as u32).rev().collect();
            let (built, scalars) = (gathered.evaluate(&exprs, &some).unwrap(), plain.evaluate(&exprs, &some).unwrap());
            for (b, s) in built.iter().zip(&scalars) {
                prop_assert_eq!(b.as_ref(), s.as_ref());
            }
            // Groups past the last one updated hold nothing.
            let first = RowAccs::new_group(&exprs, &RowAccs::makers(&exprs)).unwrap();
            let empty = values(&mut RowAccs { accs: vec![first], ..Default::default() }, 1);
            prop_assert!(expected[n..].iter().all(|g| *g == empty[0]));
        }
    }
}
