//! SQL column types of the dialect and their Arrow representation.
//! `TIMESTAMP(3)` is `Timestamp(Millisecond, None)`, always read as UTC.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, IntervalUnit, TimeUnit};
use datafusion_sql::sqlparser::ast::{DataType as SqlType, ExactNumberInfo, StructField};

/// The Arrow type of every event-time column.
pub const TS_TYPE: DataType = DataType::Timestamp(TimeUnit::Millisecond, None);

/// Maps a SQL type of the dialect to Arrow; `Err` names the type that is not supported.
pub fn arrow_type(t: &SqlType) -> Result<DataType, String> {
    Ok(match t {
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::TinyInt(_) => DataType::Int8,
        SqlType::SmallInt(_) | SqlType::Int2(_) => DataType::Int16,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => DataType::Int32,
        SqlType::BigInt(_) | SqlType::Int8(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Float(_) | SqlType::Real | SqlType::Float4 | SqlType::Float32 => DataType::Float32,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float64 => DataType::Float64,
        SqlType::Decimal(info) | SqlType::Numeric(info) | SqlType::Dec(info) => match info {
            ExactNumberInfo::None => DataType::Decimal128(38, 10),
            ExactNumberInfo::Precision(p) => DataType::Decimal128(*p as u8, 0),
            ExactNumberInfo::PrecisionAndScale(p, s) => DataType::Decimal128(*p as u8, *s as i8),
        },
        SqlType::Varchar(_)
        | SqlType::Text
        | SqlType::String(_)
        | SqlType::Char(_)
        | SqlType::Character(_)
        | SqlType::CharVarying(_)
        | SqlType::CharacterVarying(_) => DataType::Utf8,
        SqlType::Timestamp(precision, _) => {
            if matches!(precision, Some(p) if *p != 3) {
                return Err(format!("{t}: only millisecond precision, TIMESTAMP(3), is supported"));
            }
            TS_TYPE
        }
        SqlType::Datetime(_) => TS_TYPE,
        SqlType::Interval { .. } => DataType::Interval(IntervalUnit::MonthDayNano),
        SqlType::Bytea | SqlType::Bytes(_) | SqlType::Varbinary(_) | SqlType::Blob(_) | SqlType::Binary(_) => {
            DataType::Binary
        }
        SqlType::Struct(fields, _) => DataType::Struct(struct_fields(fields)?),
        SqlType::Custom(name, args) if args.is_empty() => match name.to_string().to_ascii_uppercase().as_str() {
            "STRING" => DataType::Utf8,
            "BYTES" => DataType::Binary,
            other => return Err(format!("unknown type {other}")),
        },
        other => return Err(format!("type {other} is not supported")),
    })
}

fn struct_fields(fields: &[StructField]) -> Result<Fields, String> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f.field_name.as_ref().map(|n| n.value.clone()).ok_or("STRUCT fields need names")?;
        out.push(Arc::new(Field::new(name, arrow_type(&f.field_type)?, true)));
    }
    Ok(Fields::from(out))
}

/// The dialect's name of an Arrow type, for messages.
pub fn sql_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Timestamp(..) => "TIMESTAMP(3)".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        DataType::Struct(_) => "STRUCT".into(),
        other => other.to_string(),
    }
}
