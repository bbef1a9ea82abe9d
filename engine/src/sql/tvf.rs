//! Window table-valued functions (`TUMBLE`, `HOP`, `SESSION`, `CUMULATE`, also in Flink's
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), ...))` spelling) and the `LATE(src)` / `ERRORS(src)`
//! relations, planned into DataFusion logical plans through a `RelationPlanner`.
//!
//! A window TVF becomes a [`WindowTvf`] extension node that adds `window_start` and `window_end` to
//! its input. It only describes; the streaming planner decides how it runs.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion_common::{plan_datafusion_err, plan_err, DFSchema, DFSchemaRef, Result as DfResult, TableReference};
use datafusion_expr::planner::{PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning};
use datafusion_expr::{Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore};
use datafusion_sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, TableAlias, TableFactor,
};

use crate::types::TS_TYPE;

/// The shape of a window TVF; all lengths in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum WindowSpec {
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
    Session { gap: i64 },
    Cumulate { step: i64, max_size: i64 },
}

impl WindowSpec {
    pub fn name(&self) -> &'static str {
        match self {
            WindowSpec::Tumble { .. } => "TUMBLE",
            WindowSpec::Hop { .. } => "HOP",
            WindowSpec::Session { .. } => "SESSION",
            WindowSpec::Cumulate { .. } => "CUMULATE",
        }
    }

    /// Longest window, or `None` for sessions (unbounded).
    pub fn max_size(&self) -> Option<i64> {
        match *self {
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => Some(size),
            WindowSpec::Cumulate { max_size, .. } => Some(max_size),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Calls `f(start, end)` for every window holding time `t` (not for sessions).
    #[inline]
    pub fn for_each_window(&self, t: i64, mut f: impl FnMut(i64, i64)) {
        match *self {
            WindowSpec::Tumble { size } => {
                let s = t - t.rem_euclid(size);
                f(s, s + size)
            }
            WindowSpec::Hop { slide, size } => {
                // Every s = k*slide with s <= t < s + size, oldest first.
                let last = t - t.rem_euclid(slide);
                let mut s = last - ((size - 1) / slide) * slide;
                while s <= last {
                    if t < s + size {
                        f(s, s + size);
                    }
                    s += slide;
                }
            }
            WindowSpec::Cumulate { step, max_size } => {
                let s = t - t.rem_euclid(max_size);
                // Windows [s, s + k*step) with t < s + k*step, k = 1..=max_size/step.
                let first_k = (t - s) / step + 1;
                for k in first_k..=(max_size / step) {
                    f(s, s + k * step)
                }
            }
            WindowSpec::Session { .. } => {}
        }
    }

    fn validate(&self) -> Result<(), String> {
        match *self {
            WindowSpec::Tumble { size } if size <= 0 => Err("TUMBLE size must be positive".into()),
            WindowSpec::Hop { slide, size } if slide <= 0 || size <= 0 => {
                Err("HOP slide and size must be positive".into())
            }
            WindowSpec::Hop { slide, size } if size % slide != 0 => {
                Err(format!("HOP size ({size} ms) must be a whole multiple of its slide ({slide} ms)"))
            }
            WindowSpec::Session { gap } if gap <= 0 => Err("SESSION gap must be positive".into()),
            WindowSpec::Cumulate { step, max_size } if step <= 0 || max_size <= 0 || max_size % step != 0 => Err(
                format!("CUMULATE max size ({max_size} ms) must be a positive whole multiple of its step ({step} ms)"),
            ),
            _ => Ok(()),
        }
    }
}

/// `TUMBLE(input, time_col, ...)` and friends: input columns plus `window_start`, `window_end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowTvf {
    pub input: LogicalPlan,
    /// The time column (a column of `input`).
    pub time_expr: Expr,
    pub spec: WindowSpec,
    pub schema: DFSchemaRef,
    /// Output positions of `window_start` / `window_end`: where the input had such columns (a
    /// windowed view being windowed again) the new ones replace them, else they are appended.
    pub start_idx: usize,
    pub end_idx: usize,
}

impl PartialOrd for WindowTvf {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

impl WindowTvf {
    pub fn try_new(input: LogicalPlan, time_expr: Expr, spec: WindowSpec) -> DfResult<Self> {
        spec.validate().map_err(|e| plan_datafusion_err!("{e}"))?;
        let mut fields: Vec<(Option<TableReference>, Arc<Field>)> =
            input.schema().iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
        let mut place = |name: &str| {
            let field = (None, Arc::new(Field::new(name, TS_TYPE, false)));
            match fields.iter().position(|(_, f)| f.name() == name) {
                Some(i) => {
                    fields[i] = field;
                    i
                }
                None => {
                    fields.push(field);
                    fields.len() - 1
                }
            }
        };
        let start_idx = place("window_start");
        let end_idx = place("window_end");
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(WindowTvf { input, time_expr, spec, schema, start_idx, end_idx })
    }
}

impl UserDefinedLogicalNodeCore for WindowTvf {
    fn name(&self) -> &str {
        self.spec.name()
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![self.time_expr.clone()]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: time={} {:?}", self.spec.name(), self.time_expr, self.spec)
    }
    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let (Some(e), Some(i)) = (exprs.pop(), inputs.pop()) else {
            return plan_err!("window TVF takes one expression and one input");
        };
        WindowTvf::try_new(i, e, self.spec)
    }
}

/// Plans the streaming relations of the dialect; every other table factor goes to DataFusion.
#[derive(Debug)]
pub struct StreamingRelationPlanner;

/// Name under which `LATE(src)` / `ERRORS(src)` are registered in the catalog.
pub fn late_name(source: &str) -> String {
    format!("late({source})")
}
pub fn errors_name(source: &str) -> String {
    format!("errors({source})")
}

impl RelationPlanner for StreamingRelationPlanner {
    fn plan_relation(&self, relation: TableFactor, ctx: &mut dyn RelationPlannerContext) -> DfResult<RelationPlanning> {
        match &relation {
            TableFactor::Table { name, args: Some(args), alias, .. } => {
                let fname = object_name_lower(name);
                let args: Vec<SqlExpr> = args.args.iter().map(arg_expr).collect::<DfResult<_>>()?;
                match fname.as_str() {
                    "tumble" | "hop" | "session" | "cumulate" => {
                        plan_window(&fname, args, alias.clone(), ctx).map(|p| RelationPlanning::Planned(Box::new(p)))
                    }
                    "late" | "errors" => plan_side_output(&fname, args, alias.clone(), ctx)
                        .map(|p| RelationPlanning::Planned(Box::new(p))),
                    _ => Ok(RelationPlanning::Original(Box::new(relation))),
                }
            }
            // Flink: TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL ...))
            TableFactor::TableFunction { expr: SqlExpr::Function(f), alias } => {
                let fname = object_name_lower(&f.name);
                if !matches!(fname.as_str(), "tumble" | "hop" | "session" | "cumulate") {
                    return Ok(RelationPlanning::Original(Box::new(relation)));
                }
                let FunctionArguments::List(list) = &f.args else {
                    return plan_err!("{}: expected arguments", fname.to_uppercase());
                };
                let args: Vec<SqlExpr> = list.args.iter().map(arg_expr).collect::<DfResult<_>>()?;
                plan_window(&fname, args, alias.clone(), ctx).map(|p| RelationPlanning::Planned(Box::new(p)))
            }
            TableFactor::MatchRecognize { .. } => {
                super::pattern::plan_match_recognize(relation, ctx).map(|p| RelationPlanning::Planned(Box::new(p)))
            }
            TableFactor::NestedJoin { .. } => match super::asof::plan_asof(&relation, ctx)? {
                Some(p) => Ok(RelationPlanning::Planned(Box::new(p))),
                None => Ok(RelationPlanning::Original(Box::new(relation))),
            },
            _ => Ok(RelationPlanning::Original(Box::new(relation))),
        }
    }
}

fn object_name_lower(name: &ObjectName) -> String {
    name.to_string().to_ascii_lowercase()
}

fn arg_expr(a: &FunctionArg) -> DfResult<SqlExpr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
        FunctionArg::Named { arg: FunctionArgExpr::Expr(e), .. }
        | FunctionArg::ExprNamed { arg: FunctionArgExpr::Expr(e), .. } => Ok(e.clone()),
        other => plan_err!("unsupported argument {other}"),
    }
}

/// The relation argument: a name (`readings`, `TABLE readings`).
fn relation_ident(e: &SqlExpr, what: &str) -> DfResult<Vec<Ident>> {
    match e {
        SqlExpr::Identifier(i) => Ok(vec![i.clone()]),
        SqlExpr::CompoundIdentifier(parts) => Ok(parts.clone()),
        SqlExpr::Nested(inner) => relation_ident(inner, what),
        other => plan_err!("{what}: the first argument must name a relation, found {other}"),
    }
}

pub(crate) fn table_factor(name: Vec<Ident>) -> TableFactor {
    TableFactor::Table {
        name: ObjectName::from(name),
        alias: None,
        args: None,
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample: None,
        index_hints: vec![],
    }
}

/// `DESCRIPTOR(ts)` or `ts`.
fn time_column(e: SqlExpr) -> DfResult<SqlExpr> {
    if let SqlExpr::Function(f) = &e {
        if object_name_lower(&f.name) == "descriptor" {
            if let FunctionArguments::List(list) = &f.args {
                if list.args.len() == 1 {
                    return arg_expr(&list.args[0]);
                }
            }
            return plan_err!("DESCRIPTOR takes one column");
        }
    }
    Ok(e)
}

fn interval_arg(fname: &str, e: &SqlExpr) -> DfResult<i64> {
    super::ddl::interval_literal_ms(e).map_err(|m| plan_datafusion_err!("{}: {m}", fname.to_uppercase()))
}

fn plan_window(
    fname: &str,
    args: Vec<SqlExpr>,
    alias: Option<TableAlias>,
    ctx: &mut dyn RelationPlannerContext,
) -> DfResult<PlannedRelation> {
    let upper = fname.to_uppercase();
    let expected = match fname {
        "tumble" => "TUMBLE(relation, time_column, size)",
        "hop" => "HOP(relation, time_column, slide, size)",
        "session" => "SESSION(relation, time_column, gap)",
        _ => "CUMULATE(relation, time_column, step, max_size)",
    };
    let want = if matches!(fname, "hop" | "cumulate") { 4 } else { 3 };
    if args.len() != want {
        return plan_err!("{upper} takes {want} arguments: {expected}");
    }
    let mut args = args.into_iter();
    let rel = relation_ident(&args.next().expect("count checked"), &upper)?;
    let input = ctx.plan(table_factor(rel))?;
    let time_sql = time_column(args.next().expect("count checked"))?;
    let time_expr = ctx.sql_to_expr(time_sql, input.schema())?;
    let Expr::Column(_) = &time_expr else {
        return plan_err!("{upper}: the time argument must be a column, found {time_expr}");
    };
    let dt = datafusion_expr::ExprSchemable::get_type(&time_expr, input.schema().as_ref())?;
    if !matches!(dt, DataType::Timestamp(..)) {
        return plan_err!("{upper}: time column {time_expr} is {dt}, not TIMESTAMP(3)");
    }
    let rest: Vec<i64> = args.map(|a| interval_arg(fname, &a)).collect::<DfResult<_>>()?;
    let spec = match fname {
        "tumble" => WindowSpec::Tumble { size: rest[0] },
        "hop" => WindowSpec::Hop { slide: rest[0], size: rest[1] },
        "session" => WindowSpec::Session { gap: rest[0] },
        _ => WindowSpec::Cumulate { step: rest[0], max_size: rest[1] },
    };
    let node = WindowTvf::try_new(input, time_expr, spec)?;
    Ok(PlannedRelation::new(LogicalPlan::Extension(Extension { node: Arc::new(node) }), alias))
}

fn plan_side_output(
    fname: &str,
    args: Vec<SqlExpr>,
    alias: Option<TableAlias>,
    ctx: &mut dyn RelationPlannerContext,
) -> DfResult<PlannedRelation> {
    let upper = fname.to_uppercase();
    if args.len() != 1 {
        return plan_err!("{upper} takes one argument: {upper}(source)");
    }
    let rel = relation_ident(&args[0], &upper)?;
    let Some(last) = rel.last() else { return plan_err!("{upper}: empty name") };
    let source = ctx.normalize_ident(last.clone());
    let registered = if fname == "late" { late_name(&source) } else { errors_name(&source) };
    let table = ctx
        .context_provider()
        .get_table_source(TableReference::bare(registered.clone()))
        .map_err(|_| plan_datafusion_err!("{upper}({source}): '{source}' is not a source"))?;
    let plan = LogicalPlanBuilder::scan(TableReference::bare(source), table, None)?.build()?;
    Ok(PlannedRelation::new(plan, alias))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(spec: WindowSpec, t: i64) -> Vec<(i64, i64)> {
        let mut v = vec![];
        spec.for_each_window(t, |s, e| v.push((s, e)));
        v
    }

    #[test]
    fn assignment_matches_the_spec() {
        assert_eq!(windows(WindowSpec::Tumble { size: 60 }, 61), vec![(60, 120)]);
        assert_eq!(windows(WindowSpec::Tumble { size: 60 }, -1), vec![(-60, 0)]);
        assert_eq!(
            windows(WindowSpec::Hop { slide: 30, size: 120 }, 61),
            vec![(-30, 90), (0, 120), (30, 150), (60, 180)]
        );
        assert_eq!(
            windows(WindowSpec::Hop { slide: 30, size: 120 }, 60),
            vec![(-30, 90), (0, 120), (30, 150), (60, 180)]
        );
        assert_eq!(windows(WindowSpec::Cumulate { step: 10, max_size: 30 }, 15), vec![(0, 20), (0, 30)]);
        assert_eq!(windows(WindowSpec::Cumulate { step: 10, max_size: 30 }, 30), vec![(30, 40), (30, 50), (30, 60)]);
    }

    proptest::proptest! {
        #[test]
        fn hop_windows_are_exactly_those_holding_t(t in -100_000i64..100_000, slide in 1i64..50, k in 1i64..6) {
            let size = slide * k;
            let got = windows(WindowSpec::Hop { slide, size }, t);
            let mut want = vec![];
            let mut s = (t - size).div_euclid(slide) * slide;
            while s <= t { if s + size > t { want.push((s, s + size)); } s += slide; }
            proptest::prop_assert_eq!(got, want);
        }
    }
}
