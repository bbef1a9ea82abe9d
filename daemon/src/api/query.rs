//! `Query`: a one-off SELECT over the current rows of a pipeline's materialized views. Finds the
//! pipeline and views the query reads, copies their rows, evaluates off the runtime's threads
//! and encodes the answer as JSON rows or Arrow IPC within the configured bounds. Owns that
//! translation; never touches a running pipeline beyond copying a view's rows under its lock.

use std::collections::BTreeMap;
use std::time::Instant;

use eddy_engine::query::{self, Answer, QueryLimits, ViewInput};
use eddy_proto::v1::{QueryColumn, QueryReply};
use tonic::Status;

use crate::config::{ApiSection, QUERY_MAX_BYTES, QUERY_MAX_ROWS};
use crate::control::PipelineView;

/// Rows a query returns when the request does not say.
const DEFAULT_ROWS: usize = 1000;

/// The daemon's bounds on queries (`[api] query_*`).
#[derive(Debug, Clone, Copy)]
pub struct QuerySettings {
    pub max_rows: usize,
    pub max_bytes: usize,
}

impl QuerySettings {
    pub fn of(api: &ApiSection) -> Self {
        QuerySettings {
            max_rows: api.query_max_rows.unwrap_or(QUERY_MAX_ROWS).max(1),
            max_bytes: usize::try_from(api.query_max_bytes.unwrap_or(QUERY_MAX_BYTES)).unwrap_or(usize::MAX).max(1024),
        }
    }

    /// The bounds of one request asking for `rows` (0: the default).
    pub fn limits(&self, rows: u32) -> QueryLimits {
        let wanted = if rows == 0 { DEFAULT_ROWS } else { rows as usize };
        QueryLimits {
            max_rows: wanted.min(self.max_rows),
            max_bytes: self.max_bytes,
            operators: eddy_engine::Limits::default(),
        }
    }
}

/// The answer's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Arrow,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, Status> {
        match s {
            "" | "json" => Ok(Format::Json),
            "arrow" => Ok(Format::Arrow),
            other => Err(Status::invalid_argument(format!("format '{other}': json or arrow"))),
        }
    }
}

/// A name a query reads matches a view's name as SQL would: exactly, or ignoring case.
fn same_name(a: &str, b: &str) -> bool {
    a == b || a.eq_ignore_ascii_case(b)
}

/// The pipeline a query is about: the one named, else the only one with a view of a name the
/// query reads.
pub fn pipeline_of(
    named: &str,
    reads: &[String],
    pipelines: &BTreeMap<String, PipelineView>,
) -> Result<String, Status> {
    if !named.is_empty() {
        return Ok(named.to_string());
    }
    let has_view =
        |v: &PipelineView| reads.iter().any(|r| v.relations.iter().any(|(n, kind)| *kind == "view" && same_name(r, n)));
    let found: Vec<&String> = pipelines.iter().filter(|(_, v)| has_view(v)).map(|(n, _)| n).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Status::not_found(format!(
            "no pipeline has a materialized view named {} (eddyctl show PIPELINE lists a pipeline's views)",
            reads.join(" or ")
        ))),
        many => Err(Status::invalid_argument(format!(
            "pipelines {} each have a view of that name; say which with --pipeline",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Copies of the rows of every view the query reads.
pub fn inputs(pipeline: &str, v: &PipelineView, reads: &[String]) -> Result<Vec<ViewInput>, Status> {
    if v.paused {
        return Err(Status::failed_precondition(format!(
            "pipeline {pipeline} is paused; its views answer once resumed"
        )));
    }
    let views: Vec<&str> = v.relations.iter().filter(|(_, k)| *k == "view").map(|(n, _)| n.as_str()).collect();
    let mut out = Vec::with_capacity(reads.len());
    for r in reads {
        if let Some(live) = v.views.iter().find(|l| same_name(r, l.name())) {
            let rows = live.rows().map_err(|e| Status::failed_precondition(e.to_string()))?;
            out.push(ViewInput { name: live.name().to_string(), rows });
            continue;
        }
        let listed = if views.is_empty() { "it has none".to_string() } else { format!("views: {}", views.join(", ")) };
        return Err(match v.relations.iter().find(|(n, _)| same_name(r, n)) {
            Some((_, "view")) => Status::failed_precondition(format!(
                "view '{r}' of pipeline {pipeline} keeps no rows for queries (api.query_view_bytes = 0)"
            )),
            Some((_, kind)) => Status::invalid_argument(format!(
                "'{r}' is a {kind} of pipeline {pipeline}; queries read materialized views ({listed})"
            )),
            None => Status::not_found(format!("pipeline {pipeline} has no view '{r}' ({listed})")),
        });
    }
    Ok(out)
}

/// Evaluates the query (a blocking task: it may take a while over large views).
pub async fn answer(sql: String, inputs: Vec<ViewInput>, limits: QueryLimits) -> Result<Answer, Status> {
    let r = tokio::task::spawn_blocking(move || {
        let q = eddy_engine::query::parse_query(&sql)?;
        query::run(&q, inputs, limits)
    })
    .await
    .map_err(|e| Status::internal(format!("query task: {e}")))?;
    r.map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The reply: columns, then the rows in `format`, cut at `max_bytes` of encoded rows.
pub fn reply(
    pipeline: String,
    a: &Answer,
    format: Format,
    max_bytes: usize,
    t0: Instant,
) -> Result<QueryReply, Status> {
    let schema = a.batch.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| QueryColumn { name: f.name().clone(), r#type: f.data_type().to_string() })
        .collect();
    let mut r = QueryReply { pipeline, columns, truncated: a.truncated, ..Default::default() };
    match format {
        Format::Json => {
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let w = eddy_engine::connector::JsonRowWriter::new(&names);
            let mut bytes = 0usize;
            let mut line = Vec::new();
            let rows = w.batch(&a.batch);
            for i in 0..a.batch.num_rows() {
                line.clear();
                rows.write_row(i, b"", &mut line);
                bytes += line.len();
                if bytes > max_bytes {
                    r.truncated = true;
                    break;
                }
                r.rows.push(String::from_utf8_lossy(&line).into_owned());
            }
            r.row_count = r.rows.len() as u64;
        }
        Format::Arrow => {
            let ipc = query::arrow_ipc(&a.batch).map_err(|e| Status::internal(format!("arrow: {e}")))?;
            if ipc.len() > max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "the answer is {} bytes as Arrow IPC, over api.query_max_bytes ({max_bytes}); ask for fewer rows",
                    ipc.len()
                )));
            }
            r.row_count = a.batch.num_rows() as u64;
            r.arrow_ipc = ipc;
        }
    }
    r.elapsed_us = t0.elapsed().as_micros() as u64;
    Ok(r)
}
