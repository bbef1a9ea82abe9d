//! Reference tables: a file (CSV or JSON lines) read whole into one Arrow batch, one row per
//! PRIMARY KEY (the last one in the file wins), and read again when the file changes.
//!
//! A table file must be clean: a row that does not decode is an error naming the file, not a
//! silently missing device. A failed reload keeps the previous contents and reports the error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use super::file::FileSource;
use super::{Poll, SourceReader};
use crate::error::{EngineError, Result};
use crate::format::decode::{DecodeColumn, RowDecoder};
use crate::format::Format;
use crate::ops::lookup_join::{TableData, TableHandle};
use crate::ops::rows::KeyEncoder;

crate::connector_options! {
    /// What a `file` table takes (besides `connector`).
    pub(crate) struct FileTableOptions {
        format: Format = "format",
        path: String = "path",
        reload_interval: std::time::Duration = "reload_interval",
        max_line_bytes: usize = "max_line_bytes",
    }
}

pub struct TableSpec {
    pub name: String,
    pub path: PathBuf,
    pub format: Format,
    pub columns: Vec<DecodeColumn>,
    pub primary_key: Vec<usize>,
    pub max_line: usize,
    /// How often a live pipeline checks the file for changes (ms).
    pub reload_interval: i64,
}

pub struct TableRuntime {
    pub spec: TableSpec,
    pub handle: TableHandle,
    loaded: Option<(SystemTime, u64)>,
    last_check: Option<Instant>,
    version: u64,
}

impl TableRuntime {
    pub fn new(spec: TableSpec, schema: SchemaRef) -> Self {
        let empty = Arc::new(TableData { version: 0, batch: RecordBatch::new_empty(schema) });
        TableRuntime { spec, handle: Arc::new(RwLock::new(empty)), loaded: None, last_check: None, version: 0 }
    }

    /// Loads the file (at start: an error stops the pipeline).
    pub fn load(&mut self) -> Result<()> {
        let stamp = file_stamp(&self.spec.path)?;
        let batch = read_table(&self.spec)?;
        self.version += 1;
        let rows = batch.num_rows();
        let data = Arc::new(TableData { version: self.version, batch });
        *self.handle.write().map_err(|_| EngineError::Internal("table lock poisoned".into()))? = data;
        self.loaded = Some(stamp);
        self.last_check = Some(Instant::now());
        tracing::info!(table = %self.spec.name, rows, path = %self.spec.path.display(), "table loaded");
        Ok(())
    }

    /// Live mode: reloads when the file's modification time or size changed. A bad new version
    /// is logged and the previous contents stay.
    pub fn maybe_reload(&mut self) {
        if self.last_check.is_some_and(|t| (t.elapsed().as_millis() as i64) < self.spec.reload_interval) {
            return;
        }
        self.last_check = Some(Instant::now());
        match file_stamp(&self.spec.path) {
            Ok(stamp) if Some(stamp) == self.loaded => {}
            Ok(_) => {
                if let Err(e) = self.load() {
                    tracing::warn!(table = %self.spec.name, error = %e, "table reload failed; keeping the previous contents");
                }
            }
            Err(e) => {
                tracing::warn!(table = %self.spec.name, error = %e, "table file unreadable; keeping the previous contents")
            }
        }
    }
}

fn file_stamp(path: &Path) -> Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
    Ok((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn table_err(spec: &TableSpec, message: String) -> EngineError {
    EngineError::Table { name: spec.name.clone(), path: spec.path.display().to_string(), message }
}

fn read_table(spec: &TableSpec) -> Result<RecordBatch> {
    let mut reader = FileSource::open(&spec.path, spec.format, false, spec.max_line, 1)?;
    let mut decoder = RowDecoder::new(spec.columns.clone(), None).map_err(EngineError::Internal)?;
    let mut batches = Vec::new();
    loop {
        let poll = reader.poll(&mut decoder, 8192)?;
        if let Some(errors) = decoder.errors.finish()? {
            let raw = errors.column(0).as_string::<i32>().value(0).to_string();
            let message = errors.column(1).as_string::<i32>().value(0).to_string();
            return Err(table_err(spec, format!("bad row: {message} (row: {raw})")));
        }
        if let Some(b) = decoder.finish()? {
            batches.push(b);
        }
        if poll == Poll::End {
            break;
        }
    }
    let schema = decoder.schema.clone();
    let all = arrow::compute::concat_batches(&schema, &batches)?;
    if spec.primary_key.is_empty() || all.num_rows() == 0 {
        return Ok(all);
    }
    // One row per key: the last one.
    let types = spec.primary_key.iter().map(|&c| all.column(c).data_type().clone()).collect();
    let encoder = KeyEncoder::new(types)?;
    let (rows, null_key) =
        encoder.encode(&spec.primary_key.iter().map(|&c| all.column(c).clone()).collect::<Vec<_>>())?;
    let mut last: HashMap<&[u8], u32> = HashMap::new();
    for (i, &null) in null_key.iter().enumerate().take(all.num_rows()) {
        if null {
            return Err(table_err(spec, format!("row {} has a NULL PRIMARY KEY", i + 1)));
        }
        last.insert(rows.row(i).data(), i as u32);
    }
    let mut keep: Vec<u32> = last.into_values().collect();
    keep.sort_unstable();
    if keep.len() == all.num_rows() {
        return Ok(all);
    }
    let idx = UInt32Array::from(keep);
    Ok(arrow::compute::take_record_batch(&all, &idx)?)
}
