//! On-demand queries over materialized views' current rows: what a view holds now is kept by
//! [`LiveView`] on the pipeline's thread, and [`run`] answers a one-off `SELECT` over copies of
//! it with the same planner and operators as continuous queries (so the dialect is the same),
//! then orders and limits the answer. Owns that one-off evaluation; never touches a running
//! pipeline's graph, and bounds every answer in rows and bytes.

mod table;
mod view;

/// Parses the one `SELECT` a query runs (the same parser as pipeline files).
pub use crate::sql::ddl::parse_query;
pub use table::{Incomplete, ResultTable, Shape};
pub use view::{LiveView, ViewRows, ViewUnavailable};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn, SortOptions};
use arrow::datatypes::SchemaRef;
use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{
    visit_relations, Expr as SqlExpr, LimitClause, ObjectName, OrderByKind, Query, SetExpr,
};

use crate::error::{EngineError, Result};
use crate::ops::graph::{Graph, Passthrough};
use crate::ops::{Chunk, Limits, Operator};
use crate::plan::{Planner, Stream};
use crate::sql::catalog::{Catalog, RelationKind};
use crate::time::MAX_TS;

/// Bounds of one answer.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Rows returned at most; more are cut and the answer says so.
    pub max_rows: usize,
    /// Bytes the answer (and any intermediate result) may hold in memory.
    pub max_bytes: usize,
    /// Operator state limits while evaluating.
    pub operators: Limits,
}

/// One view's rows as input to a query.
pub struct ViewInput {
    pub name: String,
    pub rows: ViewRows,
}

/// A query's answer.
#[derive(Debug)]
pub struct Answer {
    pub batch: RecordBatch,
    /// Rows beyond `max_rows` were cut.
    pub truncated: bool,
}

fn query_err(message: impl Into<String>) -> EngineError {
    EngineError::Sql { pos: crate::error::SqlPos { statement: 1, line: 1, column: 1 }, message: message.into() }
}

/// The relations `query` reads (as written, last name part), in order of appearance.
pub fn relations(query: &Query) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let _ = visit_relations(query, |name: &ObjectName| {
        if let Some(id) = name.0.last().and_then(|p| p.as_ident()) {
            if !names.contains(&id.value) {
                names.push(id.value.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    names
}

/// Answers `query` over `views` (each a relation of that name).
pub fn run(query: &Query, views: Vec<ViewInput>, limits: QueryLimits) -> Result<Answer> {
    if let SetExpr::Select(select) = query.body.as_ref() {
        if select.from.len() > 1 || select.from.iter().any(|t| !t.joins.is_empty()) {
            return Err(query_err("an on-demand query reads one view; joins of views are not supported"));
        }
    }
    let mut q = query.clone();
    let order = q.order_by.take();
    let limit = q.limit_clause.take();
    if q.fetch.is_some() {
        return Err(query_err("FETCH is not supported; use LIMIT"));
    }
    let mut catalog = Catalog::new();
    let mut graph = Graph::default();
    let mut relations: HashMap<String, Stream> = HashMap::new();
    for v in &views {
        let node = graph.add(Box::new(Passthrough(v.name.clone())), 1);
        catalog.add(&v.name, RelationKind::View, v.rows.schema.clone());
        relations.insert(v.name.clone(), Stream::append_only(node, v.rows.schema.clone(), vec![]));
    }
    let tables = HashMap::new();
    let mut planner = Planner::new(&catalog, &mut graph, &relations, &tables, limits.operators);
    planner.bounded = true;
    let (stream, _) = planner.plan_query(&q, None)?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let collect = graph.add(Box::new(Collect(out.clone())), 1);
    graph.connect(stream.node, collect, 0);
    let mut result = Fold::new(&stream, limits.max_bytes)?;
    for v in &views {
        let node = relations[&v.name].node;
        for b in &v.rows.batches {
            graph.push(node, 0, Chunk::append(b.clone()))?;
            result.take(&out)?;
        }
    }
    for v in &views {
        graph.advance(relations[&v.name].node, 0, MAX_TS)?;
        result.take(&out)?;
    }
    let batch = result.finish()?;
    let batch = match order {
        None => batch,
        Some(o) => sort(batch, &o.kind)?,
    };
    let (offset, count) = limit_of(limit.as_ref())?;
    let offset = offset.min(batch.num_rows());
    let wanted = count.unwrap_or(usize::MAX).min(batch.num_rows() - offset);
    let shown = wanted.min(limits.max_rows);
    Ok(Answer { batch: batch.slice(offset, shown), truncated: shown < wanted })
}

/// An answer as one Arrow IPC stream (schema, then the rows).
pub fn arrow_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut ipc = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(ipc)
}

/// Gathers the query's output chunks.
struct Collect(Arc<Mutex<Vec<Chunk>>>);

impl Operator for Collect {
    fn name(&self) -> String {
        "collect".into()
    }
    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        self.0.lock().map_err(|_| EngineError::Internal("query output lock".into()))?.push(chunk);
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }
}

/// The query's result so far: an updating output folded by key, an append-only one gathered.
enum Fold {
    Keyed(Box<ResultTable>),
    Rows { schema: SchemaRef, batches: Vec<RecordBatch>, bytes: usize, max_bytes: usize },
}

fn too_large(max_bytes: usize) -> EngineError {
    query_err(format!(
        "the answer holds more than {max_bytes} bytes (api.query_max_bytes); narrow it with WHERE or aggregate"
    ))
}

impl Fold {
    fn new(stream: &Stream, max_bytes: usize) -> Result<Self> {
        Ok(if stream.updating {
            let key = stream.key.clone().unwrap_or_default();
            Fold::Keyed(Box::new(ResultTable::new(
                stream.schema.clone(),
                Shape::Keyed { key, window_end: None },
                max_bytes,
            )?))
        } else {
            Fold::Rows { schema: stream.schema.clone(), batches: Vec::new(), bytes: 0, max_bytes }
        })
    }

    fn take(&mut self, out: &Mutex<Vec<Chunk>>) -> Result<()> {
        let chunks = std::mem::take(&mut *out.lock().map_err(|_| EngineError::Internal("query output lock".into()))?);
        for c in chunks {
            match self {
                Fold::Keyed(t) => t.offer(&c)?,
                Fold::Rows { batches, bytes, max_bytes, .. } => {
                    *bytes += c.batch.get_array_memory_size();
                    if *bytes > *max_bytes {
                        return Err(too_large(*max_bytes));
                    }
                    batches.push(c.batch);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<RecordBatch> {
        match self {
            Fold::Keyed(t) => {
                let batches = t.rows().map_err(|Incomplete::OverBound { max_bytes }| too_large(max_bytes))?;
                Ok(concat_batches(t.schema(), &batches)?)
            }
            Fold::Rows { schema, batches, .. } => Ok(concat_batches(&schema, &batches)?),
        }
    }
}

/// Orders by output columns, named or by position (as the answer is ordered after evaluation,
/// an ORDER BY expression must be one of the selected columns). NULLs sort last ascending and
/// first descending, as in Flink and PostgreSQL.
fn sort(batch: RecordBatch, kind: &OrderByKind) -> Result<RecordBatch> {
    let OrderByKind::Expressions(items) = kind else {
        return Err(query_err("ORDER BY ALL is not supported; name the columns"));
    };
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(items.len());
    for item in items {
        let col = match &item.expr {
            SqlExpr::Identifier(id) => column_named(&schema, &id.value),
            SqlExpr::CompoundIdentifier(parts) => parts.last().and_then(|id| column_named(&schema, &id.value)),
            SqlExpr::Value(v) => {
                v.to_string().parse::<usize>().ok().filter(|&p| p >= 1 && p <= schema.fields().len()).map(|p| p - 1)
            }
            _ => None,
        };
        let Some(col) = col else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(query_err(format!(
                "ORDER BY {}: order by a selected column, by name or position (columns: {})",
                item.expr,
                names.join(", ")
            )));
        };
        let descending = item.options.asc == Some(false);
        let nulls_first = item.options.nulls_first.unwrap_or(descending);
        columns.push(SortColumn {
            values: batch.column(col).clone(),
            options: Some(SortOptions { descending, nulls_first }),
        });
    }
    let order = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(&batch, &order)?)
}

fn column_named(schema: &SchemaRef, name: &str) -> Option<usize> {
    let fields = schema.fields();
    fields
        .iter()
        .position(|f| f.name() == name)
        .or_else(|| fields.iter().position(|f| f.name().eq_ignore_ascii_case(name)))
}

/// `(offset, count)` of a LIMIT clause.
fn limit_of(limit: Option<&LimitClause>) -> Result<(usize, Option<usize>)> {
    let number = |e: &SqlExpr, what: &str| {
        e.to_string().parse::<usize>().map_err(|_| query_err(format!("{what} takes a whole number, not {e}")))
    };
    match limit {
        None => Ok((0, None)),
        Some(LimitClause::LimitOffset { limit, offset, limit_by }) => {
            if !limit_by.is_empty() {
                return Err(query_err("LIMIT BY is not supported"));
            }
            let count = limit.as_ref().map(|e| number(e, "LIMIT")).transpose()?;
            let offset = offset.as_ref().map(|o| number(&o.value, "OFFSET")).transpose()?.unwrap_or(0);
            Ok((offset, count))
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            Ok((number(offset, "OFFSET")?, Some(number(limit, "LIMIT")?)))
        }
    }
}
