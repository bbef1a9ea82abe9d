//! JSON output: one object per row, keys are the output column names, timestamps RFC 3339 UTC with
//! milliseconds, NULL as `null`. Writes into a caller's buffer; nothing is allocated per row.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringViewArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};

use super::float_text;
use crate::time::write_rfc3339_ms;

/// Pre-escaped `"name":` prefixes of a batch's columns.
pub struct JsonRowWriter {
    keys: Vec<Vec<u8>>,
}

impl JsonRowWriter {
    pub fn new(names: &[String]) -> Self {
        let keys = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut k = Vec::new();
                if i > 0 {
                    k.push(b',');
                }
                write_json_str(n, &mut k);
                k.push(b':');
                k
            })
            .collect();
        JsonRowWriter { keys }
    }

    /// Prepares `batch` for writing its rows: each column is downcast once here, so that writing
    /// a row does no dynamic dispatch per value (the sinks' hot path).
    pub fn batch<'a>(&'a self, batch: &'a RecordBatch) -> BatchWriter<'a> {
        debug_assert_eq!(batch.num_columns(), self.keys.len(), "writer made for another schema");
        let columns = batch.columns().iter().map(TypedColumn::of).collect();
        BatchWriter { keys: &self.keys, columns }
    }
}

/// One batch, ready to be written row by row ([`JsonRowWriter::batch`]).
pub struct BatchWriter<'a> {
    keys: &'a [Vec<u8>],
    columns: Vec<TypedColumn<'a>>,
}

impl BatchWriter<'_> {
    /// Appends row `row` as one JSON object (no newline), with `extra` members appended verbatim
    /// before the closing brace (e.g. `,"_op":"delete"`).
    pub fn write_row(&self, row: usize, extra: &[u8], out: &mut Vec<u8>) {
        out.push(b'{');
        for (key, col) in self.keys.iter().zip(&self.columns) {
            out.extend_from_slice(key);
            col.write(row, out);
        }
        out.extend_from_slice(extra);
        out.push(b'}');
    }
}

/// A column downcast to the types sinks write most; anything else goes through [`write_value`].
enum TypedColumn<'a> {
    Int64(Option<&'a NullBuffer>, &'a [i64]),
    Int32(Option<&'a NullBuffer>, &'a [i32]),
    Float64(Option<&'a NullBuffer>, &'a [f64]),
    TimestampMs(Option<&'a NullBuffer>, &'a [i64]),
    Utf8(&'a StringArray),
    Utf8View(&'a StringViewArray),
    Other(&'a ArrayRef),
}

impl<'a> TypedColumn<'a> {
    fn of(col: &'a ArrayRef) -> Self {
        match col.data_type() {
            DataType::Int64 => Self::Int64(col.nulls(), col.as_primitive::<Int64Type>().values()),
            DataType::Int32 => Self::Int32(col.nulls(), col.as_primitive::<Int32Type>().values()),
            DataType::Float64 => Self::Float64(col.nulls(), col.as_primitive::<Float64Type>().values()),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                Self::TimestampMs(col.nulls(), col.as_primitive::<TimestampMillisecondType>().values())
            }
            DataType::Utf8 => Self::Utf8(col.as_string::<i32>()),
            DataType::Utf8View => Self::Utf8View(col.as_string_view()),
            _ => Self::Other(col),
        }
    }

    /// Writes the same text as [`write_value`] would.
    fn write(&self, row: usize, out: &mut Vec<u8>) {
        let null = |n: &Option<&NullBuffer>| n.is_some_and(|n| n.is_null(row));
        match self {
            Self::Int64(n, _) | Self::Int32(n, _) | Self::Float64(n, _) | Self::TimestampMs(n, _) if null(n) => {
                out.extend_from_slice(b"null")
            }
            Self::Int64(_, v) => write_int(v[row], out),
            Self::Int32(_, v) => write_int(v[row], out),
            Self::Float64(_, v) => write_f64(v[row], out),
            Self::TimestampMs(_, v) => write_timestamp_ms(v[row], out),
            Self::Utf8(a) if a.is_null(row) => out.extend_from_slice(b"null"),
            Self::Utf8(a) => write_json_str(a.value(row), out),
            Self::Utf8View(a) if a.is_null(row) => out.extend_from_slice(b"null"),
            Self::Utf8View(a) => write_json_str(a.value(row), out),
            Self::Other(col) => write_value(col, row, out),
        }
    }
}

/// Whether a byte must be escaped inside a JSON string.
const fn json_escape_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}
static JSON_ESCAPE: [bool; 256] = json_escape_table();

/// Writes `s` as a JSON string. Runs of plain bytes are copied whole: most text has nothing to escape.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(at) = bytes[start..].iter().position(|&b| JSON_ESCAPE[b as usize]) {
        let i = start + at;
        out.extend_from_slice(&bytes[start..i]);
        match bytes[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        // The shortest text that reads back as the same f64, as `{}` prints it: integral values
        // have no ".0", which is still a valid JSON number.
        float_text::write_f64(f, out);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_int(i: impl itoa::Integer, out: &mut Vec<u8>) {
    // Not `write!`: every integer a sink writes comes here, and itoa is several times faster.
    out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

fn write_timestamp_ms(ms: i64, out: &mut Vec<u8>) {
    out.push(b'"');
    write_rfc3339_ms(ms, out);
    out.push(b'"');
}

/// Appends one value as JSON.
pub fn write_value(col: &ArrayRef, row: usize, out: &mut Vec<u8>) {
    if col.is_null(row) {
        out.extend_from_slice(b"null");
        return;
    }
    match col.data_type() {
        DataType::Boolean => out.extend_from_slice(if col.as_boolean().value(row) { b"true" } else { b"false" }),
        DataType::Int8 => write_int(col.as_primitive::<Int8Type>().value(row), out),
        DataType::Int16 => write_int(col.as_primitive::<Int16Type>().value(row), out),
        DataType::Int32 => write_int(col.as_primitive::<Int32Type>().value(row), out),
        DataType::Int64 => write_int(col.as_primitive::<Int64Type>().value(row), out),
        DataType::UInt8 => write_int(col.as_primitive::<UInt8Type>().value(row), out),
        DataType::UInt16 => write_int(col.as_primitive::<UInt16Type>().value(row), out),
        DataType::UInt32 => write_int(col.as_primitive::<UInt32Type>().value(row), out),
        DataType::UInt64 => write_int(col.as_primitive::<UInt64Type>().value(row), out),
        DataType::Float32 => {
            // Print the f32's own shortest text (22.78, not 22.780000686645508).
            let v = col.as_primitive::<Float32Type>().value(row);
            if v.is_finite() {
                float_text::write_f32(v, out);
            } else {
                out.extend_from_slice(b"null")
            }
        }
        DataType::Float64 => write_f64(col.as_primitive::<Float64Type>().value(row), out),
        DataType::Utf8 => write_json_str(col.as_string::<i32>().value(row), out),
        DataType::LargeUtf8 => write_json_str(col.as_string::<i64>().value(row), out),
        DataType::Utf8View => write_json_str(col.as_string_view().value(row), out),
        DataType::Timestamp(unit, _) => {
            let ms = match unit {
                TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(row).saturating_mul(1000),
                TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().value(row).div_euclid(1000),
                TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(row).div_euclid(1_000_000),
            };
            write_timestamp_ms(ms, out);
        }
        DataType::Binary => write_bytes(col.as_binary::<i32>().value(row), out),
        DataType::LargeBinary => write_bytes(col.as_binary::<i64>().value(row), out),
        DataType::BinaryView => write_bytes(col.as_binary_view().value(row), out),
        DataType::Struct(fields) => {
            let s: &StructArray = col.as_struct();
            out.push(b'{');
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(f.name(), out);
                out.push(b':');
                write_value(s.column(i), row, out);
            }
            out.push(b'}');
        }
        DataType::Decimal128(..) | DataType::Decimal256(..) | DataType::Null => {
            let text = arrow::util::display::array_value_to_string(col, row).unwrap_or_default();
            out.extend_from_slice(text.as_bytes());
        }
        _ => {
            let text = arrow::util::display::array_value_to_string(col, row).unwrap_or_default();
            write_json_str(&text, out);
        }
    }
}

/// Bytes as text when they are UTF-8, else as `\x`-prefixed hex (PostgreSQL's BYTEA spelling).
fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(b) {
        Ok(s) => write_json_str(s, out),
        Err(_) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            write_json_str(&s, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Float32Array, Float64Array, Int32Array, Int64Array, StringArray, StringViewArray, TimestampMillisecondArray,
        UInt16Array,
    };
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn writes_rows_as_the_spec_says() {
        let batch = RecordBatch::try_from_iter(vec![
            ("s", Arc::new(StringArray::from(vec![Some("a\"b\n"), None])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(vec![83.24600000000001, f64::NAN])) as ArrayRef),
            ("g", Arc::new(Float32Array::from(vec![22.78f32, 1.0])) as ArrayRef),
            ("ts", Arc::new(TimestampMillisecondArray::from(vec![1_772_352_000_384, 0])) as ArrayRef),
            ("i", Arc::new(Int64Array::from(vec![i64::MIN, -7])) as ArrayRef),
        ])
        .unwrap();
        let w = JsonRowWriter::new(&["s".into(), "f".into(), "g".into(), "ts".into(), "i".into()]);
        let rows = w.batch(&batch);
        let mut out = Vec::new();
        rows.write_row(0, b"", &mut out);
        out.push(b'\n');
        rows.write_row(1, b",\"_op\":\"delete\"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"s\":\"a\\\"b\\n\",\"f\":83.24600000000001,\"g\":22.78,\"ts\":\"2026-03-01T08:00:00.384Z\",\"i\":-9223372036854775808}\n\
             {\"s\":null,\"f\":null,\"g\":1,\"ts\":\"1970-01-01T00:00:00.000Z\",\"i\":-7,\"_op\":\"delete\"}"
        );
    }

    /// Every column of a batch, typed or not, sliced or not: the batch writer writes what
    /// `write_value` writes, and the row reads back as JSON with the same strings.
    fn same_as_write_value(batch: &RecordBatch) {
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        let w = JsonRowWriter::new(&names);
        let rows = w.batch(batch);
        for row in 0..batch.num_rows() {
            let mut typed = Vec::new();
            rows.write_row(row, b"", &mut typed);
            let mut generic = vec![b'{'];
            for (c, name) in names.iter().enumerate() {
                if c > 0 {
                    generic.push(b',');
                }
                write_json_str(name, &mut generic);
                generic.push(b':');
                write_value(batch.column(c), row, &mut generic);
            }
            generic.push(b'}');
            assert_eq!(String::from_utf8_lossy(&typed), String::from_utf8_lossy(&generic));
            let v: serde_json::Value = serde_json::from_slice(&typed).unwrap();
            let s = batch.column(names.iter().position(|n| n == "s").unwrap()).as_string::<i32>();
            match s.is_null(row) {
                true => assert!(v["s"].is_null()),
                false => assert_eq!(v["s"].as_str(), Some(s.value(row))),
            }
        }
    }

    proptest! {
        #[test]
        fn batch_writer_writes_what_write_value_writes(
            rows in proptest::collection::vec(
                (proptest::option::of(any::<i64>()), proptest::option::of(any::<i32>()),
                 proptest::option::of(any::<f64>()), proptest::option::of(-10_000_000_000_000i64..10_000_000_000_000),
                 proptest::option::of("(?s).{0,12}"), proptest::option::of(any::<u16>())),
                1..20),
            slice_from in 0usize..5,
        ) {
            let batch = RecordBatch::try_from_iter(vec![
                ("i", Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()) as ArrayRef),
                ("j", Arc::new(rows.iter().map(|r| r.1).collect::<Int32Array>()) as ArrayRef),
                ("f", Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()) as ArrayRef),
                ("ts", Arc::new(rows.iter().map(|r| r.3).collect::<TimestampMillisecondArray>()) as ArrayRef),
                ("s", Arc::new(rows.iter().map(|r| r.4.clone()).collect::<StringArray>()) as ArrayRef),
                ("v", Arc::new(rows.iter().map(|r| r.4.clone()).collect::<StringViewArray>()) as ArrayRef),
                ("u", Arc::new(rows.iter().map(|r| r.5).collect::<UInt16Array>()) as ArrayRef),
            ])
            .unwrap();
            same_as_write_value(&batch);
            let from = slice_from.min(batch.num_rows());
            same_as_write_value(&batch.slice(from, batch.num_rows() - from));
        }
    }
}
