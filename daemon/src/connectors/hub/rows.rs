//! A hub batch's rows, from the JSON lines the outbox holds to one Arrow IPC stream, typed by the
//! sink's schema so every batch of a stream has the same Parquet schema. Owns the mapping of
//! engine types to what JSON carries back exactly; never does I/O.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::ipc::writer::StreamWriter;
use arrow::json::ReaderBuilder;

/// The type a column travels as: what its JSON text decodes to without loss. Timestamps are
/// milliseconds (the JSON has millisecond precision); bytes and types JSON writes as display
/// text travel as text.
fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Date32
        | DataType::Decimal128(..) => t.clone(),
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        DataType::Struct(fields) => DataType::Struct(Fields::from(
            fields.iter().map(|f| Field::new(f.name(), wire_type(f.data_type()), true)).collect::<Vec<_>>(),
        )),
        _ => DataType::Utf8,
    }
}

/// The schema batches of a sink with this row schema are sent with (every column nullable).
pub fn wire_schema(rows: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        rows.fields().iter().map(|f| Field::new(f.name(), wire_type(f.data_type()), true)).collect::<Vec<_>>(),
    ))
}

/// Encodes JSON lines (one object each, no newline) as an Arrow IPC stream of `schema`, in
/// record batches of at most `batch_rows`. An error means the lines do not match the schema the
/// engine gave for them: a bug, reported whole rather than dropping the row.
pub fn encode<'a>(
    schema: &SchemaRef,
    lines: impl Iterator<Item = &'a [u8]>,
    batch_rows: usize,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    out.clear();
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_rows.max(1))
        .with_strict_mode(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut writer = StreamWriter::try_new(&mut *out, schema).map_err(|e| e.to_string())?;
    let mut rows = 0;
    for line in lines {
        let mut rest = line;
        while !rest.is_empty() {
            let n = decoder.decode(rest).map_err(|e| e.to_string())?;
            rest = &rest[n..];
            if !rest.is_empty() {
                // The decoder stopped at a full batch.
                let b = decoder.flush().map_err(|e| e.to_string())?.ok_or("the JSON decoder made no progress")?;
                rows += b.num_rows();
                writer.write(&b).map_err(|e| e.to_string())?;
            }
        }
        // Lines are whole objects; a newline ends each so none runs into the next.
        decoder.decode(b"\n").map_err(|e| e.to_string())?;
    }
    if let Some(b) = decoder.flush().map_err(|e| e.to_string())? {
        rows += b.num_rows();
        writer.write(&b).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMillisecondType;
    use arrow::ipc::reader::StreamReader;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("avg", DataType::Float64, true),
            Field::new("window_end", DataType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("raw", DataType::Binary, true),
        ]))
    }

    #[test]
    fn engine_json_lines_decode_to_typed_rows() {
        let wire = wire_schema(&schema());
        assert_eq!(wire.field(3).data_type(), &DataType::Timestamp(TimeUnit::Millisecond, None));
        assert_eq!(wire.field(4).data_type(), &DataType::Utf8);
        let lines: Vec<&[u8]> = vec![
            br#"{"site":"a","n":3,"avg":1.5,"window_end":"2026-12-01T10:00:00.000Z","raw":"x"}"#,
            br#"{"site":"b","n":1,"avg":null,"window_end":"2026-12-01T10:00:01.250Z","raw":null}"#,
            br#"{"site":"c","n":2,"avg":2.0,"window_end":"2026-12-01T10:00:02.000Z","raw":"y"}"#,
        ];
        let mut out = Vec::new();
        assert_eq!(encode(&wire, lines.into_iter(), 2, &mut out).unwrap(), 3);
        let batches: Vec<_> = StreamReader::try_new(out.as_slice(), None).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![2, 1]);
        let ts = batches[0].column(3).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(1) - ts.value(0), 1250);
        assert!(batches[0].column(2).is_null(1));
    }

    #[test]
    fn a_line_that_does_not_match_the_schema_is_an_error() {
        let wire = wire_schema(&schema());
        let mut out = Vec::new();
        let bad: Vec<&[u8]> = vec![br#"{"site":"a","n":"three"}"#];
        assert!(encode(&wire, bad.into_iter(), 10, &mut out).is_err());
        let extra: Vec<&[u8]> = vec![br#"{"site":"a","n":3,"surprise":1}"#];
        assert!(encode(&wire, extra.into_iter(), 10, &mut out).is_err());
    }
}
