//! `ASOF JOIN`: DataFusion's SQL planner has no plan for it, so the query's AST is reshaped first
//! ([`nest_asof_joins`]: each ASOF join becomes the last join of a nested join) and the streaming
//! relation planner turns that nested join into an [`AsofJoinNode`].

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion_common::{plan_err, DFSchemaRef, Result as DfResult};
use datafusion_expr::planner::{PlannedRelation, RelationPlannerContext};
use datafusion_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion_sql::sqlparser::ast::{
    Expr as SqlExpr, JoinConstraint, JoinOperator, Query, SetExpr, TableFactor, TableWithJoins, Value, VisitMut,
    VisitorMut,
};

/// `left ASOF JOIN right ON keys AND left.t >= right.t`: the condition is planned against both
/// sides; the streaming planner splits it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsofJoinNode {
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    pub on: Expr,
    pub schema: DFSchemaRef,
}

impl PartialOrd for AsofJoinNode {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

impl UserDefinedLogicalNodeCore for AsofJoinNode {
    fn name(&self) -> &str {
        "AsofJoin"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AsofJoin: {}", self.on)
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let (Some(right), Some(left)) = (inputs.pop(), inputs.pop()) else {
            return plan_err!("ASOF JOIN takes two inputs");
        };
        Ok(AsofJoinNode { left, right, on: self.on.clone(), schema: self.schema.clone() })
    }
}

fn is_asof(op: &JoinOperator) -> bool {
    matches!(op, JoinOperator::AsOf { .. })
}

/// `a ASOF JOIN b ON .. JOIN c ON ..` → `(a ASOF JOIN b ON ..) JOIN c ON ..`, so that every ASOF
/// join is the last join of a nested join the relation planner sees whole. `nested`: `t` is already
/// the inside of a nested join, where an ASOF join may stay last.
fn nest(t: &mut TableWithJoins, nested: bool) {
    while let Some(k) = t.joins.iter().position(|j| is_asof(&j.join_operator)) {
        if nested && k + 1 == t.joins.len() {
            break;
        }
        let head: Vec<_> = t.joins.drain(..=k).collect();
        let relation = std::mem::replace(&mut t.relation, super::tvf::table_factor(vec![]));
        t.relation = TableFactor::NestedJoin {
            table_with_joins: Box::new(TableWithJoins { relation, joins: head }),
            alias: None,
        };
    }
}

struct Nester;

impl VisitorMut for Nester {
    type Break = ();
    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        nest_set_expr(&mut q.body);
        ControlFlow::Continue(())
    }
    fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::NestedJoin { table_with_joins, .. } = t {
            nest(table_with_joins, true);
        }
        ControlFlow::Continue(())
    }
}

fn nest_set_expr(s: &mut SetExpr) {
    match s {
        SetExpr::Select(sel) => sel.from.iter_mut().for_each(|t| nest(t, false)),
        SetExpr::SetOperation { left, right, .. } => {
            nest_set_expr(left);
            nest_set_expr(right);
        }
        _ => {}
    }
}

/// Reshapes every ASOF join of `query` for [`plan_asof`].
pub fn nest_asof_joins(query: &mut Query) {
    let _ = query.visit(&mut Nester);
}

/// Plans a nested join whose last join is an ASOF join; `None` when it is not one.
pub fn plan_asof(relation: &TableFactor, ctx: &mut dyn RelationPlannerContext) -> DfResult<Option<PlannedRelation>> {
    let TableFactor::NestedJoin { table_with_joins, alias } = relation else { return Ok(None) };
    let Some(last) = table_with_joins.joins.last() else { return Ok(None) };
    let JoinOperator::AsOf { match_condition, constraint } = &last.join_operator else { return Ok(None) };
    let left_factor = if table_with_joins.joins.len() == 1 {
        table_with_joins.relation.clone()
    } else {
        let mut rest = (**table_with_joins).clone();
        rest.joins.pop();
        TableFactor::NestedJoin { table_with_joins: Box::new(rest), alias: None }
    };
    let left = ctx.plan(left_factor)?;
    let right = ctx.plan(last.relation.clone())?;
    let schema = Arc::new(left.schema().join(right.schema())?);
    let on_sql = match constraint {
        JoinConstraint::On(e) => e.clone(),
        _ => return plan_err!("ASOF JOIN needs ON: ASOF JOIN q ON t.key = q.key AND t.ts >= q.ts"),
    };
    // The rewrite adds MATCH_CONDITION (TRUE); a written one joins the ON condition.
    let cond = match match_condition {
        SqlExpr::Value(v) if matches!(v.value, Value::Boolean(true)) => on_sql,
        m => SqlExpr::BinaryOp {
            left: Box::new(m.clone()),
            op: datafusion_sql::sqlparser::ast::BinaryOperator::And,
            right: Box::new(on_sql),
        },
    };
    let on = ctx.sql_to_expr(cond, &schema)?;
    let on = super::pattern::coerce(on, &schema)?;
    let node = AsofJoinNode { left, right, on, schema };
    Ok(Some(PlannedRelation::new(LogicalPlan::Extension(Extension { node: Arc::new(node) }), alias.clone())))
}
