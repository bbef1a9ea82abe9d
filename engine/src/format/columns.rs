//! Append-only column buffers that decoders and generators fill row by row.
//!
//! Unlike Arrow's builders they can be truncated, so a row that fails half way through decoding is
//! rolled back and never reaches a batch. Finishing a batch hands the vectors to Arrow without copying.
//! They must never hold rows of more than one batch.

use std::sync::Arc;

use crate::time::DateCache;
use arrow::array::{ArrayRef, BinaryArray, BooleanArray, Decimal128Array, PrimitiveArray, StringArray};
use arrow::buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMillisecondType,
};

/// One column being filled. Values of null slots are zero.
#[derive(Debug)]
pub enum ColumnBuf {
    Bool(Vec<bool>, Vec<bool>),
    I8(Vec<i8>, Vec<bool>),
    I16(Vec<i16>, Vec<bool>),
    I32(Vec<i32>, Vec<bool>),
    I64(Vec<i64>, Vec<bool>),
    F32(Vec<f32>, Vec<bool>),
    F64(Vec<f64>, Vec<bool>),
    /// Epoch milliseconds, and the date of the text last read (see [`DateCache`]).
    Ts(Vec<i64>, Vec<bool>, DateCache),
    Decimal {
        values: Vec<i128>,
        valid: Vec<bool>,
        precision: u8,
        scale: i8,
    },
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
    },
    Binary {
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
    },
    /// Types decoded through JSON text (STRUCT): kept as text and converted when the batch is built.
    JsonText {
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
        data_type: DataType,
    },
}

/// A value a decoder hands to a column, borrowed from its input.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::I64(_) | Value::U64(_) => "integer",
            Value::F64(_) => "number",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
        }
    }
}

macro_rules! each_fixed {
    ($self:expr, $v:ident, $valid:ident => $body:expr, $other:pat => $rest:expr) => {
        match $self {
            ColumnBuf::Bool($v, $valid) => $body,
            ColumnBuf::I8($v, $valid) => $body,
            ColumnBuf::I16($v, $valid) => $body,
            ColumnBuf::I32($v, $valid) => $body,
            ColumnBuf::I64($v, $valid) => $body,
            ColumnBuf::F32($v, $valid) => $body,
            ColumnBuf::F64($v, $valid) => $body,
            ColumnBuf::Ts($v, $valid, _) => $body,
            ColumnBuf::Decimal { values: $v, valid: $valid, .. } => $body,
            $other => $rest,
        }
    };
}

impl ColumnBuf {
    /// A buffer for `t`, or `None` when the type cannot be decoded from rows.
    pub fn new(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => ColumnBuf::Bool(vec![], vec![]),
            DataType::Int8 => ColumnBuf::I8(vec![], vec![]),
            DataType::Int16 => ColumnBuf::I16(vec![], vec![]),
            DataType::Int32 => ColumnBuf::I32(vec![], vec![]),
            DataType::Int64 => ColumnBuf::I64(vec![], vec![]),
            DataType::Float32 => ColumnBuf::F32(vec![], vec![]),
            DataType::Float64 => ColumnBuf::F64(vec![], vec![]),
            DataType::Timestamp(..) => ColumnBuf::Ts(vec![], vec![], DateCache::default()),
            DataType::Decimal128(p, s) => {
                ColumnBuf::Decimal { values: vec![], valid: vec![], precision: *p, scale: *s }
            }
            DataType::Utf8 => ColumnBuf::Utf8 { offsets: vec![0], data: vec![], valid: vec![] },
            DataType::Binary => ColumnBuf::Binary { offsets: vec![0], data: vec![], valid: vec![] },
            DataType::Struct(_) => {
                ColumnBuf::JsonText { offsets: vec![0], data: vec![], valid: vec![], data_type: t.clone() }
            }
            _ => return None,
        })
    }

    pub fn len(&self) -> usize {
        match self {
            ColumnBuf::Utf8 { valid, .. } | ColumnBuf::Binary { valid, .. } | ColumnBuf::JsonText { valid, .. } => {
                valid.len()
            }
            other => each_fixed!(other, _v, valid => valid.len(), _ => 0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every row at or after `len` (rolls back a row that failed to decode).
    pub fn truncate(&mut self, len: usize) {
        match self {
            ColumnBuf::Utf8 { offsets, data, valid }
            | ColumnBuf::Binary { offsets, data, valid }
            | ColumnBuf::JsonText { offsets, data, valid, .. } => {
                if valid.len() > len {
                    data.truncate(offsets[len] as usize);
                    offsets.truncate(len + 1);
                    valid.truncate(len);
                }
            }
            other => each_fixed!(other, v, valid => { v.truncate(len); valid.truncate(len) }, _ => {}),
        }
    }

    pub fn push_null(&mut self) {
        match self {
            ColumnBuf::Utf8 { offsets, data, valid }
            | ColumnBuf::Binary { offsets, data, valid }
            | ColumnBuf::JsonText { offsets, data, valid, .. } => {
                offsets.push(data.len() as i32);
                valid.push(false);
            }
            other => each_fixed!(other, v, valid => { v.push(Default::default()); valid.push(false) }, _ => {}),
        }
    }

    /// Appends `value`, converting it as the dialect allows (numbers from numeric strings, text from
    /// scalars, timestamps from RFC 3339 text or epoch milliseconds). `Err` says what was wrong.
    pub fn push(&mut self, value: Value<'_>) -> Result<(), String> {
        if let Value::Null = value {
            self.push_null();
            return Ok(());
        }
        match self {
            ColumnBuf::Bool(v, valid) => {
                let b = match value {
                    Value::Bool(b) => b,
                    Value::Str(s) if s.eq_ignore_ascii_case("true") => true,
                    Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
                    _ => return Err(mismatch("BOOLEAN", value)),
                };
                v.push(b);
                valid.push(true);
            }
            ColumnBuf::I8(v, valid) => push_int(v, valid, value, "TINYINT")?,
            ColumnBuf::I16(v, valid) => push_int(v, valid, value, "SMALLINT")?,
            ColumnBuf::I32(v, valid) => push_int(v, valid, value, "INT")?,
            ColumnBuf::I64(v, valid) => push_int(v, valid, value, "BIGINT")?,
            ColumnBuf::F32(v, valid) => {
                v.push(as_f64(value).ok_or_else(|| mismatch("FLOAT", value))? as f32);
                valid.push(true);
            }
            ColumnBuf::F64(v, valid) => {
                v.push(as_f64(value).ok_or_else(|| mismatch("DOUBLE", value))?);
                valid.push(true);
            }
            ColumnBuf::Ts(v, valid, dates) => {
                let ms = match value {
                    Value::I64(i) => i,
                    Value::U64(u) => i64::try_from(u).map_err(|_| mismatch("TIMESTAMP(3)", value))?,
                    // Text (CSV fields are all text) may also be epoch milliseconds.
                    Value::Str(s) => crate::time::parse_timestamp_ms_cached(s, dates)
                        .or_else(|| s.trim().parse::<i64>().ok())
                        .ok_or_else(|| format!("expected TIMESTAMP(3), got string {s:?}"))?,
                    _ => return Err(mismatch("TIMESTAMP(3)", value)),
                };
                v.push(ms);
                valid.push(true);
            }
            ColumnBuf::Decimal { values, valid, precision, scale } => {
                let text = match value {
                    Value::Str(s) => s.to_string(),
                    Value::I64(i) => i.to_string(),
                    Value::U64(u) => u.to_string(),
                    Value::F64(f) => f.to_string(),
                    _ => return Err(mismatch("DECIMAL", value)),
                };
                let parsed = arrow::compute::kernels::cast_utils::parse_decimal::<arrow::datatypes::Decimal128Type>(
                    &text, *precision, *scale,
                )
                .map_err(|_| format!("expected DECIMAL({precision},{scale}), got {text:?}"))?;
                values.push(parsed);
                valid.push(true);
            }
            ColumnBuf::Utf8 { offsets, data, valid } => {
                match value {
                    Value::Str(s) => data.extend_from_slice(s.as_bytes()),
                    Value::Bool(b) => data.extend_from_slice(if b { b"true" } else { b"false" }),
                    Value::I64(i) => data.extend_from_slice(i.to_string().as_bytes()),
                    Value::U64(u) => data.extend_from_slice(u.to_string().as_bytes()),
                    Value::F64(f) => data.extend_from_slice(f.to_string().as_bytes()),
                    Value::Bytes(b) => {
                        let s =
                            std::str::from_utf8(b).map_err(|_| "expected VARCHAR, got invalid UTF-8".to_string())?;
                        data.extend_from_slice(s.as_bytes())
                    }
                    Value::Null => unreachable!("handled above"),
                }
                offsets.push(data.len() as i32);
                valid.push(true);
            }
            ColumnBuf::Binary { offsets, data, valid } => {
                match value {
                    Value::Str(s) => data.extend_from_slice(s.as_bytes()),
                    Value::Bytes(b) => data.extend_from_slice(b),
                    _ => return Err(mismatch("BYTEA", value)),
                }
                offsets.push(data.len() as i32);
                valid.push(true);
            }
            ColumnBuf::JsonText { .. } => return Err(mismatch("STRUCT", value)),
        }
        Ok(())
    }

    /// Appends the JSON text of a nested value (STRUCT columns).
    pub fn push_json_text(&mut self, text: &str) -> Result<(), String> {
        match self {
            ColumnBuf::JsonText { offsets, data, valid, data_type } => {
                super::nested::check_json_text(text, data_type)?;
                data.extend_from_slice(text.as_bytes());
                offsets.push(data.len() as i32);
                valid.push(true);
                Ok(())
            }
            _ => Err("a nested JSON value where a scalar was expected".into()),
        }
    }

    /// Replaces the last row's value (a duplicate key in one object: the last one wins).
    pub fn pop_last(&mut self) {
        let n = self.len();
        if n > 0 {
            self.truncate(n - 1);
        }
    }

    /// Moves the rows out as an Arrow array, leaving the buffer empty with room for as many rows,
    /// up to [`KEPT_ROOM_BYTES`] a vector (batches of a source are alike: the next one then grows
    /// no vector step by step).
    pub fn finish(&mut self) -> Result<ArrayRef, arrow::error::ArrowError> {
        Ok(match self {
            ColumnBuf::Bool(v, valid) => {
                let nulls = nulls(take_keeping_room(valid));
                Arc::new(BooleanArray::new(BooleanBuffer::from_iter(take_keeping_room(v)), nulls))
            }
            ColumnBuf::I8(v, valid) => prim::<Int8Type>(v, valid),
            ColumnBuf::I16(v, valid) => prim::<Int16Type>(v, valid),
            ColumnBuf::I32(v, valid) => prim::<Int32Type>(v, valid),
            ColumnBuf::I64(v, valid) => prim::<Int64Type>(v, valid),
            ColumnBuf::F32(v, valid) => prim::<Float32Type>(v, valid),
            ColumnBuf::F64(v, valid) => prim::<Float64Type>(v, valid),
            ColumnBuf::Ts(v, valid, _) => prim::<TimestampMillisecondType>(v, valid),
            ColumnBuf::Decimal { values, valid, precision, scale } => Arc::new(
                Decimal128Array::new(ScalarBuffer::from(take_keeping_room(values)), nulls(take_keeping_room(valid)))
                    .with_precision_and_scale(*precision, *scale)?,
            ),
            ColumnBuf::Utf8 { offsets, data, valid } => {
                let (o, d, n) = take_var(offsets, data, valid);
                Arc::new(StringArray::try_new(o, d.into(), n)?)
            }
            ColumnBuf::Binary { offsets, data, valid } => {
                let (o, d, n) = take_var(offsets, data, valid);
                Arc::new(BinaryArray::try_new(o, d.into(), n)?)
            }
            ColumnBuf::JsonText { offsets, data, valid, data_type } => {
                let (o, d, n) = take_var(offsets, data, valid);
                let text = StringArray::try_new(o, d.into(), n)?;
                super::nested::json_text_to_array(&text, data_type)?
            }
        })
    }
}

fn take_var(
    offsets: &mut Vec<i32>,
    data: &mut Vec<u8>,
    valid: &mut Vec<bool>,
) -> (OffsetBuffer<i32>, Vec<u8>, Option<NullBuffer>) {
    let o = take_keeping_room(offsets);
    offsets.push(0);
    // Offsets start at 0 and only grow: pushes add the current data length.
    let o = OffsetBuffer::new(ScalarBuffer::from(o));
    (o, take_keeping_room(data), nulls(take_keeping_room(valid)))
}

/// Most room a buffer keeps for the next batch, in bytes: a burst of large batches must not leave
/// an idle source holding that much memory per column.
const KEPT_ROOM_BYTES: usize = 256 << 10;

/// Takes the vector's contents, leaving it empty with as much room (up to [`KEPT_ROOM_BYTES`]).
fn take_keeping_room<T>(v: &mut Vec<T>) -> Vec<T> {
    let room = v.capacity().min(KEPT_ROOM_BYTES / std::mem::size_of::<T>().max(1));
    std::mem::replace(v, Vec::with_capacity(room))
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

fn prim<T: ArrowPrimitiveType>(v: &mut Vec<T::Native>, valid: &mut Vec<bool>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(take_keeping_room(v)), nulls(take_keeping_room(valid))))
}

fn mismatch(expected: &str, got: Value<'_>) -> String {
    match got {
        Value::Str(s) => format!("expected {expected}, got string {:?}", truncate_for_message(s)),
        other => format!("expected {expected}, got {}", other.kind()),
    }
}

/// Long values are cut in messages so that an error row stays readable.
pub fn truncate_for_message(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn as_f64(v: Value<'_>) -> Option<f64> {
    match v {
        Value::F64(f) => Some(f),
        Value::I64(i) => Some(i as f64),
        Value::U64(u) => Some(u as f64),
        Value::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn push_int<T: TryFrom<i64> + TryFrom<u64>>(
    v: &mut Vec<T>,
    valid: &mut Vec<bool>,
    value: Value<'_>,
    name: &str,
) -> Result<(), String> {
    let out: Option<T> = match value {
        Value::I64(i) => T::try_from(i).ok(),
        Value::U64(u) => T::try_from(u).ok(),
        Value::F64(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => T::try_from(f as i64).ok(),
        Value::Str(s) => s.trim().parse::<i64>().ok().and_then(|i| T::try_from(i).ok()),
        _ => None,
    };
    match out {
        Some(x) => {
            v.push(x);
            valid.push(true);
            Ok(())
        }
        None => Err(match value {
            Value::I64(_) | Value::U64(_) => format!("integer out of range for {name}"),
            other => mismatch(name, other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn truncate_rolls_back_a_partial_row() {
        let mut s = ColumnBuf::new(&DataType::Utf8).unwrap();
        s.push(Value::Str("a")).unwrap();
        s.push(Value::Str("bcd")).unwrap();
        s.truncate(1);
        s.push(Value::Null).unwrap();
        s.push(Value::I64(42)).unwrap();
        let a = s.finish().unwrap();
        let a = a.as_string::<i32>();
        assert_eq!(a.len(), 3);
        assert_eq!(a.value(0), "a");
        assert!(a.is_null(1));
        assert_eq!(a.value(2), "42");
        assert!(s.is_empty());
    }

    #[test]
    fn numbers_convert_as_the_dialect_says() {
        let mut f = ColumnBuf::new(&DataType::Float64).unwrap();
        f.push(Value::I64(3)).unwrap();
        f.push(Value::Str(" 2.5")).unwrap();
        assert!(f.push(Value::Str("hot")).unwrap_err().contains("expected DOUBLE"));
        let mut i = ColumnBuf::new(&DataType::Int32).unwrap();
        assert!(i.push(Value::I64(1 << 40)).is_err());
        assert!(i.push(Value::F64(1.5)).is_err());
        i.push(Value::F64(7.0)).unwrap();
        assert_eq!(i.len(), 1);
    }
}
