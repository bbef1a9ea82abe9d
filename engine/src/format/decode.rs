//! Turning payloads into rows of a source's schema.
//!
//! A [`RowDecoder`] owns the column buffers of one batch. Format front ends (JSON, CSV, raw) call
//! `begin_row`/`set`/`end_row`; a row that breaks any rule is rolled back and recorded as an error
//! row (`raw`, `error`, `received_at`) instead, so bad input is counted and never half-written.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::columns::{ColumnBuf, Value};
use crate::types::TS_TYPE;

/// Schema of `ERRORS(source)` (one, shared: its batches are compared with it when logged).
pub fn errors_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("raw", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, false),
            Field::new("received_at", TS_TYPE, false),
        ]))
    });
    SCHEMA.clone()
}

/// How one column of a source is filled.
#[derive(Debug, Clone)]
pub struct DecodeColumn {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    /// `METADATA FROM 'key'`: filled by the connector, never from the payload.
    pub metadata_key: Option<String>,
}

/// Rows that failed to decode, in the shape of `ERRORS(source)`.
#[derive(Debug)]
pub struct ErrorRows {
    raw: ColumnBuf,
    error: ColumnBuf,
    received_at: ColumnBuf,
    /// Error rows decoded elsewhere (a decode pool's worker), handed over whole.
    ready: Option<RecordBatch>,
}

impl ErrorRows {
    fn new() -> Self {
        ErrorRows {
            raw: ColumnBuf::new(&DataType::Utf8).expect("Utf8 is a buffer type"),
            error: ColumnBuf::new(&DataType::Utf8).expect("Utf8 is a buffer type"),
            received_at: ColumnBuf::new(&TS_TYPE).expect("timestamps are a buffer type"),
            ready: None,
        }
    }

    pub fn len(&self) -> usize {
        self.raw.len() + self.ready.as_ref().map_or(0, RecordBatch::num_rows)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes error rows decoded elsewhere; the next [`ErrorRows::finish`] returns them.
    pub fn put_ready(&mut self, batch: RecordBatch) {
        assert!(self.raw.is_empty() && self.ready.is_none(), "error rows handed over on top of others");
        self.ready = Some(batch);
    }

    /// Records one bad input. `raw` is kept as text (invalid UTF-8 replaced) and cut at `max_raw` bytes.
    pub fn push(&mut self, raw: &[u8], error: &str, received_at: i64, max_raw: usize) {
        let cut = &raw[..raw.len().min(max_raw)];
        let text = String::from_utf8_lossy(cut);
        let text = text.trim_end_matches(['\r', '\n']);
        // Text values always fit Utf8 and timestamps; these pushes cannot fail.
        let _ = self.raw.push(Value::Str(text));
        let _ = self.error.push(Value::Str(error));
        let _ = self.received_at.push(Value::I64(received_at));
    }

    pub fn finish(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        if let Some(b) = self.ready.take() {
            return Ok(Some(b));
        }
        if self.is_empty() {
            return Ok(None);
        }
        let cols = vec![self.raw.finish()?, self.error.finish()?, self.received_at.finish()?];
        Ok(Some(RecordBatch::try_new(errors_schema(), cols)?))
    }
}

/// Builds batches of one source schema from decoded rows.
#[derive(Debug)]
pub struct RowDecoder {
    pub schema: SchemaRef,
    columns: Vec<DecodeColumn>,
    bufs: Vec<ColumnBuf>,
    /// What the current row has set in each column.
    seen: Vec<Slot>,
    /// Per column: a row must give it a non-null value (NOT NULL, or the event time).
    required: Vec<bool>,
    rows: usize,
    by_name: HashMap<String, usize>,
    /// Event-time column: a row without it is an error even when the column is nullable.
    time_col: Option<usize>,
    row_error: Option<String>,
    /// Column of the k-th key of the previous object: payloads from one producer repeat their key
    /// order, so most keys are matched by one string comparison.
    key_order: Vec<Option<usize>>,
    /// Position of the next key in the current object.
    key_pos: usize,
    /// Per column: its name has no character JSON must escape (quote, backslash, control).
    plain_names: Vec<bool>,
    pub errors: ErrorRows,
    /// Longest `raw` kept in an error row.
    pub max_error_raw_bytes: usize,
    /// `METADATA FROM 'key'` columns: the value each takes for every row of the current message,
    /// set by the connector before it decodes the payload (buffers are reused, not reallocated).
    meta: Vec<MetaSlot>,
    /// Rows decoded elsewhere (a decode pool's worker), handed over whole.
    ready: Option<RecordBatch>,
}

/// What the current row has set in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unset,
    Value,
    Null,
}

/// A metadata value a connector provides for the rows of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug)]
struct MetaSlot {
    col: usize,
    key: String,
    value: MetaValue,
}

impl RowDecoder {
    pub fn new(columns: Vec<DecodeColumn>, time_col: Option<usize>) -> Result<Self, String> {
        let mut bufs = Vec::with_capacity(columns.len());
        let mut fields = Vec::with_capacity(columns.len());
        let mut by_name = HashMap::new();
        let mut meta = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            if let Some(k) = &c.metadata_key {
                meta.push(MetaSlot { col: i, key: k.to_ascii_lowercase(), value: MetaValue::Null });
            }
            bufs.push(ColumnBuf::new(&c.data_type).ok_or_else(|| {
                format!("column '{}': type {} cannot be decoded", c.name, crate::types::sql_name(&c.data_type))
            })?);
            fields.push(Field::new(&c.name, c.data_type.clone(), c.nullable));
            if c.metadata_key.is_none() {
                by_name.insert(c.name.clone(), i);
                by_name.entry(c.name.to_ascii_lowercase()).or_insert(i);
            }
        }
        Ok(RowDecoder {
            schema: Arc::new(Schema::new(fields)),
            seen: vec![Slot::Unset; columns.len()],
            required: (0..columns.len()).map(|i| !columns[i].nullable || time_col == Some(i)).collect(),
            plain_names: columns.iter().map(|c| !c.name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)).collect(),
            columns,
            bufs,
            rows: 0,
            by_name,
            time_col,
            row_error: None,
            key_order: Vec::new(),
            key_pos: 0,
            errors: ErrorRows::new(),
            max_error_raw_bytes: 64 * 1024,
            meta,
            ready: None,
        })
    }

    /// An empty decoder for the same columns and rules (a decode pool's worker gets one).
    pub fn fresh_like(&self) -> RowDecoder {
        let mut d = RowDecoder::new(self.columns.clone(), self.time_col)
            .unwrap_or_else(|_| unreachable!("these columns already made a decoder"));
        d.max_error_raw_bytes = self.max_error_raw_bytes;
        d
    }

    /// Takes rows decoded elsewhere by a [`RowDecoder::fresh_like`] decoder; the next
    /// [`RowDecoder::finish`] returns them.
    pub fn put_ready(&mut self, batch: RecordBatch) {
        assert!(self.rows == 0 && self.ready.is_none(), "rows handed over on top of others");
        self.ready = Some(batch);
    }

    /// The metadata keys this decoder's columns ask for, in column order (lower case).
    pub fn metadata_keys(&self) -> Vec<String> {
        self.meta.iter().map(|m| m.key.clone()).collect()
    }

    /// Sets metadata slot `slot` (an index into [`RowDecoder::metadata_keys`]) for the rows of the
    /// next payloads. Text reuses the slot's buffer.
    pub fn set_meta_text(&mut self, slot: usize, text: &str) {
        if let Some(m) = self.meta.get_mut(slot) {
            match &mut m.value {
                MetaValue::Text(t) => {
                    t.clear();
                    t.push_str(text);
                }
                v => *v = MetaValue::Text(text.to_string()),
            }
        }
    }

    pub fn set_meta(&mut self, slot: usize, value: MetaValue) {
        if let Some(m) = self.meta.get_mut(slot) {
            m.value = value;
        }
    }

    pub fn columns(&self) -> &[DecodeColumn] {
        &self.columns
    }

    /// Rows decoded into the current batch.
    pub fn rows(&self) -> usize {
        self.rows + self.ready.as_ref().map_or(0, RecordBatch::num_rows)
    }

    /// Column of the next key of the current object (see `key_order`).
    #[inline]
    pub fn lookup_next_key(&mut self, key: &str) -> Option<usize> {
        let k = self.key_pos;
        self.key_pos += 1;
        if let Some(Some(c)) = self.key_order.get(k) {
            if self.columns[*c].name == key {
                return Some(*c);
            }
        }
        let found = self.lookup(key);
        if k < 64 {
            if self.key_order.len() <= k {
                self.key_order.resize(k + 1, None);
            }
            self.key_order[k] = found;
        }
        found
    }

    /// The column the next key of the current object names if it repeats the previous object's
    /// key order, with that column's name as JSON writes it unescaped; `None` when there is no
    /// such guess or the name would need escapes.
    #[inline]
    pub fn predicted_key(&self) -> Option<(usize, &[u8])> {
        let c = (*self.key_order.get(self.key_pos)?)?;
        let name = &self.columns[c].name;
        self.plain_names[c].then_some((c, name.as_bytes()))
    }

    /// The next key was the one [`RowDecoder::predicted_key`] guessed.
    #[inline]
    pub fn accept_predicted_key(&mut self) {
        self.key_pos += 1;
    }

    /// Column index of a payload key: exact name first, then ASCII case-insensitively.
    #[inline]
    pub fn lookup(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.by_name.get(key) {
            return Some(*i);
        }
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_name.get(&key.to_ascii_lowercase()).copied();
        }
        None
    }

    pub fn begin_row(&mut self) {
        debug_assert!(self.ready.is_none(), "a row decoded behind rows handed over whole");
        self.seen.iter_mut().for_each(|s| *s = Slot::Unset);
        self.row_error = None;
        self.key_pos = 0;
        for i in 0..self.meta.len() {
            let col = self.meta[i].col;
            // A take/put-back keeps the borrow checker happy without cloning the text.
            let value = std::mem::replace(&mut self.meta[i].value, MetaValue::Null);
            match &value {
                MetaValue::Null => self.set(col, Value::Null),
                MetaValue::Text(t) => self.set(col, Value::Str(t)),
                MetaValue::Int(n) => self.set(col, Value::I64(*n)),
                MetaValue::Bool(b) => self.set(col, Value::Bool(*b)),
            }
            self.meta[i].value = value;
        }
    }

    /// Whether the current row already failed (later values are skipped).
    pub fn row_failed(&self) -> bool {
        self.row_error.is_some()
    }

    /// Marks the current row as bad; the first reason is kept.
    pub fn fail_row(&mut self, why: String) {
        if self.row_error.is_none() {
            self.row_error = Some(why);
        }
    }

    /// Sets column `col` of the current row. A second value for a column replaces the first.
    #[inline(always)]
    pub fn set(&mut self, col: usize, v: Value<'_>) {
        let slot = if matches!(v, Value::Null) { Slot::Null } else { Slot::Value };
        self.set_with(col, slot, |b| b.push(v));
    }

    /// Sets a STRUCT column from the JSON text of a nested value.
    pub fn set_json_text(&mut self, col: usize, text: &str) {
        self.set_with(col, Slot::Value, |b| b.push_json_text(text));
    }

    #[inline(always)]
    fn set_with(&mut self, col: usize, slot: Slot, push: impl FnOnce(&mut ColumnBuf) -> Result<(), String>) {
        if self.row_error.is_some() {
            return;
        }
        if self.seen[col] != Slot::Unset {
            self.bufs[col].pop_last();
        }
        self.seen[col] = slot;
        if let Err(e) = push(&mut self.bufs[col]) {
            self.fail_row(format!("column '{}': {e}", self.columns[col].name));
        }
    }

    pub fn is_json_text(&self, col: usize) -> bool {
        matches!(self.bufs[col], ColumnBuf::JsonText { .. })
    }

    /// Finishes the current row: missing columns become NULL, NOT NULL and event time are checked.
    /// A bad row is rolled back and recorded with `raw` as an error row.
    pub fn end_row(&mut self, raw: &[u8], received_at: i64) -> bool {
        if self.row_error.is_none() {
            for i in 0..self.columns.len() {
                match (self.seen[i], self.required[i]) {
                    (Slot::Value, _) | (Slot::Null, false) => {}
                    (Slot::Unset, false) => self.bufs[i].push_null(),
                    (Slot::Null, true) => {
                        self.row_error =
                            Some(format!("column '{}' is NOT NULL but the value is null", self.columns[i].name));
                        break;
                    }
                    (Slot::Unset, true) => {
                        let what = if self.time_col == Some(i) { "event time" } else { "NOT NULL column" };
                        self.row_error = Some(format!("{what} '{}' is missing", self.columns[i].name));
                        break;
                    }
                }
            }
        }
        match self.row_error.take() {
            None => {
                self.rows += 1;
                true
            }
            Some(why) => {
                for b in &mut self.bufs {
                    b.truncate(self.rows);
                }
                self.errors.push(raw, &why, received_at, self.max_error_raw_bytes);
                false
            }
        }
    }

    /// Rolls back a row that was begun but cannot be finished (its payload broke off).
    pub fn abort_row(&mut self) {
        for b in &mut self.bufs {
            b.truncate(self.rows);
        }
        self.row_error = None;
    }

    /// Records an input that could not be read as rows at all (bad JSON, bad CSV record).
    pub fn reject(&mut self, raw: &[u8], why: &str, received_at: i64) {
        self.errors.push(raw, why, received_at, self.max_error_raw_bytes);
    }

    /// Hands the decoded rows over as a batch (None when there are none).
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        if let Some(b) = self.ready.take() {
            return Ok(Some(b));
        }
        if self.rows == 0 {
            return Ok(None);
        }
        let cols: Vec<ArrayRef> = self.bufs.iter_mut().map(|b| b.finish()).collect::<Result<_, _>>()?;
        self.rows = 0;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), cols)?))
    }
}
