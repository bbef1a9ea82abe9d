//! `SUM` and `AVG` over DOUBLE for per-group accumulators ([`super::agg::RowAccs`]): values are
//! added one at a time, in the order given, so a whole run of a group's rows goes in with one call,
//! as a range of the gathered input (no `Arc`'d slice).
//!
//! DataFusion's `SumAccumulator` and `AvgAccumulator` sum a batch in lanes and then add that
//! block, so a float result would move with batch boundaries; fed one row at a time (an `Arc`'d
//! one-row slice per value) they do not, but that costs more than the addition. These give what
//! DataFusion's give when fed one row at a time, to the bit, from whole slices.
//! State and merge are DataFusion's exactly (the same fields, the same block merge), so a
//! checkpoint written by either restores into the other. Owns no other aggregate; must never change
//! a result, only how fast it is reached.

use std::any::Any;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, UInt64Type};
use datafusion_common::{Result, ScalarValue};
use datafusion_expr::Accumulator;
use datafusion_physical_expr::aggregate::AggregateFunctionExpr;

use super::range_count::{append_primitive, update_whole, Maker, RangeAccumulator};

/// Which of the two an aggregate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum,
    Avg,
}

/// The kind of a non-DISTINCT `SUM`/`AVG` returning DOUBLE (its argument is then DOUBLE too: both
/// coerce floats to it, and DataFusion's float accumulators take nothing else), checked against
/// the state fields this module writes; `None` for any other aggregate.
fn kind(agg: &AggregateFunctionExpr) -> Option<Kind> {
    if agg.is_distinct() || agg.field().data_type() != &DataType::Float64 {
        return None;
    }
    let kind = match agg.fun().name() {
        "sum" => Kind::Sum,
        "avg" => Kind::Avg,
        _ => return None,
    };
    let expected: &[DataType] = match kind {
        Kind::Sum => &[DataType::Float64],
        Kind::Avg => &[DataType::UInt64, DataType::Float64],
    };
    let fields = agg.state_fields().ok()?;
    let same = fields.len() == expected.len() && fields.iter().zip(expected).all(|(f, t)| f.data_type() == t);
    same.then_some(kind)
}

/// A maker for `agg`'s accumulators, or `None` if `agg` is not one of these.
pub fn maker(agg: &AggregateFunctionExpr) -> Option<Maker> {
    kind(agg).map(|kind| -> Maker {
        match kind {
            Kind::Sum => || Box::new(InOrder { kind: Kind::Sum, sum: None, count: 0 }),
            Kind::Avg => || Box::new(InOrder { kind: Kind::Avg, sum: None, count: 0 }),
        }
    })
}

/// An accumulator for `agg` that adds values in order, or `None` if `agg` is not one of these.
#[cfg(test)]
pub fn accumulator(agg: &AggregateFunctionExpr) -> Option<Box<dyn RangeAccumulator>> {
    maker(agg).map(|make| make())
}

/// A running sum (`None` until a non-NULL value arrives, as DataFusion's) and count.
#[derive(Debug)]
struct InOrder {
    kind: Kind,
    sum: Option<f64>,
    /// Non-NULL values added (counted for `SUM` too; only `AVG` reads it or keeps it in its state).
    count: u64,
}

impl RangeAccumulator for InOrder {
    fn update_range(&mut self, args: &[ArrayRef], start: usize, len: usize) -> Result<()> {
        let values = args[0].as_primitive_opt::<Float64Type>().ok_or_else(not_double)?;
        let mut sum = self.sum;
        let mut added = 0u64;
        let mut add = |v: f64| {
            sum = Some(sum.unwrap_or(0.0) + v);
            added += 1;
        };
        match values.nulls() {
            None => values.values()[start..start + len].iter().for_each(|&v| add(v)),
            Some(nulls) => (start..start + len).filter(|&i| nulls.is_valid(i)).for_each(|i| add(values.value(i))),
        }
        self.sum = sum;
        self.count += added;
        Ok(())
    }

    fn append_value(&self, builder: &mut dyn Any) -> bool {
        append_primitive::<Float64Type>(builder, self.value())
    }
}

impl InOrder {
    fn value(&self) -> Option<f64> {
        match self.kind {
            Kind::Sum => self.sum,
            Kind::Avg if self.count == 0 => None,
            Kind::Avg => self.sum.map(|s| s / self.count as f64),
        }
    }
}

impl Accumulator for InOrder {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        update_whole(self, values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.value()))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(match self.kind {
            Kind::Sum => vec![ScalarValue::Float64(self.sum)],
            Kind::Avg => vec![ScalarValue::UInt64(Some(self.count)), ScalarValue::Float64(self.sum)],
        })
    }

    /// DataFusion's merge: each state column summed as a block, then added.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sums = match self.kind {
            Kind::Sum => &states[0],
            Kind::Avg => {
                let counts = states[0].as_primitive_opt::<UInt64Type>().ok_or_else(not_double)?;
                self.count += arrow::compute::sum(counts).unwrap_or(0);
                &states[1]
            }
        };
        let sums = sums.as_primitive_opt::<Float64Type>().ok_or_else(not_double)?;
        if let Some(x) = arrow::compute::sum(sums) {
            self.sum = Some(self.sum.unwrap_or(0.0) + x);
        }
        Ok(())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// An input or state column of the wrong type: the planner's coercion did not hold.
fn not_double() -> datafusion_common::DataFusionError {
    datafusion_common::DataFusionError::Internal("SUM/AVG over DOUBLE got a column of another type".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion_functions_aggregate::{average::avg_udaf, count::count_udaf, sum::sum_udaf};
    use datafusion_physical_expr::aggregate::AggregateExprBuilder;
    use datafusion_physical_expr::expressions::{col, CastExpr};
    use proptest::prelude::*;

    use super::*;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true), Field::new("i", DataType::Int64, true)]))
    }

    fn build(b: AggregateExprBuilder) -> AggregateFunctionExpr {
        b.schema(schema()).alias("a").build().unwrap()
    }

    fn sum_and_avg() -> [AggregateFunctionExpr; 2] {
        let v = col("v", &schema()).unwrap();
        [
            build(AggregateExprBuilder::new(sum_udaf(), vec![v.clone()])),
            build(AggregateExprBuilder::new(avg_udaf(), vec![v])),
        ]
    }

    #[test]
    fn only_plain_double_sum_and_avg_are_taken() {
        let s = schema();
        let (v, i) = (col("v", &s).unwrap(), col("i", &s).unwrap());
        assert!(sum_and_avg().iter().all(|a| maker(a).is_some()));
        let others = [
            build(AggregateExprBuilder::new(sum_udaf(), vec![v.clone()]).distinct()),
            build(AggregateExprBuilder::new(avg_udaf(), vec![v.clone()]).distinct()),
            build(AggregateExprBuilder::new(sum_udaf(), vec![i.clone()])),
            build(AggregateExprBuilder::new(count_udaf(), vec![v])),
        ];
        assert!(others.iter().all(|a| maker(a).is_none()), "integer SUM, DISTINCT and COUNT stay DataFusion's");
        // AVG of an integer, as the planner gives it: cast to DOUBLE first.
        let cast = Arc::new(CastExpr::new(i, DataType::Float64, None));
        assert!(maker(&build(AggregateExprBuilder::new(avg_udaf(), vec![cast]))).is_some());
    }

    #[test]
    fn a_non_double_column_is_an_error_not_a_panic() {
        let mut acc = accumulator(&sum_and_avg()[0]).unwrap();
        let ints = Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef;
        assert!(acc.update_batch(std::slice::from_ref(&ints)).is_err());
        assert!(acc.merge_batch(&[ints]).is_err());
    }

    fn run(values: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(values.to_vec()))
    }

    fn f64_value() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            1 => Just(None),
            6 => (-1e15f64..1e15).prop_map(Some),
            2 => (-100i32..100).prop_map(|c| Some(f64::from(c) * 0.1)),
            1 => prop_oneof![Just(Some(-0.0)), Just(Some(f64::MAX)), Just(Some(f64::INFINITY))],
        ]
    }

    proptest::proptest! {
        /// Runs of any length give what DataFusion's own accumulator gives when fed one row at a
        /// time: the same value and state, to the bit. A checkpoint in the middle (each side
        /// restarted from the other side's state) changes nothing either way.
        #[test]
        fn runs_equal_datafusion_one_row_at_a_time(
            values in proptest::collection::vec(f64_value(), 0..60),
            cuts in proptest::collection::vec(0usize..60, 0..6),
            checkpoint_at in 0usize..60,
        ) {
            for agg in sum_and_avg() {
                let mut ours = accumulator(&agg).unwrap();
                let mut theirs = agg.create_accumulator().unwrap();
                let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(values.len())).collect();
                cuts.extend([0, values.len(), checkpoint_at.min(values.len())]);
                cuts.sort_unstable();
                cuts.dedup();
                for w in cuts.windows(2) {
                    if w[0] == checkpoint_at.min(values.len()) {
                        // Each side continues from the other side's state.
                        let (s_ours, s_theirs) = (ours.state().unwrap(), theirs.state().unwrap());
                        prop_assert_eq!(&s_ours, &s_theirs);
                        let arrays = |s: Vec<ScalarValue>| -> Vec<ArrayRef> {
                            s.iter().map(|v| v.to_array().unwrap()).collect()
                        };
                        ours = accumulator(&agg).unwrap();
                        ours.merge_batch(&arrays(s_theirs)).unwrap();
                        theirs = agg.create_accumulator().unwrap();
                        theirs.merge_batch(&arrays(s_ours)).unwrap();
                    }
                    let slice = &values[w[0]..w[1]];
                    ours.update_range(&[run(&values)], w[0], w[1] - w[0]).unwrap();
                    for v in slice {
                        theirs.update_batch(&[run(&[*v])]).unwrap();
                    }
                }
                let (a, b) = (ours.evaluate().unwrap(), theirs.evaluate().unwrap());
                // Bit equality (NaN included), which ScalarValue's own equality gives for floats.
                prop_assert_eq!(a, b);
                prop_assert_eq!(ours.state().unwrap(), theirs.state().unwrap());
            }
        }
    }
}
