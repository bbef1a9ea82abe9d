//! A materialized view's current rows, kept for on-demand queries: the threads that run the
//! view's operators (the pipeline's, or each shard's for its part of the keys) fold its output
//! in as it flows, and other threads copy the rows out. Owns that hand-over; a failure to fold
//! is reported to queries, never to the pipeline (which must not stop for a query aid).

use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::table::{Incomplete, ResultTable};
use crate::error::Result;
use crate::ops::snapshot::{StateReader, StateWriter};
use crate::ops::Chunk;
use crate::time::MIN_TS;

/// A copy of a view's rows.
#[derive(Debug, Clone)]
pub struct ViewRows {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Why a view's rows cannot be queried now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ViewUnavailable {
    #[error("view '{view}' holds more than {max_bytes} bytes of results (api.query_view_bytes); they are not kept for queries{}", if *.windowed { " until its next window" } else { "" })]
    OverBound { view: String, max_bytes: usize, windowed: bool },
    #[error("view '{view}' could not keep its rows: {why}")]
    Failed { view: String, why: String },
}

struct Part {
    table: ResultTable,
    failed: Option<String>,
}

pub struct LiveView {
    name: String,
    windowed: bool,
    schema: SchemaRef,
    /// One per thread that runs the view (shards hold disjoint keys).
    parts: Vec<Mutex<Part>>,
}

impl LiveView {
    /// `tables`: one empty table per part.
    pub fn new(name: &str, tables: Vec<ResultTable>, windowed: bool) -> Self {
        debug_assert!(!tables.is_empty());
        let schema = tables
            .first()
            .map(|t| t.schema().clone())
            .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        LiveView {
            name: name.to_string(),
            windowed,
            schema,
            parts: tables.into_iter().map(|table| Mutex::new(Part { table, failed: None })).collect(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    fn part(&self, part: usize) -> std::sync::MutexGuard<'_, Part> {
        // A poisoned lock means a reader panicked while copying; the table itself is intact.
        self.parts[part].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds a chunk of the view's output in (the thread running part `part`).
    pub fn offer(&self, part: usize, chunk: &Chunk) {
        let mut p = self.part(part);
        if p.failed.is_some() {
            return;
        }
        if let Err(e) = p.table.offer(chunk) {
            tracing::warn!(view = %self.name, error = %e, "view rows are no longer kept for queries");
            p.failed = Some(e.to_string());
        }
    }

    /// A copy of the current rows. For a windowed view, parts still showing an older window than
    /// the newest any part has reached (no keys of theirs in it) are left out.
    pub fn rows(&self) -> std::result::Result<ViewRows, ViewUnavailable> {
        let mut parts = Vec::with_capacity(self.parts.len());
        for i in 0..self.parts.len() {
            let p = self.part(i);
            if let Some(why) = &p.failed {
                return Err(ViewUnavailable::Failed { view: self.name.clone(), why: why.clone() });
            }
            let rows = p.table.rows().map_err(|Incomplete::OverBound { max_bytes }| ViewUnavailable::OverBound {
                view: self.name.clone(),
                max_bytes,
                windowed: self.windowed,
            })?;
            parts.push((p.table.newest_end(), rows));
        }
        let newest = parts.iter().map(|(end, _)| *end).max().unwrap_or(MIN_TS);
        let batches =
            parts.into_iter().filter(|(end, _)| !self.windowed || *end == newest).flat_map(|(_, rows)| rows).collect();
        Ok(ViewRows { schema: self.schema.clone(), batches })
    }

    /// Bytes the kept rows take (approximately).
    pub fn bytes(&self) -> usize {
        (0..self.parts.len()).map(|i| self.part(i).table.bytes()).sum()
    }

    pub fn snapshot(&self, part: usize, w: &mut StateWriter) -> Result<()> {
        self.part(part).table.snapshot(w)
    }

    pub fn restore(&self, part: usize, r: &mut StateReader) -> Result<()> {
        self.part(part).table.restore(r)
    }
}
