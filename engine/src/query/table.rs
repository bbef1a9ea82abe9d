//! The current results of a stream, folded from its chunks and bounded in bytes: one row per key
//! for an updating stream, the rows of the newest window for a windowed one, the newest rows for
//! any other. Owns that fold and its checkpoint encoding; never drops a row of a keyed result
//! silently (over the bound it says it is incomplete instead).

use std::collections::VecDeque;

use ahash::AHashMap;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::error::{EngineError, Result};
use crate::ops::snapshot::{StateReader, StateWriter};
use crate::ops::{Chunk, RowKind};
use crate::time::MIN_TS;

/// Bytes a kept row costs beyond its encoded key and values (map entry, allocations).
const ROW_OVERHEAD_BYTES: usize = 64;

/// How a stream's chunks fold into its current results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// An updating stream: one row per key; an upsert replaces it, a delete removes it. With a
    /// window end column, only the newest window's rows are kept.
    Keyed { key: Vec<usize>, window_end: Option<usize> },
    /// An append-only windowed stream: the rows of the newest window end seen.
    LatestWindow { end: usize },
    /// Any other append-only stream: the newest rows, as many as the bound holds.
    Latest,
}

impl Shape {
    fn tag(&self) -> u8 {
        match self {
            Shape::Keyed { .. } => 0,
            Shape::LatestWindow { .. } => 1,
            Shape::Latest => 2,
        }
    }
}

/// Why a table has no complete results to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incomplete {
    /// Its rows outgrew the byte bound (a windowed table recovers at the next window).
    OverBound { max_bytes: usize },
}

pub struct ResultTable {
    schema: SchemaRef,
    shape: Shape,
    max_bytes: usize,
    /// Keyed: key (encoded) → (window end, whole row encoded).
    keyed: AHashMap<OwnedRow, (i64, OwnedRow)>,
    key_conv: Option<RowConverter>,
    row_conv: Option<RowConverter>,
    /// Append-only shapes: batches in arrival order.
    batches: VecDeque<RecordBatch>,
    /// The newest window end seen (windowed shapes).
    newest_end: i64,
    bytes: usize,
    incomplete: Option<Incomplete>,
}

impl ResultTable {
    pub fn new(schema: SchemaRef, shape: Shape, max_bytes: usize) -> Result<Self> {
        let (key_conv, row_conv) = match &shape {
            Shape::Keyed { key, .. } => {
                let fields = |cols: &mut dyn Iterator<Item = usize>| -> Vec<SortField> {
                    cols.map(|c| SortField::new(schema.field(c).data_type().clone())).collect()
                };
                // No key (a global aggregate): one row, under a constant key.
                let key_fields = if key.is_empty() {
                    vec![SortField::new(arrow::datatypes::DataType::Boolean)]
                } else {
                    fields(&mut key.iter().copied())
                };
                (
                    Some(RowConverter::new(key_fields)?),
                    Some(RowConverter::new(fields(&mut (0..schema.fields().len())))?),
                )
            }
            _ => (None, None),
        };
        Ok(ResultTable {
            schema,
            shape,
            max_bytes,
            keyed: AHashMap::new(),
            key_conv,
            row_conv,
            batches: VecDeque::new(),
            newest_end: MIN_TS,
            bytes: 0,
            incomplete: None,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest window end seen (`MIN_TS` for tables without windows).
    pub fn newest_end(&self) -> i64 {
        self.newest_end
    }

    /// Folds one chunk of the stream in.
    pub fn offer(&mut self, chunk: &Chunk) -> Result<()> {
        if chunk.num_rows() == 0 {
            return Ok(());
        }
        match self.shape {
            Shape::Keyed { .. } => self.offer_keyed(chunk),
            Shape::LatestWindow { end } => self.offer_window(&chunk.batch, end),
            Shape::Latest => {
                self.push_newest(chunk.batch.clone());
                Ok(())
            }
        }
    }

    fn offer_keyed(&mut self, chunk: &Chunk) -> Result<()> {
        // Borrowed field by field: the shape is read while the rows change, and nothing is cloned
        // per chunk.
        let (Shape::Keyed { key, window_end }, Some(key_conv), Some(row_conv)) =
            (&self.shape, &self.key_conv, &self.row_conv)
        else {
            return Err(EngineError::Internal("a keyed table without its key and converters".into()));
        };
        let window_end = *window_end;
        let batch = &chunk.batch;
        let ends = window_end.map(|c| batch.column(c).as_primitive::<TimestampMillisecondType>());
        if let Some(ends) = ends {
            let newest = arrow::compute::max(ends).unwrap_or(MIN_TS);
            if newest > self.newest_end {
                self.newest_end = newest;
                self.keyed.retain(|_, (end, _)| *end >= newest);
                self.incomplete = None;
                self.bytes = self.keyed.iter().map(|(k, (_, r))| entry_bytes(k, r)).sum();
            }
        }
        if self.incomplete.is_some() {
            return Ok(());
        }
        let key_cols: Vec<ArrayRef> = if key.is_empty() {
            vec![crate::ops::constant_key(batch.num_rows())]
        } else {
            key.iter().map(|&c| batch.column(c).clone()).collect()
        };
        let keys = key_conv.convert_columns(&key_cols)?;
        let rows = row_conv.convert_columns(batch.columns())?;
        for i in 0..batch.num_rows() {
            let end = ends.map_or(MIN_TS, |e| if e.is_null(i) { MIN_TS } else { e.value(i) });
            if end < self.newest_end {
                continue; // an update of an older window than the one shown
            }
            let k = keys.row(i).owned();
            let kind = chunk.kinds.as_ref().map_or(RowKind::Upsert, |k| k[i]);
            if let Some((_, old)) = self.keyed.remove(&k) {
                self.bytes -= entry_bytes(&k, &old);
            }
            if kind == RowKind::Upsert {
                let r = rows.row(i).owned();
                self.bytes += entry_bytes(&k, &r);
                self.keyed.insert(k, (end, r));
            }
        }
        if self.bytes > self.max_bytes {
            self.keyed.clear();
            self.bytes = 0;
            self.incomplete = Some(Incomplete::OverBound { max_bytes: self.max_bytes });
        }
        Ok(())
    }

    fn offer_window(&mut self, batch: &RecordBatch, end_col: usize) -> Result<()> {
        let ends = batch.column(end_col).as_primitive::<TimestampMillisecondType>();
        let newest = arrow::compute::max(ends).unwrap_or(MIN_TS);
        if newest < self.newest_end {
            return Ok(());
        }
        if newest > self.newest_end {
            self.newest_end = newest;
            self.batches.clear();
            self.bytes = 0;
            self.incomplete = None;
        }
        if self.incomplete.is_some() {
            return Ok(());
        }
        let newest_value = arrow::array::PrimitiveArray::<TimestampMillisecondType>::from(vec![newest])
            .with_data_type(ends.data_type().clone());
        let keep = arrow::compute::kernels::cmp::eq(ends, &arrow::array::Scalar::new(newest_value))?;
        let rows = filter_record_batch(batch, &keep)?;
        self.bytes += rows.get_array_memory_size();
        self.batches.push_back(rows);
        if self.bytes > self.max_bytes {
            self.batches.clear();
            self.bytes = 0;
            self.incomplete = Some(Incomplete::OverBound { max_bytes: self.max_bytes });
        }
        Ok(())
    }

    /// Keeps the newest rows within the bound, oldest batches leaving first.
    fn push_newest(&mut self, batch: RecordBatch) {
        let mut batch = batch;
        let mut size = batch.get_array_memory_size();
        if size > self.max_bytes {
            // One batch over the bound: keep (a copy of) its newest rows that fit.
            let keep = (batch.num_rows() * self.max_bytes / size.max(1)).max(1).min(batch.num_rows());
            let tail = batch.slice(batch.num_rows() - keep, keep);
            batch = concat_batches(&self.schema, [&tail]).unwrap_or(tail);
            size = batch.get_array_memory_size();
            self.batches.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.batches.push_back(batch);
        while self.bytes > self.max_bytes && self.batches.len() > 1 {
            if let Some(old) = self.batches.pop_front() {
                self.bytes -= old.get_array_memory_size();
            }
        }
    }

    /// The current rows, or why there are none to trust.
    pub fn rows(&self) -> std::result::Result<Vec<RecordBatch>, Incomplete> {
        if let Some(why) = &self.incomplete {
            return Err(why.clone());
        }
        Ok(match &self.row_conv {
            Some(conv) => self.keyed_batch(conv).map(|b| vec![b]).unwrap_or_default(),
            None => self.batches.iter().cloned().collect(),
        })
    }

    /// The keyed rows as one batch (`None` when empty or, never expected, when rows fail to decode).
    fn keyed_batch(&self, conv: &RowConverter) -> Option<RecordBatch> {
        if self.keyed.is_empty() {
            return None;
        }
        let cols = conv.convert_rows(self.keyed.values().map(|(_, r)| r.row())).ok()?;
        RecordBatch::try_new(self.schema.clone(), cols).ok()
    }

    /// Writes the table for a checkpoint.
    pub fn snapshot(&self, w: &mut StateWriter) -> Result<()> {
        w.u8(self.shape.tag());
        w.i64(self.newest_end);
        w.bool(self.incomplete.is_some());
        let rows = match &self.row_conv {
            Some(conv) => {
                let cols = conv.convert_rows(self.keyed.values().map(|(_, r)| r.row()))?;
                RecordBatch::try_new(self.schema.clone(), cols)?
            }
            None => concat_batches(&self.schema, self.batches.iter())?,
        };
        w.batch(&rows)
    }

    /// Restores what [`ResultTable::snapshot`] wrote into an empty table of the same shape.
    pub fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        if r.u8()? != self.shape.tag() {
            return Err(r.err("a view of another shape"));
        }
        let newest_end = r.i64()?;
        let incomplete = r.bool()?;
        let rows = r.batch()?;
        r.finish()?;
        if rows.num_columns() != self.schema.fields().len() {
            return Err(r.err("a column count mismatch"));
        }
        let rows = RecordBatch::try_new(self.schema.clone(), rows.columns().to_vec())
            .map_err(|e| r.err(&format!("rows of another schema ({e})")))?;
        self.keyed.clear();
        self.batches.clear();
        self.bytes = 0;
        self.newest_end = MIN_TS;
        self.offer(&Chunk::append(rows))?;
        self.newest_end = self.newest_end.max(newest_end);
        if incomplete {
            self.keyed.clear();
            self.batches.clear();
            self.bytes = 0;
            self.incomplete = Some(Incomplete::OverBound { max_bytes: self.max_bytes });
        }
        Ok(())
    }
}

fn entry_bytes(key: &OwnedRow, row: &OwnedRow) -> usize {
    key.as_ref().len() + row.as_ref().len() + ROW_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use proptest::prelude::*;

    use super::*;

    fn keyed_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Int64, true)]))
    }

    fn chunk(rows: &[(i64, i64, bool)]) -> Chunk {
        let k = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let v = Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let batch = RecordBatch::try_new(keyed_schema(), vec![Arc::new(k), Arc::new(v)]).unwrap();
        let kinds = rows.iter().map(|r| if r.2 { RowKind::Delete } else { RowKind::Upsert }).collect::<Vec<_>>();
        Chunk { batch, kinds: Some(kinds.into()) }
    }

    fn contents(t: &ResultTable) -> BTreeMap<i64, i64> {
        let mut m = BTreeMap::new();
        for b in t.rows().unwrap() {
            let (k, v) = (
                b.column(0).as_primitive::<arrow::datatypes::Int64Type>(),
                b.column(1).as_primitive::<arrow::datatypes::Int64Type>(),
            );
            for i in 0..b.num_rows() {
                assert!(m.insert(k.value(i), v.value(i)).is_none(), "one row per key");
            }
        }
        m
    }

    proptest! {
        /// A keyed table holds what a map fed the same upserts and deletes holds, and a snapshot
        /// restores to the same rows.
        #[test]
        fn a_keyed_table_matches_a_map_and_survives_a_snapshot(
            chunks in proptest::collection::vec(proptest::collection::vec((0i64..20, any::<i64>(), any::<bool>()), 1..12), 1..20)
        ) {
            let shape = Shape::Keyed { key: vec![0], window_end: None };
            let mut t = ResultTable::new(keyed_schema(), shape.clone(), 1 << 20).unwrap();
            let mut model = BTreeMap::new();
            for c in &chunks {
                t.offer(&chunk(c)).unwrap();
                for &(k, v, delete) in c {
                    if delete { model.remove(&k); } else { model.insert(k, v); }
                }
                prop_assert_eq!(contents(&t), model.clone());
            }
            let mut w = StateWriter::default();
            t.snapshot(&mut w).unwrap();
            let mut back = ResultTable::new(keyed_schema(), shape, 1 << 20).unwrap();
            back.restore(&mut StateReader::new(&w.buf, "view")).unwrap();
            prop_assert_eq!(contents(&back), model);
            prop_assert_eq!(back.bytes(), t.bytes());
        }
    }

    #[test]
    fn a_keyed_table_over_its_bound_says_so_instead_of_showing_part() {
        let shape = Shape::Keyed { key: vec![0], window_end: None };
        let mut t = ResultTable::new(keyed_schema(), shape, 300).unwrap();
        t.offer(&chunk(&[(1, 1, false), (2, 2, false)])).unwrap();
        assert_eq!(contents(&t).len(), 2);
        t.offer(&chunk(&[(3, 3, false), (4, 4, false)])).unwrap();
        assert_eq!(t.rows().unwrap_err(), Incomplete::OverBound { max_bytes: 300 });
        // Deleting keys later does not make the lost rows whole again.
        t.offer(&chunk(&[(3, 0, true), (4, 0, true)])).unwrap();
        assert!(t.rows().is_err());
    }

    #[test]
    fn a_windowed_table_shows_the_newest_window_and_recovers_from_its_bound_at_the_next() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("end", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        let batch = |rows: &[(i64, i64)]| {
            let k = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
            let e = TimestampMillisecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
            Chunk::append(RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(e)]).unwrap())
        };
        let count = |t: &ResultTable| t.rows().map(|b| b.iter().map(|b| b.num_rows()).sum::<usize>());
        let mut t = ResultTable::new(schema.clone(), Shape::LatestWindow { end: 1 }, 1 << 20).unwrap();
        t.offer(&batch(&[(1, 10), (2, 10)])).unwrap();
        t.offer(&batch(&[(3, 10), (1, 20)])).unwrap();
        assert_eq!((count(&t), t.newest_end()), (Ok(1), 20));
        t.offer(&batch(&[(2, 20), (9, 10)])).unwrap(); // an older window's row is not shown
        assert_eq!(count(&t), Ok(2));
        // A window too large for the bound, then one that fits.
        let mut t = ResultTable::new(schema.clone(), Shape::LatestWindow { end: 1 }, 2000).unwrap();
        t.offer(&batch(&(0..200).map(|k| (k, 10)).collect::<Vec<_>>())).unwrap();
        assert!(t.rows().is_err());
        t.offer(&batch(&[(1, 20)])).unwrap();
        assert_eq!(count(&t), Ok(1));
    }
}
