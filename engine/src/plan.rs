//! Streaming planner: turns a query's DataFusion logical plan into operators of the graph.
//!
//! DataFusion parses, resolves names and coerces types (its SQL planner and analyzer); this module
//! decides how each logical node runs on an unbounded stream and tracks, for every planned stream,
//! which columns carry a watermark and how far behind the stream's watermark they lag, whether the
//! stream is updating and by which key. It refuses what it cannot run with a clear error.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{Column, DFSchema};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::expr::{AggregateFunction, Sort};
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan};
use datafusion_optimizer::Analyzer;
use datafusion_physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion_sql::planner::SqlToRel;
use datafusion_sql::sqlparser::ast::{Query, Statement as SqlStatement};

mod join;
mod pattern;

use crate::error::{EngineError, Result};
use crate::ops::agg::{AggregateExprs, Arrival, GroupCol};
use crate::ops::calc::Calc;
use crate::ops::eager_case;
use crate::ops::graph::{Graph, NodeId, Passthrough};
use crate::ops::group_agg::GroupAggregate;
use crate::ops::lookup_join::TableHandle;
use crate::ops::over::{Completion, Frame, Over, OverFn};
use crate::ops::session::SessionAggregate;
use crate::ops::shared_exprs::{self, SharedExprs};
use crate::ops::short_circuit;
use crate::ops::window::{replaces_time, WindowAssign, HIDDEN_TIME};
use crate::ops::window_agg::WindowAggregate;
use crate::ops::Limits;
use crate::sql::catalog::{Catalog, RelationKind, RelationSource};
use crate::sql::ddl::Emit;
use crate::sql::tvf::{WindowSpec, WindowTvf};

/// Physical expressions, e.g. a projection's.
type Exprs = Vec<Arc<dyn PhysicalExpr>>;

/// Window columns a stream's rows carry from a window TVF.
#[derive(Debug, Clone, Copy)]
pub struct WindowCols {
    pub start: usize,
    pub end: usize,
    pub time_col: usize,
    pub spec: WindowSpec,
}

/// A planned stream: where its rows come from and what is known about them.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The node whose output carries this stream (for a pending SESSION TVF: its input's).
    pub node: NodeId,
    pub schema: SchemaRef,
    /// Columns with a watermark: (column, lag behind the stream's watermark in ms).
    pub time_cols: Vec<(usize, i64)>,
    pub window: Option<WindowCols>,
    /// A SESSION TVF waiting for its aggregation: (time column, gap, window_start, window_end positions).
    pub pending_session: Option<(usize, i64, usize, usize)>,
    /// The stream's rows are upserts/deletes rather than appends.
    pub updating: bool,
    /// Key columns of an updating stream.
    pub key: Option<Vec<usize>>,
    /// Other column sets that identify a row as well (a window is named by its start or its end).
    pub key_alts: Vec<Vec<usize>>,
    /// Per column, the source columns whose values it carries unchanged (for sharding by key);
    /// missing or empty when it carries none.
    pub origins: Vec<Origins>,
    /// The window end column of a TUMBLE/HOP/CUMULATE aggregation's results, followed through
    /// projections (a view's on-demand queries show its newest window).
    pub result_window_end: Option<usize>,
}

/// Source columns a column carries unchanged: (source index, column).
pub type Origins = Vec<(usize, usize)>;

/// What a stateful operator needs of the routing of rows over shards: all rows that can meet in
/// its state must land in one shard. It is met when, for one of `alternatives`, every source
/// feeding each listed input node is routed by a column in that part's origins.
#[derive(Debug, Clone)]
pub struct ShardNeed {
    pub op: String,
    pub alternatives: Vec<Vec<(NodeId, Origins)>>,
}

impl Stream {
    /// An append-only stream out of `node`.
    pub fn append_only(node: NodeId, schema: SchemaRef, time_cols: Vec<(usize, i64)>) -> Self {
        Stream {
            node,
            schema,
            time_cols,
            window: None,
            pending_session: None,
            updating: false,
            key: None,
            key_alts: vec![],
            origins: vec![],
            result_window_end: None,
        }
    }

    fn origins_of(&self, col: usize) -> Origins {
        self.origins.get(col).cloned().unwrap_or_default()
    }

    pub fn time_offset(&self, col: usize) -> Option<i64> {
        self.time_cols.iter().find(|(c, _)| *c == col).map(|(_, o)| *o)
    }
}

/// Plans queries against the relations defined so far.
pub struct Planner<'a> {
    pub catalog: &'a Catalog,
    pub graph: &'a mut Graph,
    /// Streams of named relations (sources, their LATE/ERRORS outputs, views).
    pub relations: &'a HashMap<String, Stream>,
    /// Loaded reference tables, for lookup joins.
    pub tables: &'a HashMap<String, TableHandle>,
    pub limits: Limits,
    /// What each stateful operator planned needs of shard routing (see [`ShardNeed`]).
    pub needs: Vec<ShardNeed>,
    /// Planning a one-off query over a bounded input (views' current rows), with batch SQL's
    /// rule that an aggregate without GROUP BY over no rows is one row (`COUNT(*)` 0). A
    /// continuous query gives no row until one arrives, as in Flink.
    pub bounded: bool,
    props: ExecutionProps,
}

fn plan_err(message: impl Into<String>) -> EngineError {
    EngineError::DataFusion(datafusion_common::DataFusionError::Plan(message.into()))
}

impl<'a> Planner<'a> {
    pub fn new(
        catalog: &'a Catalog,
        graph: &'a mut Graph,
        relations: &'a HashMap<String, Stream>,
        tables: &'a HashMap<String, TableHandle>,
        limits: Limits,
    ) -> Self {
        Planner {
            catalog,
            graph,
            relations,
            tables,
            limits,
            needs: Vec::new(),
            bounded: false,
            props: ExecutionProps::new(),
        }
    }

    /// SQL to a type-checked logical plan.
    pub fn logical_plan(catalog: &Catalog, query: &Query) -> Result<LogicalPlan> {
        let planner = SqlToRel::new(catalog);
        let mut query = query.clone();
        crate::sql::asof::nest_asof_joins(&mut query);
        let plan = planner.sql_statement_to_plan(SqlStatement::Query(Box::new(query)))?;
        let plan = Analyzer::new().execute_and_check(plan, catalog.options(), |_, _| {})?;
        crate::sql::to_char::check_constant_patterns(&plan)?;
        Ok(plan)
    }

    /// Plans `query`; `emit` applies to its outermost aggregation.
    pub fn plan_query(&mut self, query: &Query, emit: Option<Emit>) -> Result<(Stream, LogicalPlan)> {
        let plan = Self::logical_plan(self.catalog, query)?;
        let outermost = outermost_aggregate(&plan);
        if emit.is_some() && outermost.is_none() {
            return Err(plan_err("EMIT applies to aggregations; this query aggregates nothing"));
        }
        let stream = self.plan_node(&plan, outermost, emit)?;
        if stream.pending_session.is_some() {
            return Err(plan_err("SESSION windows must be aggregated: SELECT ... FROM SESSION(...) GROUP BY keys, window_start, window_end"));
        }
        Ok((stream, plan))
    }

    fn physical(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        let e = expand_coalesce(e.clone())?;
        let e = crate::sql::regexp_group::rewrite(e, schema)?;
        let e = create_physical_expr(&e, schema, &self.props, &PhysicalPlanningContext::default())?;
        short_circuit::rewrite(e, schema.as_arrow())
    }

    /// Records that a one-input stateful operator keeps its state per value of `key_cols`.
    fn need_keyed(&mut self, op: &str, input: &Stream, key_cols: impl IntoIterator<Item = usize>) {
        let alternatives = key_cols.into_iter().map(|c| vec![(input.node, input.origins_of(c))]).collect();
        self.needs.push(ShardNeed { op: op.to_string(), alternatives });
    }

    fn add(&mut self, op: Box<dyn crate::ops::Operator>, input: NodeId) -> NodeId {
        let id = self.graph.add(op, 1);
        self.graph.connect(input, id, 0);
        id
    }

    /// Plans `plan`; its stream has exactly the plan's columns.
    fn plan_node(
        &mut self,
        plan: &LogicalPlan,
        outermost: Option<*const Aggregate>,
        emit: Option<Emit>,
    ) -> Result<Stream> {
        let stream = self.plan_node_hidden(plan, outermost, emit)?;
        self.strip_hidden(stream, plan.schema().fields().len())
    }

    /// `stream` without the hidden trailing columns past its `visible` ones.
    fn strip_hidden(&mut self, stream: Stream, visible: usize) -> Result<Stream> {
        if stream.schema.fields().len() <= visible {
            return Ok(stream);
        }
        let cols: Vec<usize> = (0..visible).collect();
        self.project_columns(stream, &cols)
    }

    /// Plans a filter. `later` are the expressions of a projection right after it, planned
    /// against the same input: sub-expressions that the filter evaluates on every row and that
    /// occur again are computed once, and the filter's stream carries them as trailing columns.
    /// Then the rewritten `later`, which read them, are returned too. Not when the input has
    /// hidden columns: those the projection's input must lose first.
    fn plan_filter(
        &mut self,
        f: &datafusion_expr::logical_plan::Filter,
        outermost: Option<*const Aggregate>,
        emit: Option<Emit>,
        later: &[Arc<dyn PhysicalExpr>],
    ) -> Result<(Stream, Option<Exprs>)> {
        let input = self.plan_node_hidden(&f.input, outermost, emit)?;
        if let Some((_, _, start, end)) = input.pending_session {
            let uses_window = f
                .predicate
                .column_refs()
                .iter()
                .any(|c| f.input.schema().index_of_column(c).map(|i| i == start || i == end).unwrap_or(false));
            if uses_window {
                return Err(plan_err(
                    "a SESSION window's bounds are known only after aggregation: filter them in HAVING",
                ));
            }
        }
        let mut pred = self.physical(&f.predicate, f.input.schema())?;
        let width = input.schema.fields().len();
        let shared = if later.is_empty() || width != f.input.schema().fields().len() {
            Vec::new()
        } else {
            shared_exprs::find(std::slice::from_ref(&pred), later)
        };
        let (schema, shared, later) = if shared.is_empty() {
            (input.schema.clone(), None, None)
        } else {
            pred = shared_exprs::rewrite(&pred, &shared, width)?;
            let later = later.iter().map(|e| shared_exprs::rewrite(e, &shared, width)).collect::<Result<Vec<_>>>()?;
            let shared = SharedExprs::new(shared);
            let mut fields: Vec<Field> = input.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.extend(shared.fields(&input.schema)?);
            (Arc::new(Schema::new(fields)), Some(shared), Some(later))
        };
        let pred = eager_case::rewrite(&pred)?;
        let node = self.add(
            Box::new(Calc {
                label: format!("filter {}", f.predicate),
                filter: Some(pred),
                projection: None,
                schema: schema.clone(),
                keyed: input.key.is_some(),
                shared,
            }),
            input.node,
        );
        Ok((Stream { node, schema, ..input }, later))
    }

    /// Plans `plan`; its stream may carry hidden trailing columns (`ops::window::HIDDEN_TIME`),
    /// which only a filter passes on and only an aggregation reads.
    fn plan_node_hidden(
        &mut self,
        plan: &LogicalPlan,
        outermost: Option<*const Aggregate>,
        emit: Option<Emit>,
    ) -> Result<Stream> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let Some(rel) = scan.source.downcast_ref::<RelationSource>() else {
                    return Err(plan_err(format!("cannot stream from {}", scan.table_name)));
                };
                let key = match &rel.kind {
                    RelationKind::Late(s) => crate::sql::tvf::late_name(s.as_str()),
                    RelationKind::Errors(s) => crate::sql::tvf::errors_name(s.as_str()),
                    RelationKind::Table => {
                        return Err(plan_err(format!(
                            "'{}' is a reference TABLE: it can only be joined to a stream (FROM stream JOIN {} FOR SYSTEM_TIME AS OF stream.ts ON ...)",
                            rel.name, rel.name
                        )))
                    }
                    _ => rel.name.clone(),
                };
                let stream = self
                    .relations
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| EngineError::Internal(format!("relation {key} has no stream")))?;
                if let Some(p) = &scan.projection {
                    return self.project_columns(stream, p);
                }
                Ok(stream)
            }
            LogicalPlan::SubqueryAlias(a) => self.plan_node_hidden(&a.input, outermost, emit),
            LogicalPlan::Filter(f) => Ok(self.plan_filter(f, outermost, emit, &[])?.0),
            LogicalPlan::Projection(p) => {
                let mut exprs =
                    p.expr.iter().map(|e| self.physical(e, p.input.schema())).collect::<Result<Vec<_>>>()?;
                let input = match p.input.as_ref() {
                    // A filter right below computes once what both evaluate, and passes it on.
                    LogicalPlan::Filter(f) => {
                        let (stream, rewritten) = self.plan_filter(f, outermost, emit, &exprs)?;
                        match rewritten {
                            Some(rewritten) => {
                                exprs = rewritten;
                                stream
                            }
                            None => self.strip_hidden(stream, p.input.schema().fields().len())?,
                        }
                    }
                    input => self.plan_node(input, outermost, emit)?,
                };
                if input.pending_session.is_some() {
                    return Err(plan_err("SESSION windows must be aggregated: SELECT ... FROM SESSION(...) GROUP BY keys, window_start, window_end"));
                }
                // What the projection evaluates more than once, it computes once.
                let shared = shared_exprs::find(&exprs, &[]);
                let width = input.schema.fields().len();
                // Eager CASEs last: the shared columns are what make their branches simple.
                let exprs = exprs
                    .iter()
                    .map(|e| shared_exprs::rewrite(e, &shared, width).and_then(|e| eager_case::rewrite(&e)))
                    .collect::<Result<Vec<_>>>()?;
                let shared = (!shared.is_empty()).then(|| SharedExprs::new(shared));
                // Where each output column comes from, when it is a plain column of the input.
                let sources: Vec<Option<usize>> = p
                    .expr
                    .iter()
                    .map(|e| match e.clone().unalias() {
                        Expr::Column(c) => p.input.schema().index_of_column(&c).ok(),
                        _ => None,
                    })
                    .collect();
                let schema: SchemaRef = Arc::new(p.schema.as_arrow().clone());
                let node = self.add(
                    Box::new(Calc {
                        label: "project".into(),
                        filter: None,
                        projection: Some(exprs),
                        schema: schema.clone(),
                        keyed: input.key.is_some(),
                        shared,
                    }),
                    input.node,
                );
                Ok(remap(input, node, schema, &sources))
            }
            LogicalPlan::Extension(ext) => {
                if let Some(a) = ext.node.as_any().downcast_ref::<crate::sql::asof::AsofJoinNode>() {
                    return self.plan_asof(a, outermost, emit);
                }
                if let Some(m) = ext.node.as_any().downcast_ref::<crate::sql::pattern::MatchRecognizeNode>() {
                    return self.plan_match_recognize(m, outermost, emit);
                }
                let Some(tvf) = ext.node.as_any().downcast_ref::<WindowTvf>() else {
                    return Err(plan_err(format!("cannot stream {}", ext.node.name())));
                };
                let input = self.plan_node(&tvf.input, outermost, emit)?;
                if input.updating {
                    return Err(plan_err(format!(
                        "{} needs an append-only input; its input is an updating result",
                        tvf.spec.name()
                    )));
                }
                let Expr::Column(c) = &tvf.time_expr else {
                    return Err(plan_err("window time argument must be a column"));
                };
                let time_col = tvf.input.schema().index_of_column(c)?;
                let offset = match input.time_offset(time_col) {
                    Some(o) => o,
                    // A stream without any watermarked column runs on processing time.
                    None if input.time_cols.is_empty() => 0,
                    None => {
                        let names: Vec<String> =
                            input.time_cols.iter().map(|(i, _)| input.schema.field(*i).name().clone()).collect();
                        return Err(plan_err(format!(
                            "{}: column '{}' has no watermark; use a time column with one ({})",
                            tvf.spec.name(),
                            c.name,
                            names.join(", ")
                        )));
                    }
                };
                if let WindowSpec::Session { gap } = tvf.spec {
                    return Ok(Stream { pending_session: Some((time_col, gap, tvf.start_idx, tvf.end_idx)), ..input });
                }
                let (start, end) = (tvf.start_idx, tvf.end_idx);
                let mut fields = tvf.schema.as_arrow().fields().to_vec();
                // A replaced time column stays readable, hidden, as the window's event time.
                let window_time = if replaces_time(time_col, start, end) {
                    let old = input.schema.field(time_col);
                    fields.push(Arc::new(Field::new(HIDDEN_TIME, old.data_type().clone(), old.is_nullable())));
                    fields.len() - 1
                } else {
                    time_col
                };
                let schema: SchemaRef = Arc::new(Schema::new(fields));
                let node =
                    self.add(Box::new(WindowAssign::new(tvf.spec, time_col, start, end, schema.clone())), input.node);
                // Replaced window columns lose their old watermarks; the new ones get theirs.
                let mut time_cols: Vec<(usize, i64)> =
                    input.time_cols.iter().copied().filter(|(c, _)| *c != start && *c != end).collect();
                let has_wm = !input.time_cols.is_empty();
                if has_wm {
                    time_cols.push((end, offset));
                    if let Some(max) = tvf.spec.max_size() {
                        time_cols.push((start, offset + max));
                    }
                }
                let mut origins = input.origins.clone();
                origins.resize(schema.fields().len(), vec![]);
                origins[start].clear();
                origins[end].clear();
                Ok(Stream {
                    node,
                    schema,
                    time_cols,
                    window: Some(WindowCols { start, end, time_col: window_time, spec: tvf.spec }),
                    pending_session: None,
                    updating: false,
                    key: None,
                    key_alts: vec![],
                    origins,
                    result_window_end: None,
                })
            }
            LogicalPlan::Aggregate(agg) => {
                let input = self.plan_node_hidden(&agg.input, outermost, emit)?;
                if input.updating {
                    return Err(plan_err(
                        "aggregating an updating result (a non-windowed GROUP BY or EMIT ON UPDATE) is not supported",
                    ));
                }
                let is_outer = outermost.is_some_and(|o| std::ptr::eq(o, agg));
                let emit = if is_outer { emit } else { None };
                self.plan_aggregate(agg, input, emit)
            }
            LogicalPlan::Union(u) => {
                let inputs = u.inputs.iter().map(|i| self.plan_node(i, outermost, emit)).collect::<Result<Vec<_>>>()?;
                if inputs.iter().any(|s| s.updating || s.pending_session.is_some()) {
                    return Err(plan_err("UNION ALL takes append-only inputs"));
                }
                let schema: SchemaRef = Arc::new(u.schema.as_arrow().clone());
                let id = self.graph.add(Box::new(Passthrough("union".into())), inputs.len());
                for (port, s) in inputs.iter().enumerate() {
                    let cast = self.add(
                        Box::new(Calc {
                            label: "union input".into(),
                            filter: None,
                            projection: Some(
                                (0..schema.fields().len())
                                    .map(|i| {
                                        let col =
                                            Expr::Column(Column::from(u.inputs[port].schema().qualified_field(i)));
                                        let target = schema.field(i).data_type().clone();
                                        self.physical(
                                            &col.cast_to(&target, u.inputs[port].schema())?,
                                            u.inputs[port].schema(),
                                        )
                                    })
                                    .collect::<Result<Vec<_>>>()?,
                            ),
                            schema: schema.clone(),
                            keyed: false,
                            shared: None,
                        }),
                        s.node,
                    );
                    self.graph.connect(cast, id, port);
                }
                // A column keeps a watermark only when it has one in every input (lagging the most).
                let time_cols = (0..schema.fields().len())
                    .filter_map(|c| {
                        let offs: Option<Vec<i64>> = inputs.iter().map(|s| s.time_offset(c)).collect();
                        offs.map(|o| (c, o.into_iter().max().unwrap_or(0)))
                    })
                    .collect();
                Ok(Stream::append_only(id, schema, time_cols))
            }
            LogicalPlan::Join(j) => self.plan_join(j, outermost, emit),
            LogicalPlan::Window(win) => {
                let input = self.plan_node(&win.input, outermost, emit)?;
                if input.updating || input.pending_session.is_some() {
                    return Err(plan_err("OVER needs an append-only input"));
                }
                self.plan_over(win, input)
            }
            LogicalPlan::Sort(_) => {
                Err(plan_err("ORDER BY is not supported on a stream (rows are emitted as they are final)"))
            }
            LogicalPlan::Limit(_) => Err(plan_err("LIMIT is not supported on a stream")),
            LogicalPlan::Distinct(_) => Err(plan_err(
                "SELECT DISTINCT is not supported on a stream; use GROUP BY (an updating result) or a window",
            )),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err(plan_err("a streaming query must read FROM a source or view"))
            }
            other => Err(plan_err(format!("{} is not supported in a streaming query", other.display()))),
        }
    }

    fn plan_over(&mut self, win: &datafusion_expr::logical_plan::Window, input: Stream) -> Result<Stream> {
        use datafusion_expr::{WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition};
        let in_schema = win.input.schema();
        let physical_schema = Arc::new(in_schema.as_arrow().clone());
        let mut shared: Option<(Vec<Expr>, Vec<Sort>)> = None;
        let mut fns = Vec::new();
        for e in &win.window_expr {
            let Expr::WindowFunction(wf) = e.clone().unalias() else {
                return Err(plan_err(format!("unsupported window expression {e}")));
            };
            let p = &wf.params;
            match &shared {
                None => shared = Some((p.partition_by.clone(), p.order_by.clone())),
                Some((pb, ob)) if *pb == p.partition_by && *ob == p.order_by => {}
                Some(_) => {
                    return Err(plan_err("all OVER clauses of one SELECT must use the same PARTITION BY and ORDER BY"))
                }
            }
            let frame = &p.window_frame;
            let whole = matches!(frame.end_bound, WindowFrameBound::Following(ref v) if v.is_null());
            if !whole && !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
                return Err(plan_err(
                    "OVER frames must end at CURRENT ROW (or UNBOUNDED FOLLOWING for a whole window partition)",
                ));
            }
            let frame = match (&frame.units, &frame.start_bound, whole) {
                (_, WindowFrameBound::Preceding(v), true) if v.is_null() => Frame::Whole,
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v), false) if v.is_null() => Frame::RowsUnbounded,
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v), false) if v.is_null() => Frame::RangeUnbounded,
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v), false) => {
                    let n = v.cast_to(&DataType::UInt64).ok().and_then(|v| if let datafusion_common::ScalarValue::UInt64(Some(n)) = v { Some(n) } else { None });
                    Frame::Rows(n.ok_or_else(|| plan_err(format!("ROWS {v} PRECEDING: expected a row count")))?)
                }
                (WindowFrameUnits::Rows, WindowFrameBound::CurrentRow, false) => Frame::Rows(0),
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v), false) => Frame::Range(interval_ms(v)?),
                (WindowFrameUnits::Range, WindowFrameBound::CurrentRow, false) => Frame::Range(0),
                _ => return Err(plan_err("unsupported OVER frame (GROUPS frames and frames starting after the current row are not supported)")),
            };
            let f = match &wf.fun {
                WindowFunctionDefinition::AggregateUDF(udaf) => {
                    let agg = Expr::AggregateFunction(AggregateFunction::new_udf(
                        udaf.clone(),
                        p.args.clone(),
                        p.distinct,
                        p.filter.clone(),
                        vec![],
                        p.null_treatment,
                    ));
                    let lowered = LoweredAggregateBuilder::new(
                        &agg,
                        in_schema,
                        &physical_schema,
                        &self.props,
                        &PhysicalPlanningContext::default(),
                    )
                    .build()?;
                    if matches!(frame, Frame::Rows(_) | Frame::Range(_))
                        && lowered.aggregate.create_sliding_accumulator().is_err()
                    {
                        return Err(plan_err(format!(
                            "{} cannot slide over a bounded frame; use UNBOUNDED PRECEDING",
                            udaf.name()
                        )));
                    }
                    let args = lowered
                        .aggregate
                        .expressions()
                        .into_iter()
                        .map(|e| short_circuit::rewrite(e, &physical_schema))
                        .collect::<Result<Vec<_>>>()?;
                    OverFn::Agg { args, agg: lowered.aggregate, frame }
                }
                WindowFunctionDefinition::WindowUDF(udwf) => match udwf.name() {
                    "row_number" => OverFn::RowNumber,
                    "rank" => OverFn::Rank,
                    "dense_rank" => OverFn::DenseRank,
                    name @ ("lag" | "lead") => {
                        let arg = p.args.first().ok_or_else(|| plan_err(format!("{name} needs an argument")))?;
                        let arg_type = arg.get_type(in_schema.as_ref())?;
                        let offset = match p.args.get(1) {
                            None => 1,
                            Some(Expr::Literal(v, _)) => match v.cast_to(&DataType::UInt64)? {
                                datafusion_common::ScalarValue::UInt64(Some(n)) => n as usize,
                                _ => {
                                    return Err(plan_err(format!("{name}: the offset must be a non-negative integer")))
                                }
                            },
                            Some(_) => return Err(plan_err(format!("{name}: the offset must be a constant"))),
                        };
                        let default = match p.args.get(2) {
                            None => datafusion_common::ScalarValue::try_from(&arg_type)?,
                            Some(Expr::Literal(v, _)) => v.cast_to(&arg_type)?,
                            Some(_) => return Err(plan_err(format!("{name}: the default must be a constant"))),
                        };
                        let arg = self.physical(arg, in_schema)?;
                        if name == "lag" {
                            OverFn::Lag { arg, offset, default }
                        } else {
                            OverFn::Lead { arg, offset, default }
                        }
                    }
                    other => {
                        return Err(plan_err(format!("window function {other} is not supported in a streaming query")))
                    }
                },
            };
            fns.push(f);
        }
        let (partition_by, order_by) = shared.unwrap_or_default();
        let col_of = |e: &Expr| match e {
            Expr::Column(c) => in_schema.index_of_column(c).ok(),
            _ => None,
        };
        let by_time = match order_by.as_slice() {
            [s] if s.asc => col_of(&s.expr).and_then(|c| input.time_offset(c).map(|o| (c, o))),
            _ => None,
        };
        let by_partition = partition_by.iter().filter_map(col_of).find_map(|c| input.time_offset(c).map(|o| (c, o)));
        let completion = match (by_time, by_partition) {
            (Some((col, offset)), _) => Completion::ByRowTime { col, offset },
            (None, Some((col, offset))) => Completion::ByPartitionTime { col, offset },
            _ => {
                return Err(plan_err(
                    "OVER needs ORDER BY an event-time column with a watermark (ascending), or PARTITION BY a window column (window_start / window_end) of a windowed aggregation",
                ))
            }
        };
        if let Completion::ByPartitionTime { .. } = completion {
            if fns.iter().any(|f| matches!(f, OverFn::Agg { frame: Frame::Range(_), .. })) {
                return Err(plan_err("RANGE ... PRECEDING frames need ORDER BY the event-time column"));
            }
        } else if fns.iter().any(|f| matches!(f, OverFn::Agg { frame: Frame::Whole, .. })) {
            return Err(plan_err("frames reaching UNBOUNDED FOLLOWING never end on a stream ordered by time"));
        }
        let part_cols: Vec<usize> = partition_by.iter().filter_map(&col_of).collect();
        self.need_keyed("OVER", &input, part_cols);
        let part_exprs = partition_by.iter().map(|e| self.physical(e, in_schema)).collect::<Result<Vec<_>>>()?;
        let part_types =
            partition_by.iter().map(|e| Ok(e.get_type(in_schema.as_ref())?)).collect::<Result<Vec<_>>>()?;
        let order = order_by
            .iter()
            .map(|s| {
                Ok((
                    self.physical(&s.expr, in_schema)?,
                    s.expr.get_type(in_schema.as_ref())?,
                    arrow::compute::SortOptions { descending: !s.asc, nulls_first: s.nulls_first },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let schema: SchemaRef = Arc::new(win.schema.as_arrow().clone());
        let op = Over::new(fns, part_exprs, part_types, order, completion, schema.clone(), self.limits)?;
        let node = self.add(Box::new(op), input.node);
        Ok(Stream { node, schema, key: None, key_alts: vec![], window: None, ..input })
    }

    fn project_columns(&mut self, input: Stream, cols: &[usize]) -> Result<Stream> {
        let schema: SchemaRef = Arc::new(input.schema.project(cols)?);
        let exprs: Vec<Arc<dyn PhysicalExpr>> = cols
            .iter()
            .map(|&i| {
                Arc::new(datafusion_physical_expr::expressions::Column::new(input.schema.field(i).name(), i))
                    as Arc<dyn PhysicalExpr>
            })
            .collect();
        let node = self.add(
            Box::new(Calc {
                label: "scan columns".into(),
                filter: None,
                projection: Some(exprs),
                schema: schema.clone(),
                keyed: false,
                shared: None,
            }),
            input.node,
        );
        let sources: Vec<Option<usize>> = cols.iter().map(|&c| Some(c)).collect();
        Ok(remap(input, node, schema, &sources))
    }

    fn plan_aggregate(&mut self, agg: &Aggregate, input: Stream, emit: Option<Emit>) -> Result<Stream> {
        let in_schema = agg.input.schema();
        let session = input.pending_session;
        // Window bounds in the GROUP BY (for sessions they are produced by the aggregation).
        let (win_start, win_end) = match (session, input.window) {
            (Some((_, _, s, e)), _) => (s, e),
            (None, Some(w)) => (w.start, w.end),
            (None, None) => (usize::MAX, usize::MAX),
        };
        let mut keys = Vec::new();
        let mut key_fields = Vec::new();
        let mut layout = Vec::new();
        // Output columns: the GROUP BY expressions, then the aggregates.
        let mut origins: Vec<Origins> = Vec::new();
        let mut key_cols = Vec::new();
        for g in &agg.group_expr {
            if let Expr::GroupingSet(_) = g {
                return Err(plan_err("GROUPING SETS, CUBE and ROLLUP are not supported"));
            }
            let idx = match g {
                Expr::Column(c) => in_schema.index_of_column(c).ok(),
                _ => None,
            };
            origins.push(
                idx.filter(|i| *i != win_start && *i != win_end).map(|i| input.origins_of(i)).unwrap_or_default(),
            );
            if idx == Some(win_start) {
                layout.push(GroupCol::WindowStart);
            } else if idx == Some(win_end) {
                layout.push(GroupCol::WindowEnd);
            } else {
                layout.push(GroupCol::Key(keys.len()));
                key_cols.extend(idx);
                keys.push(self.physical(g, in_schema)?);
                let (_, f) = g.to_field(in_schema)?;
                key_fields.push(f);
            }
        }
        let windowed = layout.iter().any(|g| !matches!(g, GroupCol::Key(_)));
        if (session.is_some() || input.window.is_some()) && !windowed {
            return Err(plan_err(
                "a window TVF's aggregation must GROUP BY window_start and window_end (and any keys)",
            ));
        }
        // FIRST_VALUE / LAST_VALUE without ORDER BY mean "by event time".
        let time_col = match (session, input.window) {
            (Some((t, ..)), _) => Some(t),
            (None, Some(w)) => Some(w.time_col),
            (None, None) => input.time_cols.iter().min_by_key(|(_, o)| *o).map(|(c, _)| *c),
        };
        // The input may carry hidden trailing columns; expressions are lowered over all of them.
        let lower_schema = if input.schema.fields().len() > in_schema.fields().len() {
            let hidden = input.schema.fields()[in_schema.fields().len()..].to_vec();
            Arc::new(in_schema.join(&DFSchema::try_from(Schema::new(hidden))?)?)
        } else {
            in_schema.clone()
        };
        let time_expr = time_col
            .filter(|&i| i < lower_schema.fields().len())
            .map(|i| Expr::Column(Column::from(lower_schema.qualified_field(i))));
        // FIRST/LAST by event time break ties by arrival: a numbered column, appended last.
        let numbered = time_expr.is_some() && agg.aggr_expr.iter().any(orders_by_event_time);
        let lower_schema = if numbered {
            let arrival = Schema::new(vec![Field::new(ARRIVAL, DataType::UInt64, false)]);
            Arc::new(lower_schema.join(&DFSchema::try_from(arrival)?)?)
        } else {
            lower_schema
        };
        let arrival_expr = numbered.then(|| Expr::Column(Column::from_name(ARRIVAL)));
        let in_schema = &lower_schema;
        let physical_schema = Arc::new(in_schema.as_arrow().clone());
        let mut aggs = Vec::new();
        let mut args = Vec::new();
        let mut filters = Vec::new();
        for e in &agg.aggr_expr {
            let e = order_by_event_time(e.clone(), time_expr.as_ref(), arrival_expr.as_ref())?;
            let lowered = LoweredAggregateBuilder::new(
                &e,
                in_schema,
                &physical_schema,
                &self.props,
                &PhysicalPlanningContext::default(),
            )
            .build()?;
            let all = lowered.aggregate.all_expressions();
            let mut a = all.args;
            a.extend(all.order_by_exprs);
            let lazy = |e| short_circuit::rewrite(e, &physical_schema);
            args.push(a.into_iter().map(lazy).collect::<Result<Vec<_>>>()?);
            filters.push(lowered.filter.map(lazy).transpose()?);
            aggs.push(lowered.aggregate);
        }
        let output: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
        let exprs = AggregateExprs {
            keys,
            key_fields,
            group_layout: layout.clone(),
            aggs,
            args,
            filters,
            output: output.clone(),
            arrival: numbered.then(|| Arrival::new(physical_schema.clone())),
        };
        let out_pos = |want: GroupCol| layout.iter().position(|g| *g == want);
        let all_groups: Vec<usize> = (0..layout.len()).collect();
        self.need_keyed("GROUP BY", &input, key_cols);

        if let Some((time_col, gap, ..)) = session {
            if emit.is_some_and(|e| e != Emit::OnWindowClose) {
                return Err(plan_err("SESSION windows emit on close only"));
            }
            let offset = input.time_offset(time_col).unwrap_or(0);
            let op = SessionAggregate::new(exprs, time_col, gap, offset, self.limits)?;
            let node = self.add(Box::new(op), input.node);
            let time_cols = match (out_pos(GroupCol::WindowEnd), input.time_cols.is_empty()) {
                (Some(p), false) => vec![(p, offset)],
                _ => vec![],
            };
            return Ok(Stream { origins, ..Stream::append_only(node, output, time_cols) });
        }
        if let Some(w) = input.window {
            if out_pos(GroupCol::WindowStart).is_none() && out_pos(GroupCol::WindowEnd).is_none() {
                return Err(plan_err("GROUP BY window_start and window_end"));
            }
            let emit = emit.unwrap_or(Emit::OnWindowClose);
            let end_offset = input.time_offset(w.end).unwrap_or(0);
            let op = WindowAggregate::new(exprs, w.start, w.end, end_offset, emit, self.limits)?;
            let node = self.add(Box::new(op), input.node);
            let updating = emit != Emit::OnWindowClose;
            let mut time_cols = vec![];
            if !updating && !input.time_cols.is_empty() {
                if let Some(p) = out_pos(GroupCol::WindowEnd) {
                    time_cols.push((p, end_offset));
                }
                if let (Some(p), Some(max)) = (out_pos(GroupCol::WindowStart), w.spec.max_size()) {
                    time_cols.push((p, end_offset + max));
                }
            }
            return Ok(Stream {
                node,
                schema: output,
                time_cols,
                window: None,
                pending_session: None,
                updating,
                key: updating.then_some(all_groups.clone()),
                key_alts: if updating { window_key_alts(&layout, w.spec) } else { vec![] },
                origins,
                result_window_end: out_pos(GroupCol::WindowEnd),
            });
        }
        if let Some(e) = emit {
            if e != Emit::OnUpdate {
                return Err(plan_err(
                    "EMIT ON WINDOW CLOSE / EVERY need a windowed aggregation (TUMBLE, HOP, SESSION, CUMULATE)",
                ));
            }
        }
        let mut op = GroupAggregate::new(exprs, self.limits)?;
        if self.bounded {
            op.one_row_when_empty();
        }
        let node = self.add(Box::new(op), input.node);
        Ok(Stream {
            node,
            schema: output,
            time_cols: vec![],
            window: None,
            pending_session: None,
            updating: true,
            key: Some(all_groups),
            key_alts: vec![],
            origins,
            result_window_end: None,
        })
    }
}

/// The stream after a projection: time, window and key columns follow the columns that pass through.
fn remap(input: Stream, node: NodeId, schema: SchemaRef, sources: &[Option<usize>]) -> Stream {
    let find = |col: usize| sources.iter().position(|s| *s == Some(col));
    let time_cols = input.time_cols.iter().filter_map(|(c, o)| find(*c).map(|p| (p, *o))).collect();
    let window = input.window.and_then(|w| {
        Some(WindowCols {
            start: find(w.start)?,
            end: find(w.end)?,
            time_col: find(w.time_col).unwrap_or(usize::MAX),
            spec: w.spec,
        })
    });
    let map = |k: &Vec<usize>| k.iter().map(|c| find(*c)).collect::<Option<Vec<_>>>();
    let key = input.key.as_ref().and_then(map).or_else(|| input.key_alts.iter().find_map(map));
    let key_alts = input.key_alts.iter().filter_map(map).collect();
    let origins = sources.iter().map(|s| s.map(|c| input.origins_of(c)).unwrap_or_default()).collect();
    let result_window_end = input.result_window_end.and_then(find);
    Stream {
        node,
        schema,
        time_cols,
        window,
        pending_session: None,
        updating: input.updating,
        key,
        key_alts,
        origins,
        result_window_end,
    }
}

/// Keys that still name a row of a windowed aggregate without one of the window bounds:
/// the end alone names any window; the start alone names a TUMBLE or HOP window.
fn window_key_alts(layout: &[GroupCol], spec: WindowSpec) -> Vec<Vec<usize>> {
    let without = |drop: GroupCol| (0..layout.len()).filter(|&i| layout[i] != drop).collect::<Vec<_>>();
    let mut alts = vec![without(GroupCol::WindowStart)];
    if !matches!(spec, WindowSpec::Cumulate { .. }) {
        alts.push(without(GroupCol::WindowEnd));
    }
    alts
}

/// The first Aggregate met walking down from the root: the one EMIT applies to.
fn outermost_aggregate(plan: &LogicalPlan) -> Option<*const Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a as *const Aggregate),
        other => other.inputs().into_iter().find_map(outermost_aggregate),
    }
}

/// `COALESCE(a, b, ..)` as `CASE WHEN a IS NOT NULL THEN a ... ELSE last END`: DataFusion's
/// COALESCE runs only once its optimizer has rewritten it so, and streaming plans skip that optimizer.
fn expand_coalesce(e: Expr) -> Result<Expr> {
    let out = e.transform_up(|e| {
        if let Expr::ScalarFunction(f) = &e {
            if f.func.name() == "coalesce" && !f.args.is_empty() {
                let mut args = f.args.clone();
                let Some(last) = args.pop() else { return Ok(Transformed::no(e)) };
                let when_then = args.into_iter().map(|a| (Box::new(a.clone().is_not_null()), Box::new(a))).collect();
                let case = datafusion_expr::expr::Case::new(None, when_then, Some(Box::new(last)));
                return Ok(Transformed::yes(Expr::Case(case)));
            }
        }
        Ok(Transformed::no(e))
    })?;
    Ok(out.data)
}

/// Name of the arrival-number column an aggregation appends for FIRST/LAST ties.
const ARRIVAL: &str = "__eddy_arrival";

/// Whether `e` holds a FIRST_VALUE / LAST_VALUE without its own ORDER BY (ordered by event time).
fn orders_by_event_time(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(e, Expr::AggregateFunction(AggregateFunction { func, params })
            if (func.name() == "first_value" || func.name() == "last_value") && params.order_by.is_empty()))
    })
    .unwrap_or(false)
}

/// Gives FIRST_VALUE / LAST_VALUE without their own ORDER BY the order of the spec: event time,
/// ties by arrival (`arrival`, when numbered).
fn order_by_event_time(e: Expr, time: Option<&Expr>, arrival: Option<&Expr>) -> Result<Expr> {
    let Some(time) = time else { return Ok(e) };
    let out = e.transform_up(|e| {
        if let Expr::AggregateFunction(AggregateFunction { func, params }) = &e {
            let name = func.name();
            if (name == "first_value" || name == "last_value") && params.order_by.is_empty() {
                let mut params = params.clone();
                params.order_by = vec![Sort::new(time.clone(), true, false)];
                params.order_by.extend(arrival.map(|a| Sort::new(a.clone(), true, false)));
                return Ok(Transformed::yes(Expr::AggregateFunction(AggregateFunction { func: func.clone(), params })));
            }
        }
        Ok(Transformed::no(e))
    })?;
    Ok(out.data)
}

fn interval_ms(v: &datafusion_common::ScalarValue) -> Result<i64> {
    use datafusion_common::ScalarValue as S;
    match v {
        S::IntervalMonthDayNano(Some(i)) if i.months == 0 => Ok(i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000),
        S::IntervalDayTime(Some(i)) => Ok(i.days as i64 * 86_400_000 + i.milliseconds as i64),
        other => Err(plan_err(format!("RANGE {other} PRECEDING: expected an INTERVAL of days or less"))),
    }
}

/// Whether a type can be an event-time column.
pub fn is_time_type(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..))
}
