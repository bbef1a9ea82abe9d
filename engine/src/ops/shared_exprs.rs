//! Sub-expressions that a filter and the projection after it (or one projection) would evaluate
//! more than once per batch: computed once, appended to the batch as trailing columns, and read by
//! column from then on.
//!
//! Owns choosing what to share, rewriting the expressions to read it, and extending batches with
//! it. It must never evaluate anything on a row where the query would not have: an expression is
//! shared only if one of its occurrences runs on every row (not on the right of AND/OR, not in a
//! CASE branch after its first WHEN, not in a short-circuiting function's later arguments), so a
//! division by zero guarded by a CASE stays guarded. Volatile expressions (`random()`) are never
//! shared, and nothing is looked into that this module does not know (a lambda's body may read
//! variables that only exist inside it).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion_common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion_expr::Operator as BinaryOp;
use datafusion_physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NegativeExpr,
    NotExpr, TryCastExpr,
};
use datafusion_physical_expr::utils::collect_columns;
use datafusion_physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use super::short_circuit;
use crate::error::Result;

/// What is known of one distinct sub-expression.
#[derive(Default)]
struct Seen {
    count: usize,
    /// Some occurrence runs on every row.
    sure: bool,
}

/// Expressions this module knows how to look into; anything else is opaque.
fn known(e: &dyn PhysicalExpr) -> bool {
    e.is::<BinaryExpr>()
        || short_circuit::is_short_circuit(e)
        || e.is::<CaseExpr>()
        || e.is::<ScalarFunctionExpr>()
        || e.is::<CastExpr>()
        || e.is::<TryCastExpr>()
        || e.is::<IsNullExpr>()
        || e.is::<IsNotNullExpr>()
        || e.is::<NotExpr>()
        || e.is::<NegativeExpr>()
        || e.is::<InListExpr>()
        || e.is::<LikeExpr>()
}

fn is_leaf(e: &dyn PhysicalExpr) -> bool {
    e.is::<Column>() || e.is::<Literal>()
}

/// How many of `e`'s leading children run on every row that `e` runs on; the rest may not.
fn sure_children(e: &dyn PhysicalExpr) -> usize {
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        if matches!(b.op(), BinaryOp::And | BinaryOp::Or) {
            return 1;
        }
    }
    if short_circuit::is_short_circuit(e) {
        return 1;
    }
    if let Some(c) = e.downcast_ref::<CaseExpr>() {
        // The operand (`CASE x WHEN ...`) and the first WHEN.
        return usize::from(c.expr().is_some()) + 1;
    }
    if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
        if f.fun().short_circuits() {
            return 1;
        }
    }
    usize::MAX
}

fn walk(e: &Arc<dyn PhysicalExpr>, sure: bool, seen: &mut HashMap<Arc<dyn PhysicalExpr>, Seen>) {
    if is_leaf(e.as_ref()) || !known(e.as_ref()) {
        return;
    }
    let s = seen.entry(e.clone()).or_default();
    s.count += 1;
    s.sure |= sure;
    let sure_prefix = sure_children(e.as_ref());
    for (i, c) in e.children().into_iter().enumerate() {
        walk(c, sure && i < sure_prefix, seen);
    }
}

fn node_count(e: &Arc<dyn PhysicalExpr>) -> usize {
    let mut n = 0;
    // The closure cannot fail, so neither can the walk.
    let _ = e.apply(|_| {
        n += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

/// Whether `e` or anything in it gives a new value each time (`random()`).
fn is_volatile(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.exists(|n| Ok(n.is_volatile_node())).unwrap_or(true)
}

fn contains(outer: &Arc<dyn PhysicalExpr>, inner: &Arc<dyn PhysicalExpr>) -> bool {
    outer.exists(|n| Ok(n == inner)).unwrap_or(false)
}

/// The sub-expressions worth computing once for a batch: those that occur at least twice across
/// `sure` and `also`, with an occurrence in `sure` that runs on every row. `sure` are evaluated on
/// every row of the batch; `also` on some of its rows (a projection after the filter in `sure`).
/// Largest first; one that lies inside another chosen one is left to that one.
pub fn find(sure: &[Arc<dyn PhysicalExpr>], also: &[Arc<dyn PhysicalExpr>]) -> Vec<Arc<dyn PhysicalExpr>> {
    let mut seen = HashMap::new();
    sure.iter().for_each(|e| walk(e, true, &mut seen));
    also.iter().for_each(|e| walk(e, false, &mut seen));
    let mut candidates: Vec<(usize, Arc<dyn PhysicalExpr>)> = seen
        .into_iter()
        .filter(|(e, s)| s.count >= 2 && s.sure && !collect_columns(e).is_empty() && !is_volatile(e))
        .map(|(e, _)| (node_count(&e), e))
        .collect();
    // By size, then by text: the choice must not depend on the hash map's order, since the
    // trailing columns' order follows it.
    candidates.sort_by_cached_key(|(n, e)| (std::cmp::Reverse(*n), e.to_string()));
    let mut chosen: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for (_, e) in candidates {
        if !chosen.iter().any(|c| contains(c, &e)) {
            chosen.push(e);
        }
    }
    chosen
}

/// `e` with every occurrence of `shared[i]` read from column `first_col + i` instead.
pub fn rewrite(
    e: &Arc<dyn PhysicalExpr>,
    shared: &[Arc<dyn PhysicalExpr>],
    first_col: usize,
) -> Result<Arc<dyn PhysicalExpr>> {
    let out = e.clone().transform_down(|n| {
        if let Some(i) = shared.iter().position(|s| s == &n) {
            let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(&column_name(i), first_col + i));
            return Ok(Transformed::new(col, true, TreeNodeRecursion::Jump));
        }
        // Opaque nodes keep their insides as they are (see the module's comment).
        let recursion = if is_leaf(n.as_ref()) || known(n.as_ref()) {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Jump
        };
        Ok(Transformed::new(n, false, recursion))
    })?;
    Ok(out.data)
}

fn column_name(i: usize) -> String {
    format!("__shared_{i}")
}

/// Shared sub-expressions of one operator, evaluated on its input batches.
pub struct SharedExprs {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The extended schema, for the input schema it was made for (batches of one stream share
    /// their schema, so this is built once).
    schema: Option<(SchemaRef, SchemaRef)>,
}

impl SharedExprs {
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        SharedExprs { exprs, schema: None }
    }

    /// The types of the appended columns for an input of `input` schema, for planning.
    pub fn fields(&self, input: &Schema) -> Result<Vec<Field>> {
        self.exprs.iter().enumerate().map(|(i, e)| Ok(Field::new(column_name(i), e.data_type(input)?, true))).collect()
    }

    /// `batch` with the shared expressions' values appended as columns.
    pub fn extend(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut cols = batch.columns().to_vec();
        for e in &self.exprs {
            cols.push(e.evaluate(batch)?.into_array(n)?);
        }
        let input = batch.schema();
        let schema = match &self.schema {
            Some((made_for, schema)) if Arc::ptr_eq(made_for, &input) => schema.clone(),
            _ => {
                let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
                let first = fields.len();
                fields.extend(
                    cols[first..]
                        .iter()
                        .enumerate()
                        .map(|(i, c)| Field::new(column_name(i), c.data_type().clone(), true)),
                );
                let schema = Arc::new(Schema::new(fields));
                self.schema = Some((input, schema.clone()));
                schema
            }
        };
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(schema, cols, &options)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use datafusion_common::DFSchema;
    use datafusion_expr::execution_props::ExecutionProps;
    use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion_expr::{col, lit, when, Expr};
    use datafusion_functions::expr_fn::{lower, upper};
    use datafusion_functions::math::expr_fn::random;
    use datafusion_physical_expr::create_physical_expr;

    fn schema() -> Schema {
        Schema::new(vec![Field::new("qty", DataType::Int64, true), Field::new("channel", DataType::Utf8, true)])
    }

    fn phys(e: Expr) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema()).unwrap();
        create_physical_expr(&e, &df, &ExecutionProps::new(), &PhysicalPlanningContext::default()).unwrap()
    }

    fn names(shared: &[Arc<dyn PhysicalExpr>]) -> Vec<String> {
        shared.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn shares_what_the_filter_surely_evaluates_with_the_projection() {
        let lowered = || lower(col("channel"));
        let filter = phys((lit(100i64) / col("qty")).gt(lit(3i64)).or(lowered().eq(lit("apple"))));
        let case = when(lowered().eq(lit("apple")), lit("0")).otherwise(lit(100i64) / col("qty")).unwrap();
        let projection = [phys(case), phys(lit(100i64) / col("qty"))];
        // `100 / qty` runs on every row in the WHERE; `lower(channel)` only on the right of OR.
        assert_eq!(names(&find(&[filter], &projection)), ["100 / qty@0"]);
        // Within the projection, `lower(channel)` runs on every row (the first WHEN) and again.
        let projection =
            [phys(when(lowered().eq(lit("a")), lit(1i64)).when(lowered().eq(lit("b")), lit(2i64)).end().unwrap())];
        assert_eq!(names(&find(&projection, &[])), ["lower(channel@1)"]);
    }

    #[test]
    fn never_shares_what_might_not_have_run_or_changes_each_time() {
        let div = || lit(100i64) / col("qty");
        // Guarded by CASE in the WHERE: sharing would divide by zero where qty = 0.
        let guarded = phys(when(col("qty").eq(lit(0i64)), lit(false)).otherwise(div().gt_eq(lit(10i64))).unwrap());
        assert!(find(&[guarded], &[phys(div())]).is_empty());
        // On the right of AND.
        let and = phys(col("qty").not_eq(lit(0i64)).and(div().gt(lit(1i64))));
        assert!(find(std::slice::from_ref(&and), &[phys(div())]).is_empty());
        // The same as the planner gives it, evaluating its right side lazily.
        let and = short_circuit::rewrite(and, &schema()).unwrap();
        assert!(find(&[and], &[phys(div())]).is_empty());
        // In COALESCE's later arguments, twice.
        let both = [phys(datafusion_functions::expr_fn::coalesce(vec![col("qty"), div()])), phys(div())];
        assert!(find(&both[..1], &both[1..]).is_empty());
        // Volatile, or reading no column.
        let r = || (random() * lit(10.0)).gt(lit(5.0));
        assert!(find(&[phys(r()), phys(r())], &[]).is_empty());
        assert!(find(&[phys(lit(1i64) + lit(2i64)), phys(lit(1i64) + lit(2i64))], &[]).is_empty());
    }

    #[test]
    fn rewritten_expressions_give_the_same_values_on_the_extended_batch() {
        let batch = RecordBatch::try_new(
            Arc::new(schema()),
            vec![
                Arc::new(Int64Array::from(vec![Some(4), None, Some(7)])) as ArrayRef,
                Arc::new(StringArray::from(vec![Some("Apple"), Some("x"), None])) as ArrayRef,
            ],
        )
        .unwrap();
        let exprs = [
            phys(upper(col("channel"))),
            phys(datafusion_functions::expr_fn::concat(vec![upper(col("channel")), lit("!")])),
            phys((col("qty") + lit(1i64)) * (col("qty") + lit(1i64))),
        ];
        let shared = find(&exprs, &[]);
        assert_eq!(shared.len(), 2, "{:?}", names(&shared));
        let rewritten: Vec<_> = exprs.iter().map(|e| rewrite(e, &shared, 2).unwrap()).collect();
        assert!(rewritten.iter().all(|e| e.to_string().contains("__shared_")));
        let mut s = SharedExprs::new(shared);
        let extended = s.extend(&batch).unwrap();
        assert_eq!(extended.num_columns(), 4);
        for (e, r) in exprs.iter().zip(&rewritten) {
            let want = e.evaluate(&batch).unwrap().into_array(3).unwrap();
            let got = r.evaluate(&extended).unwrap().into_array(3).unwrap();
            assert_eq!(want.to_data(), got.to_data(), "{e}");
        }
        // A second batch of the same schema reuses the extended schema.
        let again = s.extend(&batch).unwrap();
        assert!(Arc::ptr_eq(&again.schema(), &extended.schema()));
    }
}
