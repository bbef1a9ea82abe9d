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
use arrow::datatypes::{FieldRef, Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::GroupsAccumulatorAdapter;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;
use datafusion_physical_expr::PhysicalExpr;

use super::range_count::{self, append_primitive, Maker, RangeAccumulator};
use super::shared_distinct::{SharedDistinct, MAX_MEMBERS};
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
    /// The set of the `COUNT(DISTINCT)` aggregates that share its argument ([`AccKind::Distinct`]),
    /// held by the first of them, member 0.
    Distinct(Box<SharedDistinct>),
    /// Another of them: member `member` of the set that aggregate `leader` holds.
    Member { leader: usize, member: usize },
}

impl GroupAcc {
    /// The accumulator, or `None` for a shared `COUNT(DISTINCT)` (see [`shared_set`]).
    pub fn acc(&mut self) -> Option<&mut dyn Accumulator> {
        match self {
            GroupAcc::Range(a) => Some(a.as_mut()),
            GroupAcc::Slices(a) => Some(a.as_mut()),
            GroupAcc::Distinct(_) | GroupAcc::Member { .. } => None,
        }
    }

    fn size(&self) -> usize {
        match self {
            GroupAcc::Range(a) => a.size(),
            GroupAcc::Slices(a) => a.size(),
            GroupAcc::Distinct(s) => s.size(),
            GroupAcc::Member { .. } => 0,
        }
    }
}

/// How every group's accumulator for one aggregate is made; decided once per aggregate
/// (deciding reads state fields, which DataFusion builds anew on every call).
#[derive(Clone)]
pub enum AccKind {
    DataFusion,
    /// [`range_count`]'s, [`range_prim`]'s or [`float_sum`]'s.
    Range(Maker),
    /// The first of several `COUNT(DISTINCT BIGINT)` over one argument, differing in `FILTER`:
    /// it holds their set. `members` are those aggregates, this one first; member `m` has bit `m`.
    Distinct {
        members: Arc<[usize]>,
    },
    /// Another of them.
    Member {
        leader: usize,
        member: usize,
    },
}

/// Where aggregate `a`'s shared `COUNT(DISTINCT)` set is: the aggregate that holds it, and `a`'s
/// member number there.
fn set_place(accs: &[GroupAcc], a: usize) -> Option<(usize, usize)> {
    match accs.get(a)? {
        GroupAcc::Distinct(_) => Some((a, 0)),
        GroupAcc::Member { leader, member } => Some((*leader, *member)),
        _ => None,
    }
}

/// Aggregate `a`'s shared `COUNT(DISTINCT)` set and its member number there, if it has one.
fn shared_set(accs: &[GroupAcc], a: usize) -> Option<(&SharedDistinct, usize)> {
    let (leader, member) = set_place(accs, a)?;
    match accs.get(leader)? {
        GroupAcc::Distinct(set) => Some((set, member)),
        _ => None,
    }
}

/// [`shared_set`], to change.
fn shared_set_mut(accs: &mut [GroupAcc], a: usize) -> Option<(&mut SharedDistinct, usize)> {
    let (leader, member) = set_place(accs, a)?;
    match accs.get_mut(leader)? {
        GroupAcc::Distinct(set) => Some((set, member)),
        _ => None,
    }
}

/// A member whose set is not where [`AccKind::Member`] says: a bug in making the group.
fn lost_set() -> EngineError {
    EngineError::Internal("a shared COUNT(DISTINCT) member without its set".into())
}

/// The accumulator of aggregate `a` of a group that is not in a shared set.
fn own_acc(accs: &mut [GroupAcc], a: usize) -> Result<&mut dyn Accumulator> {
    accs[a].acc().ok_or_else(lost_set)
}

/// Aggregate `a`'s current value in one group.
fn evaluate_one(accs: &mut [GroupAcc], a: usize) -> Result<ScalarValue> {
    match shared_set(accs, a) {
        Some((set, m)) => Ok(ScalarValue::Int64(Some(set.count(m)))),
        None => Ok(own_acc(accs, a)?.evaluate()?),
    }
}

/// Aggregate `a`'s partial state in one group (DataFusion's fields).
fn state_one(accs: &mut [GroupAcc], a: usize) -> Result<Vec<ScalarValue>> {
    match shared_set(accs, a) {
        Some((set, m)) => Ok(vec![set.state(m)]),
        None => Ok(own_acc(accs, a)?.state()?),
    }
}

/// Folds partial states of aggregate `a` into one group.
fn merge_one(accs: &mut [GroupAcc], a: usize, states: &[ArrayRef]) -> Result<()> {
    match shared_set_mut(accs, a) {
        Some((set, m)) => set.merge(m, states),
        None => Ok(own_acc(accs, a)?.merge_batch(states)?),
    }
}

/// Adds rows to the shared `COUNT(DISTINCT)` sets of aggregate `leader` ([`AccKind::Distinct`]):
/// each row once, with the bits of the members whose `FILTER` takes it. A set has no order, so
/// rows go in as they come, not group by group.
fn update_distinct(
    accs: &mut [Vec<GroupAcc>],
    leader: usize,
    members: &[usize],
    input: &Evaluated,
    rows: &[u32],
    groups: &[usize],
) -> Result<()> {
    // The members' arguments are one expression, so the leader's values are all of theirs.
    let values = input.args[leader][0]
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| range_count::wrong_type("COUNT(DISTINCT)"))?;
    for (&row, &g) in rows.iter().zip(groups) {
        let row = row as usize;
        if values.is_null(row) {
            continue;
        }
        let mut mask = 0u32;
        for (m, &a) in members.iter().enumerate() {
            // FILTER keeps the rows where it is true (NULL is not).
            if input.filters[a].as_ref().is_none_or(|f| f.is_valid(row) && f.value(row)) {
                mask |= 1 << m;
            }
        }
        if mask == 0 {
            continue;
        }
        match &mut accs[g][leader] {
            GroupAcc::Distinct(set) => set.insert(values.value(row), mask),
            _ => return Err(lost_set()),
        }
    }
    Ok(())
}

/// One `Accumulator` per group and aggregate; values can be read any number of times.
#[derive(Default)]
pub struct RowAccs {
    /// `[group][aggregate]`
    accs: Vec<Vec<GroupAcc>>,
    /// Per aggregate, set on the first update (the aggregates never change).
    kinds: Vec<AccKind>,
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

    /// Per aggregate, how its accumulators are made: [`range_count`]'s for `COUNT` and
    /// `COUNT(DISTINCT BIGINT)`, [`range_prim`]'s for `SUM(BIGINT)` and integer, timestamp or
    /// VARCHAR `MIN`/`MAX`, [`float_sum`]'s for `SUM`/`AVG` over DOUBLE, DataFusion's for the rest;
    /// `COUNT(DISTINCT BIGINT)`s over one argument share a set, up to [`MAX_MEMBERS`] to a set.
    pub fn kinds(exprs: &AggregateExprs) -> Vec<AccKind> {
        let maker = |a: &Arc<AggregateFunctionExpr>| {
            range_count::maker(a).or_else(|| range_prim::maker(a)).or_else(|| float_sum::maker(a))
        };
        let mut kinds: Vec<AccKind> =
            exprs.aggs.iter().map(|a| maker(a).map_or(AccKind::DataFusion, AccKind::Range)).collect();
        let distinct = |kinds: &[AccKind], a: usize| {
            matches!(kinds[a], AccKind::Range(_)) && range_count::is_distinct_bigint(&exprs.aggs[a])
        };
        for a in 0..kinds.len() {
            if !distinct(&kinds, a) {
                continue;
            }
            let members: Vec<usize> = (a..kinds.len())
                .filter(|&b| distinct(&kinds, b) && exprs.args[b] == exprs.args[a])
                .take(MAX_MEMBERS)
                .collect();
            if members.len() < 2 {
                continue;
            }
            for (member, &b) in members.iter().enumerate().skip(1) {
                kinds[b] = AccKind::Member { leader: a, member };
            }
            kinds[a] = AccKind::Distinct { members: members.into() };
        }
        kinds
    }

    /// One group's accumulators, from [`RowAccs::kinds`] of the same `exprs`.
    pub fn new_group(exprs: &AggregateExprs, kinds: &[AccKind]) -> Result<Vec<GroupAcc>> {
        debug_assert_eq!(exprs.aggs.len(), kinds.len());
        exprs
            .aggs
            .iter()
            .zip(kinds)
            .map(|(a, kind)| {
                Ok(match kind {
                    AccKind::DataFusion => GroupAcc::Slices(a.create_accumulator()?),
                    AccKind::Range(make) => GroupAcc::Range(make()),
                    AccKind::Distinct { members } => GroupAcc::Distinct(Box::new(SharedDistinct::new(members.len()))),
                    AccKind::Member { leader, member } => GroupAcc::Member { leader: *leader, member: *member },
                })
            })
            .collect()
    }

    /// Makes accumulators for groups up to `groups` (not counting), with no rows yet.
    pub fn add_groups(&mut self, exprs: &AggregateExprs, groups: usize) -> Result<()> {
        if self.kinds.len() != exprs.aggs.len() {
            self.kinds = Self::kinds(exprs);
        }
        while self.accs.len() < groups {
            self.accs.push(Self::new_group(exprs, &self.kinds)?);
        }
        Ok(())
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
        self.add_groups(exprs, needed)?;
        // Positions in `rows`, by group; the sort is stable, so a group's rows keep their order.
        let order = &mut self.scratch.order;
        order.clear();
        order.extend(0..rows.len() as u32);
        order.sort_by_key(|&i| groups[i as usize]);
        for (a, (args, filter)) in input.args.iter().zip(&input.filters).enumerate() {
            match &self.kinds[a] {
                AccKind::Distinct { members } => {
                    update_distinct(&mut self.accs, a, members, input, rows, groups)?;
                    continue;
                }
                AccKind::Member { .. } => continue,
                AccKind::DataFusion | AccKind::Range(_) => {}
            }
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
                    GroupAcc::Distinct(_) | GroupAcc::Member { .. } => return Err(lost_set()),
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
                Some(GroupAcc::Range(_) | GroupAcc::Distinct(_) | GroupAcc::Member { .. }) => {
                    Column::Built(make_builder(agg.field().data_type(), groups.len()))
                }
                _ => Column::Scalars(Vec::with_capacity(groups.len())),
            })
            .collect();
        for &g in groups {
            let accs = &mut self.accs[g as usize];
            for (a, column) in columns.iter_mut().enumerate() {
                let appended = match (column, shared_set(accs, a)) {
                    (Column::Built(b), Some((set, m))) => {
                        append_primitive::<Int64Type>(b.as_any_mut(), Some(set.count(m)))
                    }
                    (Column::Built(b), None) => match &accs[a] {
                        GroupAcc::Range(acc) => acc.append_value(b.as_any_mut()),
                        _ => false,
                    },
                    (Column::Scalars(values), _) => {
                        values.push(evaluate_one(accs, a)?);
                        true
                    }
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
    for a in 0..accs.len() {
        let mut args = take_all(&input.args[a], Some(idx))?;
        if let Some(f) = take_filter(&input.filters[a], Some(idx))? {
            args = args.iter().map(|c| Ok(arrow::compute::filter(c, &f)?)).collect::<Result<_>>()?;
        }
        match shared_set_mut(accs, a) {
            // Member by member, unlike `RowAccs::update`'s one pass for all of them.
            Some((set, m)) => args[0].as_primitive::<Int64Type>().iter().flatten().for_each(|v| set.insert(v, 1 << m)),
            None => update_in_order(own_acc(accs, a)?, &args)?,
        }
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
        let kinds = Self::kinds(exprs);
        Ok(RowAccs { accs: restore_groups(exprs, &kinds, n, r)?, kinds, scratch: UpdateScratch::default() })
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
        for (a, fields) in per_agg.iter_mut().enumerate() {
            let st = state_one(accs, a)?;
            if fields.is_empty() {
                *fields = st.iter().map(|_| Vec::with_capacity(n)).collect();
            }
            for (j, v) in st.into_iter().enumerate() {
                fields[j].push(v);
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
    kinds: &[AccKind],
    n: usize,
    r: &mut StateReader,
) -> Result<Vec<Vec<GroupAcc>>> {
    let mut groups = (0..n).map(|_| RowAccs::new_group(exprs, kinds)).collect::<Result<Vec<_>>>()?;
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
            merge_one(accs, a, &slices)?;
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
    /// AVG(v) FILTER (WHERE f), SUM(x), MIN(x) FILTER (WHERE f), MAX(x), MIN(v), COUNT(DISTINCT x),
    /// COUNT(DISTINCT x) FILTER (WHERE g)`: every kind of range accumulator, one of DataFusion's
    /// (`MIN` over DOUBLE), and a shared `COUNT(DISTINCT)` set of three. The filters are given as
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
            build(AggregateExprBuilder::new(count_udaf(), vec![x.clone()]).distinct(), "d"),
            build(AggregateExprBuilder::new(count_udaf(), vec![x.clone()]).distinct(), "dg"),
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
        [&v, &v, &x, &x, &v, &x, &x, &x, &v, &x, &x].into_iter().map(|a| vec![a.clone()]).collect()
    }

    fn values(accs: &mut RowAccs, groups: usize) -> Vec<Vec<ScalarValue>> {
        (0..groups)
            .map(|g| (0..accs.accs[g].len()).map(|a| evaluate_one(&mut accs.accs[g], a).unwrap()).collect())
            .collect()
    }

    /// Both stores through a checkpoint: `gathered` restored from its own, `plain` (DataFusion's
    /// accumulators) from `gathered`'s, after checking that `gathered`'s kinds restore `plain`'s
    /// checkpoint to the same values: the two write the same state.
    fn checkpointed(exprs: &AggregateExprs, gathered: &mut RowAccs, plain: &mut RowAccs) -> (RowAccs, RowAccs) {
        let write = |accs: &mut RowAccs| {
            let mut w = StateWriter::default();
            accs.snapshot(&mut w).unwrap();
            w.buf
        };
        let (ours, theirs) = (write(gathered), write(plain));
        let mut from_plain = RowAccs::restore(exprs, &mut StateReader::new(&theirs, "plain")).unwrap();
        assert_eq!(values(&mut from_plain, plain.len()), values(plain, plain.len()));
        let restored = RowAccs::restore(exprs, &mut StateReader::new(&ours, "gathered")).unwrap();
        let mut r = StateReader::new(&ours, "gathered");
        let n = r.count(0).unwrap();
        let datafusion = vec![AccKind::DataFusion; exprs.aggs.len()];
        let mut accs = restore_groups(exprs, &datafusion, n, &mut r).unwrap();
        // `plain` makes groups up to the last one of each batch; `gathered` up to the last updated.
        while accs.len() < plain.len() {
            accs.push(RowAccs::new_group(exprs, &datafusion).unwrap());
        }
        (restored, RowAccs { accs, ..Default::default() })
    }

    proptest::proptest! {
        /// Gathering an aggregate's rows once per batch gives every group what taking its own
        /// rows (and filtering them) and feeding them one at a time to DataFusion's accumulators
        /// gives it: the same rows in the same order, so even float sums and averages agree to
        /// the bit. Over two batches, with rows in any order and some left out, and a checkpoint
        /// between them that either kind of accumulator restores.
        #[test]
        fn gathered_updates_equal_one_group_at_a_time(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::option::of(-1e12f64..1e12), proptest::option::of(0i64..6),
                     proptest::option::of(any::<bool>()), 0usize..5, any::<bool>(),
                     proptest::option::of(any::<bool>())),
                    0..40,
                ).prop_shuffle(),
                2,
            ),
        ) {
            let exprs = exprs();
            let converter = exprs.row_converter().unwrap();
            let (mut gathered, mut plain) = (RowAccs::default(), RowAccs::default());
            for (b, rows) in batches.iter().enumerate() {
                if b == 1 {
                    (gathered, plain) = checkpointed(&exprs, &mut gathered, &mut plain);
                }
                let v = Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.0))) as ArrayRef;
                let x = Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1))) as ArrayRef;
                let f = BooleanArray::from_iter(rows.iter().map(|r| r.2));
                let g = BooleanArray::from_iter(rows.iter().map(|r| r.5));
                let input = Evaluated {
                    keys: converter.empty_rows(0, 0),
                    args: per_aggregate(v, x),
                    filters: vec![
                        None, Some(f.clone()), Some(f.clone()), None, Some(f.clone()), None, Some(f), None, None, None,
                        Some(g),
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
            let first = RowAccs::new_group(&exprs, &RowAccs::kinds(&exprs)).unwrap();
            let empty = values(&mut RowAccs { accs: vec![first], ..Default::default() }, 1);
            prop_assert!(expected[n..].iter().all(|g| *g == empty[0]));
        }
    }
}
