//! `SUM` over BIGINT, and `MIN` / `MAX` over integer, timestamp and VARCHAR columns, for per-group
//! accumulators ([`super::agg::RowAccs`]): like [`super::range_count`], they take a range of the
//! gathered input, so a run of a group's rows goes in with no `Arc`'d slice per aggregate and group.
//!
//! An updating `GROUP BY` over many keys (Nexmark q17: `MIN`, `MAX`, `SUM` of a price per auction
//! and day; q16: `MAX` of a formatted minute per channel and day) hands each group a run of one or
//! a few rows per batch. State, merge and results are DataFusion's exactly (the same fields; `SUM`
//! wraps on overflow as DataFusion's does), so a checkpoint written by either restores into the
//! other. Owns no other aggregate; must never change a result, only how fast it is reached.

use std::any::Any;
use std::marker::PhantomData;

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray, StringBuilder};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion_common::{Result, ScalarValue};
use datafusion_expr::Accumulator;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;

use super::range_count::{append_primitive, update_whole, wrong_type, Maker, RangeAccumulator};

/// A maker for `agg`'s accumulators, or `None` if `agg` is not a non-DISTINCT one-argument `SUM`
/// returning BIGINT, or `MIN` / `MAX` of one of the types below (checked against the state fields
/// DataFusion writes: one column of the result's type).
pub fn maker(agg: &AggregateFunctionExpr) -> Option<Maker> {
    if agg.is_distinct() || agg.expressions().len() != 1 || !agg.order_bys().is_empty() {
        return None;
    }
    let ty = agg.field().data_type().clone();
    let fields = agg.state_fields().ok()?;
    if !matches!(fields.as_slice(), [f] if f.data_type() == &ty) {
        return None;
    }
    match agg.fun().name() {
        "sum" if ty == DataType::Int64 => Some(|| Box::new(SumInt64 { sum: None })),
        "min" => extreme::<false>(&ty),
        "max" => extreme::<true>(&ty),
        _ => None,
    }
}

/// An accumulator for `agg` that takes ranges, or `None` (see [`maker`]).
#[cfg(test)]
pub fn accumulator(agg: &AggregateFunctionExpr) -> Option<Box<dyn RangeAccumulator>> {
    maker(agg).map(|make| make())
}

/// `MIN` (`MAX = false`) or `MAX` of a column of type `ty`, if it is one taken here. Timestamps
/// with a zone are left to DataFusion (the zone would have to be kept per group).
fn extreme<const MAX: bool>(ty: &DataType) -> Option<Maker> {
    fn make<T: ArrowPrimitiveType, const MAX: bool>() -> Box<dyn RangeAccumulator>
    where
        T::Native: Ord,
    {
        Box::new(Extreme::<T, MAX> { value: None, ty: PhantomData })
    }
    use arrow::datatypes::TimeUnit::*;
    Some(match ty {
        DataType::Utf8 => || Box::new(ExtremeStr::<MAX> { value: None }),
        DataType::Int8 => make::<Int8Type, MAX>,
        DataType::Int16 => make::<Int16Type, MAX>,
        DataType::Int32 => make::<Int32Type, MAX>,
        DataType::Int64 => make::<Int64Type, MAX>,
        DataType::Timestamp(Second, None) => make::<TimestampSecondType, MAX>,
        DataType::Timestamp(Millisecond, None) => make::<TimestampMillisecondType, MAX>,
        DataType::Timestamp(Microsecond, None) => make::<TimestampMicrosecondType, MAX>,
        DataType::Timestamp(Nanosecond, None) => make::<TimestampNanosecondType, MAX>,
        _ => return None,
    })
}

/// `SUM(x)` over BIGINT: `None` until a non-NULL value arrives, then the wrapping sum.
#[derive(Debug)]
struct SumInt64 {
    sum: Option<i64>,
}

impl RangeAccumulator for SumInt64 {
    /// Values are added one at a time: wrapping addition is associative, so this is the sum
    /// DataFusion's block-then-add gives.
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values = args[0].as_primitive_opt::<Int64Type>().ok_or_else(|| wrong_type("SUM"))?;
        let mut add = |v: i64| self.sum = Some(self.sum.unwrap_or(0).wrapping_add(v));
        match values.nulls() {
            None => values.values()[start..start + len].iter().for_each(|&v| add(v)),
            Some(nulls) => (start..start + len).filter(|&i| nulls.is_valid(i)).for_each(|i| add(values.value(i))),
        }
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        append_primitive::<Int64Type>(builder, self.sum)
    }
}

impl Accumulator for SumInt64 {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(self.sum))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(self.sum)])
    }

    /// The state is one column of partial sums: summed like input.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// The smallest (`MAX = false`) or largest non-NULL value seen, `None` before one.
struct Extreme<T: ArrowPrimitiveType, const MAX: bool> {
    value: Option<T::Native>,
    /// `fn() -> T`: the type is only named, so the accumulator is `Send + Sync` whatever `T` is.
    ty: PhantomData<fn() -> T>,
}

impl<T: ArrowPrimitiveType, const MAX: bool> std::fmt::Debug for Extreme<T, MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", if MAX { "Max" } else { "Min" }, self.value)
    }
}

impl<T: ArrowPrimitiveType, const MAX: bool> Extreme<T, MAX>
where
    T::Native: Ord,
{
    #[inline]
    fn take(&mut self, v: T::Native) {
        self.value = Some(match self.value {
            None => v,
            Some(old) if MAX => old.max(v),
            Some(old) => old.min(v),
        });
    }
}

impl<T: ArrowPrimitiveType, const MAX: bool> RangeAccumulator for Extreme<T, MAX>
where
    T::Native: Ord,
{
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values: &PrimitiveArray<T> = args[0].as_primitive_opt::<T>().ok_or_else(|| wrong_type("MIN/MAX"))?;
        match values.nulls() {
            None => values.values()[start..start + len].iter().for_each(|&v| self.take(v)),
            Some(nulls) => {
                for i in (start..start + len).filter(|&i| nulls.is_valid(i)) {
                    self.take(values.value(i));
                }
            }
        }
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        append_primitive::<T>(builder, self.value)
    }
}

impl<T: ArrowPrimitiveType, const MAX: bool> Accumulator for Extreme<T, MAX>
where
    T::Native: Ord,
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        ScalarValue::new_primitive::<T>(self.value, &T::DATA_TYPE)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    /// The state is one column of partial extremes: taken like input.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// [`Extreme`] of VARCHAR: strings compare by their UTF-8 bytes, as DataFusion's do. The kept
/// string's buffer is reused when a new extreme replaces it.
#[derive(Debug)]
struct ExtremeStr<const MAX: bool> {
    value: Option<String>,
}

impl<const MAX: bool> RangeAccumulator for ExtremeStr<MAX> {
    /// The range's own extreme first, then one comparison and at most one copy into the group.
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values = args[0].as_string_opt::<i32>().ok_or_else(|| wrong_type("MIN/MAX"))?;
        let beats = |new: &str, old: &str| if MAX { new > old } else { new < old };
        let best = (start..start + len).filter(|&i| values.is_valid(i)).map(|i| values.value(i)).reduce(|best, v| {
            if beats(v, best) {
                v
            } else {
                best
            }
        });
        match (best, &mut self.value) {
            (None, _) => {}
            (Some(v), None) => self.value = Some(v.to_owned()),
            (Some(v), Some(old)) if beats(v, old) => {
                old.clear();
                old.push_str(v);
            }
            (Some(_), Some(_)) => {}
        }
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        builder.downcast_mut::<StringBuilder>().map(|b| b.append_option(self.value.as_deref())).is_some()
    }
}

impl<const MAX: bool> Accumulator for ExtremeStr<MAX> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Utf8(self.value.clone()))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    /// The state is one column of partial extremes: taken like input.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.value.as_ref().map_or(0, String::capacity)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion_functions_aggregate::average::avg_udaf;
    use datafusion_functions_aggregate::min_max::{max_udaf, min_udaf};
    use datafusion_functions_aggregate::sum::sum_udaf;
    use datafusion_physical_expr::aggregate::AggregateExprBuilder;
    use datafusion_physical_expr::expressions::col;

    use super::*;
    use crate::ops::range_count::tests::ranges_equal_datafusion;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("n", DataType::Int32, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("z", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("l", DataType::LargeUtf8, true),
        ]))
    }

    fn build(b: AggregateExprBuilder) -> AggregateFunctionExpr {
        b.schema(schema()).alias("a").build().unwrap()
    }

    fn agg(fun: Arc<datafusion_expr::AggregateUDF>, column: &str) -> AggregateFunctionExpr {
        build(AggregateExprBuilder::new(fun, vec![col(column, &schema()).unwrap()]))
    }

    #[test]
    fn only_bigint_sum_and_integer_timestamp_or_varchar_extremes_are_taken() {
        let taken = [
            agg(sum_udaf(), "i"),
            agg(min_udaf(), "i"),
            agg(max_udaf(), "n"),
            agg(min_udaf(), "t"),
            agg(max_udaf(), "t"),
            agg(min_udaf(), "s"),
            agg(max_udaf(), "s"),
        ];
        assert!(taken.iter().all(|a| maker(a).is_some()));
        let others = [
            agg(min_udaf(), "z"),
            agg(max_udaf(), "f"),
            agg(max_udaf(), "l"),
            agg(sum_udaf(), "f"),
            agg(avg_udaf(), "i"),
            build(AggregateExprBuilder::new(sum_udaf(), vec![col("i", &schema()).unwrap()]).distinct()),
        ];
        assert!(others.iter().all(|a| maker(a).is_none()), "they stay DataFusion's");
    }

    #[test]
    fn a_wrong_column_type_is_an_error_not_a_panic() {
        let strings = Arc::new(StringArray::from(vec!["a"])) as ArrayRef;
        let ints = Arc::new(Int64Array::from(vec![1])) as ArrayRef;
        for (a, wrong) in
            [(agg(sum_udaf(), "i"), &strings), (agg(max_udaf(), "i"), &strings), (agg(min_udaf(), "s"), &ints)]
        {
            let mut acc = accumulator(&a).unwrap();
            assert!(acc.update_range(std::slice::from_ref(wrong), 0, 1).is_err());
            assert!(acc.merge_batch(std::slice::from_ref(wrong)).is_err());
        }
    }

    #[test]
    fn sum_wraps_on_overflow_like_datafusion() {
        let a = agg(sum_udaf(), "i");
        let values = Arc::new(Int64Array::from(vec![i64::MAX, 1, 5])) as ArrayRef;
        let (mut ours, mut theirs) = (accumulator(&a).unwrap(), a.create_accumulator().unwrap());
        ours.update_range(std::slice::from_ref(&values), 0, 2).unwrap();
        ours.update_range(std::slice::from_ref(&values), 2, 1).unwrap();
        theirs.update_batch(&[values]).unwrap();
        assert_eq!(ours.evaluate().unwrap(), theirs.evaluate().unwrap());
    }

    proptest::proptest! {
        /// Any ranges give what DataFusion's accumulator gives for the same rows: the same value
        /// and state, and a checkpoint in the middle restored either way changes nothing.
        #[test]
        fn ranges_equal_datafusion_for_sums_and_extremes(
            values in proptest::collection::vec(proptest::option::weighted(0.8, -1000i64..1000), 0..60),
            cuts in proptest::collection::vec(0usize..60, 0..6),
            checkpoint_at in 0usize..60,
        ) {
            let columns: [(&str, ArrayRef); 4] = [
                ("i", Arc::new(Int64Array::from(values.clone()))),
                ("n", Arc::new(Int32Array::from(values.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>()))),
                ("t", Arc::new(TimestampMillisecondArray::from(values.clone()))),
                // As text, so that "-5" < "-50" < "10" < "9": byte order, not the numbers'.
                ("s", Arc::new(StringArray::from(values.iter().map(|v| v.map(|v| v.to_string())).collect::<Vec<_>>()))),
            ];
            for (column, array) in columns {
                // DataFusion's SUM takes no INT or TIMESTAMP: the planner casts INT to BIGINT.
                let mut funs = vec![min_udaf(), max_udaf()];
                if column == "i" {
                    funs.push(sum_udaf());
                }
                for a in funs.into_iter().map(|f| agg(f, column)) {
                    ranges_equal_datafusion(&a, maker(&a).unwrap(), &array, &cuts, checkpoint_at, true)?;
                }
            }
        }
    }
}
