//! Nested JSON objects for `STRUCT<...>` columns, decoded with arrow-json.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

fn wrap(data_type: &DataType) -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("v", data_type.clone(), true)]))
}

/// Whether `text` decodes as a value of `data_type` (checked when the row is decoded, so a bad nested
/// value makes an error row rather than failing the batch later).
pub fn check_json_text(text: &str, data_type: &DataType) -> Result<(), String> {
    let mut decoder = arrow::json::ReaderBuilder::new(wrap(data_type))
        .with_strict_mode(false)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let line = format!("{{\"v\":{text}}}");
    decoder.decode(line.as_bytes()).map_err(|e| e.to_string())?;
    decoder.flush().map_err(|e| e.to_string())?;
    Ok(())
}

/// Decodes JSON texts (nulls stay null) into one array of `data_type`.
pub fn json_text_to_array(text: &StringArray, data_type: &DataType) -> Result<ArrayRef, ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(wrap(data_type))
        .with_strict_mode(false)
        .with_batch_size(text.len().max(1))
        .build_decoder()?;
    let mut buf = Vec::with_capacity(text.value_data().len() + 8 * text.len());
    for i in 0..text.len() {
        buf.extend_from_slice(b"{\"v\":");
        if text.is_null(i) {
            buf.extend_from_slice(b"null");
        } else {
            buf.extend_from_slice(text.value(i).as_bytes());
        }
        buf.extend_from_slice(b"}\n");
    }
    decoder.decode(&buf)?;
    let batch = decoder.flush()?.ok_or_else(|| ArrowError::JsonError("no rows".into()))?;
    let col = batch.column(0).clone();
    if let Some(s) = col.as_any().downcast_ref::<StructArray>() {
        return Ok(Arc::new(s.clone()));
    }
    Ok(col)
}
