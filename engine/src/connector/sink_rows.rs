//! [`SinkRows`]: one delivery of output to a provided sink, as rows. Each row carries its payload
//! (the row as a JSON object, encoded by the engine) and its values by column, so a connector
//! fills topics, keys and headers without parsing its own output again.
//!
//! Owns how a value reads as text in a name. Rows come from the batches the sink was given, or,
//! for output a checkpoint kept (the commit re-delivered after a restart), from the JSON lines
//! alone. Both give the same text for the same row by construction: a value's text is read off
//! its JSON token, the token the payload holds (a batch's string skips the round trip: unescaping
//! its token gives the string back). Never decides what a name may contain (the connector's rules
//! do).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{EngineError, Result};
use crate::format::encode::write_value;

/// The rows of one delivery, in order.
#[derive(Clone, Copy)]
pub struct SinkRows<'a> {
    lines: &'a [u8],
    /// `Some`: the batches the lines were encoded from, row for row.
    batches: Option<&'a [RecordBatch]>,
}

impl<'a> SinkRows<'a> {
    /// Rows known only by their JSON lines (one object per line, members in column order, as the
    /// engine writes them).
    pub fn from_lines(lines: &'a [u8]) -> Self {
        SinkRows { lines, batches: None }
    }

    /// Rows encoded from `batches` (each batch's columns are the sink's, in order) into `lines`,
    /// one line per row.
    pub(crate) fn from_batches(lines: &'a [u8], batches: &'a [RecordBatch]) -> Self {
        debug_assert_eq!(
            lines.iter().filter(|b| **b == b'\n').count(),
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            "one line per row"
        );
        SinkRows { lines, batches: Some(batches) }
    }

    /// Every row's payload as JSON lines (each ends in `\n`).
    pub fn lines(&self) -> &'a [u8] {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The rows, in order. A line that is not a JSON object is an error (the engine's own lines
    /// always are; rows made [`from_lines`](Self::from_lines) elsewhere may not be). Lines past
    /// the batches' rows are read from their JSON: batches only ever cover a prefix (the sink
    /// stages none for lines a checkpoint restored).
    pub fn iter(&self) -> impl Iterator<Item = Result<SinkRow<'a>>> + 'a {
        let lines = self.lines.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let at = self.batches.map(|bs| bs.iter().flat_map(|b| (0..b.num_rows()).map(move |r| (b, r))));
        let mut at = at.into_iter().flatten();
        lines.map(move |payload| {
            let values = match at.next() {
                Some((batch, row)) => Values::Batch(batch, row),
                None => Values::Members(members(payload)?),
            };
            Ok(SinkRow { payload, values })
        })
    }
}

/// One output row.
pub struct SinkRow<'a> {
    payload: &'a [u8],
    values: Values<'a>,
}

enum Values<'a> {
    Batch(&'a RecordBatch, usize),
    /// The object's member values, in column order.
    Members(Vec<&'a RawValue>),
}

impl<'a> SinkRow<'a> {
    /// The row as a JSON object (no newline).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Appends column `col`'s value to `out` as text: a string as it is, anything else as its JSON
    /// text (`2`, `true`, `[1,2]`). Returns false, appending nothing, for NULL or no such column.
    pub fn write_text(&self, col: usize, out: &mut String) -> bool {
        match &self.values {
            Values::Members(m) => match m.get(col) {
                Some(raw) => push_token(out, |b| b.extend_from_slice(raw.get().as_bytes())),
                None => false,
            },
            Values::Batch(batch, row) => {
                let Some(array) = batch.columns().get(col) else { return false };
                if array.is_null(*row) {
                    return false;
                }
                match array.data_type() {
                    // A string's text is the string; its JSON token would only be unescaped again.
                    DataType::Utf8 => out.push_str(array.as_string::<i32>().value(*row)),
                    DataType::LargeUtf8 => out.push_str(array.as_string::<i64>().value(*row)),
                    DataType::Utf8View => out.push_str(array.as_string_view().value(*row)),
                    _ => return push_token(out, |b| write_value(array, *row, b)),
                }
                true
            }
        }
    }
}

/// Appends the text of the JSON token `write` puts in a buffer: a string unescaped, `null` as
/// nothing (false), anything else as written. The token goes straight into `out`'s own buffer,
/// so reading a value allocates nothing.
fn push_token(out: &mut String, write: impl FnOnce(&mut Vec<u8>)) -> bool {
    let mut bytes = std::mem::take(out).into_bytes();
    let start = bytes.len();
    write(&mut bytes);
    let token = &bytes[start..];
    let some = token != b"null";
    if !some {
        bytes.truncate(start);
    } else if token.first() == Some(&b'"') {
        if !token.contains(&b'\\') {
            bytes.pop();
            bytes.remove(start);
        } else if let Ok(s) = serde_json::from_slice::<String>(token) {
            bytes.truncate(start);
            bytes.extend_from_slice(s.as_bytes());
        }
    }
    // Tokens are the engine's UTF-8 JSON; anything else would be our bug, and reads as the
    // replacement character rather than failing the delivery.
    *out = String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    some
}

/// A JSON object's member values in order (names ignored: the engine writes columns in order).
fn members(line: &[u8]) -> Result<Vec<&RawValue>> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut values = Vec::new();
            while map.next_key::<IgnoredAny>()?.is_some() {
                values.push(map.next_value::<&'de RawValue>()?);
            }
            Ok(values)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    de.deserialize_map(Members)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| EngineError::Internal(format!("an output row is not a JSON object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode::JsonRowWriter;
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray};
    use arrow::array::{TimestampMillisecondArray, UInt8Array};
    use arrow::datatypes::Int32Type;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn texts(rows: SinkRows<'_>, cols: usize) -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|r| {
                let r = r.unwrap();
                (0..cols)
                    .map(|c| {
                        let mut s = String::from("<");
                        r.write_text(c, &mut s).then(|| s[1..].to_string())
                    })
                    .collect()
            })
            .collect()
    }

    fn encode(batches: &[RecordBatch]) -> Vec<u8> {
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        let w = JsonRowWriter::new(&names);
        let mut lines = Vec::new();
        for b in batches {
            let rows = w.batch(b);
            for r in 0..b.num_rows() {
                rows.write_row(r, b",\"_op\":\"upsert\"", &mut lines);
                lines.push(b'\n');
            }
        }
        lines
    }

    #[test]
    fn values_read_as_text_from_batches_and_from_lines_alike() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None]), None]);
        let batch = RecordBatch::try_from_iter(vec![
            ("s", Arc::new(StringArray::from(vec![Some("a\"b\n+"), None])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![Some(-3), Some(7)])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(vec![Some(1.5e300), Some(f64::NAN)])) as ArrayRef),
            ("b", Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef),
            ("t", Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None])) as ArrayRef),
            ("l", Arc::new(list) as ArrayRef),
        ])
        .unwrap();
        let lines = encode(std::slice::from_ref(&batch));
        let from_batches = texts(SinkRows::from_batches(&lines, std::slice::from_ref(&batch)), 6);
        let from_lines = texts(SinkRows::from_lines(&lines), 7);
        assert_eq!(from_batches[..], from_lines.iter().map(|r| r[..6].to_vec()).collect::<Vec<_>>()[..]);
        let row0 = &from_batches[0];
        assert_eq!(row0[0].as_deref(), Some("a\"b\n+"));
        assert_eq!(row0[1].as_deref(), Some("-3"));
        assert_eq!(row0[3].as_deref(), Some("true"));
        assert_eq!(row0[4].as_deref(), Some("2023-11-14T22:13:20.123Z"));
        // A list is written as its text (a JSON string).
        assert_eq!(row0[5].as_deref(), Some("[1, ]"));
        // Past the columns, a line holds an upsert sink's `_op`; a batch has nothing there.
        assert_eq!(from_lines[0][6].as_deref(), Some("upsert"));
        let mut none = String::new();
        assert!(!SinkRows::from_batches(&lines, std::slice::from_ref(&batch))
            .iter()
            .next()
            .unwrap()
            .unwrap()
            .write_text(6, &mut none));
        assert_eq!(from_batches[1][0], None, "NULL reads as nothing");
        assert_eq!(from_batches[1][2], None, "NaN is written as null");
        let payloads: Vec<&[u8]> = SinkRows::from_lines(&lines).iter().map(|r| r.unwrap().payload()).collect();
        assert_eq!(payloads.len(), 2);
        assert!(payloads[0].starts_with(b"{\"s\":") && payloads[0].ends_with(b"}"));
    }

    #[test]
    fn a_line_that_is_not_an_object_is_an_error() {
        assert!(SinkRows::from_lines(b"[1,2]\n").iter().next().unwrap().is_err());
        assert!(SinkRows::from_lines(b"{\"a\":1} x\n").iter().next().unwrap().is_err());
    }

    proptest! {
        /// Whatever the values, a row reads the same from its batch as from its line alone: the
        /// commit a restart re-delivers from the checkpoint goes to the same topics and keys.
        #[test]
        fn batches_and_lines_agree(
            rows in proptest::collection::vec(
                (any::<Option<String>>(), any::<Option<f64>>(), any::<Option<i64>>(), any::<Option<u8>>()),
                1..20,
            ),
            split in 0usize..20,
        ) {
            let batch = RecordBatch::try_from_iter(vec![
                ("s", Arc::new(rows.iter().map(|r| r.0.clone()).collect::<StringArray>()) as ArrayRef),
                ("f", Arc::new(rows.iter().map(|r| r.1).collect::<Float64Array>()) as ArrayRef),
                ("i", Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()) as ArrayRef),
                ("u", Arc::new(rows.iter().map(|r| r.3).collect::<UInt8Array>()) as ArrayRef),
            ])
            .unwrap();
            let at = split.min(batch.num_rows());
            let batches = [batch.slice(0, at), batch.slice(at, batch.num_rows() - at)];
            let lines = encode(&batches);
            let a = texts(SinkRows::from_batches(&lines, &batches), 4);
            prop_assert_eq!(&a, &texts(SinkRows::from_lines(&lines), 4));
            for (row, want) in a.iter().zip(&rows) {
                prop_assert_eq!(&row[0], &want.0);
                prop_assert_eq!(row[2].clone(), want.2.map(|v| v.to_string()));
            }
        }
    }
}
