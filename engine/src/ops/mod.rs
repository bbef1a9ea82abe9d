//! Streaming operators and the dataflow graph that connects them.
//!
//! Rows move as Arrow batches ([`Chunk`]); an updating stream also carries a [`RowKind`] per row.
//! Operators are single-threaded and deterministic: the same chunks and watermarks in the same order
//! give the same output. They do no I/O (sinks are the graph's leaves and live in `connector`).

pub mod agg;
pub mod asof_join;
pub mod calc;
pub mod eager_case;
pub mod float_sum;
pub mod graph;
pub mod group_agg;
pub mod lookup_join;
pub mod over;
pub mod pattern;
pub mod range_count;
pub mod range_prim;
pub mod rows;
pub mod session;
pub mod shared_distinct;
pub mod shared_exprs;
pub mod short_circuit;
pub mod snapshot;
pub mod stream_join;
pub mod variance;
pub mod window;
pub mod window_agg;

use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::error::Result;

/// What a row of an updating stream does to the result, keyed by the stream's key columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RowKind {
    /// The row for its key is now this (first or changed value).
    Upsert = 0,
    /// The key no longer has a row.
    Delete = 1,
}

/// A batch of rows; `kinds` is `None` for append-only streams.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub batch: RecordBatch,
    pub kinds: Option<Arc<[RowKind]>>,
}

impl Chunk {
    pub fn append(batch: RecordBatch) -> Self {
        Chunk { batch, kinds: None }
    }
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// A streaming operator. The graph calls it with the rows of its inputs and with the combined
/// (minimum) watermark of its inputs; it pushes its output into `out`.
pub trait Operator: Send {
    fn name(&self) -> String;
    /// New rows on input `port`.
    fn on_chunk(&mut self, port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()>;
    /// The input watermark advanced to `wm`; returns the watermark of this operator's output.
    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64>;
    /// Opens what the operator writes to (sinks); called once before the first row.
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    /// Flushes what the operator wrote (sinks); called when the pipeline ends.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Releases what the operator writes to (a provided sink's connection), after the final
    /// checkpoint of a live pipeline.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// Sinks: rows written and retractions written, for metrics.
    fn sink_counts(&self) -> Option<(u64, u64)> {
        None
    }
    /// Bytes of state held (approximate), for limits and metrics.
    fn state_bytes(&self) -> usize {
        0
    }
    /// Whether [`Operator::snapshot`] captures all of the operator's state; durable pipelines need
    /// every operator to say yes. The default is no, so a new stateful operator is never silently
    /// checkpointed without its state.
    fn checkpointable(&self) -> bool {
        false
    }
    /// Writes the operator's state for a checkpoint (between chunks, never during one).
    fn snapshot(&mut self, _w: &mut snapshot::StateWriter) -> Result<()> {
        Ok(())
    }
    /// Restores what [`Operator::snapshot`] wrote into a freshly planned operator.
    fn restore(&mut self, _r: &mut snapshot::StateReader) -> Result<()> {
        Ok(())
    }
    /// A durable pipeline opened its state: called once, before [`Operator::restore`] (and
    /// before anything runs on a fresh state).
    fn state_opened(&mut self, _state: &OpenedState) {}
    /// The checkpoint holding everything up to now is durable: sinks publish their staged output.
    fn on_checkpoint_committed(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What operators learn of the durable state they run on ([`Operator::state_opened`]).
#[derive(Debug, Clone, Copy)]
pub struct OpenedState {
    /// Random, made when the state began; kept across restarts and by a restore from a backup
    /// (which continues the state); new after a reset.
    pub identity: [u8; 16],
    /// The checkpoint about to be restored came from a backup: it was taken on another device
    /// or at an earlier time.
    pub from_backup: bool,
    /// The epoch the state began in, kept for its whole life (0: begun before epochs were
    /// kept). A connector whose default names changed keeps the old ones for state begun in an
    /// earlier epoch, so that an upgrade never moves what a broker keeps under a name. Epochs
    /// (docs/checkpoint.md): 1, connectors may name themselves after `identity`.
    pub epoch: u32,
}

/// The key column of a grouping without keys: every row the same value.
pub fn constant_key(rows: usize) -> arrow::array::ArrayRef {
    std::sync::Arc::new(arrow::array::BooleanArray::from(vec![true; rows]))
}

/// A filter mask where NULL counts as false.
pub fn null_as_false(b: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    use arrow::array::Array;
    if b.null_count() == 0 {
        b.clone()
    } else {
        arrow::compute::prep_null_mask_filter(b)
    }
}

/// Limits on operator state. Reaching one stops the pipeline with a clear error; nothing is dropped.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open windows per windowed operator.
    pub max_open_windows: usize,
    /// Groups (keys) per operator, summed over its open windows.
    pub max_groups: usize,
    /// Rows per batch a source hands to the graph.
    pub batch_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_open_windows: 100_000, max_groups: 5_000_000, batch_rows: 8192 }
    }
}
