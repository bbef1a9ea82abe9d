//! The `file` source: a file of JSON lines, CSV (header line first) or raw lines, read to its end or,
//! with `follow = 'true'`, tailed as it grows. Lines longer than the limit become error rows; a
//! partial last line waits for its newline while following, and counts as a line at the end otherwise.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Poll, SourceReader};
use crate::error::{EngineError, Result};
use crate::format::decode::RowDecoder;
use crate::format::{csv as csvfmt, json, Format};

pub const SOURCE_OPTIONS: &[&str] = &["path", "follow", "max_line_bytes"];

/// Default longest line: 16 MiB.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;
const READ_CHUNK: usize = 1 << 20;

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
    csv_mapping: Option<Vec<Option<usize>>>,
    csv: csvfmt::CsvLineParser,
}

impl FileSource {
    pub fn open(path: &Path, format: Format, follow: bool, max_line: usize) -> Result<Self> {
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
        })
    }

    /// Reads more bytes; returns how many.
    fn fill(&mut self) -> Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.buf_offset += self.start as u64;
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
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
        let mut line = &self.buf[line_start..line_end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        match self.format {
            Format::Json => {
                json::decode_json(dec, line, now);
            }
            Format::Raw => {
                csvfmt::decode_raw(dec, line, now);
            }
            Format::Csv => match self.csv.parse(line) {
                Ok(record) => match &self.csv_mapping {
                    None => self.csv_mapping = Some(csvfmt::header_mapping(dec, &strip_bom(record))),
                    Some(m) => {
                        csvfmt::decode_record(dec, m, record, line, now);
                    }
                },
                Err(e) => dec.reject(line, &format!("not valid CSV: {e}"), now),
            },
        }
    }
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
                            let head = &self.buf[self.start..self.start + 256.min(self.buf.len() - self.start)];
                            dec.reject(
                                head,
                                &format!("line longer than {} bytes (max_line_bytes)", self.max_line),
                                now,
                            );
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
        let mut p = (self.buf_offset + self.start as u64).to_le_bytes().to_vec();
        p.push(self.skipping as u8);
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

use memchr::memchr;

/// Reads a whole CSV or JSON-lines file into batches (reference tables).
pub fn read_all(path: &Path, format: Format, dec: &mut RowDecoder) -> Result<Vec<arrow::array::RecordBatch>> {
    let mut src = FileSource::open(path, format, false, DEFAULT_MAX_LINE)?;
    let mut out = vec![];
    loop {
        let p = src.poll(dec, 8192)?;
        if let Some(b) = dec.finish()? {
            out.push(b);
        }
        if p == Poll::End {
            return Ok(out);
        }
    }
}
