//! Stateless row operators: a filter and a projection, both DataFusion physical expressions
//! evaluated on whole batches.
//!
//! Sub-expressions that the filter and a projection would both evaluate are computed once
//! ([`super::shared_exprs`]); a filter then passes them on as trailing columns to the projection
//! after it.
//!
//! On an updating (keyed) stream a row that fails the filter becomes a delete of its key, so a group
//! that stops passing `HAVING` disappears from an upsert sink instead of keeping its old row.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion_physical_expr::PhysicalExpr;

use super::shared_exprs::SharedExprs;
use super::{Chunk, Operator, RowKind};
use crate::error::{EngineError, Result};

pub struct Calc {
    pub label: String,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// `None`: columns pass unchanged.
    pub projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
    pub schema: SchemaRef,
    /// Whether the input is an updating stream with a key (filter turns rows into deletes).
    pub keyed: bool,
    /// Sub-expressions computed once per batch before the filter and projection, which read
    /// them as trailing columns of the input.
    pub shared: Option<SharedExprs>,
}

impl Calc {
    fn project(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let Some(exprs) = &self.projection else { return Ok(batch.clone()) };
        let cols = exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())))
            .collect::<datafusion_common::Result<Vec<_>>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), cols, &options)?)
    }
}

fn predicate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let v = expr.evaluate(batch)?.into_array(batch.num_rows())?;
    let b = v
        .as_boolean_opt()
        .ok_or_else(|| EngineError::Internal(format!("filter gave {} instead of BOOLEAN", v.data_type())))?;
    // NULL counts as false.
    Ok(crate::ops::null_as_false(b))
}

impl Operator for Calc {
    fn checkpointable(&self) -> bool {
        true // stateless
    }
    fn name(&self) -> String {
        self.label.clone()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        let Chunk { batch, kinds } = chunk;
        let batch = match &mut self.shared {
            Some(s) => s.extend(&batch)?,
            None => batch,
        };
        let Some(f) = &self.filter else {
            out.push(Chunk { batch: self.project(&batch)?, kinds });
            return Ok(());
        };
        let keep = predicate(f, &batch)?;
        match (kinds, self.keyed) {
            (Some(kinds), true) => {
                // Rows failing the filter delete their key.
                let kinds: Arc<[RowKind]> =
                    kinds.iter().enumerate().map(|(i, k)| if keep.value(i) { *k } else { RowKind::Delete }).collect();
                out.push(Chunk { batch: self.project(&batch)?, kinds: Some(kinds) });
            }
            (kinds, _) => {
                if keep.true_count() == 0 {
                    return Ok(());
                }
                let kept = filter_record_batch(&batch, &keep)?;
                let kinds = kinds.map(|k| {
                    k.iter().enumerate().filter(|(i, _)| keep.value(*i)).map(|(_, k)| *k).collect::<Arc<[RowKind]>>()
                });
                out.push(Chunk { batch: self.project(&kept)?, kinds });
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }
}
