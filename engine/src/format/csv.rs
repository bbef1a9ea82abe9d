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
    dec.columns().iter().enumerate().filter(|(_, c)| c.metadata_key.is_none()).map(|(i, _)| Some(i)).collect()
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

/// Parses single CSV lines with one reusable parser (building a CSV reader per line costs more
/// than parsing it). Buffers grow to the longest line seen.
pub struct CsvLineParser {
    reader: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    record: csv::ByteRecord,
}

impl Default for CsvLineParser {
    fn default() -> Self {
        CsvLineParser {
            reader: csv_core::Reader::new(),
            out: vec![0; 256],
            ends: vec![0; 32],
            record: csv::ByteRecord::new(),
        }
    }
}

impl CsvLineParser {
    /// The fields of `line` (one record; a quoted field may not span lines here).
    pub fn parse(&mut self, line: &[u8]) -> Result<&csv::ByteRecord, String> {
        use csv_core::ReadRecordResult as R;
        self.reader.reset();
        let (mut input, mut nout, mut nends) = (line, 0usize, 0usize);
        loop {
            let (res, nin, o, e) = self.reader.read_record(input, &mut self.out[nout..], &mut self.ends[nends..]);
            input = &input[nin..];
            nout += o;
            nends += e;
            match res {
                // An empty input tells the parser the record ends here.
                R::InputEmpty => {}
                R::OutputFull => self.out.resize(self.out.len() * 2, 0),
                R::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                R::Record | R::End => break,
            }
        }
        self.record.clear();
        let mut from = 0;
        for &end in &self.ends[..nends] {
            if end < from || end > nout {
                return Err("malformed record".into());
            }
            self.record.push_field(&self.out[from..end]);
            from = end;
        }
        Ok(&self.record)
    }
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

#[cfg(test)]
mod tests {
    use super::CsvLineParser;

    #[test]
    fn parses_quoted_empty_and_long_fields_with_one_parser() {
        let mut p = CsvLineParser::default();
        let long = "x".repeat(5000);
        let lines = [
            ("a,\"b,c\",,\"say \"\"hi\"\"\"".to_string(), vec!["a", "b,c", "", "say \"hi\""]),
            (
                format!("{long},{}", "y,".repeat(100)),
                std::iter::once(long.as_str()).chain(std::iter::repeat_n("y", 100)).chain([""]).collect(),
            ),
            ("only".to_string(), vec!["only"]),
        ];
        for (line, want) in &lines {
            let got: Vec<&[u8]> = p.parse(line.as_bytes()).unwrap().iter().collect();
            let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn csv_timestamps_may_be_epoch_milliseconds() {
        use crate::format::decode::{DecodeColumn, RowDecoder};
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, TimestampMillisecondType};
        let col =
            |n: &str, t: DataType| DecodeColumn { name: n.into(), data_type: t, nullable: false, metadata_key: None };
        let mut d =
            RowDecoder::new(vec![col("id", DataType::Utf8), col("ts", crate::types::TS_TYPE)], Some(1)).unwrap();
        let n = super::decode_csv_payload(&mut d, b"a,1700000000000\nb,2023-11-14T22:13:20Z\nc,17e11\n", 0);
        assert_eq!(n, 2, "an integer or RFC 3339; not a float");
        let b = d.finish().unwrap().unwrap();
        let ts = b.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!((ts.value(0), ts.value(1)), (1_700_000_000_000, 1_700_000_000_000));
    }
}
