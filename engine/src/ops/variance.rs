//! `VAR_SAMP`, `VAR_POP`, `STDDEV_SAMP`, `STDDEV_POP` (and their aliases) with a state restore
//! that is exact to the bit. They replace DataFusion's versions in the catalog; everything but
//! the accumulators (name, aliases, signature, state fields, docs, DISTINCT) is DataFusion's.
//!
//! Why: a checkpoint takes an accumulator's partial state (count, mean, m2) and recovery merges it
//! into a fresh accumulator. DataFusion's Welford merge computes the mean as `mean * n / n`, which
//! can move its last bit, so a run with a checkpoint or a crash gave results a few ULPs off an
//! uninterrupted run. Here merging into (or from) an empty state copies the state, and updates,
//! retractions and merges of two non-empty states are DataFusion's formulas, so results equal
//! DataFusion's whenever no checkpoint intervenes and stay equal when one does.
//! Owns no other aggregate; must never change what a result is, only keep it exact.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, UInt64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, FieldRef};
use datafusion_common::cast::{as_float64_array, as_uint64_array};
use datafusion_common::{Result, ScalarValue};
use datafusion_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator, Signature,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stat {
    VarSample,
    VarPopulation,
    StddevSample,
    StddevPopulation,
}

/// The four functions, each wrapping DataFusion's definition of the same name.
pub fn exact_variance_functions() -> Vec<Arc<AggregateUDF>> {
    use datafusion_functions_aggregate::{stddev, variance};
    [
        (variance::var_samp_udaf(), Stat::VarSample),
        (variance::var_pop_udaf(), Stat::VarPopulation),
        (stddev::stddev_udaf(), Stat::StddevSample),
        (stddev::stddev_pop_udaf(), Stat::StddevPopulation),
    ]
    .into_iter()
    .map(|(inner, stat)| Arc::new(AggregateUDF::new_from_impl(ExactVariance { inner, stat })))
    .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExactVariance {
    inner: Arc<AggregateUDF>,
    stat: Stat,
}

impl AggregateUDFImpl for ExactVariance {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if args.is_distinct {
            // DISTINCT keeps the values themselves; its merge is exact already.
            return self.inner.accumulator(args);
        }
        Ok(Box::new(VarianceAccumulator { state: Welford::default(), stat: self.stat }))
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }
    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(VarianceGroups { counts: Vec::new(), means: Vec::new(), m2s: Vec::new(), stat: self.stat }))
    }
}

/// Welford's running state.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Welford {
    count: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    fn update(self, value: f64) -> Welford {
        let count = self.count + 1;
        let delta1 = value - self.mean;
        let mean = delta1 / count as f64 + self.mean;
        let delta2 = value - mean;
        Welford { count, mean, m2: self.m2 + delta1 * delta2 }
    }

    /// The inverse of `update`; one value or fewer left resets to empty.
    fn retract(self, value: f64) -> Welford {
        if self.count <= 1 {
            return Welford::default();
        }
        let count = self.count - 1;
        let delta1 = self.mean - value;
        let mean = delta1 / count as f64 + self.mean;
        let delta2 = mean - value;
        Welford { count, mean, m2: self.m2 - delta1 * delta2 }
    }

    /// Chan et al.'s combination, but an empty side gives the other side unchanged: that is what
    /// makes a restore exact.
    fn merge(self, other: Welford) -> Welford {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return other;
        }
        let count = self.count + other.count;
        let (n1, n2, n) = (self.count as f64, other.count as f64, count as f64);
        let mean = self.mean * n1 / n + other.mean * n2 / n;
        let delta = self.mean - other.mean;
        Welford { count, mean, m2: self.m2 + other.m2 + delta * delta * n1 * n2 / n }
    }

    fn evaluate(self, stat: Stat) -> Option<f64> {
        let sample = matches!(stat, Stat::VarSample | Stat::StddevSample);
        let divisor = if sample { self.count.saturating_sub(1) } else { self.count };
        if divisor == 0 {
            return None;
        }
        // One value has no spread, whatever rounding retractions left in m2 (as DataFusion).
        let var = if self.count == 1 { 0.0 } else { self.m2 / divisor as f64 };
        Some(if matches!(stat, Stat::StddevSample | Stat::StddevPopulation) { var.sqrt() } else { var })
    }
}

#[derive(Debug)]
struct VarianceAccumulator {
    state: Welford,
    stat: Stat,
}

fn state_arrays(states: &[ArrayRef]) -> Result<(&UInt64Array, &Float64Array, &Float64Array)> {
    Ok((as_uint64_array(&states[0])?, as_float64_array(&states[1])?, as_float64_array(&states[2])?))
}

impl Accumulator for VarianceAccumulator {
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::from(self.state.count),
            ScalarValue::from(self.state.mean),
            ScalarValue::from(self.state.m2),
        ])
    }
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for v in as_float64_array(&values[0])?.iter().flatten() {
            self.state = self.state.update(v);
        }
        Ok(())
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for v in as_float64_array(&values[0])?.iter().flatten() {
            self.state = self.state.retract(v);
        }
        Ok(())
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (counts, means, m2s) = state_arrays(states)?;
        for i in 0..counts.len() {
            self.state = self.state.merge(Welford { count: counts.value(i), mean: means.value(i), m2: m2s.value(i) });
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.state.evaluate(self.stat)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

#[derive(Debug)]
struct VarianceGroups {
    counts: Vec<u64>,
    means: Vec<f64>,
    m2s: Vec<f64>,
    stat: Stat,
}

impl VarianceGroups {
    fn resize(&mut self, groups: usize) {
        self.counts.resize(groups, 0);
        self.means.resize(groups, 0.0);
        self.m2s.resize(groups, 0.0);
    }
    fn get(&self, g: usize) -> Welford {
        Welford { count: self.counts[g], mean: self.means[g], m2: self.m2s[g] }
    }
    fn set(&mut self, g: usize, w: Welford) {
        self.counts[g] = w.count;
        self.means[g] = w.mean;
        self.m2s[g] = w.m2;
    }
}

impl GroupsAccumulator for VarianceGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let values = as_float64_array(&values[0])?;
        self.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            let passes = opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            if passes && values.is_valid(row) {
                let w = self.get(g).update(values.value(row));
                self.set(g, w);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        let (counts, means, m2s) = state_arrays(values)?;
        self.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            let w = self.get(g).merge(Welford { count: counts.value(row), mean: means.value(row), m2: m2s.value(row) });
            self.set(g, w);
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let counts = emit_to.take_needed(&mut self.counts);
        let means = emit_to.take_needed(&mut self.means);
        let m2s = emit_to.take_needed(&mut self.m2s);
        let out: Vec<Option<f64>> = counts
            .iter()
            .zip(&means)
            .zip(&m2s)
            .map(|((&count, &mean), &m2)| Welford { count, mean, m2 }.evaluate(self.stat))
            .collect();
        let nulls = NullBuffer::from_iter(out.iter().map(Option::is_some));
        let values: Vec<f64> = out.into_iter().map(|v| v.unwrap_or(0.0)).collect();
        Ok(Arc::new(Float64Array::new(values.into(), Some(nulls))))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let counts = emit_to.take_needed(&mut self.counts);
        let means = emit_to.take_needed(&mut self.means);
        let m2s = emit_to.take_needed(&mut self.m2s);
        Ok(vec![
            Arc::new(UInt64Array::new(counts.into(), None)),
            Arc::new(Float64Array::new(means.into(), None)),
            Arc::new(Float64Array::new(m2s.into(), None)),
        ])
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let values = as_float64_array(&values[0])?;
        let take = |row: usize| values.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        let counts: Vec<u64> = (0..values.len()).map(|r| u64::from(take(r))).collect();
        let means: Vec<f64> = (0..values.len()).map(|r| if take(r) { values.value(r) } else { 0.0 }).collect();
        Ok(vec![
            Arc::new(UInt64Array::new(counts.into(), None)),
            Arc::new(Float64Array::new(means.into(), None)),
            Arc::new(Float64Array::new(vec![0.0; values.len()].into(), None)),
        ])
    }

    fn size(&self) -> usize {
        self.counts.capacity() * 8 + self.means.capacity() * 8 + self.m2s.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_expr::EmitTo;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) * 1000.0 - 137.3
            })
            .collect()
    }

    fn array(v: &[f64]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    /// What DataFusion's own accumulator gives for `v` in one go.
    fn datafusion_result(stat: Stat, v: &[f64]) -> ScalarValue {
        use datafusion_functions_aggregate::variance::VarianceAccumulator as Df;
        use datafusion_functions_aggregate_common::stats::StatsType;
        let st = if matches!(stat, Stat::VarSample | Stat::StddevSample) {
            StatsType::Sample
        } else {
            StatsType::Population
        };
        let mut a = Df::try_new(st).unwrap();
        a.update_batch(&[array(v)]).unwrap();
        match (a.evaluate().unwrap(), stat) {
            (ScalarValue::Float64(x), Stat::StddevSample | Stat::StddevPopulation) => {
                ScalarValue::Float64(x.map(f64::sqrt))
            }
            (x, _) => x,
        }
    }

    const STATS: [Stat; 4] = [Stat::VarSample, Stat::VarPopulation, Stat::StddevSample, Stat::StddevPopulation];

    #[test]
    fn results_equal_datafusion_bit_for_bit_without_checkpoints() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let v = values(n, n as u64 + 1);
            for stat in STATS {
                let mut a = VarianceAccumulator { state: Welford::default(), stat };
                for chunk in v.chunks(7) {
                    a.update_batch(&[array(chunk)]).unwrap();
                }
                assert_eq!(a.evaluate().unwrap(), datafusion_result(stat, &v), "{stat:?} over {n} values");
            }
        }
    }

    /// A checkpoint in the middle (state taken, merged into a fresh accumulator, more input)
    /// gives exactly what no checkpoint gives — for the row and the groups accumulator.
    #[test]
    fn a_restore_mid_stream_changes_no_bit() {
        let v = values(500, 7);
        for stat in STATS {
            for cut in 1..v.len() {
                let mut whole = VarianceAccumulator { state: Welford::default(), stat };
                whole.update_batch(&[array(&v)]).unwrap();

                let mut first = VarianceAccumulator { state: Welford::default(), stat };
                first.update_batch(&[array(&v[..cut])]).unwrap();
                let st: Vec<ArrayRef> = first.state().unwrap().iter().map(|s| s.to_array().unwrap()).collect();
                let mut restored = VarianceAccumulator { state: Welford::default(), stat };
                restored.merge_batch(&st).unwrap();
                restored.update_batch(&[array(&v[cut..])]).unwrap();
                assert_eq!(restored.evaluate().unwrap(), whole.evaluate().unwrap(), "{stat:?} cut at {cut}");

                // Two groups, interleaved; state taken (destructively) and merged back, as a
                // checkpoint does, then the rest.
                let groups: Vec<usize> = (0..v.len()).map(|i| i % 2).collect();
                let run = |checkpoint: bool| {
                    let mut g = VarianceGroups { counts: vec![], means: vec![], m2s: vec![], stat };
                    g.update_batch(&[array(&v[..cut])], &groups[..cut], None, 2).unwrap();
                    if checkpoint {
                        let st = g.state(EmitTo::All).unwrap();
                        let mut fresh = VarianceGroups { counts: vec![], means: vec![], m2s: vec![], stat };
                        fresh.merge_batch(&st, &[0, 1], 2).unwrap();
                        g = fresh;
                    }
                    g.update_batch(&[array(&v[cut..])], &groups[cut..], None, 2).unwrap();
                    g.evaluate(EmitTo::All).unwrap()
                };
                assert_eq!(run(true).as_ref(), run(false).as_ref(), "{stat:?} groups cut at {cut}");
            }
        }
    }

    #[test]
    fn retract_undoes_update_and_empties() {
        let mut a = VarianceAccumulator { state: Welford::default(), stat: Stat::VarPopulation };
        a.update_batch(&[array(&[1.0, 2.0, 4.0])]).unwrap();
        a.retract_batch(&[array(&[1.0])]).unwrap();
        let ScalarValue::Float64(Some(v)) = a.evaluate().unwrap() else { panic!("no value") };
        assert!((v - 1.0).abs() < 1e-12, "{v}");
        a.retract_batch(&[array(&[2.0, 4.0])]).unwrap();
        assert_eq!(a.evaluate().unwrap(), ScalarValue::Float64(None));
        assert_eq!(a.state.count, 0);
    }
}
