//! Window assignment for `TUMBLE`, `HOP` and `CUMULATE`: appends `window_start` and `window_end`,
//! repeating a row once for every window that holds it. Stateless; watermarks pass unchanged.
//!
//! Windowing a windowed view by its own `window_start` / `window_end` replaces that column, yet the
//! aggregation still needs the old values as event time (`FIRST_VALUE` / `LAST_VALUE` order by
//! them). Then the output carries the old column once more, last, as [`HIDDEN_TIME`]: only filters
//! and the aggregation see it; the planner drops it before any other operator.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};

use super::{Chunk, Operator};
use crate::error::{EngineError, Result};
use crate::sql::tvf::WindowSpec;

/// Name of the trailing column that keeps a replaced time column's values (see the module doc).
pub const HIDDEN_TIME: &str = "__eddy_window_time";

/// Whether windowing by `time_col` replaces it with a new window bound.
pub fn replaces_time(time_col: usize, start_idx: usize, end_idx: usize) -> bool {
    time_col == start_idx || time_col == end_idx
}

pub struct WindowAssign {
    pub spec: WindowSpec,
    pub time_col: usize,
    /// Output positions of window_start / window_end (replacing an input column or appended).
    pub start_idx: usize,
    pub end_idx: usize,
    pub schema: SchemaRef,
    indices: Vec<u32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
}

impl WindowAssign {
    pub fn new(spec: WindowSpec, time_col: usize, start_idx: usize, end_idx: usize, schema: SchemaRef) -> Self {
        WindowAssign { spec, time_col, start_idx, end_idx, schema, indices: vec![], starts: vec![], ends: vec![] }
    }
}

impl Operator for WindowAssign {
    fn checkpointable(&self) -> bool {
        true // stateless
    }
    fn name(&self) -> String {
        format!("{} window", self.spec.name())
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        if chunk.kinds.is_some() {
            return Err(EngineError::Internal("window TVF over an updating stream".into()));
        }
        let batch = chunk.batch;
        let ts = batch.column(self.time_col).as_primitive::<TimestampMillisecondType>();
        self.indices.clear();
        self.starts.clear();
        self.ends.clear();
        for (i, t) in ts.iter().enumerate() {
            // Rows without a time belong to no window.
            let Some(t) = t else { continue };
            self.spec.for_each_window(t, |s, e| {
                self.indices.push(i as u32);
                self.starts.push(s);
                self.ends.push(e);
            });
        }
        if self.indices.is_empty() {
            return Ok(());
        }
        let mut cols =
            if self.indices.len() == batch.num_rows() && self.indices.iter().enumerate().all(|(i, &j)| i as u32 == j) {
                batch.columns().to_vec()
            } else {
                let idx = UInt32Array::from(std::mem::take(&mut self.indices));
                let taken = arrow::compute::take_record_batch(&batch, &idx)?;
                taken.columns().to_vec()
            };
        let old_time = replaces_time(self.time_col, self.start_idx, self.end_idx).then(|| cols[self.time_col].clone());
        let starts: ArrayRef = Arc::new(TimestampMillisecondArray::from(std::mem::take(&mut self.starts)));
        let ends: ArrayRef = Arc::new(TimestampMillisecondArray::from(std::mem::take(&mut self.ends)));
        let mut placed = [(self.start_idx, starts), (self.end_idx, ends)];
        placed.sort_by_key(|(i, _)| *i);
        for (i, col) in placed {
            if i < cols.len() {
                cols[i] = col;
            } else {
                cols.push(col);
            }
        }
        cols.extend(old_time);
        out.push(Chunk::append(RecordBatch::try_new(self.schema.clone(), cols)?));
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }
}
