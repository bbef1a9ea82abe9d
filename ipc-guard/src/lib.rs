//! Reading Arrow IPC bytes that may be damaged or hostile: the checks that must run before
//! Arrow's reader sees them, and a guard around it. Shared by the engine (WAL records and
//! checkpoints, decoded after their CRC and tag checked) and the hub (batches from the network),
//! which must not depend on each other.
//!
//! Owns: the stream framing check and the panic guard. Must never: decode anything itself, or let
//! a panic of Arrow's reader out.

/// Walks an IPC stream's messages and checks each length against the bytes there are: Arrow's
/// reader allocates a message body by its stated length before reading it, so a damaged or
/// hostile length would ask for terabytes and abort the process.
pub fn check_stream_framing(ipc: &[u8]) -> Result<(), &'static str> {
    let i32_at = |at: usize| -> Result<i32, &'static str> {
        let b = ipc.get(at..at.saturating_add(4)).ok_or("an IPC message cut short")?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut pos = 0usize;
    while pos < ipc.len() {
        let mut meta_len = i32_at(pos)?;
        pos += 4;
        // A continuation marker, then the length (streams of Arrow 0.15 and later).
        if meta_len == -1 {
            meta_len = i32_at(pos)?;
            pos += 4;
        }
        if meta_len == 0 {
            return Ok(()); // the end-of-stream marker
        }
        let meta_len = usize::try_from(meta_len).map_err(|_| "a negative IPC message length")?;
        let meta = ipc.get(pos..pos.saturating_add(meta_len)).ok_or("an IPC message header beyond the data")?;
        pos += meta_len;
        let message = arrow::ipc::root_as_message(meta).map_err(|_| "an IPC message header that does not parse")?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative IPC body length")?;
        if body > ipc.len() - pos {
            return Err("an IPC message body beyond the data");
        }
        pos += body;
    }
    Ok(())
}

/// Runs Arrow's IPC reader, which may panic on bytes it did not write (a validity buffer shorter
/// than its column, a type id it does not know): such bytes are an error, never a crash.
pub fn guarded<T>(read: impl FnOnce() -> Result<T, arrow::error::ArrowError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("Arrow data its reader cannot take".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::ipc::reader::StreamReader;
    use arrow::ipc::writer::StreamWriter;

    use super::{check_stream_framing, guarded};

    fn stream() -> Vec<u8> {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("n", Arc::new(Int64Array::from_iter((0..50).map(|i| (i % 4 != 0).then_some(i))))),
            ("s", Arc::new(StringArray::from_iter_values((0..50).map(|i| format!("row {i}"))))),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    fn read(ipc: &[u8]) -> Result<usize, String> {
        check_stream_framing(ipc)?;
        guarded(|| StreamReader::try_new(ipc, None)?.map(|b| b.map(|b| b.num_rows())).sum())
    }

    #[test]
    fn a_whole_stream_passes_and_reads() {
        assert_eq!(read(&stream()), Ok(50));
    }

    #[test]
    fn every_cut_and_flipped_byte_is_an_error_or_rows_never_a_crash() {
        let ipc = stream();
        for cut in 0..ipc.len() {
            let _ = read(&ipc[..cut]);
        }
        let mut bytes = ipc.clone();
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80, 0xff] {
                bytes[i] ^= bit;
                let _ = read(&bytes);
                bytes[i] ^= bit;
            }
        }
    }

    #[test]
    fn a_body_length_beyond_the_data_is_refused_before_reading() {
        let mut ipc = stream();
        // The schema message's header says how long its body is; make the batch's claim 2^40.
        let first = 8 + i32::from_le_bytes([ipc[4], ipc[5], ipc[6], ipc[7]]) as usize;
        let meta_len = i32::from_le_bytes([ipc[first + 4], ipc[first + 5], ipc[first + 6], ipc[first + 7]]) as usize;
        let meta = &ipc[first + 8..first + 8 + meta_len];
        let body = arrow::ipc::root_as_message(meta).unwrap().bodyLength();
        let at = first + 8 + meta.windows(8).position(|w| w == body.to_le_bytes()).unwrap();
        ipc[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        assert_eq!(check_stream_framing(&ipc), Err("an IPC message body beyond the data"));
    }
}
