//! CSV input: a header line names the columns (files); an empty field is NULL.
//! Message payloads without a header use the declared column order.

use super::columns::Value;
use super::decode::RowDecoder;

/// Maps CSV header names to decoder columns; unknown header names are ignored.
pub fn header_mapping(dec: &RowDecoder, header: &csv::ByteRecord) -> Vec<Option<usize>> {
    header.iter().map(|h| std::str::from_utf8(h).ok().and_then(|h| dec.lookup(h.trim()))).collect()
}

/// The mapping used when there is no header: payload columns in declared order.
pub fn positional_mapping(dec: &RowDecoder) -> Vec<Option<usize>> {
    dec.columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.metadata_key.is_none())
        .map(|(i, _)| Some(i))
        .collect()
}

/// Decodes one CSV record into a row. `raw` is what an error row shows.
pub fn decode_record(
    dec: &mut RowDecoder,
    mapping: &[Option<usize>],
    record: &csv::ByteRecord,
    raw: &[u8],
    received_at: i64,
) -> bool {
    dec.begin_row();
    if record.len() != mapping.len() {
        dec.fail_row(format!("expected {} fields, got {}", mapping.len(), record.len()));
    }
    for (field, col) in record.iter().zip(mapping) {
        let Some(col) = *col else { continue };
        if field.is_empty() {
            dec.set(col, Value::Null);
            continue;
        }
        match std::str::from_utf8(field) {
            Ok(s) => dec.set(col, Value::Str(s)),
            Err(_) => dec.fail_row(format!("column '{}': invalid UTF-8", dec.columns()[col].name)),
        }
    }
    dec.end_row(raw, received_at)
}

/// Decodes a whole CSV payload (one message) without a header line.
pub fn decode_csv_payload(dec: &mut RowDecoder, payload: &[u8], received_at: i64) -> usize {
    let mapping = positional_mapping(dec);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(payload);
    let mut record = csv::ByteRecord::new();
    let mut accepted = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => accepted += decode_record(dec, &mapping, &record, payload, received_at) as usize,
            Err(e) => {
                dec.reject(payload, &format!("not valid CSV: {e}"), received_at);
                break;
            }
        }
    }
    accepted
}

/// `format = 'raw'`: the whole payload in the one payload column.
pub fn decode_raw(dec: &mut RowDecoder, payload: &[u8], received_at: i64) -> bool {
    dec.begin_row();
    if let Some(col) = dec.columns().iter().position(|c| c.metadata_key.is_none()) {
        dec.set(col, Value::Bytes(payload));
    }
    dec.end_row(payload, received_at)
}
