//! `MATCH_RECOGNIZE` front end: turns the clause's AST into a [`PatternDef`] inside a
//! [`MatchRecognizeNode`] extension node, type-checked by DataFusion.
//!
//! DEFINE and MEASURES expressions are ordinary SQL over *navigation values*: every `A.col`,
//! `PREV(A.col, n)`, `FIRST(A.col)`, `AVG(A.col)`, `MATCH_STATUS()`, ... is replaced by a placeholder
//! column `__nav<i>` described by a [`Nav`]; the operator computes those values per candidate row or
//! per match and evaluates the expression with DataFusion. This module only describes; it runs nothing.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion_common::tree_node::TreeNode;
use datafusion_common::{plan_datafusion_err, plan_err, DFSchema, DFSchemaRef, Result as DfResult};
use datafusion_expr::planner::{PlannedRelation, RelationPlannerContext};
use datafusion_expr::{Expr, ExprSchemable, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_sql::sqlparser::ast::{
    AfterMatchSkip, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, MatchRecognizePattern,
    MatchRecognizeSymbol, RepetitionQuantifier, RowsPerMatch, TableAlias, TableFactor, Value, VisitMut, VisitorMut,
};

use super::rewrite::{TIMEOUTS_SYMBOL, WITHIN_SYMBOL};

/// The PATTERN, over variable indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pat {
    Var(usize),
    Concat(Vec<Pat>),
    Alt(Vec<Pat>),
    Repeat { pat: Box<Pat>, min: u32, max: Option<u32>, greedy: bool },
}

impl Pat {
    /// Fewest rows a match of this pattern spans.
    pub fn min_len(&self) -> u64 {
        match self {
            Pat::Var(_) => 1,
            Pat::Concat(v) => v.iter().map(Pat::min_len).sum(),
            Pat::Alt(v) => v.iter().map(Pat::min_len).min().unwrap_or(0),
            Pat::Repeat { pat, min, .. } => pat.min_len() * *min as u64,
        }
    }
}

/// What a navigation placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NavKind {
    /// `A.col`: the current row (in DEFINE of A, or with no variable), else the last row mapped to A.
    Current,
    /// `PREV(A.col, n)`: n rows before the row `A.col` names, in the partition.
    Prev(u32),
    /// `NEXT(A.col, n)`: n rows after it.
    Next(u32),
    /// `FIRST(A.col, n)`: the (n+1)-th row mapped to A.
    First(u32),
    /// `LAST(A.col, n)`: the (n+1)-th row from the end mapped to A.
    Last(u32),
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// `MATCH_STATUS()`: 'match' or 'timeout'.
    MatchStatus,
}

impl NavKind {
    /// Whether the value depends only on the row and its neighbours, not on which rows the match
    /// mapped to which variable.
    pub fn is_physical(&self) -> bool {
        matches!(self, NavKind::Current | NavKind::Prev(_) | NavKind::Next(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nav {
    pub kind: NavKind,
    /// Pattern variable, or `None` for all rows of the match.
    pub var: Option<usize>,
    /// Input column (`None` for `COUNT(*)` and `MATCH_STATUS()`).
    pub col: Option<usize>,
    pub data_type: DataType,
}

impl Nav {
    /// In DEFINE of `defining`: whether the value needs the match's variable mapping.
    pub fn needs_history(&self, defining: usize) -> bool {
        !(self.kind.is_physical() && self.var.is_none_or(|v| v == defining))
    }
}

/// Expressions over navigation placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NavExprs {
    pub navs: Vec<Nav>,
    pub schema: DFSchemaRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    PastLastRow,
    ToNextRow,
    ToFirst(usize),
    ToLast(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatternDef {
    /// Input columns partitioning the rows.
    pub partition_by: Vec<usize>,
    /// The input's event-time column (ORDER BY).
    pub order_col: usize,
    pub vars: Vec<String>,
    pub pattern: Pat,
    /// Per variable: its DEFINE condition over `define_navs` (`None`: any row).
    pub defines: Vec<Option<Expr>>,
    pub define_navs: NavExprs,
    pub measures: Vec<Expr>,
    pub measure_navs: NavExprs,
    pub skip: Skip,
    /// Longest span of a match in ms of event time (`WITHIN`).
    pub within: Option<i64>,
    pub emit_timeouts: bool,
}

/// `input MATCH_RECOGNIZE (...)`: the partition columns, then the measures.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchRecognizeNode {
    pub input: LogicalPlan,
    pub def: Arc<PatternDef>,
    pub schema: DFSchemaRef,
}

impl PartialOrd for MatchRecognizeNode {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

impl UserDefinedLogicalNodeCore for MatchRecognizeNode {
    fn name(&self) -> &str {
        "MatchRecognize"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MatchRecognize: {:?}", self.def.pattern)
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let Some(input) = inputs.pop() else { return plan_err!("MATCH_RECOGNIZE takes one input") };
        Ok(MatchRecognizeNode { input, def: self.def.clone(), schema: self.schema.clone() })
    }
}

/// Type-coerces `e` against `schema` the way DataFusion's analyzer does for plan nodes.
pub fn coerce(e: Expr, schema: &DFSchema) -> DfResult<Expr> {
    let mut rewriter = TypeCoercionRewriter::new(schema);
    Ok(e.rewrite(&mut rewriter)?.data)
}

fn ident_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn compile_pattern(p: &MatchRecognizePattern, vars: &mut Vec<String>) -> DfResult<Pat> {
    use MatchRecognizePattern as P;
    Ok(match p {
        P::Symbol(MatchRecognizeSymbol::Named(id)) => {
            let i = match vars.iter().position(|v| ident_eq(v, &id.value)) {
                Some(i) => i,
                None => {
                    vars.push(id.value.clone());
                    vars.len() - 1
                }
            };
            Pat::Var(i)
        }
        P::Symbol(_) => return plan_err!("MATCH_RECOGNIZE: the anchors ^ and $ are not supported"),
        P::Exclude(_) => {
            return plan_err!(
                "MATCH_RECOGNIZE: {{- ... -}} exclusion applies to ALL ROWS PER MATCH, which is not supported"
            )
        }
        P::Permute(_) => return plan_err!("MATCH_RECOGNIZE: PERMUTE is not supported"),
        P::Concat(v) => Pat::Concat(v.iter().map(|x| compile_pattern(x, vars)).collect::<DfResult<_>>()?),
        P::Alternation(v) => Pat::Alt(v.iter().map(|x| compile_pattern(x, vars)).collect::<DfResult<_>>()?),
        P::Group(g) => compile_pattern(g, vars)?,
        // `A+?` parses as `(A+)?`: a `?` right after a quantifier makes it reluctant.
        P::Repetition(inner, RepetitionQuantifier::AtMostOne) if matches!(**inner, P::Repetition(..)) => {
            let P::Repetition(pat, q) = &**inner else { unreachable!("matched above") };
            let (min, max) = bounds(q)?;
            Pat::Repeat { pat: Box::new(compile_pattern(pat, vars)?), min, max, greedy: false }
        }
        P::Repetition(pat, q) => {
            let (min, max) = bounds(q)?;
            Pat::Repeat { pat: Box::new(compile_pattern(pat, vars)?), min, max, greedy: true }
        }
    })
}

fn bounds(q: &RepetitionQuantifier) -> DfResult<(u32, Option<u32>)> {
    use RepetitionQuantifier as Q;
    let b = match *q {
        Q::ZeroOrMore => (0, None),
        Q::OneOrMore => (1, None),
        Q::AtMostOne => (0, Some(1)),
        Q::Exactly(n) => (n, Some(n)),
        Q::AtLeast(n) => (n, None),
        Q::AtMost(m) => (0, Some(m)),
        Q::Range(n, m) => (n, Some(m)),
    };
    if let (n, Some(m)) = b {
        if m < n || m == 0 {
            return plan_err!("MATCH_RECOGNIZE: quantifier {{{n},{m}}} matches nothing");
        }
    }
    Ok(b)
}

/// Replaces navigation references in an expression by placeholder columns.
struct NavRewriter<'a> {
    vars: &'a [String],
    input: &'a DFSchema,
    navs: &'a mut Vec<Nav>,
    error: Option<String>,
}

impl NavRewriter<'_> {
    fn var(&self, name: &str) -> Option<usize> {
        self.vars.iter().position(|v| ident_eq(v, name))
    }

    fn column(&self, name: &str) -> Result<usize, String> {
        self.input
            .fields()
            .iter()
            .position(|f| ident_eq(f.name(), name))
            .ok_or_else(|| format!("MATCH_RECOGNIZE: no column '{name}' in the input"))
    }

    /// `A.col`, `col`, `A.*` or `*` → (variable, column).
    fn reference(&self, e: &SqlExpr, allow_star: bool) -> Result<(Option<usize>, Option<usize>), String> {
        match e {
            SqlExpr::Identifier(id) => Ok((None, Some(self.column(&id.value)?))),
            SqlExpr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let var = self.var(&parts[0].value).ok_or_else(|| {
                    format!(
                        "MATCH_RECOGNIZE: '{}' is not a pattern variable ({})",
                        parts[0].value,
                        self.vars.join(", ")
                    )
                })?;
                Ok((Some(var), Some(self.column(&parts[1].value)?)))
            }
            _ if allow_star => Err(String::new()),
            other => Err(format!("MATCH_RECOGNIZE: expected A.column or column, found {other}")),
        }
    }

    fn push(&mut self, nav: Nav) -> SqlExpr {
        let i = match self.navs.iter().position(|n| *n == nav) {
            Some(i) => i,
            None => {
                self.navs.push(nav);
                self.navs.len() - 1
            }
        };
        SqlExpr::Identifier(Ident::new(format!("__nav{i}")))
    }

    fn column_type(&self, col: Option<usize>) -> DataType {
        col.map(|c| self.input.field(c).data_type().clone()).unwrap_or(DataType::Null)
    }

    fn function(&mut self, name: &str, args: &[FunctionArg]) -> Result<Option<Nav>, String> {
        let exprs: Vec<&FunctionArgExpr> = args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(e) => Ok(e),
                other => Err(format!("MATCH_RECOGNIZE: unexpected argument {other}")),
            })
            .collect::<Result<_, _>>()?;
        let offset = |i: usize| -> Result<u32, String> {
            match exprs.get(i) {
                None => Ok(if matches!(name, "prev" | "next") { 1 } else { 0 }),
                Some(FunctionArgExpr::Expr(SqlExpr::Value(v))) => match &v.value {
                    Value::Number(n, _) => n
                        .parse::<u32>()
                        .map_err(|_| format!("{}: the offset must be a non-negative integer", name.to_uppercase())),
                    _ => Err(format!("{}: the offset must be a non-negative integer", name.to_uppercase())),
                },
                Some(_) => Err(format!("{}: the offset must be a constant", name.to_uppercase())),
            }
        };
        let kind = match name {
            "prev" => NavKind::Prev(offset(1)?),
            "next" => NavKind::Next(offset(1)?),
            "first" => NavKind::First(offset(1)?),
            "last" => NavKind::Last(offset(1)?),
            "count" => NavKind::Count,
            "sum" => NavKind::Sum,
            "avg" => NavKind::Avg,
            "min" => NavKind::Min,
            "max" => NavKind::Max,
            "match_status" => {
                if !exprs.is_empty() {
                    return Err("MATCH_STATUS() takes no arguments".into());
                }
                return Ok(Some(Nav { kind: NavKind::MatchStatus, var: None, col: None, data_type: DataType::Utf8 }));
            }
            _ => return Ok(None),
        };
        let upper = name.to_uppercase();
        let Some(first) = exprs.first() else { return Err(format!("{upper} needs an argument: {upper}(A.column)")) };
        let (var, col) = match first {
            FunctionArgExpr::Expr(e) => self.reference(e, false).map_err(|m| format!("{upper}: {m}"))?,
            FunctionArgExpr::Wildcard if kind == NavKind::Count => (None, None),
            FunctionArgExpr::QualifiedWildcard(name) if kind == NavKind::Count => {
                let v = name.to_string();
                (Some(self.var(&v).ok_or_else(|| format!("COUNT({v}.*): '{v}' is not a pattern variable"))?), None)
            }
            other => return Err(format!("{upper}: unexpected argument {other}")),
        };
        if exprs.len() > 1
            && !matches!(kind, NavKind::Prev(_) | NavKind::Next(_) | NavKind::First(_) | NavKind::Last(_))
        {
            return Err(format!("{upper} takes one argument"));
        }
        let col_type = self.column_type(col);
        let data_type = match kind {
            NavKind::Count => DataType::Int64,
            NavKind::Sum | NavKind::Avg if !col_type.is_numeric() => {
                return Err(format!("{upper} needs a numeric column"))
            }
            NavKind::Avg => DataType::Float64,
            NavKind::Sum if col_type.is_integer() => DataType::Int64,
            NavKind::Sum => DataType::Float64,
            _ => col_type,
        };
        Ok(Some(Nav { kind, var, col, data_type }))
    }
}

impl VisitorMut for NavRewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut SqlExpr) -> ControlFlow<()> {
        let result = match e {
            SqlExpr::Function(f) if f.name.0.len() == 1 => {
                let name = f.name.to_string().to_ascii_lowercase();
                let args: &[FunctionArg] = match &f.args {
                    FunctionArguments::List(l) => &l.args,
                    FunctionArguments::None => &[],
                    FunctionArguments::Subquery(_) => return ControlFlow::Continue(()),
                };
                self.function(&name, args)
            }
            SqlExpr::CompoundIdentifier(parts) if parts.len() == 2 => self
                .reference(e, false)
                .map(|(var, col)| Some(Nav { kind: NavKind::Current, var, col, data_type: self.column_type(col) })),
            SqlExpr::Identifier(id) if !id.value.starts_with("__nav") => self
                .reference(e, false)
                .map(|(var, col)| Some(Nav { kind: NavKind::Current, var, col, data_type: self.column_type(col) })),
            _ => Ok(None),
        };
        match result {
            Ok(Some(nav)) => {
                *e = self.push(nav);
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(m) => {
                self.error = Some(m);
                ControlFlow::Break(())
            }
        }
    }
}

fn nav_schema(navs: &[Nav]) -> DfResult<DFSchemaRef> {
    let fields: Vec<Field> =
        navs.iter().enumerate().map(|(i, n)| Field::new(format!("__nav{i}"), n.data_type.clone(), true)).collect();
    Ok(Arc::new(DFSchema::from_unqualified_fields(fields.into(), Default::default())?))
}

/// Rewrites every expression over shared navigation placeholders and plans it.
fn plan_nav_exprs(
    exprs: Vec<SqlExpr>,
    vars: &[String],
    input: &DFSchema,
    ctx: &mut dyn RelationPlannerContext,
) -> DfResult<(Vec<Expr>, NavExprs)> {
    let mut navs = Vec::new();
    let mut rewritten = Vec::new();
    for mut e in exprs {
        let mut rw = NavRewriter { vars, input, navs: &mut navs, error: None };
        let _ = e.visit(&mut rw);
        if let Some(m) = rw.error {
            return plan_err!("{m}");
        }
        rewritten.push(e);
    }
    let schema = nav_schema(&navs)?;
    let planned =
        rewritten.into_iter().map(|e| coerce(ctx.sql_to_expr(e, &schema)?, &schema)).collect::<DfResult<Vec<_>>>()?;
    Ok((planned, NavExprs { navs, schema }))
}

/// Plans `table MATCH_RECOGNIZE (...)` (called by the streaming relation planner).
pub fn plan_match_recognize(relation: TableFactor, ctx: &mut dyn RelationPlannerContext) -> DfResult<PlannedRelation> {
    let TableFactor::MatchRecognize {
        table,
        partition_by,
        order_by,
        measures,
        rows_per_match,
        after_match_skip,
        pattern,
        symbols,
        alias,
    } = relation
    else {
        return plan_err!("not a MATCH_RECOGNIZE");
    };
    let input = ctx.plan(*table)?;
    let in_schema = input.schema().clone();
    if matches!(rows_per_match, Some(RowsPerMatch::AllRows(_))) {
        return plan_err!("MATCH_RECOGNIZE: ALL ROWS PER MATCH is not supported; use ONE ROW PER MATCH");
    }
    let column_index = |e: &SqlExpr, what: &str, ctx: &mut dyn RelationPlannerContext| -> DfResult<usize> {
        match ctx.sql_to_expr(e.clone(), &in_schema)? {
            Expr::Column(c) => Ok(in_schema.index_of_column(&c)?),
            other => plan_err!("MATCH_RECOGNIZE: {what} takes columns, found {other}"),
        }
    };
    let partition_cols =
        partition_by.iter().map(|e| column_index(e, "PARTITION BY", ctx)).collect::<DfResult<Vec<_>>>()?;
    let order_col = match order_by.as_slice() {
        [o] if o.options.asc != Some(false) => column_index(&o.expr, "ORDER BY", ctx)?,
        _ => return plan_err!("MATCH_RECOGNIZE: ORDER BY takes the event-time column, ascending"),
    };
    if !matches!(in_schema.field(order_col).data_type(), DataType::Timestamp(..)) {
        return plan_err!(
            "MATCH_RECOGNIZE: ORDER BY {} must be the event-time column (TIMESTAMP(3))",
            in_schema.field(order_col).name()
        );
    }

    let mut vars = Vec::new();
    let pat = compile_pattern(&pattern, &mut vars)?;
    if pat.min_len() == 0 {
        return plan_err!(
            "MATCH_RECOGNIZE: PATTERN ({pattern}) can match no rows; every match must hold at least one row"
        );
    }
    let mut within = None;
    let mut emit_timeouts = false;
    let mut define_sql: Vec<Option<SqlExpr>> = vec![None; vars.len()];
    for s in symbols {
        if s.symbol.value == WITHIN_SYMBOL {
            within =
                Some(super::ddl::interval_literal_ms(&s.definition).map_err(|m| plan_datafusion_err!("WITHIN: {m}"))?);
            continue;
        }
        if s.symbol.value == TIMEOUTS_SYMBOL {
            emit_timeouts = true;
            continue;
        }
        let Some(v) = vars.iter().position(|v| ident_eq(v, &s.symbol.value)) else {
            return plan_err!("MATCH_RECOGNIZE: DEFINE {} names no variable of PATTERN ({pattern})", s.symbol.value);
        };
        if define_sql[v].is_some() {
            return plan_err!("MATCH_RECOGNIZE: {} is defined twice", s.symbol.value);
        }
        define_sql[v] = Some(s.definition);
    }
    if let Some(w) = within {
        if w <= 0 {
            return plan_err!("WITHIN must be a positive interval");
        }
    }

    let defined: Vec<usize> = (0..vars.len()).filter(|&v| define_sql[v].is_some()).collect();
    let (define_exprs, define_navs) =
        plan_nav_exprs(define_sql.iter().flatten().cloned().collect(), &vars, &in_schema, ctx)?;
    let mut defines: Vec<Option<Expr>> = vec![None; vars.len()];
    for (v, e) in defined.into_iter().zip(define_exprs) {
        let t = e.get_type(define_navs.schema.as_ref())?;
        if t != DataType::Boolean {
            return plan_err!("MATCH_RECOGNIZE: DEFINE {} must be a condition, found {t}", vars[v]);
        }
        defines[v] = Some(e);
    }
    for n in &define_navs.navs {
        if n.kind == NavKind::MatchStatus {
            return plan_err!("MATCH_STATUS() belongs in MEASURES");
        }
    }

    let names: Vec<String> = measures.iter().map(|m| ctx.normalize_ident(m.alias.clone())).collect();
    let (measure_exprs, measure_navs) =
        plan_nav_exprs(measures.into_iter().map(|m| m.expr).collect(), &vars, &in_schema, ctx)?;
    if measure_navs.navs.iter().any(|n| matches!(n.kind, NavKind::Next(_))) {
        return plan_err!("MATCH_RECOGNIZE: NEXT() in MEASURES is not supported");
    }
    if emit_timeouts && within.is_none() {
        return plan_err!("EMIT TIMEOUTS needs WITHIN");
    }

    let skip = match after_match_skip {
        None | Some(AfterMatchSkip::PastLastRow) => Skip::PastLastRow,
        Some(AfterMatchSkip::ToNextRow) => Skip::ToNextRow,
        Some(AfterMatchSkip::ToFirst(v)) | Some(AfterMatchSkip::ToLast(v))
            if !vars.iter().any(|x| ident_eq(x, &v.value)) =>
        {
            return plan_err!("AFTER MATCH SKIP: '{}' is not a pattern variable", v.value)
        }
        Some(AfterMatchSkip::ToFirst(v)) => Skip::ToFirst(vars.iter().position(|x| ident_eq(x, &v.value)).unwrap_or(0)),
        Some(AfterMatchSkip::ToLast(v)) => Skip::ToLast(vars.iter().position(|x| ident_eq(x, &v.value)).unwrap_or(0)),
    };

    let mut fields: Vec<(Option<datafusion_common::TableReference>, Arc<Field>)> = partition_cols
        .iter()
        .map(|&c| {
            let (q, f) = in_schema.qualified_field(c);
            (q.cloned(), f.clone())
        })
        .collect();
    for (name, e) in names.iter().zip(&measure_exprs) {
        if fields.iter().any(|(_, f)| f.name() == name) {
            return plan_err!("MATCH_RECOGNIZE: output column '{name}' appears twice");
        }
        let t = e.get_type(measure_navs.schema.as_ref())?;
        fields.push((None, Arc::new(Field::new(name, t, true))));
    }
    let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
    let def = PatternDef {
        partition_by: partition_cols,
        order_col,
        vars,
        pattern: pat,
        defines,
        define_navs,
        measures: measure_exprs,
        measure_navs,
        skip,
        within,
        emit_timeouts,
    };
    let node = MatchRecognizeNode { input, def: Arc::new(def), schema };
    Ok(PlannedRelation::new(LogicalPlan::Extension(Extension { node: Arc::new(node) }), alias.map(strip_columns)))
}

/// A table alias naming only the relation (column renames are not supported here).
fn strip_columns(mut a: TableAlias) -> TableAlias {
    a.columns.clear();
    a
}
