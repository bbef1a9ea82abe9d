//! Lookup join: each stream row against the current contents of a reference TABLE.
//!
//! The table's rows live in a [`TableHandle`] that the pipeline swaps when the table's file
//! changes; the operator rebuilds its key index when it sees a new version. An updating stream
//! keeps its kinds: an upsert that finds no match (inner join) becomes a delete of its key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::SchemaRef;
use datafusion_physical_expr::PhysicalExpr;

use super::rows::{eval_all, KeyEncoder};
use super::{Chunk, Operator, RowKind};
use crate::error::{EngineError, Result};

/// Table rows by encoded key.
type KeyIndex = HashMap<Box<[u8]>, Vec<u32>>;

/// One loaded version of a reference table.
#[derive(Debug)]
pub struct TableData {
    pub version: u64,
    pub batch: RecordBatch,
}

/// The current version of a table, shared by the pipeline (which reloads it) and its lookup joins.
pub type TableHandle = Arc<RwLock<Arc<TableData>>>;

pub struct LookupJoin {
    pub label: String,
    pub table: TableHandle,
    /// Key expressions over the stream's rows, in the order of `table_keys`.
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub table_keys: Vec<usize>,
    pub left_outer: bool,
    /// Extra ON condition over the output row.
    pub residual: Option<Arc<dyn PhysicalExpr>>,
    /// Stream columns, then table columns.
    pub schema: SchemaRef,
    /// The stream is updating (rows carry kinds).
    pub keyed: bool,
    /// The table version it was built from, and its rows by key.
    index: Option<(u64, KeyIndex)>,
    encoder: KeyEncoder,
}

impl LookupJoin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: String,
        table: TableHandle,
        stream_keys: Vec<Arc<dyn PhysicalExpr>>,
        table_keys: Vec<usize>,
        key_types: Vec<arrow::datatypes::DataType>,
        left_outer: bool,
        residual: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
        keyed: bool,
    ) -> Result<Self> {
        Ok(LookupJoin {
            label,
            table,
            stream_keys,
            table_keys,
            left_outer,
            residual,
            schema,
            keyed,
            index: None,
            encoder: KeyEncoder::new(key_types)?,
        })
    }

    fn current(&mut self) -> Result<Arc<TableData>> {
        let data = self.table.read().map_err(|_| EngineError::Internal("table lock poisoned".into()))?.clone();
        if self.index.as_ref().is_none_or(|(v, _)| *v != data.version) {
            let keys: Vec<ArrayRef> = self.table_keys.iter().map(|&c| data.batch.column(c).clone()).collect();
            let mut index: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
            if data.batch.num_rows() > 0 {
                let (rows, null_key) = self.encoder.encode(&keys)?;
                for (i, &null) in null_key.iter().enumerate().take(data.batch.num_rows()) {
                    if !null {
                        index.entry(rows.row(i).as_ref().into()).or_default().push(i as u32);
                    }
                }
            }
            self.index = Some((data.version, index));
        }
        Ok(data)
    }
}

impl Operator for LookupJoin {
    /// No state of its own: the table is read from its file when the pipeline starts, and rows
    /// replayed from the WAL after a crash join the table as it is then (a processing-time lookup,
    /// as in Flink). Output of those rows was never made visible before, so none is repeated.
    fn checkpointable(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.label.clone()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        let data = self.current()?;
        let Some((_, index)) = &self.index else { return Err(EngineError::Internal("lookup index missing".into())) };
        let batch = &chunk.batch;
        let (rows, null_key) = self.encoder.encode(&eval_all(&self.stream_keys, batch)?)?;
        // (stream row, table row or none)
        let mut stream_idx: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut table_idx: Vec<Option<u32>> = Vec::with_capacity(batch.num_rows());
        for (i, &null) in null_key.iter().enumerate().take(batch.num_rows()) {
            let matches = if null { None } else { index.get(rows.row(i).as_ref()) };
            match matches {
                Some(m) => {
                    for &t in m {
                        stream_idx.push(i as u32);
                        table_idx.push(Some(t));
                    }
                }
                None if self.left_outer || self.keyed => {
                    stream_idx.push(i as u32);
                    table_idx.push(None);
                }
                None => {}
            }
        }
        let mut joined = build(&self.schema, batch, &data.batch, &stream_idx, &table_idx)?;
        let mut matched: Vec<bool> = table_idx.iter().map(|t| t.is_some()).collect();
        if let Some(r) = &self.residual {
            let v = r.evaluate(&joined)?.into_array(joined.num_rows())?;
            let pass = super::null_as_false(
                v.as_boolean_opt().ok_or_else(|| EngineError::Internal("join condition is not BOOLEAN".into()))?,
            );
            for (i, m) in matched.iter_mut().enumerate() {
                *m &= pass.value(i);
            }
            // Pairs failing the condition: gone; stream rows left with no pair get one NULL row.
            let mut has_pair = vec![false; batch.num_rows()];
            for (i, &s) in stream_idx.iter().enumerate() {
                has_pair[s as usize] |= matched[i];
            }
            let mut s2 = Vec::with_capacity(stream_idx.len());
            let mut t2 = Vec::with_capacity(stream_idx.len());
            let mut m2 = Vec::with_capacity(stream_idx.len());
            let mut seen = vec![false; batch.num_rows()];
            for (i, &s) in stream_idx.iter().enumerate() {
                if matched[i] {
                    s2.push(s);
                    t2.push(table_idx[i]);
                    m2.push(true);
                } else if !has_pair[s as usize] && !seen[s as usize] && (self.left_outer || self.keyed) {
                    seen[s as usize] = true;
                    s2.push(s);
                    t2.push(None);
                    m2.push(false);
                }
            }
            stream_idx = s2;
            table_idx = t2;
            matched = m2;
            joined = build(&self.schema, batch, &data.batch, &stream_idx, &table_idx)?;
        }
        if joined.num_rows() == 0 {
            return Ok(());
        }
        let kinds = match (&chunk.kinds, self.keyed) {
            (Some(k), true) => Some(
                stream_idx
                    .iter()
                    .zip(&matched)
                    .map(|(&s, &m)| if m || self.left_outer { k[s as usize] } else { RowKind::Delete })
                    .collect::<Arc<[RowKind]>>(),
            ),
            (Some(k), false) => Some(stream_idx.iter().map(|&s| k[s as usize]).collect::<Arc<[RowKind]>>()),
            (None, _) => None,
        };
        out.push(Chunk { batch: joined, kinds });
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }

    fn state_bytes(&self) -> usize {
        self.table.read().map(|d| d.batch.get_array_memory_size()).unwrap_or(0)
    }
}

fn build(
    schema: &SchemaRef,
    stream: &RecordBatch,
    table: &RecordBatch,
    s: &[u32],
    t: &[Option<u32>],
) -> Result<RecordBatch> {
    let s = UInt32Array::from(s.to_vec());
    let t = UInt32Array::from(t.to_vec());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for c in stream.columns() {
        cols.push(arrow::compute::take(c.as_ref(), &s, None)?);
    }
    for c in table.columns() {
        cols.push(arrow::compute::take(c.as_ref(), &t, None)?);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(s.len()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), cols, &options)?)
}
