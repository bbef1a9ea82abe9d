//! `COUNT` and `COUNT(DISTINCT BIGINT)` for per-group accumulators ([`super::agg::RowAccs`]): they
//! take a range of the gathered input, so a run of a group's rows goes in with no `Arc`'d slice.
//!
//! An updating `GROUP BY` over many keys hands each group a short run per batch (often one row),
//! and for DataFusion's accumulators each run is an array slice made and dropped per aggregate and
//! group, which cost more than the counting (Nexmark q16: eight `COUNT(DISTINCT)` and four
//! `COUNT`s per row). State, merge and results are DataFusion's exactly (the same fields), so a
//! checkpoint written by either restores into the other. Owns no other aggregate; must never
//! change a result, only how fast it is reached.

use std::any::Any;
use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, PrimitiveBuilder};
use arrow::datatypes::{DataType, Int64Type};
use datafusion_common::utils::SingleRowListArrayBuilder;
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_expr::Accumulator;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;

/// An accumulator that also takes rows `start..start + len` of its arguments in place.
pub trait RangeAccumulator: Accumulator {
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()>;

    /// Appends what `evaluate` gives to `builder`, a builder of the aggregate's result type as
    /// `arrow::array::make_builder` makes it, with no `ScalarValue` between; false (and nothing
    /// appended) if `builder` is of another type.
    fn append_value(&self, builder: &mut dyn Any) -> bool;
}

/// [`RangeAccumulator::append_value`] for a primitive result.
pub fn append_primitive<T: ArrowPrimitiveType>(builder: &mut dyn Any, value: Option<T::Native>) -> bool {
    builder.downcast_mut::<PrimitiveBuilder<T>>().map(|b| b.append_option(value)).is_some()
}

/// Makes one group's accumulator. Which maker an aggregate gets is decided once per aggregate
/// (deciding reads its state fields, which DataFusion builds anew on every call).
pub type Maker = fn() -> Box<dyn RangeAccumulator>;

/// A maker for `agg`'s accumulators, or `None` if `agg` is not a one-argument `COUNT` or a
/// `COUNT(DISTINCT)` of a BIGINT (checked against the state fields DataFusion writes).
pub fn maker(agg: &AggregateFunctionExpr) -> Option<Maker> {
    if agg.fun().name() != "count" || agg.expressions().len() != 1 {
        return None;
    }
    let fields = agg.state_fields().ok()?;
    let [field] = fields.as_slice() else { return None };
    match (agg.is_distinct(), field.data_type()) {
        (false, DataType::Int64) => Some(|| Box::new(Count { count: 0 })),
        (true, DataType::List(item)) if item.data_type() == &DataType::Int64 => {
            Some(|| Box::new(DistinctInt64 { values: HashSet::default() }))
        }
        _ => None,
    }
}

/// Whether `agg` is a `COUNT(DISTINCT)` of a BIGINT, one that [`maker`] takes (and that
/// [`super::shared_distinct`] can share with others over the same argument).
pub fn is_distinct_bigint(agg: &AggregateFunctionExpr) -> bool {
    agg.is_distinct() && maker(agg).is_some()
}

/// An accumulator for `agg` that takes ranges, or `None` (see [`maker`]).
#[cfg(test)]
pub fn accumulator(agg: &AggregateFunctionExpr) -> Option<Box<dyn RangeAccumulator>> {
    maker(agg).map(|make| make())
}

/// `COUNT(x)`: non-NULL values seen.
#[derive(Debug)]
struct Count {
    count: i64,
}

impl RangeAccumulator for Count {
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values = &args[0];
        // Physical nulls are the logical ones except for these types (whose validity lives in
        // their children or is implied); `logical_nulls` clones a buffer, so it is their path only.
        let nulls = if matches!(
            values.data_type(),
            DataType::Null | DataType::Dictionary(..) | DataType::RunEndEncoded(..) | DataType::Union(..)
        ) {
            values.logical_nulls().map_or(0, |n| n.slice(start, len).null_count())
        } else {
            values.nulls().map_or(0, |n| (start..start + len).filter(|&i| n.is_null(i)).count())
        };
        self.count += (len - nulls) as i64;
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        append_primitive::<Int64Type>(builder, Some(self.count))
    }
}

impl Accumulator for Count {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.count)))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.count))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let counts =
            states.first().and_then(|s| s.as_primitive_opt::<Int64Type>()).ok_or_else(|| wrong_type("COUNT"))?;
        self.count += counts.iter().flatten().sum::<i64>();
        Ok(())
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// `COUNT(DISTINCT x)` over BIGINT: the distinct non-NULL values.
#[derive(Debug)]
struct DistinctInt64 {
    values: HashSet<i64, ahash::RandomState>,
}

impl RangeAccumulator for DistinctInt64 {
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values = args[0].as_primitive_opt::<Int64Type>().ok_or_else(|| wrong_type("COUNT(DISTINCT)"))?;
        match values.nulls() {
            None => self.values.extend(&values.values()[start..start + len]),
            Some(nulls) => {
                for i in start..start + len {
                    if nulls.is_valid(i) {
                        self.values.insert(values.value(i));
                    }
                }
            }
        }
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        append_primitive::<Int64Type>(builder, Some(self.values.len() as i64))
    }
}

impl Accumulator for DistinctInt64 {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.values.len() as i64)))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values = Int64Array::from_iter_values(self.values.iter().copied());
        Ok(vec![SingleRowListArrayBuilder::new(std::sync::Arc::new(values)).build_list_scalar()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states.first().and_then(|s| s.as_list_opt::<i32>()).ok_or_else(|| wrong_type("COUNT(DISTINCT)"))?;
        for list in lists.iter().flatten() {
            let list = list.as_primitive_opt::<Int64Type>().ok_or_else(|| wrong_type("COUNT(DISTINCT)"))?;
            self.values.extend(list.iter().flatten());
        }
        Ok(())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * (size_of::<i64>() + 1)
    }
}

/// `update_batch` of a [`RangeAccumulator`]: the whole of `values` as one range.
pub fn update_whole(acc: &mut (impl RangeAccumulator + ?Sized), values: &[ArrayRef]) -> Result<()> {
    let len = values.first().map_or(0, |v| v.len());
    acc.update_range(values, 0, len)
}

/// An input or state column of the wrong type: the planner's coercion did not hold.
pub fn wrong_type(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("{what} got a column of another type"))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};
    use datafusion_functions_aggregate::{count::count_udaf, sum::sum_udaf};
    use datafusion_physical_expr::aggregate::AggregateExprBuilder;
    use datafusion_physical_expr::expressions::col;
    use proptest::prelude::*;

    use super::*;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]))
    }

    fn build(b: AggregateExprBuilder) -> AggregateFunctionExpr {
        b.schema(schema()).alias("a").build().unwrap()
    }

    fn counts() -> [AggregateFunctionExpr; 2] {
        let i = col("i", &schema()).unwrap();
        [
            build(AggregateExprBuilder::new(count_udaf(), vec![i.clone()])),
            build(AggregateExprBuilder::new(count_udaf(), vec![i]).distinct()),
        ]
    }

    #[test]
    fn only_count_and_distinct_bigint_count_are_taken() {
        assert!(counts().iter().all(|a| accumulator(a).is_some()));
        let (i, s) = (col("i", &schema()).unwrap(), col("s", &schema()).unwrap());
        let others = [
            build(AggregateExprBuilder::new(count_udaf(), vec![s.clone()]).distinct()),
            build(AggregateExprBuilder::new(sum_udaf(), vec![i.clone()])),
            build(AggregateExprBuilder::new(count_udaf(), vec![i, s])),
        ];
        assert!(others.iter().all(|a| accumulator(a).is_none()), "they stay DataFusion's");
    }

    #[test]
    fn a_wrong_column_type_is_an_error_not_a_panic() {
        let mut acc = accumulator(&counts()[1]).unwrap();
        let strings = Arc::new(arrow::array::StringArray::from(vec!["a"])) as ArrayRef;
        assert!(acc.update_range(std::slice::from_ref(&strings), 0, 1).is_err());
        assert!(acc.merge_batch(std::slice::from_ref(&strings)).is_err());
        assert!(accumulator(&counts()[0]).unwrap().merge_batch(&[strings]).is_err());
    }

    /// Feeds `array` to `agg`'s range accumulator (from `make`) in ranges cut at `cuts` and to DataFusion's
    /// accumulator as slices of the same ranges; at `checkpoint_at` each side continues from the
    /// other side's state (states also compared when `same_state`: a set's order may differ).
    /// Both must end with the same value.
    pub(crate) fn ranges_equal_datafusion(
        agg: &AggregateFunctionExpr,
        make: Maker,
        array: &ArrayRef,
        cuts: &[usize],
        checkpoint_at: usize,
        same_state: bool,
    ) -> std::result::Result<(), TestCaseError> {
        let (len, checkpoint_at) = (array.len(), checkpoint_at.min(array.len()));
        let mut ours = make();
        let mut theirs = agg.create_accumulator().unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(len)).collect();
        cuts.extend([0, len, checkpoint_at]);
        cuts.sort_unstable();
        cuts.dedup();
        let arrays = |s: Vec<ScalarValue>| -> Vec<ArrayRef> { s.iter().map(|v| v.to_array().unwrap()).collect() };
        for w in cuts.windows(2) {
            if w[0] == checkpoint_at {
                let (s_ours, s_theirs) = (ours.state().unwrap(), theirs.state().unwrap());
                if same_state {
                    prop_assert_eq!(&s_ours, &s_theirs);
                }
                ours = make();
                ours.merge_batch(&arrays(s_theirs)).unwrap();
                theirs = agg.create_accumulator().unwrap();
                theirs.merge_batch(&arrays(s_ours)).unwrap();
            }
            ours.update_range(std::slice::from_ref(array), w[0], w[1] - w[0]).unwrap();
            theirs.update_batch(&[array.slice(w[0], w[1] - w[0])]).unwrap();
        }
        prop_assert_eq!(ours.evaluate().unwrap(), theirs.evaluate().unwrap());
        Ok(())
    }

    proptest::proptest! {
        /// Any ranges give what DataFusion's accumulator gives for the same rows: the same value,
        /// and states that each side restores from (a checkpoint in the middle changes nothing).
        #[test]
        fn ranges_equal_datafusion_for_counts(
            values in proptest::collection::vec(proptest::option::weighted(0.8, -20i64..20), 0..60),
            cuts in proptest::collection::vec(0usize..60, 0..6),
            checkpoint_at in 0usize..60,
        ) {
            let array = Arc::new(Int64Array::from(values)) as ArrayRef;
            for (agg, same_state) in counts().iter().zip([true, false]) {
                ranges_equal_datafusion(agg, maker(agg).unwrap(), &array, &cuts, checkpoint_at, same_state)?;
            }
        }
    }
}
