//! A pushed batch as a Parquet object: the Arrow IPC rows a gateway sent, checked against the
//! batch's sequence numbers, written as one Parquet file whose footer names its origin (gateway,
//! stream, outbox, first and last sequence number). Owns the conversion; never does I/O.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// Footer key of a batch's last sequence number.
pub const LAST_SEQ_KEY: &str = "eddy.last_seq";

/// Why a push's rows cannot be stored (the gateway's fault, not the store's).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("the rows are not a readable Arrow IPC stream: {0}")]
    Ipc(String),
    #[error("the batch says rows {first}..={last} ({expected} rows) but holds {actual}")]
    RowCount { first: u64, last: u64, expected: u64, actual: u64 },
    #[error("first_seq {first} is after last_seq {last}")]
    Range { first: u64, last: u64 },
    #[error("the batch holds {0} rows, over limits.max_push_rows")]
    TooManyRows(u64),
    #[error("cannot write Parquet: {0}")]
    Parquet(String),
}

/// Where a batch comes from, written into its footer.
pub struct Origin<'a> {
    pub gateway: &'a str,
    pub stream: &'a str,
    pub outbox: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Decodes `ipc` and writes it as Parquet; the row count must match the sequence numbers. The
/// bytes come from the network: should the Arrow decoder panic on some malformed stream, that is
/// this batch's error, never the hub's.
pub fn to_parquet(ipc: &[u8], origin: &Origin<'_>, max_rows: u64) -> Result<Vec<u8>, BatchError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| convert(ipc, origin, max_rows)))
        .unwrap_or_else(|_| Err(BatchError::Ipc("the Arrow decoder failed on these bytes".into())))
}

fn convert(ipc: &[u8], origin: &Origin<'_>, max_rows: u64) -> Result<Vec<u8>, BatchError> {
    eddy_ipc_guard::check_stream_framing(ipc).map_err(|e| BatchError::Ipc(e.into()))?;
    let (first, last) = (origin.first_seq, origin.last_seq);
    if first > last {
        return Err(BatchError::Range { first, last });
    }
    let expected = last - first + 1;
    if expected > max_rows {
        return Err(BatchError::TooManyRows(expected));
    }
    let reader = StreamReader::try_new(ipc, None).map_err(|e| BatchError::Ipc(e.to_string()))?;
    let schema = reader.schema();
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut actual = 0u64;
    for b in reader {
        let b = b.map_err(|e| BatchError::Ipc(e.to_string()))?;
        actual += b.num_rows() as u64;
        if actual > expected {
            break;
        }
        batches.push(b);
    }
    if actual != expected {
        return Err(BatchError::RowCount { first, last, expected, actual });
    }
    let footer = [
        ("eddy.gateway", origin.gateway.to_string()),
        ("eddy.stream", origin.stream.to_string()),
        ("eddy.outbox", format!("{:016x}", origin.outbox)),
        ("eddy.first_seq", first.to_string()),
        (LAST_SEQ_KEY, last.to_string()),
    ];
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(footer.into_iter().map(|(k, v)| KeyValue::new(k.to_string(), v)).collect()))
        .build();
    let mut out = Vec::new();
    let pq = |e: parquet::errors::ParquetError| BatchError::Parquet(e.to_string());
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(props)).map_err(pq)?;
    for b in &batches {
        w.write(b).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(out)
}

/// The last sequence number a stored batch's footer names (`None`: not one of ours).
pub fn stored_last_seq(object: bytes::Bytes) -> Option<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let r = SerializedFileReader::new(object).ok()?;
    let kv = r.metadata().file_metadata().key_value_metadata()?;
    kv.iter().find(|e| e.key == LAST_SEQ_KEY)?.value.as_deref()?.parse().ok()
}

/// A stored batch cut to its first `keep` rows (a retraction): the same footer, its last sequence
/// number moved back to match.
pub fn cut(object: bytes::Bytes, keep: u64) -> Result<Vec<u8>, BatchError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let pq = |e: parquet::errors::ParquetError| BatchError::Parquet(e.to_string());
    let builder = ParquetRecordBatchReaderBuilder::try_new(object).map_err(pq)?;
    let footer = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    let first: u64 = footer
        .iter()
        .find(|e| e.key == "eddy.first_seq")
        .and_then(|e| e.value.as_deref()?.parse().ok())
        .ok_or_else(|| BatchError::Parquet("not an Eddy batch (no eddy.first_seq)".into()))?;
    let schema = builder.schema().clone();
    let mut out = Vec::new();
    let footer: Vec<KeyValue> = footer
        .into_iter()
        .map(|e| if e.key == LAST_SEQ_KEY { KeyValue::new(e.key, (first + keep - 1).to_string()) } else { e })
        .collect();
    let props =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_key_value_metadata(Some(footer)).build();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(pq)?;
    let mut left = keep as usize;
    for b in builder.build().map_err(pq)? {
        let b = b.map_err(|e| BatchError::Parquet(e.to_string()))?;
        if left == 0 {
            break;
        }
        let n = left.min(b.num_rows());
        w.write(&b.slice(0, n)).map_err(pq)?;
        left -= n;
    }
    w.close().map_err(pq)?;
    Ok(out)
}

/// The first sequence number a stored batch's footer names.
#[cfg(test)]
pub fn stored_first_seq(object: bytes::Bytes) -> Option<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let r = SerializedFileReader::new(object).ok()?;
    let kv = r.metadata().file_metadata().key_value_metadata()?;
    kv.iter().find(|e| e.key == "eddy.first_seq")?.value.as_deref()?.parse().ok()
}

/// The rows a Parquet object holds (from its footer).
pub fn row_count(object: bytes::Bytes) -> Option<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let r = SerializedFileReader::new(object).ok()?;
    u64::try_from(r.metadata().file_metadata().num_rows()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;

    fn ipc(rows: usize) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, true),
            Field::new("avg_temp", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("s{i}")))),
                Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    fn origin(first: u64, last: u64) -> Origin<'static> {
        Origin { gateway: "gw", stream: "s", outbox: 1, first_seq: first, last_seq: last }
    }

    #[test]
    fn rows_round_trip_with_their_origin_in_the_footer() {
        let pq = to_parquet(&ipc(3), &origin(10, 12), 100).unwrap();
        assert_eq!(stored_last_seq(bytes::Bytes::from(pq.clone())), Some(12));
        let rows: usize =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(pq))
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum();
        assert_eq!(rows, 3);
    }

    #[test]
    fn a_cut_batch_keeps_its_first_rows_and_says_where_it_ends() {
        let pq = bytes::Bytes::from(to_parquet(&ipc(5), &origin(10, 14), 100).unwrap());
        let cut = bytes::Bytes::from(cut(pq, 2).unwrap());
        assert_eq!((stored_first_seq(cut.clone()), stored_last_seq(cut.clone())), (Some(10), Some(11)));
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(cut)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let sites = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(sites.iter().flatten().collect::<Vec<_>>(), ["s0", "s1"]);
    }

    /// Damaged streams (bytes flipped, cut short) give an error or a batch, never a panic.
    #[test]
    fn damaged_ipc_never_takes_the_hub_down() {
        let good = ipc(20);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % bad.len();
                bad[i] = next() as u8;
            }
            bad.truncate(bad.len() - (next() as usize % 8));
            let _ = to_parquet(&bad, &origin(0, 19), 100);
        }
    }

    #[test]
    fn counts_that_do_not_match_and_garbage_are_refused() {
        assert!(matches!(to_parquet(&ipc(3), &origin(10, 13), 100), Err(BatchError::RowCount { actual: 3, .. })));
        assert!(matches!(to_parquet(&ipc(3), &origin(10, 11), 100), Err(BatchError::RowCount { .. })));
        assert!(matches!(to_parquet(&ipc(3), &origin(12, 10), 100), Err(BatchError::Range { .. })));
        assert!(matches!(to_parquet(&ipc(3), &origin(10, 12), 2), Err(BatchError::TooManyRows(3))));
        assert!(matches!(to_parquet(b"not arrow", &origin(0, 0), 100), Err(BatchError::Ipc(_))));
        assert_eq!(stored_last_seq(bytes::Bytes::from_static(b"PAR1 nonsense")), None);
    }
}
