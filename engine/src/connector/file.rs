//! The `file` source: a file of JSON lines, CSV (header line first) or raw lines, read to its end or,
//! with `follow = 'true'`, tailed as it grows. Lines longer than the limit become error rows; a
//! partial last line waits for its newline while following, and counts as a line at the end otherwise.
//!
//! With more than one decode thread, whole lines are cut into pieces of up to a batch's rows and
//! decoded by a [`DecodePool`], whose batches come back in file order; everything else (the CSV
//! header, a line still growing or too long, the last line without a newline) is read on the
//! source's own thread once the pool has handed back all it holds. Either way the rows, their order
//! and the read position after each batch are the same.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memchr::memchr;

use super::decode_pool::{DecodePool, PieceDecoder};
use super::{Poll, SourceReader};
use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;
use crate::format::{csv as csvfmt, json, Format};

crate::connector_options! {
    /// What a `file` source takes (besides the common options).
    pub(crate) struct FileSourceOptions {
        path: String = "path",
        follow: bool = "follow",
        max_line_bytes: usize = "max_line_bytes",
    }
}

/// Default longest line: 16 MiB.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;
const READ_CHUNK: usize = 1 << 20;
/// Bytes read at a time while a piece for the decode threads is cut: the buffer becomes the piece
/// and what follows its last line is copied to the next buffer, so short reads keep that copy short.
const PIECE_READ_CHUNK: usize = 128 << 10;
/// Bytes of lines in one piece for a decode thread, at most (a single longer line is a piece of its
/// own). With [`super::decode_pool::PIECES_PER_WORKER`] this bounds the bytes a pool holds.
pub const PIECE_BYTES: usize = 1 << 20;

pub struct FileSource {
    path: PathBuf,
    file: File,
    format: Format,
    follow: bool,
    buf: Vec<u8>,
    start: usize,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    eof: bool,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    max_line: usize,
    /// CSV: columns named by the header, once read.
    csv_mapping: Option<Arc<Vec<Option<usize>>>>,
    csv: csvfmt::CsvLineParser,
    /// Decode threads (1: decode on the source's own thread).
    decode_threads: usize,
    pool: Option<LinePool>,
}

/// The pool of a source decoded on several threads, and what it holds.
struct LinePool {
    pool: DecodePool<LinePiece>,
    /// File offset just after the last piece handed on.
    handed_end: u64,
    /// Buffers of pieces handed back, to cut the next pieces into.
    spare: Vec<Vec<u8>>,
}

/// Whole lines of the file, for one decode thread.
struct LinePiece {
    /// The lines are `lines[from..]` (the buffer they were read into, handed over whole).
    lines: Vec<u8>,
    from: usize,
    /// File offset just after the piece's last newline.
    end: u64,
    now: i64,
    csv_mapping: Option<Arc<Vec<Option<usize>>>>,
}

/// A decode thread's half of the file source.
struct LineDecoder {
    format: Format,
    csv: csvfmt::CsvLineParser,
    max_line: usize,
}

impl PieceDecoder for LineDecoder {
    type Piece = LinePiece;
    fn decode(&mut self, piece: &LinePiece, dec: &mut RowDecoder) {
        let mapping = piece.csv_mapping.as_deref().map(Vec::as_slice);
        // `memchr` finds newlines many bytes at a time; `split` would test each byte.
        let mut start = 0;
        let lines = &piece.lines[piece.from..];
        for nl in memchr::memchr_iter(b'\n', lines).chain([lines.len()]) {
            let line = &lines[start..nl];
            decode_line(self.format, &mut self.csv, mapping, self.max_line, dec, line, piece.now);
            start = nl + 1;
        }
    }
}

/// Decodes one line (CR stripped, blank lines skipped, one longer than `max_line` an error row);
/// CSV lines need the header's mapping.
fn decode_line(
    format: Format,
    csv: &mut csvfmt::CsvLineParser,
    csv_mapping: Option<&[Option<usize>]>,
    max_line: usize,
    dec: &mut RowDecoder,
    mut line: &[u8],
    now: i64,
) {
    if line.len() > max_line {
        reject_long_line(dec, line, max_line, now);
        return;
    }
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    match format {
        Format::Json => {
            json::decode_json(dec, line, now);
        }
        Format::Raw => {
            csvfmt::decode_raw(dec, line, now);
        }
        Format::Csv => match (csv.parse(line), csv_mapping) {
            (Ok(record), Some(m)) => {
                csvfmt::decode_record(dec, m, record, line, now);
            }
            (Ok(_), None) => debug_assert!(false, "CSV lines are decoded after the header"),
            (Err(e), _) => dec.reject(line, &format!("not valid CSV: {e}"), now),
        },
    }
}

impl FileSource {
    /// Opens `path`; `decode_threads` above 1 decodes on that many threads of a pool.
    pub fn open(path: &Path, format: Format, follow: bool, max_line: usize, decode_threads: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        Ok(FileSource {
            path: path.to_path_buf(),
            file,
            format,
            follow,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            buf_offset: 0,
            eof: false,
            skipping: false,
            max_line,
            csv_mapping: None,
            csv: csvfmt::CsvLineParser::default(),
            decode_threads: decode_threads.clamp(1, super::decode_pool::MAX_DECODE_THREADS),
            pool: None,
        })
    }

    /// Reads more bytes; returns how many.
    fn fill(&mut self) -> Result<usize> {
        self.fill_by(READ_CHUNK)
    }

    /// Reads up to `chunk_bytes` more bytes; returns how many.
    fn fill_by(&mut self, chunk_bytes: usize) -> Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.buf_offset += self.start as u64;
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + chunk_bytes, 0);
        let n = loop {
            match self.file.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(EngineError::io(&self.path, e));
                }
            }
        };
        self.buf.truncate(len + n);
        Ok(n)
    }

    fn decode_line(&mut self, dec: &mut RowDecoder, line_start: usize, line_end: usize, now: i64) {
        let line = &self.buf[line_start..line_end];
        if self.format == Format::Csv && self.csv_mapping.is_none() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                return;
            }
            match self.csv.parse(line) {
                Ok(header) => self.csv_mapping = Some(Arc::new(csvfmt::header_mapping(dec, &strip_bom(header)))),
                Err(e) => dec.reject(line, &format!("not valid CSV: {e}"), now),
            }
            return;
        }
        let mapping = self.csv_mapping.as_deref().map(Vec::as_slice);
        decode_line(self.format, &mut self.csv, mapping, self.max_line, dec, line, now);
    }

    /// Whether whole lines may go to decode threads now: CSV only once its header is read, and
    /// not while the rest of a too-long line is being skipped.
    fn pooled(&self) -> bool {
        self.decode_threads > 1 && !self.skipping && (self.format != Format::Csv || self.csv_mapping.is_some())
    }

    /// Decodes on the pool: cuts pieces while it has room, then hands on the oldest piece's rows.
    /// `false`: nothing is in the pool and no whole line is buffered, so the serial path goes on.
    fn poll_pooled(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<bool> {
        if self.pool.is_none() {
            let (format, max_line) = (self.format, self.max_line);
            let pool = DecodePool::start(&self.path.display().to_string(), self.decode_threads, dec, || LineDecoder {
                format,
                csv: csvfmt::CsvLineParser::default(),
                max_line,
            })?;
            let handed_end = self.buf_offset + self.start as u64;
            self.pool = Some(LinePool { pool, handed_end, spare: Vec::new() });
        }
        while self.pool.as_ref().is_some_and(|p| p.pool.has_room()) && self.cut_piece(max_rows)? {}
        let Some(p) = self.pool.as_mut() else { return Ok(false) };
        let Some(mut done) = p.pool.take()? else { return Ok(false) };
        done.hand_over(dec);
        p.handed_end = done.piece.end;
        p.spare.push(done.piece.lines);
        Ok(true)
    }

    /// Submits whole lines after `start` to the pool: `max_rows` of them, or [`PIECE_BYTES`] of
    /// them, or what is there at the end of the input (reading more until one of these holds, so
    /// pieces are even and the threads equally busy). `false`: no whole line to submit.
    fn cut_piece(&mut self, max_rows: usize) -> Result<bool> {
        // Lines counted so far in the window (offsets from `start`, which `fill` keeps).
        let (mut counted_bytes, mut lines, mut last) = (0, 0, None);
        let (lines_end, next) = loop {
            let rest = &self.buf[self.start..];
            let window = &rest[..rest.len().min(PIECE_BYTES)];
            let (more_last, more_lines) = last_newline_within(&window[counted_bytes..], max_rows - lines);
            last = more_last.map(|nl| counted_bytes + nl).or(last);
            (counted_bytes, lines) = (window.len(), lines + more_lines);
            let full = lines >= max_rows || rest.len() >= PIECE_BYTES;
            if full || rest.len() > self.max_line || self.fill_by(PIECE_READ_CHUNK)? == 0 {
                match last.or_else(|| memchr(b'\n', &self.buf[self.start..])) {
                    Some(nl) => break (self.start + nl, self.start + nl + 1),
                    None => return Ok(false),
                }
            }
        };
        let now = crate::time::now_ms();
        let Some(p) = self.pool.as_mut() else { return Ok(false) };
        // The buffer goes to the piece whole; what follows its lines starts the next buffer.
        let mut rest = p.spare.pop().unwrap_or_default();
        rest.clear();
        rest.extend_from_slice(&self.buf[next..]);
        let mut lines = std::mem::replace(&mut self.buf, rest);
        lines.truncate(lines_end);
        let end = self.buf_offset + next as u64;
        let piece = LinePiece { lines, from: self.start, end, now, csv_mapping: self.csv_mapping.clone() };
        p.pool.submit(piece)?;
        self.buf_offset = end;
        self.start = 0;
        Ok(true)
    }
}

/// The offset of the last newline of `window` that ends one of its first `max_lines` lines, and
/// how many lines end there. Counts a block at a time (memchr's vectorized count) and looks for
/// single newlines only in the block where the count runs out.
fn last_newline_within(window: &[u8], max_lines: usize) -> (Option<usize>, usize) {
    const BLOCK_BYTES: usize = 4096;
    let max_lines = max_lines.max(1);
    let mut lines = 0;
    for (i, block) in window.chunks(BLOCK_BYTES).enumerate() {
        let here = memchr::memchr_iter(b'\n', block).count();
        if lines + here >= max_lines {
            let nth = max_lines - lines;
            // `here` ≥ `nth` newlines are in this block, so the iterator yields the nth.
            let nl = memchr::memchr_iter(b'\n', block).nth(nth - 1).unwrap_or_else(|| unreachable!("counted"));
            return (Some(i * BLOCK_BYTES + nl), max_lines);
        }
        lines += here;
    }
    (memchr::memrchr(b'\n', window), lines)
}

fn reject_long_line(dec: &mut RowDecoder, line: &[u8], max_line: usize, now: i64) {
    let head = &line[..line.len().min(256)];
    dec.reject(head, &format!("line longer than {max_line} bytes (max_line_bytes)"), now);
}

fn strip_bom(r: &csv::ByteRecord) -> csv::ByteRecord {
    let mut out = csv::ByteRecord::new();
    for (i, f) in r.iter().enumerate() {
        out.push_field(if i == 0 { f.strip_prefix(b"\xef\xbb\xbf").unwrap_or(f) } else { f });
    }
    out
}

impl SourceReader for FileSource {
    fn poll(&mut self, dec: &mut RowDecoder, max_rows: usize) -> Result<Poll> {
        if self.pooled() && self.poll_pooled(dec, max_rows)? {
            return Ok(Poll::Rows);
        }
        let now = crate::time::now_ms();
        let rows_before = dec.rows() + dec.errors.len();
        loop {
            if dec.rows() >= max_rows {
                return Ok(Poll::Rows);
            }
            match memchr(b'\n', &self.buf[self.start..]) {
                Some(off) => {
                    let end = self.start + off;
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        self.decode_line(dec, self.start, end, now);
                    }
                    self.start = end + 1;
                }
                None => {
                    if self.buf.len() - self.start > self.max_line {
                        // Too long: record it once and drop bytes up to the next newline.
                        if !self.skipping {
                            reject_long_line(dec, &self.buf[self.start..], self.max_line, now);
                        }
                        self.skipping = true;
                        self.start = self.buf.len();
                    }
                    if self.fill()? > 0 {
                        self.eof = false;
                        continue;
                    }
                    self.eof = true;
                    if self.follow {
                        return Ok(if dec.rows() + dec.errors.len() > rows_before { Poll::Rows } else { Poll::Idle });
                    }
                    // End of a file read once: a last line without newline still counts.
                    if self.start < self.buf.len() {
                        let end = self.buf.len();
                        if !self.skipping {
                            self.decode_line(dec, self.start, end, now);
                        }
                        self.start = end;
                        self.skipping = false;
                    }
                    return Ok(if dec.rows() + dec.errors.len() > rows_before { Poll::Rows } else { Poll::End });
                }
            }
        }
    }

    fn bounded(&self) -> bool {
        !self.follow
    }

    /// Offset of the first byte not yet consumed, and whether a too-long line is being skipped.
    fn position(&self) -> Vec<u8> {
        // While pieces are in the pool, rows are handed on up to the last piece taken (which ends
        // a line, so nothing is being skipped there).
        let (offset, skipping) = match &self.pool {
            Some(p) if p.pool.in_flight() > 0 => (p.handed_end, false),
            _ => (self.buf_offset + self.start as u64, self.skipping),
        };
        let mut p = offset.to_le_bytes().to_vec();
        p.push(skipping as u8);
        p
    }

    fn resume(&mut self, position: &[u8], dec: &mut RowDecoder) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        if position.is_empty() {
            return Ok(());
        }
        let offset = super::position_u64(position, 0)?;
        let len = self.file.metadata().map_err(|e| EngineError::io(&self.path, e))?.len();
        if offset > len {
            return Err(EngineError::State(format!(
                "{}: the saved read position {offset} is past the end of the file ({len} bytes); was it truncated or replaced?",
                self.path.display()
            )));
        }
        if self.format == Format::Csv && offset > 0 {
            // The header names the columns: read it again before jumping past it.
            self.poll_header(dec)?;
        }
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| EngineError::io(&self.path, e))?;
        self.buf.clear();
        self.start = 0;
        self.buf_offset = offset;
        self.skipping = position.get(8) == Some(&1);
        Ok(())
    }
}

impl FileSource {
    fn poll_header(&mut self, dec: &mut RowDecoder) -> Result<()> {
        while self.csv_mapping.is_none() {
            match memchr(b'\n', &self.buf[self.start..]) {
                Some(off) => {
                    let end = self.start + off;
                    let now = crate::time::now_ms();
                    self.decode_line(dec, self.start, end, now);
                    self.start = end + 1;
                }
                None => {
                    if self.fill()? == 0 {
                        return Err(EngineError::State(format!(
                            "{}: the CSV header line is gone",
                            self.path.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::decode::DecodeColumn;
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::{DataType, Int64Type};

    fn decoder() -> RowDecoder {
        let col =
            |n: &str, t: DataType| DecodeColumn { name: n.into(), data_type: t, nullable: false, metadata_key: None };
        RowDecoder::new(vec![col("n", DataType::Int64), col("s", DataType::Utf8)], None).unwrap()
    }

    /// Lines of every kind the source treats specially.
    fn input(format: Format) -> Vec<u8> {
        let mut t = String::new();
        if format == Format::Csv {
            t.push_str("\u{feff}s,n\r\n");
        }
        for i in 0..500 {
            match (format, i % 37) {
                (_, 5) => t.push('\n'),
                (Format::Json, 11) => t.push_str("{not json\n"),
                (Format::Csv, 11) => t.push_str("x,\"unclosed\n"),
                (_, 13) => t.push_str(&format!("{}\n", "y".repeat(300))),
                (Format::Json, _) => t.push_str(&format!("{{\"n\":{i},\"s\":\"r{i}\"}}\r\n")),
                (_, _) => t.push_str(&format!("r{i},{i}\n")),
            }
        }
        t.push_str(if format == Format::Csv { "last,999" } else { "{\"n\":999,\"s\":\"last\"}" });
        t.into_bytes()
    }

    /// Reads the whole file from `position`; returns the `n` values, the error texts and the
    /// position after every poll that gave rows.
    fn read(
        path: &Path,
        format: Format,
        threads: usize,
        batch: usize,
        position: &[u8],
    ) -> (Vec<i64>, Vec<String>, Vec<Vec<u8>>) {
        let mut src = FileSource::open(path, format, false, 200, threads).unwrap();
        let mut dec = decoder();
        src.resume(position, &mut dec).unwrap();
        let (mut ns, mut errors, mut positions) = (vec![], vec![], vec![]);
        loop {
            let p = src.poll(&mut dec, batch).unwrap();
            let rows: Option<RecordBatch> = dec.finish().unwrap();
            if let Some(b) = rows {
                ns.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
            }
            if let Some(e) = dec.errors.finish().unwrap() {
                errors.extend(e.column(1).as_string::<i32>().iter().map(|s| s.unwrap().to_string()));
            }
            if p == Poll::End {
                return (ns, errors, positions);
            }
            positions.push(src.position());
        }
    }

    #[test]
    fn a_pool_reads_the_same_rows_errors_and_positions_as_one_thread() {
        for format in [Format::Json, Format::Csv] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("in");
            std::fs::write(&path, input(format)).unwrap();
            let (want, want_errors, _) = read(&path, format, 1, 7, &[]);
            assert_eq!(want.len(), 500 - 3 * 14 + 1, "{format:?}");
            assert!(want_errors.iter().any(|e| e.contains("max_line_bytes")), "{want_errors:?}");
            for threads in [2, 3] {
                for batch in [1, 7, 64] {
                    let (got, errors, positions) = read(&path, format, threads, batch, &[]);
                    assert_eq!(got, want, "{format:?} threads {threads} batch {batch}");
                    assert_eq!(errors, want_errors, "{format:?} threads {threads} batch {batch}");
                    // From any saved position, the rest of the file and nothing else.
                    for (k, pos) in positions.iter().enumerate().step_by(5) {
                        let (before, _, _) = read(&path, format, 1, 1 << 20, &[]);
                        let (rest, _, _) = read(&path, format, threads, batch, pos);
                        let seen = got.len() - rest.len();
                        assert_eq!(
                            &before[seen..],
                            &rest[..],
                            "{format:?} threads {threads} batch {batch} position {k}"
                        );
                        assert!(before[..seen].iter().all(|n| !rest.contains(n)));
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Counting by blocks finds the newline one by one would: lines of any length, any
        /// limit, blocks boundaries anywhere.
        #[test]
        fn pieces_end_where_counting_one_by_one_ends_them(
            line_bytes in proptest::collection::vec(0usize..6000, 0..40),
            max_lines in 0usize..45,
        ) {
            let mut window = Vec::new();
            for n in &line_bytes {
                window.extend(std::iter::repeat_n(b'x', *n));
                window.push(b'\n');
            }
            window.extend_from_slice(b"tail");
            let (mut last, mut lines) = (None, 0);
            for nl in memchr::memchr_iter(b'\n', &window) {
                last = Some(nl);
                lines += 1;
                if lines >= max_lines.max(1) {
                    break;
                }
            }
            proptest::prop_assert_eq!(last_newline_within(&window, max_lines), (last, lines));
        }
    }
}
