//! `CASE WHEN c1 THEN v1 ... [ELSE e] END` whose every part cannot fail (columns, literals,
//! comparisons, IS NULL, logic), evaluated over the whole batch: each row's branch is found from
//! the WHENs' values, and the result is gathered from the branches' values in one pass.
//!
//! Why: DataFusion filters the batch down to the rows still open after each WHEN, so that a
//! branch runs only on its own rows (which a branch that may fail needs). For branches that
//! cannot fail that filtering is most of the cost: Nexmark q21's four-way `CASE` over
//! `lower(channel)` spent half its time copying the open rows' strings.
//!
//! Owns that rewrite and the expression it puts in place. It must never change a result: a row
//! takes the first WHEN that is TRUE on it (NULL counts as not TRUE), as in DataFusion, and any
//! batch whose branch values do not all have the CASE's type is handed to DataFusion's CASE, kept
//! inside. It rewrites only what cannot fail, so evaluating a branch on rows that do not take it
//! is never seen; it must run after `shared_exprs`, whose columns are what make a branch simple.

use std::fmt;
use std::sync::Arc;

use arrow::array::{new_empty_array, new_null_array, Array, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Schema};
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{internal_err, ScalarValue};
use datafusion_expr::ColumnarValue;
use datafusion_physical_expr::expressions::CaseExpr;
use datafusion_physical_expr::PhysicalExpr;

use super::short_circuit::cannot_fail;
use crate::error::Result;

/// A searched `CASE` over parts that cannot fail, evaluated eagerly.
#[derive(Debug, Eq)]
pub struct EagerCase {
    /// DataFusion's CASE: what is shown, and what runs on a batch this module cannot do.
    case: Arc<dyn PhysicalExpr>,
    when_then: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    else_expr: Option<Arc<dyn PhysicalExpr>>,
}

// By hand: deriving them on `Arc<dyn PhysicalExpr>` fields does not compile (rust-lang #78808).
// The other fields follow from `case`.
impl PartialEq for EagerCase {
    fn eq(&self, other: &Self) -> bool {
        self.case.eq(&other.case)
    }
}

impl std::hash::Hash for EagerCase {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.case.hash(state);
    }
}

impl fmt::Display for EagerCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.case)
    }
}

impl EagerCase {
    /// `case` eagerly, if it is a searched CASE whose every part cannot fail.
    fn of(case: &Arc<dyn PhysicalExpr>) -> Option<Self> {
        let c = case.downcast_ref::<CaseExpr>()?;
        if c.expr().is_some() || c.when_then_expr().is_empty() {
            return None;
        }
        let parts_safe = c.when_then_expr().iter().all(|(w, t)| cannot_fail(w) && cannot_fail(t))
            && c.else_expr().is_none_or(cannot_fail);
        parts_safe.then(|| EagerCase {
            case: case.clone(),
            when_then: c.when_then_expr().to_vec(),
            else_expr: c.else_expr().cloned(),
        })
    }

    /// Each row's branch: the index of its first TRUE WHEN, or `when_then.len()` (the ELSE).
    fn branches(&self, batch: &RecordBatch) -> datafusion_common::Result<Vec<u32>> {
        let rows = batch.num_rows();
        // Fewer than u32::MAX WHENs: a CASE that long is never planned.
        let mut branch = vec![self.when_then.len() as u32; rows];
        let mut open = BooleanBuffer::new_set(rows);
        let mut open_rows = rows;
        for (i, (when, _)) in self.when_then.iter().enumerate() {
            if open_rows == 0 {
                break;
            }
            let taken = match when.evaluate(batch)? {
                ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => open.clone(),
                ColumnarValue::Scalar(_) => continue,
                ColumnarValue::Array(values) => {
                    let Some(values) = values.as_boolean_opt() else {
                        return internal_err!("WHEN {when} gave {} instead of BOOLEAN", values.data_type());
                    };
                    // TRUE and not NULL, on a row no earlier WHEN took.
                    let taken = values.values() & &open;
                    match values.nulls() {
                        Some(valid) => &taken & valid.inner(),
                        None => taken,
                    }
                }
            };
            for row in taken.set_indices() {
                branch[row] = i as u32;
            }
            open_rows -= taken.count_set_bits();
            open = &open & &!&taken;
        }
        Ok(branch)
    }
}

impl PhysicalExpr for EagerCase {
    fn data_type(&self, input_schema: &Schema) -> datafusion_common::Result<DataType> {
        self.case.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> datafusion_common::Result<bool> {
        self.case.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> datafusion_common::Result<ColumnarValue> {
        let rows = batch.num_rows();
        let data_type = self.case.data_type(&batch.schema())?;
        if rows == 0 {
            return Ok(ColumnarValue::Array(new_empty_array(&data_type)));
        }
        let branch = self.branches(batch)?;
        // Each branch's values, evaluated only if some row takes it; a constant is one row.
        let mut values: Vec<Option<(ArrayRef, bool)>> = vec![None; self.when_then.len() + 1];
        let mut evaluated = 0;
        for &b in &branch {
            if evaluated == values.len() {
                break; // every branch is in hand: the rest of the rows name none that is not
            }
            let slot = &mut values[b as usize];
            if slot.is_some() {
                continue;
            }
            evaluated += 1;
            let expr = match self.when_then.get(b as usize) {
                Some((_, then)) => Some(then),
                None => self.else_expr.as_ref(),
            };
            *slot = Some(match expr.map(|e| e.evaluate(batch)).transpose()? {
                Some(ColumnarValue::Array(a)) => (a, false),
                Some(ColumnarValue::Scalar(s)) => (s.to_array_of_size(1)?, true),
                None => (new_null_array(&data_type, 1), true),
            });
            if slot.as_ref().is_some_and(|(a, _)| a.data_type() != &data_type) {
                return self.case.evaluate(batch);
            }
        }
        // One branch for every row, and not a constant: its values are the result.
        if let Some(&first) = branch.first() {
            if let Some((a, false)) = &values[first as usize] {
                if branch.iter().all(|&b| b == first) {
                    return Ok(ColumnarValue::Array(a.clone()));
                }
            }
        }
        let sources: Vec<&dyn Array> = values.iter().flatten().map(|(a, _)| a.as_ref()).collect();
        // Where each branch's values sit among `sources`, which skips the branches no row took.
        let mut source_of = vec![0usize; values.len()];
        let mut next = 0;
        for (b, v) in values.iter().enumerate() {
            if v.is_some() {
                source_of[b] = next;
                next += 1;
            }
        }
        let indices: Vec<(usize, usize)> = branch
            .iter()
            .enumerate()
            .map(|(row, &b)| {
                let constant = values[b as usize].as_ref().is_some_and(|(_, c)| *c);
                (source_of[b as usize], if constant { 0 } else { row })
            })
            .collect();
        debug_assert_eq!(indices.len(), rows);
        Ok(ColumnarValue::Array(interleave(&sources, &indices)?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.case.children()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> datafusion_common::Result<Arc<dyn PhysicalExpr>> {
        let case = self.case.clone().with_new_children(children)?;
        Ok(match EagerCase::of(&case) {
            Some(eager) => Arc::new(eager),
            None => case,
        })
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.case.fmt_sql(f)
    }
}

/// `e` with every searched CASE in it whose parts cannot fail evaluated eagerly.
pub fn rewrite(e: &Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    let out = e.clone().transform_up(|n| match EagerCase::of(&n) {
        Some(eager) => Ok(Transformed::yes(Arc::new(eager) as Arc<dyn PhysicalExpr>)),
        None => Ok(Transformed::no(n)),
    })?;
    Ok(out.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use datafusion_common::DFSchema;
    use datafusion_expr::execution_props::ExecutionProps;
    use datafusion_expr::{col, lit, when, Expr};
    use datafusion_physical_expr::create_physical_expr;
    use proptest::prelude::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Utf8, true),
        ])
    }

    fn phys(e: Expr) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema()).unwrap();
        create_physical_expr(&e, &df, &ExecutionProps::new(), &Default::default()).unwrap()
    }

    fn batch(s: Vec<Option<&str>>, n: Vec<Option<i64>>, t: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(schema()),
            vec![Arc::new(StringArray::from(s)), Arc::new(Int64Array::from(n)), Arc::new(StringArray::from(t))],
        )
        .unwrap()
    }

    /// DataFusion's value and ours, after checking that the rewrite applied.
    fn both(e: Expr, batch: &RecordBatch) -> (ArrayRef, ArrayRef) {
        let theirs = phys(e);
        let ours = rewrite(&theirs).unwrap();
        assert!(ours.is::<EagerCase>(), "{theirs} was not rewritten");
        let rows = batch.num_rows();
        (
            ours.evaluate(batch).unwrap().into_array(rows).unwrap(),
            theirs.evaluate(batch).unwrap().into_array(rows).unwrap(),
        )
    }

    /// q21's shape: constant THENs, a column ELSE.
    fn q21() -> Expr {
        when(col("s").eq(lit("apple")), lit("0"))
            .when(col("s").eq(lit("google")), lit("1"))
            .when(col("s").eq(lit("baidu")), lit("3"))
            .otherwise(col("t"))
            .unwrap()
    }

    #[test]
    fn nexmark_q21s_channel_case() {
        let b = batch(
            vec![Some("apple"), None, Some("baidu"), Some("x"), Some("google"), Some("apple")],
            vec![Some(1); 6],
            vec![Some("a"), Some("b"), None, Some("d"), Some("e"), Some("f")],
        );
        let (ours, theirs) = both(q21(), &b);
        assert_eq!(&ours, &theirs);
        let expected: ArrayRef =
            Arc::new(StringArray::from(vec![Some("0"), Some("b"), Some("3"), Some("d"), Some("1"), Some("0")]));
        assert_eq!(&ours, &expected);
    }

    #[test]
    fn what_may_fail_stays_datafusions() {
        let guarded = when(col("n").eq(lit(0i64)), lit(0i64)).otherwise(lit(100i64) / col("n")).unwrap();
        let upper = when(col("n").gt(lit(0i64)), datafusion_functions::expr_fn::upper(col("s"))).end().unwrap();
        let simple = Expr::Case(datafusion_expr::expr::Case::new(
            Some(Box::new(col("n"))),
            vec![(Box::new(lit(1i64)), Box::new(lit("one")))],
            None,
        ));
        for e in [guarded, upper, simple] {
            let p = phys(e);
            assert!(!rewrite(&p).unwrap().is::<EagerCase>(), "{p} was rewritten");
        }
    }

    proptest! {
        #[test]
        fn same_values_as_datafusions_case(
            rows in proptest::collection::vec(
                (proptest::option::of("[ab]{0,2}"), proptest::option::of(-2i64..3), proptest::option::of("[xy]{0,3}")),
                0..24,
            ),
            shape in 0usize..4,
        ) {
            let s = rows.iter().map(|r| r.0.as_deref()).collect();
            let n = rows.iter().map(|r| r.1).collect();
            let t = rows.iter().map(|r| r.2.as_deref()).collect();
            let b = batch(s, n, t);
            let e = match shape {
                0 => q21(),
                // No ELSE: NULL where no WHEN holds; WHENs that overlap.
                1 => when(col("n").gt(lit(0i64)), col("t")).when(col("n").gt(lit(-1i64)), col("s")).end().unwrap(),
                // A constant WHEN, and NULL WHENs (s IS NULL makes `s = 'a'` NULL).
                2 => when(lit(false), lit(1i64))
                    .when(col("s").eq(lit("a")).or(col("n").lt(lit(0i64))), col("n"))
                    .when(lit(true), lit(7i64))
                    .end()
                    .unwrap(),
                // Every row the same branch is common: a column THEN alone.
                _ => when(col("n").is_null().or(col("n").is_not_null()), col("t")).otherwise(lit("z")).unwrap(),
            };
            let (ours, theirs) = both(e, &b);
            prop_assert_eq!(&ours, &theirs);
        }
    }
}
