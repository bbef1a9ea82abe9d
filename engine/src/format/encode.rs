//! JSON output: one object per row, keys are the output column names, timestamps RFC 3339 UTC with
//! milliseconds, NULL as `null`. Writes into a caller's buffer; nothing is allocated per row.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
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

    /// Appends row `row` of `batch` as one JSON object (no newline), with `extra` members appended
    /// verbatim before the closing brace (e.g. `,"_op":"delete"`).
    pub fn write_row(&self, batch: &RecordBatch, row: usize, extra: &[u8], out: &mut Vec<u8>) {
        out.push(b'{');
        for (c, key) in self.keys.iter().enumerate() {
            out.extend_from_slice(key);
            write_value(batch.column(c), row, out);
        }
        out.extend_from_slice(extra);
        out.push(b'}');
    }
}

pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
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
            out.push(b'"');
            write_rfc3339_ms(ms, out);
            out.push(b'"');
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
    use arrow::array::{Float32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
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
        let mut out = Vec::new();
        w.write_row(&batch, 0, b"", &mut out);
        out.push(b'\n');
        w.write_row(&batch, 1, b",\"_op\":\"delete\"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"s\":\"a\\\"b\\n\",\"f\":83.24600000000001,\"g\":22.78,\"ts\":\"2026-03-01T08:00:00.384Z\",\"i\":-9223372036854775808}\n\
             {\"s\":null,\"f\":null,\"g\":1,\"ts\":\"1970-01-01T00:00:00.000Z\",\"i\":-7,\"_op\":\"delete\"}"
        );
    }
}
