//! Rows a stateful operator holds (join buffers, pattern partitions), kept in the Arrow batches they
//! arrived in and referenced by (slot, row): no row is copied on arrival, and a batch is freed as
//! soon as none of its rows is held. Output columns are gathered with `interleave`.
//!
//! Join keys are compared as Arrow row-format bytes ([`KeyEncoder`]); a batch's encoded keys can be
//! kept with it ([`RowStore::add_keyed`]), so a held row's key is read in place, never copied.

use std::collections::HashMap;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

use super::snapshot::{StateReader, StateWriter};
use crate::error::{EngineError, Result};

/// A held row: batch slot and row within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowRef {
    pub slot: u32,
    pub row: u32,
}

struct Slot {
    batch: RecordBatch,
    /// The batch's rows' encoded keys, when the holder compares keys of held rows.
    keys: Option<Rows>,
    live: u32,
}

pub struct RowStore {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// One all-NULL row per column: what a missing row gathers to.
    nulls: Vec<ArrayRef>,
    bytes: usize,
}

impl RowStore {
    pub fn new(schema: &SchemaRef) -> Self {
        let nulls = schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
        RowStore { slots: Vec::new(), free: Vec::new(), nulls, bytes: 0 }
    }

    /// Takes `batch` in; its rows are held with [`RowStore::hold`]. Call [`RowStore::seal`] after
    /// holding, so a batch none of whose rows was held is freed at once.
    pub fn add(&mut self, batch: RecordBatch) -> u32 {
        self.add_slot(batch, None)
    }

    /// [`RowStore::add`], keeping the rows' encoded keys beside the batch (row `i`'s key is
    /// `keys.row(i)`), read back with [`RowStore::key`].
    pub fn add_keyed(&mut self, batch: RecordBatch, keys: Rows) -> u32 {
        debug_assert_eq!(batch.num_rows(), keys.num_rows());
        self.add_slot(batch, Some(keys))
    }

    fn add_slot(&mut self, batch: RecordBatch, keys: Option<Rows>) -> u32 {
        self.bytes += slot_bytes(&batch, keys.as_ref());
        let slot = Some(Slot { batch, keys, live: 0 });
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub fn hold(&mut self, r: RowRef) {
        if let Some(Some(s)) = self.slots.get_mut(r.slot as usize) {
            s.live += 1;
        }
    }

    pub fn seal(&mut self, slot: u32) {
        if matches!(self.slots.get(slot as usize), Some(Some(s)) if s.live == 0) {
            self.drop_slot(slot);
        }
    }

    pub fn release(&mut self, r: RowRef) {
        let Some(Some(s)) = self.slots.get_mut(r.slot as usize) else { return };
        s.live = s.live.saturating_sub(1);
        if s.live == 0 {
            self.drop_slot(r.slot);
        }
    }

    fn drop_slot(&mut self, slot: u32) {
        if let Some(s) = self.slots[slot as usize].take() {
            self.bytes -= slot_bytes(&s.batch, s.keys.as_ref());
            self.free.push(slot);
        }
    }

    pub fn batch(&self, slot: u32) -> Result<&RecordBatch> {
        match self.slots.get(slot as usize) {
            Some(Some(s)) => Ok(&s.batch),
            _ => Err(EngineError::Internal(format!("row store: slot {slot} is not held"))),
        }
    }

    /// The encoded key of a held row of a slot added with [`RowStore::add_keyed`].
    pub fn key(&self, r: RowRef) -> Option<&[u8]> {
        match self.slots.get(r.slot as usize) {
            Some(Some(Slot { keys: Some(k), .. })) if (r.row as usize) < k.num_rows() => {
                Some(k.row(r.row as usize).data())
            }
            _ => None,
        }
    }

    /// Columns `cols` of the given rows, in order; `None` gathers NULLs.
    pub fn gather(&self, refs: &[Option<RowRef>], cols: &[usize]) -> Result<Vec<ArrayRef>> {
        // Positions of the slots used, in the arrays handed to interleave; the NULL row goes last.
        let mut used: HashMap<u32, usize> = HashMap::new();
        let mut order: Vec<u32> = Vec::new();
        for r in refs.iter().flatten() {
            used.entry(r.slot).or_insert_with(|| {
                order.push(r.slot);
                order.len() - 1
            });
        }
        let null_pos = order.len();
        let indices: Vec<(usize, usize)> = refs
            .iter()
            .map(|r| match r {
                Some(r) => (used[&r.slot], r.row as usize),
                None => (null_pos, 0),
            })
            .collect();
        let batches = order.iter().map(|&s| self.batch(s)).collect::<Result<Vec<_>>>()?;
        cols.iter()
            .map(|&c| {
                let mut arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
                arrays.push(self.nulls[c].as_ref());
                Ok(arrow::compute::interleave(&arrays, &indices)?)
            })
            .collect()
    }

    /// Bytes of the batches held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Writes the given held rows, in order, as one batch: an operator's buffer in a checkpoint.
    pub fn write_rows(&self, schema: &SchemaRef, refs: &[RowRef], w: &mut StateWriter) -> Result<()> {
        let refs: Vec<Option<RowRef>> = refs.iter().map(|r| Some(*r)).collect();
        let cols: Vec<usize> = (0..schema.fields().len()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(refs.len()));
        w.batch(&RecordBatch::try_new_with_options(schema.clone(), self.gather(&refs, &cols)?, &options)?)
    }

    /// Reads `n` rows written by [`RowStore::write_rows`] into a new slot: row `i` is
    /// `RowRef { slot, row: i }`. The caller holds the rows it keeps, then seals the slot.
    pub fn read_rows(&mut self, schema: &SchemaRef, n: usize, r: &mut StateReader) -> Result<u32> {
        Ok(self.add(Self::read_batch(schema, n, r)?))
    }

    /// The batch of `n` rows written by [`RowStore::write_rows`], checked against `schema`.
    pub fn read_batch(schema: &SchemaRef, n: usize, r: &mut StateReader) -> Result<RecordBatch> {
        let batch = r.batch()?;
        let types_match = batch.num_columns() == schema.fields().len()
            && batch.schema().fields().iter().zip(schema.fields()).all(|(a, b)| a.data_type() == b.data_type());
        if batch.num_rows() != n || !types_match {
            return Err(r.err("held rows of the wrong shape"));
        }
        Ok(batch)
    }
}

fn slot_bytes(batch: &RecordBatch, keys: Option<&Rows>) -> usize {
    batch.get_array_memory_size() + keys.map_or(0, |k| k.size())
}

/// Encodes key columns as comparable bytes.
pub struct KeyEncoder {
    converter: RowConverter,
    types: Vec<DataType>,
}

impl KeyEncoder {
    pub fn new(types: Vec<DataType>) -> Result<Self> {
        let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(KeyEncoder { converter, types })
    }

    /// Encodes `keys` (cast to the encoder's types); also says which rows have a NULL key part
    /// (a NULL never equals anything, so such rows match nothing).
    pub fn encode(&self, keys: &[ArrayRef]) -> Result<(Rows, Vec<bool>)> {
        let keys = keys
            .iter()
            .zip(&self.types)
            .map(|(k, t)| if k.data_type() == t { Ok(k.clone()) } else { Ok(arrow::compute::cast(k, t)?) })
            .collect::<Result<Vec<_>>>()?;
        let n = keys.first().map(|k| k.len()).unwrap_or(0);
        let mut has_null = vec![false; n];
        for k in &keys {
            if k.null_count() > 0 {
                for (i, h) in has_null.iter_mut().enumerate() {
                    *h |= k.is_null(i);
                }
            }
        }
        Ok((self.converter.convert_columns(&keys)?, has_null))
    }
}

/// Evaluates physical expressions over a batch into arrays.
pub fn eval_all(
    exprs: &[std::sync::Arc<dyn datafusion_physical_expr::PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    exprs.iter().map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)).collect()
}
