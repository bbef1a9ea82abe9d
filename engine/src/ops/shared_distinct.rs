//! `COUNT(DISTINCT x)` over BIGINT for per-group accumulators ([`super::agg::RowAccs`]) when
//! several such aggregates take the same argument and differ only in `FILTER` (Nexmark q16:
//! `COUNT(DISTINCT bidder)` and three `... FILTER (WHERE price ...)`): one map per group from value
//! to a bit per aggregate that has seen it, so a row is looked up once rather than once per
//! aggregate that takes it, and a value is held once.
//!
//! Per aggregate, result, state and merge are those of DataFusion's `COUNT(DISTINCT)` (a one-row
//! list of its values), so a checkpoint written by either restores into the other. Owns no other
//! aggregate; must never change a result, only how fast it is reached.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use datafusion_common::utils::SingleRowListArrayBuilder;
use datafusion_common::ScalarValue;

use super::range_count::wrong_type;
use crate::error::Result;

/// Aggregates one set can serve: one bit each in a `u32`.
pub const MAX_MEMBERS: usize = 32;

/// One group's distinct values of one argument, for up to [`MAX_MEMBERS`] aggregates.
#[derive(Debug)]
pub struct SharedDistinct {
    /// Value -> the members that have seen it (bit `m` for member `m`).
    seen: HashMap<i64, u32, ahash::RandomState>,
    /// Per member, how many values have its bit.
    counts: Box<[i64]>,
}

impl SharedDistinct {
    pub fn new(members: usize) -> Self {
        assert!((1..=MAX_MEMBERS).contains(&members), "the planner groups at most MAX_MEMBERS aggregates");
        SharedDistinct { seen: HashMap::default(), counts: vec![0; members].into_boxed_slice() }
    }

    /// Marks `value` as seen by the members whose bits are in `mask`.
    #[inline]
    pub fn insert(&mut self, value: i64, mask: u32) {
        debug_assert!(mask >> self.counts.len() == 0, "a bit past the members");
        let seen = self.seen.entry(value).or_insert(0);
        let mut new = mask & !*seen;
        *seen |= mask;
        while new != 0 {
            self.counts[new.trailing_zeros() as usize] += 1;
            new &= new - 1;
        }
    }

    /// Member `member`'s `COUNT(DISTINCT)`.
    pub fn count(&self, member: usize) -> i64 {
        self.counts[member]
    }

    /// Member `member`'s state as DataFusion's `COUNT(DISTINCT)` writes it: a one-row list of
    /// the values it has seen.
    pub fn state(&self, member: usize) -> ScalarValue {
        let bit = 1u32 << member;
        let values = Int64Array::from_iter_values(self.seen.iter().filter(|(_, m)| *m & bit != 0).map(|(v, _)| *v));
        SingleRowListArrayBuilder::new(Arc::new(values)).build_list_scalar()
    }

    /// Folds states of member `member` (lists of values, as [`SharedDistinct::state`] and
    /// DataFusion's `COUNT(DISTINCT)` write them) into the set.
    pub fn merge(&mut self, member: usize, states: &[ArrayRef]) -> Result<()> {
        let lists = states.first().and_then(|s| s.as_list_opt::<i32>()).ok_or_else(|| wrong_type("COUNT(DISTINCT)"))?;
        for list in lists.iter().flatten() {
            let list = list.as_primitive_opt::<Int64Type>().ok_or_else(|| wrong_type("COUNT(DISTINCT)"))?;
            list.iter().flatten().for_each(|v| self.insert(v, 1 << member));
        }
        Ok(())
    }

    pub fn size(&self) -> usize {
        size_of_val(self) + self.seen.capacity() * (size_of::<(i64, u32)>() + 1) + self.counts.len() * size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_member_once_per_value() {
        let mut s = SharedDistinct::new(3);
        s.insert(5, 0b011);
        s.insert(5, 0b001);
        s.insert(7, 0b100);
        s.insert(5, 0b110);
        assert_eq!((s.count(0), s.count(1), s.count(2)), (1, 1, 2));
        let back = {
            let mut b = SharedDistinct::new(3);
            for m in 0..3 {
                b.merge(m, &[s.state(m).to_array().unwrap()]).unwrap();
            }
            b
        };
        assert_eq!((back.count(0), back.count(1), back.count(2)), (1, 1, 2));
        assert_eq!(back.seen, s.seen);
    }
}
