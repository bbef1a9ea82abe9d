//! `AND` and `OR` that evaluate their right side only on the rows the left side leaves open, as
//! Flink (and SQL written for it) expects: `qty <> 0 AND 100 / qty > 1` never divides by zero.
//!
//! DataFusion's own operators skip the right side only when the left decides every row of a batch
//! (or few enough of them), so a batch mixing `qty = 0` and other rows fails with a division by
//! zero. Owns that rewrite and the expression it puts in place; it must never change a result
//! that both evaluations would give: the right side's values on the rows it is evaluated on are
//! combined by the same three-valued `and_kleene` / `or_kleene` as before.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::{and_kleene, or_kleene};
use arrow::datatypes::{DataType, Schema};
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{internal_err, ScalarValue};
use datafusion_expr::{ColumnarValue, Operator as BinaryOp};
use datafusion_physical_expr::expressions::{BinaryExpr, Column, IsNotNullExpr, IsNullExpr, Literal, NotExpr};
use datafusion_physical_expr::utils::collect_columns;
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_expr_common::utils::scatter;

use crate::error::Result;

/// `left AND right` or `left OR right`, the right side evaluated only where the left one does
/// not decide the row (AND: left not FALSE; OR: left not TRUE).
#[derive(Debug, Eq)]
pub struct ShortCircuit {
    is_and: bool,
    left: Arc<dyn PhysicalExpr>,
    right: Arc<dyn PhysicalExpr>,
    /// The input columns `right` reads, ascending: only these are filtered for it.
    right_columns: Vec<usize>,
    /// `right` reading `right_columns[i]` as column `i`.
    right_on_columns: Arc<dyn PhysicalExpr>,
}

impl ShortCircuit {
    fn new(is_and: bool, left: Arc<dyn PhysicalExpr>, right: Arc<dyn PhysicalExpr>) -> datafusion_common::Result<Self> {
        let mut right_columns: Vec<usize> = collect_columns(&right).iter().map(|c| c.index()).collect();
        right_columns.sort_unstable();
        right_columns.dedup();
        let right_on_columns = right
            .clone()
            .transform_up(|n| {
                let Some(c) = n.downcast_ref::<Column>() else { return Ok(Transformed::no(n)) };
                let Ok(i) = right_columns.binary_search(&c.index()) else {
                    return internal_err!("column {c} missing from the columns collected from its own tree");
                };
                Ok(Transformed::yes(Arc::new(Column::new(c.name(), i)) as Arc<dyn PhysicalExpr>))
            })?
            .data;
        Ok(ShortCircuit { is_and, left, right, right_columns, right_on_columns })
    }

    fn op_text(&self) -> &'static str {
        if self.is_and {
            "AND"
        } else {
            "OR"
        }
    }

    /// `left` combined with `right`, both as long as the batch.
    fn combine(&self, left: &BooleanArray, right: &dyn Array) -> datafusion_common::Result<ColumnarValue> {
        let Some(right) = right.as_boolean_opt() else {
            return internal_err!("{} gave {} instead of BOOLEAN", self.right, right.data_type());
        };
        let out = if self.is_and { and_kleene(left, right)? } else { or_kleene(left, right)? };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

// By hand: deriving them on `Arc<dyn PhysicalExpr>` fields does not compile (rust-lang #78808).
// The other fields follow from these three.
impl PartialEq for ShortCircuit {
    fn eq(&self, other: &Self) -> bool {
        self.is_and == other.is_and && self.left.eq(&other.left) && self.right.eq(&other.right)
    }
}

impl std::hash::Hash for ShortCircuit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.is_and.hash(state);
        self.left.hash(state);
        self.right.hash(state);
    }
}

impl ShortCircuit {
    /// Writes `left OP right`, with `one` writing each side; a side that is the other of AND / OR
    /// goes in parentheses.
    fn write_with(
        &self,
        f: &mut fmt::Formatter<'_>,
        one: impl Fn(&mut fmt::Formatter<'_>, &Arc<dyn PhysicalExpr>) -> fmt::Result,
    ) -> fmt::Result {
        let other = if self.is_and { BinaryOp::Or } else { BinaryOp::And };
        let side = |f: &mut fmt::Formatter<'_>, c: &Arc<dyn PhysicalExpr>| {
            let parens = c.downcast_ref::<ShortCircuit>().is_some_and(|c| c.is_and != self.is_and)
                || c.downcast_ref::<BinaryExpr>().is_some_and(|b| *b.op() == other);
            if parens {
                write!(f, "(")?;
                one(f, c)?;
                write!(f, ")")
            } else {
                one(f, c)
            }
        };
        side(f, &self.left)?;
        write!(f, " {} ", self.op_text())?;
        side(f, &self.right)
    }
}

impl fmt::Display for ShortCircuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_with(f, |f, c| write!(f, "{c}"))
    }
}

impl PhysicalExpr for ShortCircuit {
    fn data_type(&self, _input_schema: &Schema) -> datafusion_common::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> datafusion_common::Result<bool> {
        Ok(self.left.nullable(input_schema)? || self.right.nullable(input_schema)?)
    }

    fn evaluate(&self, batch: &RecordBatch) -> datafusion_common::Result<ColumnarValue> {
        let rows = batch.num_rows();
        // The left value that decides a row alone: FALSE for AND, TRUE for OR.
        let decides = !self.is_and;
        let left = match self.left.evaluate(batch)? {
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(v))) if v == decides => {
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(v))));
            }
            // TRUE AND x = x, FALSE OR x = x.
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(_))) => return self.right.evaluate(batch),
            other => other.into_array(rows)?,
        };
        let Some(left) = left.as_boolean_opt() else {
            return internal_err!("{} gave {} instead of BOOLEAN", self.left, left.data_type());
        };
        // Rows the right side decides: the left is NULL or not the deciding value.
        let open_bits = if decides { !left.values() } else { left.values().clone() };
        let open_bits = match left.nulls() {
            Some(valid) => &open_bits | &!valid.inner(),
            None => open_bits,
        };
        let open = open_bits.count_set_bits();
        if open == 0 {
            return Ok(ColumnarValue::Array(Arc::new(left.clone())));
        }
        if open == rows {
            let right = self.right.evaluate(batch)?.into_array(rows)?;
            return self.combine(left, &right);
        }
        let mask = BooleanArray::new(open_bits, None);
        let columns = batch.project(&self.right_columns)?;
        let some = filter_record_batch(&columns, &mask)?;
        let right = self.right_on_columns.evaluate(&some)?.into_array(some.num_rows())?;
        // NULL on the decided rows, where the left value wins either way.
        let right = scatter(&mask, right.as_ref())?;
        self.combine(left, &right)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.left, &self.right]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> datafusion_common::Result<Arc<dyn PhysicalExpr>> {
        let [left, right] = <[_; 2]>::try_from(children)
            .map_err(|c| datafusion_common::DataFusionError::Internal(format!("AND/OR given {} children", c.len())))?;
        Ok(Arc::new(ShortCircuit::new(self.is_and, left, right)?))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_with(f, |f, c| c.fmt_sql(f))
    }
}

/// `e` with every boolean `AND` / `OR` in it whose right side may fail evaluating that side only
/// where the left leaves a row open.
pub fn rewrite(e: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    let out = e.transform_up(|n| {
        let Some(b) = n.downcast_ref::<BinaryExpr>() else { return Ok(Transformed::no(n)) };
        let is_and = match b.op() {
            BinaryOp::And => true,
            BinaryOp::Or => false,
            _ => return Ok(Transformed::no(n)),
        };
        let boolean = |e: &Arc<dyn PhysicalExpr>| e.data_type(schema).map(|t| t == DataType::Boolean);
        if !boolean(b.left())? || !boolean(b.right())? || cannot_fail(b.right()) {
            return Ok(Transformed::no(n));
        }
        let s = ShortCircuit::new(is_and, b.left().clone(), b.right().clone())?;
        Ok(Transformed::yes(Arc::new(s) as Arc<dyn PhysicalExpr>))
    })?;
    Ok(out.data)
}

/// Whether `e` surely evaluates without error on any row: comparisons, IS NULL and logic over
/// columns and literals. Such a right side is cheaper evaluated on the whole batch than on the
/// rows filtered out for it (Nexmark q15's `price >= 10000 AND price < 1000000`), and doing so
/// cannot be told apart.
pub fn cannot_fail(e: &Arc<dyn PhysicalExpr>) -> bool {
    let safe_node = |n: &Arc<dyn PhysicalExpr>| {
        n.is::<Column>()
            || n.is::<Literal>()
            || n.is::<IsNullExpr>()
            || n.is::<IsNotNullExpr>()
            || n.is::<NotExpr>()
            || is_short_circuit(n.as_ref())
            || n.downcast_ref::<BinaryExpr>().is_some_and(|b| {
                matches!(
                    b.op(),
                    BinaryOp::Eq
                        | BinaryOp::NotEq
                        | BinaryOp::Lt
                        | BinaryOp::LtEq
                        | BinaryOp::Gt
                        | BinaryOp::GtEq
                        | BinaryOp::IsDistinctFrom
                        | BinaryOp::IsNotDistinctFrom
                        | BinaryOp::And
                        | BinaryOp::Or
                )
            })
    };
    !e.exists(|n| Ok(!safe_node(n))).unwrap_or(true)
}

/// Whether `e` is an AND / OR whose right side may not run on every row.
pub fn is_short_circuit(e: &dyn PhysicalExpr) -> bool {
    e.is::<ShortCircuit>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::Field;
    use datafusion_common::DFSchema;
    use datafusion_expr::execution_props::ExecutionProps;
    use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion_expr::{col, lit, Expr};
    use datafusion_physical_expr::create_physical_expr;
    use proptest::prelude::*;

    fn plain(e: Expr, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema.clone()).unwrap();
        create_physical_expr(&e, &df, &ExecutionProps::new(), &PhysicalPlanningContext::default()).unwrap()
    }

    fn lazy(e: Expr, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        rewrite(plain(e, schema), schema).unwrap()
    }

    /// Every AND / OR lazy, even where `rewrite` keeps them eager because they cannot fail.
    fn all_lazy(e: Expr, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let out = plain(e, schema).transform_up(|n| {
            let Some(b) = n.downcast_ref::<BinaryExpr>() else { return Ok(Transformed::no(n)) };
            if !matches!(b.op(), BinaryOp::And | BinaryOp::Or) {
                return Ok(Transformed::no(n));
            }
            let s = ShortCircuit::new(*b.op() == BinaryOp::And, b.left().clone(), b.right().clone())?;
            Ok(Transformed::yes(Arc::new(s) as Arc<dyn PhysicalExpr>))
        });
        out.unwrap().data
    }

    fn bools(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Vec<Option<bool>> {
        let v = e.evaluate(batch).unwrap().into_array(batch.num_rows()).unwrap();
        v.as_boolean().iter().collect()
    }

    #[test]
    fn the_left_side_guards_the_right_on_mixed_batches() {
        // `name` first, so the right side's column is not column 0 of the batch.
        let schema =
            Schema::new(vec![Field::new("name", DataType::Utf8, true), Field::new("qty", DataType::Int64, true)]);
        let qty: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), Some(0), None, Some(20), Some(0), Some(4)]));
        let name: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["a"; 6]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![name, qty]).unwrap();
        let div_big = || (lit(100i64) / col("qty")).gt(lit(10i64));
        let and = col("qty").not_eq(lit(0i64)).and(div_big());
        // DataFusion's AND divides on every row of a batch this mixed.
        assert!(plain(and.clone(), &schema).evaluate(&batch).is_err());
        let and = lazy(and, &schema);
        assert_eq!(and.to_string(), "qty@1 != 0 AND 100 / qty@1 > 10");
        assert_eq!(bools(&and, &batch), [Some(true), Some(false), None, Some(false), Some(false), Some(true)]);
        let or = lazy(col("qty").eq(lit(0i64)).or(div_big()), &schema);
        assert_eq!(bools(&or, &batch), [Some(true), Some(true), None, Some(false), Some(true), Some(true)]);
        // Every row decided by the left: the right is not evaluated at all.
        let zeros = batch.slice(4, 1);
        assert_eq!(bools(&and, &zeros), [Some(false)]);
    }

    #[test]
    fn only_a_right_side_that_may_fail_is_made_lazy() {
        let schema = Schema::new(vec![Field::new("qty", DataType::Int64, true)]);
        let range = lazy(col("qty").gt_eq(lit(1i64)).and(col("qty").lt(lit(9i64)).or(col("qty").is_null())), &schema);
        assert!(!is_short_circuit(range.as_ref()));
        let guarded = lazy(col("qty").gt_eq(lit(1i64)).and((lit(9i64) / col("qty")).lt(lit(2i64))), &schema);
        assert!(is_short_circuit(guarded.as_ref()));
    }

    #[test]
    fn nests_and_rebuilds_from_its_children() {
        let schema = Schema::new(vec![Field::new("a", DataType::Boolean, true)]);
        let e = all_lazy(col("a").and(col("a").or(lit(false))), &schema);
        assert!(is_short_circuit(e.as_ref()));
        assert!(e.children().iter().any(|c| is_short_circuit(c.as_ref())));
        assert_eq!(e.to_string(), "a@0 AND (a@0 OR false)");
        // Rebuilt from its children (as tree rewrites do), it is the same expression.
        let again = e.clone().with_new_children(e.children().into_iter().cloned().collect()).unwrap();
        assert!(again.eq(&e));
    }

    fn column() -> impl Strategy<Value = Vec<Option<bool>>> {
        prop::collection::vec(prop::option::of(any::<bool>()), 24)
    }

    proptest! {
        /// The same three-valued results as evaluating both sides everywhere.
        #[test]
        fn gives_kleene_logic(a in column(), b in column(), c in column()) {
            let fields = ["a", "b", "c"].map(|n| Field::new(n, DataType::Boolean, true));
            let schema = Schema::new(fields.to_vec());
            let cols: Vec<ArrayRef> = [a, b, c].into_iter().map(|v| Arc::new(BooleanArray::from(v)) as ArrayRef).collect();
            let batch = RecordBatch::try_new(Arc::new(schema.clone()), cols).unwrap();
            for e in [
                col("a").and(col("b")),
                col("a").or(col("b")),
                col("a").and(col("b").or(col("c"))),
                col("a").or(col("b").and(col("c"))).and(col("c").or(col("a"))),
            ] {
                prop_assert_eq!(bools(&all_lazy(e.clone(), &schema), &batch), bools(&plain(e, &schema), &batch));
            }
        }
    }
}
