//! Sinks: the graph's leaves. `file` writes JSON lines; `console` prints rows to standard output;
//! a provided connector (MQTT, Kafka, the hub) gets [`SinkRows`] through its [`SinkWriter`]: each
//! row encoded as a JSON object, with the batch it came from for its values.
//!
//! An append-only sink writes rows as they come. An upsert sink (`type = 'upsert'`) writes every
//! change with an `_op` member, `"upsert"` or `"delete"`, keyed by its key columns; reading the file
//! in order and keeping the last row per key gives the current result.
//! Files are created (with their directories) and truncated when the pipeline starts.
//!
//! Exactly-once (durable pipelines): a file sink stages its output in memory and writes it only once
//! the checkpoint that covers it is durable (`on_checkpoint_committed`), at the committed length,
//! then fdatasyncs. The checkpoint holds the committed length and the staged bytes, so recovery
//! rewrites exactly the last commit's bytes (idempotent) and the file never shows uncommitted rows.
//! A provided sink gets the same commits through [`SinkWriter::deliver`], with the byte count that
//! identifies them, so a re-delivered commit after a crash is recognised and skipped. The staged
//! batches stay in memory only; a commit re-delivered from a checkpoint has its lines alone, which
//! [`SinkRows`] reads to the same values.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use super::tap::TapPoint;
use super::{SinkRows, SinkWriter};
use crate::error::{EngineError, Result};
use crate::format::encode::{write_value, JsonRowWriter};

crate::connector_options! {
    /// What a `file` sink takes (besides the common options).
    pub(crate) struct FileSinkOptions {
        path: String = "path",
    }
}
use crate::ops::{Chunk, Operator, RowKind};

crate::option_enum! {
    /// A sink's `type`: whether it holds an append-only stream or an updating one.
    pub enum SinkMode {
        Append = "append" | "append-only",
        Upsert = "upsert",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    File(PathBuf),
    Console,
    /// A provided connector (named), written through a [`SinkWriter`].
    External(String),
}

/// Counts a sink keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkStats {
    pub rows: u64,
    pub deletes: u64,
}

pub struct Sink {
    pub name: String,
    target: SinkTarget,
    mode: SinkMode,
    columns: Vec<String>,
    writer: JsonRowWriter,
    out: Option<Box<dyn Write + Send>>,
    buf: Vec<u8>,
    pub stats: SinkStats,
    /// Set in durable pipelines (file and provided targets).
    staging: Option<Staging>,
    /// A provided connector's writer.
    external: Option<Box<dyn SinkWriter>>,
    /// Bytes ever handed to `external` (not staging): the `end` of each delivery.
    delivered: u64,
    /// Live viewers of this sink's output.
    tap: Arc<TapPoint>,
    tap_buf: Vec<u8>,
    /// The checkpoint being restored came from a backup (`Operator::state_opened`).
    from_backup: bool,
}

#[derive(Default)]
struct Staging {
    /// Bytes of the file that belong to committed checkpoints.
    committed_len: u64,
    /// Output since the last checkpoint, written when the next one commits.
    staged: Vec<u8>,
    /// A provided sink's: the batches `staged` was encoded from, row for row, and their memory.
    batches: Vec<RecordBatch>,
    batches_bytes: usize,
    /// `staged` came from a checkpoint, without its batches.
    lines_only: bool,
    file: Option<File>,
    /// Recovery restored the file; do not truncate it at start.
    restored: bool,
}

impl Sink {
    pub fn new(name: &str, target: SinkTarget, mode: SinkMode, columns: Vec<String>) -> Self {
        Sink {
            name: name.to_string(),
            writer: JsonRowWriter::new(&columns),
            columns,
            target,
            mode,
            out: None,
            buf: Vec::with_capacity(64 * 1024),
            stats: SinkStats::default(),
            staging: None,
            external: None,
            delivered: 0,
            tap: Arc::default(),
            tap_buf: Vec::new(),
            from_backup: false,
        }
    }

    /// A sink of a provided connector, writing through `writer`.
    pub fn external(
        name: &str,
        connector: &str,
        writer: Box<dyn SinkWriter>,
        mode: SinkMode,
        columns: Vec<String>,
    ) -> Self {
        let mut s = Sink::new(name, SinkTarget::External(connector.to_string()), mode, columns);
        s.external = Some(writer);
        s
    }

    /// Where live viewers subscribe to this sink's output (as produced: in a durable pipeline
    /// they see rows before the checkpoint that publishes them).
    pub fn tap_point(&self) -> Arc<TapPoint> {
        self.tap.clone()
    }

    /// Makes a file or provided sink exactly-once: output is staged and published by checkpoints.
    pub fn set_exactly_once(&mut self) {
        if !matches!(self.target, SinkTarget::Console) {
            self.staging = Some(Staging::default());
        }
    }

    fn path(&self) -> Result<&PathBuf> {
        match &self.target {
            SinkTarget::File(p) => Ok(p),
            _ => Err(EngineError::Internal("this sink has no file".into())),
        }
    }

    /// Renames the sink's file (when there is one with content) to
    /// `<file>.before-restore-<unix ms>`, durably, so a restored state starts a new file.
    fn set_aside_for_restore(&self) -> Result<()> {
        let path = self.path()?;
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(EngineError::io(path, e)),
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".before-restore-{}", crate::time::now_ms()));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|e| EngineError::io(path, e))?;
        crate::storage::sync_parent(path).map_err(|e| EngineError::io(path, e))?;
        tracing::warn!(
            sink = %self.name,
            file = %path.display(),
            kept_as = %aside.display(),
            "restored from a backup: the sink's file is kept under another name and a new one begins"
        );
        Ok(())
    }

    /// Publishes the staged output of a durable checkpoint: to the file, or to the writer.
    fn publish_staged(&mut self) -> Result<()> {
        if self.external.is_none() {
            return self.write_committed();
        }
        let st = self.staging.as_mut().ok_or_else(|| EngineError::Internal("sink not staging".into()))?;
        let end = st.committed_len + st.staged.len() as u64;
        if let Some(w) = self.external.as_mut() {
            let rows = match st.lines_only {
                true => SinkRows::from_lines(&st.staged),
                false => SinkRows::from_batches(&st.staged, &st.batches),
            };
            w.deliver(&rows, end)?;
        }
        st.committed_len = end;
        st.staged.clear();
        st.batches.clear();
        st.batches_bytes = 0;
        st.lines_only = false;
        Ok(())
    }

    /// Opens (creating it and its directories) the file of an exactly-once sink, never truncating.
    /// Its directory entry is made durable before any output counts as published.
    fn open_staged_file(&self) -> Result<File> {
        let path = self.path()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Output is the user's, not state: the usual modes (less the umask).
            crate::storage::fs::create_dir_all_synced(dir, 0o777).map_err(|e| EngineError::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        crate::storage::fs::sync_parent(path).map_err(|e| EngineError::io(path, e))?;
        Ok(file)
    }

    /// Makes the file `committed_len` long, then adds `staged` and fdatasyncs. A failure is fatal
    /// for the pipeline (fail-stop): its output stays as the last durable commit left it.
    fn write_committed(&mut self) -> Result<()> {
        let path = self.path()?.clone();
        let st = self.staging.as_mut().ok_or_else(|| EngineError::Internal("sink not staging".into()))?;
        let file = st.file.as_ref().ok_or_else(|| EngineError::Internal("sink file not open".into()))?;
        let io = |e: std::io::Error| EngineError::io(&path, e);
        file.set_len(st.committed_len).map_err(io)?;
        let mut off = st.committed_len;
        let mut data = &st.staged[..];
        while !data.is_empty() {
            let n = rustix::io::pwrite(file, data, off).map_err(|e| io(e.into()))?;
            data = &data[n..];
            off += n as u64;
        }
        rustix::fs::fdatasync(file).map_err(|e| io(e.into()))?;
        st.committed_len = off;
        st.staged.clear();
        Ok(())
    }

    fn write_text_row(&mut self, batch: &RecordBatch, row: usize, kind: Option<RowKind>) {
        let b = &mut self.buf;
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(match kind {
            None => b" |",
            Some(RowKind::Upsert) => b" ~|",
            Some(RowKind::Delete) => b" -|",
        });
        let mut scratch = Vec::new();
        for (c, name) in self.columns.iter().enumerate() {
            b.push(b' ');
            b.extend_from_slice(name.as_bytes());
            b.push(b'=');
            let col = batch.column(c);
            match col.data_type() {
                // Text as it is (control characters escaped), numbers rounded for reading.
                DataType::Utf8 if !col.is_null(row) => {
                    for ch in col.as_string::<i32>().value(row).chars() {
                        if ch.is_control() {
                            b.extend_from_slice(ch.escape_default().to_string().as_bytes());
                        } else {
                            let mut tmp = [0u8; 4];
                            b.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                    }
                }
                DataType::Float64 | DataType::Float32 if !col.is_null(row) => {
                    scratch.clear();
                    write_value(col, row, &mut scratch);
                    let f: f64 = String::from_utf8_lossy(&scratch).parse().unwrap_or(f64::NAN);
                    b.extend_from_slice(format!("{}", (f * 1000.0).round() / 1000.0).as_bytes());
                }
                _ => {
                    scratch.clear();
                    write_value(col, row, &mut scratch);
                    b.extend_from_slice(
                        scratch.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(&scratch),
                    );
                }
            }
        }
        b.push(b'\n');
    }
}

/// The `_op` member an upsert sink adds to each row.
fn op_member(mode: SinkMode, kind: Option<RowKind>) -> &'static [u8] {
    match (mode, kind) {
        (SinkMode::Append, _) => b"",
        (SinkMode::Upsert, Some(RowKind::Delete)) => b",\"_op\":\"delete\"",
        (SinkMode::Upsert, _) => b",\"_op\":\"upsert\"",
    }
}

impl Operator for Sink {
    fn name(&self) -> String {
        format!("sink {}", self.name)
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        if self.out.is_none() {
            self.start()?;
        }
        let batch = &chunk.batch;
        if self.tap.active() {
            let (mode, kinds) = (self.mode, chunk.kinds.as_ref());
            let extra = |row: usize| op_member(mode, kinds.map(|k| k[row]));
            self.tap.offer_batch(batch, &self.writer, extra, &mut self.tap_buf);
        }
        let kinds = chunk.kinds.as_deref();
        let deletes = kinds.map_or(0, |k| k.iter().filter(|k| **k == RowKind::Delete).count());
        self.stats.deletes += deletes as u64;
        self.stats.rows += (batch.num_rows() - deletes) as u64;
        let kind = |row: usize| kinds.map(|k| k[row]);
        match &self.target {
            SinkTarget::Console => (0..batch.num_rows()).for_each(|row| self.write_text_row(batch, row, kind(row))),
            SinkTarget::File(_) | SinkTarget::External(_) => {
                let rows = self.writer.batch(batch);
                for row in 0..batch.num_rows() {
                    rows.write_row(row, op_member(self.mode, kind(row)), &mut self.buf);
                    self.buf.push(b'\n');
                }
            }
        }
        match self.external.is_some() {
            true => self.hand_over(batch),
            false => self.flush_buf(),
        }
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }

    fn start(&mut self) -> Result<()> {
        if self.out.is_some() {
            return Ok(());
        }
        if let Some(w) = self.external.as_mut() {
            w.start()?;
            self.out = Some(Box::new(std::io::sink()));
            return Ok(());
        }
        if self.staging.is_some() {
            let file = self.open_staged_file()?;
            let path = self.path()?.clone();
            let st = self.staging.as_mut().ok_or_else(|| EngineError::Internal("sink not staging".into()))?;
            if !st.restored {
                // A fresh start: the file holds no committed output yet.
                file.set_len(0).map_err(|e| EngineError::io(&path, e))?;
                st.committed_len = 0;
            }
            st.file = Some(file);
            self.out = Some(Box::new(std::io::sink()));
            return Ok(());
        }
        self.out = Some(match &self.target {
            SinkTarget::Console => Box::new(std::io::stdout()),
            SinkTarget::External(c) => {
                return Err(EngineError::Internal(format!("{c} sink '{}' has no writer", self.name)))
            }
            SinkTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
                }
                // Rows are batched per chunk in `buf` and written once per chunk, so a live reader
                // of the file sees them as soon as they are produced.
                Box::new(File::create(path).map_err(|e| EngineError::io(path, e))?)
            }
        });
        Ok(())
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self, w: &mut crate::ops::snapshot::StateWriter) -> Result<()> {
        self.flush_buf()?;
        w.u64(self.stats.rows);
        w.u64(self.stats.deletes);
        match &self.staging {
            Some(st) => {
                w.u64(st.committed_len);
                w.bytes(&st.staged);
            }
            None => {
                w.u64(0);
                w.bytes(&[]);
            }
        }
        w.bytes(self.target_id().as_bytes());
        Ok(())
    }

    fn state_opened(&mut self, state: &crate::ops::OpenedState) {
        self.from_backup = state.from_backup;
        if let Some(w) = self.external.as_mut() {
            w.bind_state(state);
        }
    }

    fn restore(&mut self, r: &mut crate::ops::snapshot::StateReader) -> Result<()> {
        self.stats.rows = r.u64()?;
        self.stats.deletes = r.u64()?;
        let mut committed = r.u64()?;
        let mut staged = r.bytes()?.to_vec();
        let target = r.bytes()?.to_vec();
        if self.staging.is_none() {
            return Ok(());
        }
        if self.from_backup && self.external.is_none() {
            // What the backup published went to the file where it was taken (another device's,
            // or this one's at an earlier time): the file here is not known to hold it. It is
            // kept under another name and the output goes on in a new file, from the output
            // after the checkpoint: its own staged output was published there as it committed
            // (a backup is taken after that).
            self.set_aside_for_restore()?;
            committed = 0;
            staged.clear();
        } else if target != self.target_id().as_bytes() {
            // The sink now writes elsewhere (its options changed): the new target starts empty
            // and takes the output that was committed but not yet written.
            tracing::info!(sink = %self.name, "the sink's target changed; it starts afresh there");
            committed = 0;
        }
        // Roll the last commit forward: the file (or the writer's outbox) may or may not already
        // hold `staged`.
        if let Some(w) = self.external.as_mut() {
            if self.from_backup {
                w.restoring_a_backup(committed + staged.len() as u64);
            }
            w.start()?;
            self.out = Some(Box::new(std::io::sink()));
        }
        let file = if self.external.is_none() { Some(self.open_staged_file()?) } else { None };
        if let Some(f) = &file {
            // Output up to `committed` was published and synced; a shorter file lost some of it
            // (deleted, truncated or replaced while eddyd was stopped). Extending it would fill
            // the gap with zeros, so refuse.
            let path = self.path()?;
            let len = f.metadata().map_err(|e| EngineError::io(path, e))?.len();
            if len < committed {
                return Err(EngineError::State(format!(
                    "sink '{}': {} holds {len} bytes, but {committed} bytes of output were published to it; it was \
                     truncated, deleted or replaced while eddyd was stopped. Put the file back, or point the sink at a new path \
                     (it then starts afresh there)",
                    self.name,
                    path.display()
                )));
            }
        }
        let st = self.staging.as_mut().ok_or_else(|| EngineError::Internal("sink not staging".into()))?;
        st.file = file;
        st.committed_len = committed;
        st.staged = staged;
        st.lines_only = true;
        st.restored = true;
        self.publish_staged()
    }

    fn on_checkpoint_committed(&mut self) -> Result<()> {
        match &self.staging {
            Some(st) if !st.staged.is_empty() => self.publish_staged(),
            _ => Ok(()),
        }
    }

    fn sink_counts(&self) -> Option<(u64, u64)> {
        Some((self.stats.rows, self.stats.deletes))
    }

    fn state_bytes(&self) -> usize {
        self.staging.as_ref().map(|s| s.staged.len() + s.batches_bytes).unwrap_or(0)
    }

    fn finish(&mut self) -> Result<()> {
        self.start()?;
        self.flush_buf()?;
        if let Some(out) = &mut self.out {
            out.flush().map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        match self.external.as_mut() {
            Some(w) => w.close(),
            None => Ok(()),
        }
    }
}

impl Sink {
    /// What the sink writes to, kept in checkpoints: a restore into a sink whose target changed
    /// must not resume the old target's length.
    fn target_id(&self) -> String {
        match &self.target {
            SinkTarget::File(p) => format!("file:{}", p.display()),
            SinkTarget::Console => "console".into(),
            SinkTarget::External(c) => format!("{c}:{}", self.name),
        }
    }

    fn io_err(&self, e: std::io::Error) -> EngineError {
        match &self.target {
            SinkTarget::File(p) => EngineError::io(p, e),
            SinkTarget::Console => EngineError::io("<stdout>", e),
            SinkTarget::External(c) => EngineError::io(format!("<{c} sink {}>", self.name), e),
        }
    }

    /// A provided sink's rows of `batch`, encoded in `buf`: staged with the batch until their
    /// checkpoint commits, or (not durable) delivered at once.
    fn hand_over(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(st) = &mut self.staging {
            st.staged.extend_from_slice(&self.buf);
            if !st.lines_only {
                st.batches_bytes += batch.get_array_memory_size();
                st.batches.push(batch.clone());
            }
            self.buf.clear();
            return Ok(());
        }
        let w = self.external.as_mut().ok_or_else(|| EngineError::Internal("sink has no writer".into()))?;
        self.delivered += self.buf.len() as u64;
        let r = w.deliver(&SinkRows::from_batches(&self.buf, std::slice::from_ref(batch)), self.delivered);
        self.buf.clear();
        r
    }

    /// Writes `buf` to the file or console (staged, for a durable file sink).
    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // A provided sink's rows leave `buf` with their batch, in the chunk that wrote them.
        assert!(self.external.is_none(), "a provided sink's rows were left unhanded");
        if let Some(st) = &mut self.staging {
            st.staged.extend_from_slice(&self.buf);
            self.buf.clear();
            return Ok(());
        }
        let out = self.out.as_mut().ok_or_else(|| EngineError::Internal("sink not started".into()))?;
        let r = out.write_all(&self.buf);
        let r = if matches!(self.target, SinkTarget::Console) { r.and_then(|_| out.flush()) } else { r };
        self.buf.clear();
        r.map_err(|e| self.io_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::snapshot::{StateReader, StateWriter};
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Mutex;

    /// One delivery as a writer saw it: its `end`, and each row's payload and column texts.
    type Delivery = (u64, Vec<(String, Vec<Option<String>>)>);

    struct Recorder(Arc<Mutex<Vec<Delivery>>>);

    impl SinkWriter for Recorder {
        fn deliver(&mut self, rows: &SinkRows<'_>, end: u64) -> Result<()> {
            let mut seen = Vec::new();
            for row in rows.iter() {
                let row = row?;
                let texts = (0..3)
                    .map(|c| {
                        let mut s = String::new();
                        row.write_text(c, &mut s).then_some(s)
                    })
                    .collect();
                seen.push((String::from_utf8_lossy(row.payload()).into_owned(), texts));
            }
            self.0.lock().unwrap().push((end, seen));
            Ok(())
        }
    }

    fn sink(log: &Arc<Mutex<Vec<Delivery>>>) -> Sink {
        let columns = vec!["dev".to_string(), "n".to_string(), "f".to_string()];
        let mut s = Sink::external("k", "test", Box::new(Recorder(log.clone())), SinkMode::Upsert, columns);
        s.set_exactly_once();
        s
    }

    /// A crash after a checkpoint is durable but before its output reached the writer: recovery
    /// delivers that commit again from the checkpoint, where only its lines are kept. The writer
    /// must see the same rows, the same values and the same `end` as from the batches.
    #[test]
    fn a_commit_redelivered_from_a_checkpoint_reads_as_it_did_from_its_batches() {
        let batch = RecordBatch::try_from_iter(vec![
            ("dev", Arc::new(StringArray::from(vec![Some("a\"1/+"), None])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(vec![2.5, 1e21])) as ArrayRef),
        ])
        .unwrap();
        let log = Arc::default();
        let mut first = sink(&log);
        first.start().unwrap();
        first.on_chunk(0, Chunk::append(batch.slice(0, 1)), &mut Vec::new()).unwrap();
        first.on_chunk(0, Chunk::append(batch.slice(1, 1)), &mut Vec::new()).unwrap();
        let mut w = StateWriter::default();
        first.snapshot(&mut w).unwrap();
        first.on_checkpoint_committed().unwrap();
        assert_eq!(first.state_bytes(), 0, "published output leaves the sink");

        let mut again = sink(&log);
        again.restore(&mut StateReader::new(&w.buf, "sink k")).unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0], log[1]);
        let rows = &log[0].1;
        assert_eq!(rows[0].0, r#"{"dev":"a\"1/+","n":1,"f":2.5,"_op":"upsert"}"#);
        assert_eq!(rows[0].1, [Some("a\"1/+".to_string()), Some("1".to_string()), Some("2.5".to_string())]);
        assert_eq!(rows[1].1[..2], [None, None]);
    }

    /// What a writer is told, in order.
    #[derive(Debug, PartialEq)]
    enum Told {
        Bound([u8; 16]),
        Restoring(u64),
        Started,
        Delivered(u64),
    }

    struct Listener(Arc<Mutex<Vec<Told>>>);

    impl SinkWriter for Listener {
        fn bind_state(&mut self, state: &crate::ops::OpenedState) {
            self.0.lock().unwrap().push(Told::Bound(state.identity));
        }
        fn restoring_a_backup(&mut self, end: u64) {
            self.0.lock().unwrap().push(Told::Restoring(end));
        }
        fn start(&mut self) -> Result<()> {
            self.0.lock().unwrap().push(Told::Started);
            Ok(())
        }
        fn deliver(&mut self, _rows: &SinkRows<'_>, end: u64) -> Result<()> {
            self.0.lock().unwrap().push(Told::Delivered(end));
            Ok(())
        }
    }

    /// A writer learns the state it delivers for before it starts (a Kafka sink names its
    /// transactions after it), and, when the checkpoint came from a backup, where the backup's
    /// output ended, also before it starts and is handed that output again.
    #[test]
    fn a_writer_learns_its_state_and_a_backups_end_before_it_starts() {
        let columns = vec!["dev".to_string(), "n".to_string(), "f".to_string()];
        let listener = |told: &Arc<Mutex<Vec<Told>>>, from_backup: bool| {
            let mut s =
                Sink::external("k", "test", Box::new(Listener(told.clone())), SinkMode::Append, columns.clone());
            s.set_exactly_once();
            s.state_opened(&crate::ops::OpenedState { identity: [7; 16], from_backup, epoch: 1 });
            s
        };
        let batch = RecordBatch::try_from_iter(vec![
            ("dev", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(vec![0.5, 1.5])) as ArrayRef),
        ])
        .unwrap();
        let told = Arc::default();
        let mut first = listener(&told, false);
        first.start().unwrap();
        first.on_chunk(0, Chunk::append(batch), &mut Vec::new()).unwrap();
        let mut w = StateWriter::default();
        first.snapshot(&mut w).unwrap();
        first.on_checkpoint_committed().unwrap();
        let end = match told.lock().unwrap().as_slice() {
            [Told::Bound([7, ..]), Told::Started, Told::Delivered(end)] => *end,
            other => panic!("{other:?}"),
        };
        assert_eq!(end, 2 * r#"{"dev":"a","n":1,"f":0.5}"#.len() as u64 + 2);

        for from_backup in [true, false] {
            let told = Arc::default();
            listener(&told, from_backup).restore(&mut StateReader::new(&w.buf, "sink k")).unwrap();
            let mut want = vec![Told::Bound([7; 16])];
            if from_backup {
                want.push(Told::Restoring(end));
            }
            want.extend([Told::Started, Told::Delivered(end)]);
            assert_eq!(*told.lock().unwrap(), want, "from a backup: {from_backup}");
        }
    }
}
