//! Encoding of operator state for checkpoints and of WAL records: little-endian integers,
//! length-prefixed bytes, and Arrow arrays as IPC streams (or, where the reader knows the schema,
//! as one IPC record-batch message). A reader checks every length against what is left, so
//! damaged or foreign state is an error naming the operator, never a panic or wrong state.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::buffer::Buffer;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow::ipc::MetadataVersion;

use crate::error::{EngineError, Result};

#[derive(Default)]
pub struct StateWriter {
    pub buf: Vec<u8>,
}

impl StateWriter {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    /// Equal-length arrays (or none) as one IPC stream; `rows` keeps the count when there are none.
    pub fn arrays(&mut self, arrays: &[ArrayRef], rows: usize) -> Result<()> {
        let fields: Vec<Field> =
            arrays.iter().enumerate().map(|(i, a)| Field::new(format!("c{i}"), a.data_type().clone(), true)).collect();
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new_with_options(
            schema,
            arrays.to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        self.batch(&batch)
    }
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut ipc = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        self.u64(batch.num_rows() as u64);
        self.bytes(&ipc);
        Ok(())
    }

    /// `batch`, whose schema its reader knows, as one IPC record-batch message: no schema
    /// message and buffers aligned to 8 bytes, not 64. For a WAL record of a few rows this is
    /// less than half of [`StateWriter::batch`]'s stream. `false` (nothing written) for a batch
    /// with dictionary columns, which need messages of their own.
    pub fn batch_body(&mut self, batch: &RecordBatch) -> Result<bool> {
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5)?;
        let (dictionaries, encoded) = IpcDataGenerator::default().encode(
            batch,
            &mut DictionaryTracker::new(false),
            &options,
            &mut IpcWriteContext::default(),
        )?;
        if !dictionaries.is_empty() {
            return Ok(false);
        }
        self.u64(batch.num_rows() as u64);
        self.bytes(&encoded.ipc_message);
        self.bytes(&encoded.arrow_data);
        Ok(true)
    }
}

pub struct StateReader<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> StateReader<'a> {
    pub fn new(b: &'a [u8], what: &'a str) -> Self {
        StateReader { b, pos: 0, what }
    }

    pub fn err(&self, why: &str) -> EngineError {
        EngineError::State(format!("checkpointed state of {} is not readable ({why} at byte {})", self.what, self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() - self.pos < n {
            return Err(self.err("cut short"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    pub fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| self.err("a count too large"))
    }
    /// A count of items that each take at least `min_bytes`: bounded by what is left.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.usize()?;
        if n.saturating_mul(min_bytes.max(1)) > self.b.len() - self.pos {
            return Err(self.err("a count beyond the data"));
        }
        Ok(n)
    }
    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.usize()?;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<&'a str> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.err("text that is not UTF-8"))
    }
    pub fn batch(&mut self) -> Result<RecordBatch> {
        let rows = self.usize()?;
        let ipc = self.bytes()?;
        eddy_ipc_guard::check_stream_framing(ipc).map_err(|e| self.err(e))?;
        let batch = eddy_ipc_guard::guarded(|| {
            let mut r = arrow::ipc::reader::StreamReader::try_new(Cursor::new(ipc), None)?;
            let schema = r.schema();
            r.next().unwrap_or_else(|| Ok(RecordBatch::new_empty(schema)))
        })
        .map_err(|e| self.err(&e))?;
        if batch.num_rows() != rows && batch.num_columns() > 0 {
            return Err(self.err("a row count mismatch"));
        }
        Ok(batch)
    }
    /// A batch written by [`StateWriter::batch_body`] with this `schema`.
    pub fn batch_body(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let rows = self.usize()?;
        let message = self.bytes()?;
        let data = self.bytes()?;
        let m = arrow::ipc::root_as_message(message).map_err(|e| self.err(&format!("an IPC message ({e})")))?;
        let header = m.header_as_record_batch().ok_or_else(|| self.err("an IPC message that is not a batch"))?;
        let batch = eddy_ipc_guard::guarded(|| {
            let data = Buffer::from_slice_ref(data);
            arrow::ipc::reader::read_record_batch(&data, header, schema.clone(), &HashMap::new(), None, &m.version())
        })
        .map_err(|e| self.err(&e))?;
        if batch.num_rows() != rows {
            return Err(self.err("a row count mismatch"));
        }
        Ok(batch)
    }
    pub fn arrays(&mut self) -> Result<(Vec<ArrayRef>, usize)> {
        let rows_at = self.pos;
        let rows = self.usize()?;
        self.pos = rows_at;
        let b = self.batch()?;
        Ok((b.columns().to_vec(), rows))
    }
    /// Whether every byte has been read (a field added later is absent from older state).
    pub fn at_end(&self) -> bool {
        self.pos == self.b.len()
    }
    pub fn finish(&self) -> Result<()> {
        if self.pos != self.b.len() {
            return Err(self.err("trailing bytes"));
        }
        Ok(())
    }
}
