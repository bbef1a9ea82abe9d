//! Durable pipelines: every batch a source hands on is appended to the WAL before it is processed,
//! checkpoints capture operator state, source positions and sinks' staged output at a WAL LSN, and
//! recovery restores the newest valid checkpoint and replays the WAL after it. Because operators are
//! deterministic and replay feeds them the same batches in the same order, recovered state equals
//! the state before the crash; sinks only ever publish what a durable checkpoint covers, so output
//! is neither lost nor doubled.
//!
//! State dir layout: `LOCK` (one process per state dir), `wal/`, `checkpoints/`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::{Pipeline, Sharding};
use crate::error::{EngineError, Result};
use crate::format::decode::errors_schema;
use crate::ops::snapshot::{StateReader, StateWriter};
use crate::storage::checkpoint::{CheckpointStore, SourceMark};
use crate::storage::crypto::Cipher;
use crate::storage::fs::Storage;
use crate::storage::header::Owner;
use crate::storage::wal::{Wal, WalConfig, WalStats};

const REC_BATCH: u8 = 1;
const REC_IDLE: u8 = 2;
const REC_END: u8 = 3;
/// Part of a batch too large for one record: source, group (LSN of its first part), rows. It
/// counts only once the `REC_BATCH_END` of its group follows (a crash between them drops the
/// parts: their input was not acknowledged, so it comes again).
const REC_BATCH_PART: u8 = 4;
/// The last record of a split batch: `REC_BATCH`'s fields, then the group.
const REC_BATCH_END: u8 = 5;

/// How a record holds each of its two batches (error rows, rows): absent, as a whole IPC
/// stream (any schema; what records written before 2026-12-07 hold), or as a record-batch
/// message of the schema the source gives (`ERRORS()`'s, the source's own).
const BATCH_NONE: u8 = 0;
const BATCH_STREAM: u8 = 1;
const BATCH_BODY: u8 = 2;

/// Parts read during replay, waiting for the record that ends their group.
#[derive(Default)]
pub(super) struct PendingParts {
    group: u64,
    parts: Vec<(Option<RecordBatch>, Option<RecordBatch>)>,
}

/// How a pipeline keeps its state.
#[derive(Clone)]
pub struct DurableConfig {
    /// This pipeline's own directory.
    pub state_dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub cipher: Arc<Cipher>,
    /// Group commit and segment limits (its `dir` is set to `state_dir/wal`).
    pub wal: WalConfig,
    /// Checkpoint at least this often...
    pub checkpoint_interval: Duration,
    /// ...and whenever sinks hold this many staged bytes...
    pub max_staged_bytes: usize,
    /// ...or this many WAL bytes were appended since the last one (bounds recovery time).
    pub max_wal_bytes: u64,
    /// Whose state this is (its files are bound to it); the daemon uses the pipeline's name.
    pub owner: Owner,
}

impl DurableConfig {
    pub fn new(state_dir: impl Into<PathBuf>, storage: Arc<dyn Storage>, cipher: Arc<Cipher>) -> Self {
        let state_dir = state_dir.into();
        DurableConfig {
            wal: WalConfig::new(state_dir.join("wal")),
            state_dir,
            storage,
            cipher,
            checkpoint_interval: Duration::from_secs(10),
            max_staged_bytes: 64 << 20,
            max_wal_bytes: 256 << 20,
            owner: Owner::default(),
        }
    }
}

/// What durability did, for logs, metrics and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct DurableStats {
    pub recovered_checkpoint: Option<u64>,
    pub replayed_records: u64,
    pub recovery: Duration,
    pub checkpoints: u64,
    /// Periodic checkpoints not written because nothing had changed since the newest one.
    pub checkpoints_skipped: u64,
    pub checkpoint_bytes: u64,
    pub checkpoint_time: Duration,
    /// When the last checkpoint became durable (Unix ms; `None` before the first this run).
    pub last_checkpoint_ms: Option<i64>,
    pub wal: WalStats,
}

pub(super) struct Durable {
    wal: Wal,
    ckpts: CheckpointStore,
    cfg: DurableConfig,
    fingerprint: Vec<u8>,
    /// The state's identity ([`IDENTITY_BLOB`]), and whether the newest checkpoint holds it.
    identity: [u8; STATE_ID_BYTES],
    identity_checkpointed: bool,
    /// The epoch the state began in ([`EPOCH_BLOB`]).
    epoch: u32,
    last: Instant,
    wal_bytes_at_last: u64,
    /// Sources that had ended at the newest checkpoint.
    ended_at_last: usize,
    scratch: StateWriter,
    stats: DurableStats,
    _lock: File,
}

/// The schemas a source's logged batches have when the reader can take them as known:
/// `ERRORS()`'s, then the source's rows'.
pub(super) struct LoggedSchemas<'a> {
    pub errors: &'a SchemaRef,
    pub rows: &'a SchemaRef,
}

fn encode_batches(
    w: &mut StateWriter,
    errors: Option<&RecordBatch>,
    rows: Option<&RecordBatch>,
    schemas: &LoggedSchemas,
) -> Result<()> {
    for (b, known) in [(errors, schemas.errors), (rows, schemas.rows)] {
        match b {
            None => w.u8(BATCH_NONE),
            Some(b) => encode_batch(w, b, known)?,
        }
    }
    Ok(())
}

/// One present batch: its encoding byte and data, a body when its schema is `known`.
fn encode_batch(w: &mut StateWriter, b: &RecordBatch, known: &SchemaRef) -> Result<()> {
    let flag_at = w.buf.len();
    w.u8(BATCH_BODY);
    if b.schema_ref() != known || !w.batch_body(b)? {
        w.buf[flag_at] = BATCH_STREAM;
        w.batch(b)?;
    }
    Ok(())
}

/// One of a record's two batches, as [`encode_batches`] wrote it.
fn decode_batch(r: &mut StateReader, known: &SchemaRef) -> Result<Option<RecordBatch>> {
    match r.u8()? {
        BATCH_NONE => Ok(None),
        BATCH_STREAM => Ok(Some(r.batch()?)),
        BATCH_BODY => Ok(Some(r.batch_body(known)?)),
        _ => Err(r.err("an unknown batch encoding")),
    }
}

/// The batches as one (`None` for none).
fn concat(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.into_iter().next()),
        _ => Ok(Some(arrow::compute::concat_batches(&batches[0].schema(), &batches)?)),
    }
}

/// Slices of `batch`, in order, each encoding (as a record writes it, against `known`) to at
/// most `limit` bytes (a single row may not).
fn split_to_fit(
    batch: &RecordBatch,
    known: &SchemaRef,
    limit: usize,
    scratch: &mut StateWriter,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    scratch.buf.clear();
    encode_batch(scratch, batch, known)?;
    if scratch.buf.len() <= limit || batch.num_rows() <= 1 {
        out.push(batch.clone());
        return Ok(());
    }
    let half = batch.num_rows() / 2;
    split_to_fit(&batch.slice(0, half), known, limit, scratch, out)?;
    split_to_fit(&batch.slice(half, batch.num_rows() - half), known, limit, scratch, out)
}

impl Durable {
    /// Logs what one poll of `source` produced, with the position to resume after it. A batch
    /// over the record limit is split by rows into parts and an end record (one group, applied
    /// whole on replay or not at all), so no input burst can make a record too large to log.
    pub(super) fn log_batch(
        &mut self,
        source: usize,
        position: &[u8],
        errors: Option<&RecordBatch>,
        rows: Option<&RecordBatch>,
        schemas: &LoggedSchemas,
    ) -> Result<()> {
        let w = &mut self.scratch;
        w.buf.clear();
        w.u8(REC_BATCH);
        w.u64(source as u64);
        w.bytes(position);
        encode_batches(w, errors, rows, schemas)?;
        let limit = self.cfg.wal.max_record_bytes;
        if self.scratch.buf.len() <= limit {
            let lsn = self.wal.append(&self.scratch.buf)?;
            tracing::trace!(lsn, source, rows = rows.map(|r| r.num_rows()).unwrap_or(0), "batch logged");
            return Ok(());
        }
        // Room for the record's own fields beside its rows.
        let budget = limit.saturating_sub(position.len() + 64).max(1);
        let mut pieces: Vec<(Option<RecordBatch>, Option<RecordBatch>)> = vec![];
        for (is_errors, b, known) in [(true, errors, schemas.errors), (false, rows, schemas.rows)] {
            let Some(b) = b else { continue };
            let mut slices = vec![];
            split_to_fit(b, known, budget, &mut self.scratch, &mut slices)?;
            pieces.extend(slices.into_iter().map(|s| if is_errors { (Some(s), None) } else { (None, Some(s)) }));
        }
        let group = self.wal.next_lsn();
        let count = pieces.len();
        for (k, (e, r)) in pieces.iter().enumerate() {
            let last = k + 1 == count;
            let w = &mut self.scratch;
            w.buf.clear();
            w.u8(if last { REC_BATCH_END } else { REC_BATCH_PART });
            w.u64(source as u64);
            if last {
                w.bytes(position);
            }
            encode_batches(w, e.as_ref(), r.as_ref(), schemas)?;
            w.u64(group);
            self.wal.append(&self.scratch.buf)?;
        }
        tracing::debug!(source, group, records = count, "a large batch logged in parts");
        Ok(())
    }

    /// The LSN the next record gets: everything logged so far is durable once `durable_lsn`
    /// reaches it.
    pub(super) fn next_lsn(&self) -> u64 {
        self.wal.next_lsn()
    }

    pub(super) fn log_idle(&mut self, source: usize, floor: i64) -> Result<()> {
        let w = &mut self.scratch;
        w.buf.clear();
        w.u8(REC_IDLE);
        w.u64(source as u64);
        w.i64(floor);
        self.wal.append(&self.scratch.buf)?;
        Ok(())
    }

    pub(super) fn log_end(&mut self, source: usize) -> Result<()> {
        let w = &mut self.scratch;
        w.buf.clear();
        w.u8(REC_END);
        w.u64(source as u64);
        self.wal.append(&self.scratch.buf)?;
        Ok(())
    }
}

/// Takes the state dir's lock: two processes on one state dir would corrupt it.
/// The pipeline's directory is made owner-only (0700) even if an older version or a hand-made
/// directory left it wider: it holds the state of every operator.
fn lock_state_dir(dir: &std::path::Path) -> Result<File> {
    use std::os::unix::fs::PermissionsExt;
    crate::storage::fs::create_private_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| EngineError::io(dir, e))?;
    let path = dir.join("LOCK");
    let f = crate::storage::fs::open_private(&path, false).map_err(|e| EngineError::io(&path, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| EngineError::State(format!("{}: another eddyd is using this state directory", dir.display())))?;
    Ok(f)
}

/// `sql` without its `WITH (...)` option lists (quoted text and comments respected): connector
/// options (a broker address, a topic, credentials) hold no state, so changing them keeps it.
fn without_options(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut depth = 0usize; // > 0 inside an option list
    let mut seg = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' if depth > 0 => depth += 1,
            b')' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    seg = i + 1;
                }
            }
            b'(' => {
                let before = sql[..i].trim_end();
                let is_with = before.len() >= 4
                    && before[before.len() - 4..].eq_ignore_ascii_case("with")
                    && !before[..before.len() - 4].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
                if is_with {
                    out.push_str(&sql[seg..i]);
                    depth = 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth == 0 {
        out.push_str(&sql[seg.min(sql.len())..]);
    }
    out
}

/// The blob holding how many shards wrote a checkpoint (absent: one).
const SHARDS_BLOB: &str = "shards";

/// The blob holding the state's identity: [`STATE_ID_BYTES`] random bytes made when the state
/// began and carried by every checkpoint of it, and by a restored copy (which continues it).
const IDENTITY_BLOB: &str = "identity";
const STATE_ID_BYTES: usize = 16;

/// The blob holding the epoch the state began in ([`crate::ops::OpenedState::epoch`]); absent
/// in state begun before epochs were kept (epoch 0).
const EPOCH_BLOB: &str = "epoch";
/// The epoch of a state begun now.
const STATE_EPOCH: u32 = 1;

/// The epoch of the state being opened. Without a checkpoint the state is new, unless its log
/// holds records: this version checkpoints a new state before it takes any input
/// ([`Pipeline::start`]), so only an older one leaves records without a checkpoint.
fn state_epoch(blob: Option<&[u8]>, has_checkpoint: bool, wal_next_lsn: u64) -> Result<u32> {
    match blob {
        Some(b) => {
            let mut r = StateReader::new(b, EPOCH_BLOB);
            let epoch = u32::try_from(r.u64()?).map_err(|_| r.err("an epoch out of range"))?;
            r.finish()?;
            Ok(epoch)
        }
        None if has_checkpoint || wal_next_lsn > 0 => Ok(0),
        None => Ok(STATE_EPOCH),
    }
}

/// The identity a recovered checkpoint carries; a fresh one for a fresh state, or for state
/// written before checkpoints carried one.
fn state_identity(recovered: Option<&[u8]>) -> Result<([u8; STATE_ID_BYTES], bool)> {
    if let Some(b) = recovered {
        let id = <[u8; STATE_ID_BYTES]>::try_from(b).map_err(|_| {
            EngineError::State(format!("the checkpoint's '{IDENTITY_BLOB}' is {} bytes, not {STATE_ID_BYTES}", b.len()))
        })?;
        return Ok((id, true));
    }
    Ok((crate::storage::crypto::random_bytes()?, false))
}

fn shard_blob_name(shard: usize, id: usize, name: &str) -> String {
    format!("shard/{shard}/node/{id}/{name}")
}

/// What checkpointed state belongs to: the pipeline's SQL (whitespace-normalized, connector
/// options left out) and its plan.
fn view_blob_name(view: &str, part: usize) -> String {
    format!("view/{view}/{part}")
}

fn fingerprint(sql: &str, p: &Pipeline) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for word in without_options(sql).split_whitespace() {
        ctx.update(word.as_bytes());
        ctx.update(b" ");
    }
    for id in 0..p.graph.len() {
        ctx.update(p.graph.name(id).as_bytes());
        ctx.update(b"\n");
    }
    ctx.finish().as_ref().to_vec()
}

/// The checkpoint and the log must meet: the log holds every record from the checkpoint's LSN on
/// (`first_lsn <= wal_lsn <= next_lsn`). Otherwise records are missing (the `wal/` directory was
/// emptied, replaced or truncated past the checkpoint); carrying on would number new records
/// below what a later recovery skips, so it is refused.
fn check_continuity(state_dir: &std::path::Path, checkpoint: Option<(u64, u64)>, wal: &Wal) -> Result<()> {
    let (first, next) = (wal.first_lsn(), wal.next_lsn());
    let (what, from) = match checkpoint {
        Some((seq, lsn)) => (format!("checkpoint {seq} continues from LSN {lsn}"), lsn),
        None => ("there is no checkpoint (so it should start at LSN 0)".to_string(), 0),
    };
    if first <= from && from <= next {
        return Ok(());
    }
    Err(EngineError::Storage(crate::storage::StorageError::Corrupt(format!(
        "{}: the write-ahead log holds LSNs {first}..{next}, but {what}: records are missing (was wal/ or checkpoints/ \
         emptied, replaced or restored from elsewhere?)",
        state_dir.display()
    ))))
}

impl Pipeline {
    /// What a checkpoint of this pipeline, planned from `sql`, is marked with: state marked
    /// otherwise does not fit it (`open_durable` refuses it with `PlanChanged`).
    pub fn state_fingerprint(&self, sql: &str) -> Vec<u8> {
        fingerprint(sql, self)
    }

    /// Makes this (live, not yet started) pipeline durable under `cfg.state_dir`: restores the
    /// newest checkpoint, replays the WAL after it, and from then on logs every batch and
    /// checkpoints. `sql` is the pipeline's text (state from another text is refused).
    pub fn open_durable(&mut self, sql: &str, mut cfg: DurableConfig) -> Result<()> {
        if self.started || self.durable.is_some() {
            return Err(EngineError::Internal("open_durable on a running pipeline".into()));
        }
        if let Some(op) = self.graph.not_checkpointable() {
            return Err(EngineError::State(format!(
                "this pipeline cannot run with durable state yet: the {op} operator's state is not checkpointed (run it without a state directory)"
            )));
        }
        let t0 = Instant::now();
        let lock = lock_state_dir(&cfg.state_dir)?;
        cfg.wal.dir = cfg.state_dir.join("wal");
        cfg.wal.owner = cfg.owner;
        let fp = fingerprint(sql, self);
        let (ckpts, recovered) = CheckpointStore::open_owned(
            cfg.storage.clone(),
            cfg.cipher.clone(),
            &cfg.state_dir.join("checkpoints"),
            cfg.owner,
        )?;
        let wal = Wal::open(cfg.storage.clone(), cfg.cipher.clone(), cfg.wal.clone())?;
        check_continuity(&cfg.state_dir, recovered.as_ref().map(|r| (r.manifest.seq, r.manifest.wal_lsn)), &wal)?;
        let mut stats = DurableStats::default();
        let mut from_lsn = 0;
        let (identity, identity_checkpointed) =
            state_identity(recovered.as_ref().and_then(|r| r.blobs.get(IDENTITY_BLOB)).map(Vec::as_slice))?;
        let epoch = state_epoch(
            recovered.as_ref().and_then(|r| r.blobs.get(EPOCH_BLOB)).map(Vec::as_slice),
            recovered.is_some(),
            wal.next_lsn(),
        )?;
        let from_backup = recovered.as_ref().is_some_and(|r| r.blobs.contains_key(crate::storage::RESTORED_BLOB));
        if let (true, Some(r)) = (from_backup, &recovered) {
            tracing::info!(state_dir = %cfg.state_dir.display(), seq = r.manifest.seq, "starting from a checkpoint restored from a backup");
        }
        let opened = crate::ops::OpenedState { identity, from_backup, epoch };
        self.graph.state_opened(&opened);
        for s in &mut self.sources {
            if let Some(r) = s.reader.as_mut() {
                r.bind_state(&opened);
            }
        }
        if let Some(r) = recovered {
            if r.manifest.fingerprint != fp {
                return Err(EngineError::PlanChanged { dir: cfg.state_dir.display().to_string() });
            }
            from_lsn = r.manifest.wal_lsn;
            stats.recovered_checkpoint = Some(r.manifest.seq);
            for i in 0..self.sources.len() {
                let name = format!("source/{}", self.sources[i].name);
                let b =
                    r.blobs.get(&name).ok_or_else(|| EngineError::State(format!("the checkpoint has no '{name}'")))?;
                self.restore_source(i, b, &name)?;
            }
            for id in 0..self.graph.len() {
                let name = format!("node/{id}/{}", self.graph.name(id));
                let b =
                    r.blobs.get(&name).ok_or_else(|| EngineError::State(format!("the checkpoint has no '{name}'")))?;
                let mut rd = StateReader::new(b, &name);
                self.graph.restore_node(id, &mut rd)?;
            }
            // A view's kept rows are absent from checkpoints written while views were not kept;
            // the view then shows what arrives from here on.
            for v in &self.views {
                for part in 0..v.parts() {
                    let name = view_blob_name(v.name(), part);
                    if let Some(b) = r.blobs.get(&name) {
                        v.restore(part, &mut StateReader::new(b, &name))?;
                    }
                }
            }
            let written = match r.blobs.get(SHARDS_BLOB) {
                None => 1,
                Some(b) => {
                    let mut rd = StateReader::new(b, SHARDS_BLOB);
                    let n = rd.u64()? as usize;
                    rd.finish()?;
                    n
                }
            };
            if written != self.summary.shards {
                return Err(EngineError::ShardCount {
                    dir: cfg.state_dir.display().to_string(),
                    written,
                    now: self.summary.shards,
                });
            }
            self.ensure_shards()?;
            if let Sharding::Running(shards) = &mut self.sharding {
                let states = (0..shards.count())
                    .map(|k| {
                        (0..self.graph.len())
                            .map(|id| {
                                let name = shard_blob_name(k, id, &self.graph.name(id));
                                r.blobs
                                    .get(&name)
                                    .cloned()
                                    .ok_or_else(|| EngineError::State(format!("the checkpoint has no '{name}'")))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                shards.restore(states)?;
            }
        }
        self.prepare()?;
        // An engine error while replaying (a row under on_error = 'fail', a limit) is reported as
        // itself, not as damage to the log.
        let mut failed: Option<EngineError> = None;
        let mut parts = PendingParts::default();
        let replayed = wal.replay(from_lsn, &mut |lsn, payload| {
            stats.replayed_records += 1;
            self.apply_record(payload, &mut parts).map_err(|e| {
                failed = Some(e);
                crate::storage::StorageError::Corrupt(format!("replay stopped at LSN {lsn}"))
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        replayed?;
        stats.recovery = t0.elapsed();
        tracing::info!(
            state_dir = %cfg.state_dir.display(),
            checkpoint = ?stats.recovered_checkpoint,
            replayed = stats.replayed_records,
            millis = stats.recovery.as_millis() as u64,
            wal_io = wal.backend(),
            encrypted = cfg.cipher.is_encrypted(),
            "durable state recovered"
        );
        let wal_bytes = wal.stats.payload_bytes;
        self.durable = Some(Durable {
            wal,
            ckpts,
            cfg,
            fingerprint: fp,
            identity,
            identity_checkpointed,
            epoch,
            last: Instant::now(),
            wal_bytes_at_last: wal_bytes,
            ended_at_last: usize::MAX,
            scratch: StateWriter::default(),
            stats,
            _lock: lock,
        });
        Ok(())
    }

    fn restore_source(&mut self, i: usize, b: &[u8], what: &str) -> Result<()> {
        let s = &mut self.sources[i];
        let mut r = StateReader::new(b, what);
        s.max_ts = r.i64()?;
        s.idle_floor = r.i64()?;
        s.ended = r.bool()?;
        s.stats.accepted = r.u64()?;
        s.stats.late = r.u64()?;
        s.stats.errors = r.u64()?;
        s.position = r.bytes()?.to_vec();
        // Checkpoints before split sources have no split clock.
        if !r.at_end() {
            s.splits.restore(&mut r)?;
        }
        r.finish()
    }

    /// Re-applies one WAL record (recovery); nothing is logged again.
    fn apply_record(&mut self, payload: &[u8], pending: &mut PendingParts) -> Result<()> {
        let mut r = StateReader::new(payload, "a WAL record");
        let kind = r.u8()?;
        let i = r.usize()?;
        if i >= self.sources.len() {
            return Err(r.err("a source index out of range"));
        }
        let (errors_schema, rows_schema) = (errors_schema(), self.sources[i].decoder.schema.clone());
        let read_batches = |r: &mut StateReader| -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
            Ok((decode_batch(r, &errors_schema)?, decode_batch(r, &rows_schema)?))
        };
        // Parts count only when the end record of their own group follows them at once.
        let parts = std::mem::take(pending);
        match kind {
            REC_BATCH | REC_BATCH_END => {
                let logged = r.bytes()?;
                let s = &mut self.sources[i];
                s.spec.fold_position(&mut s.position, logged);
                let (errors, rows) = read_batches(&mut r)?;
                let group = if kind == REC_BATCH_END { Some(r.u64()?) } else { None };
                r.finish()?;
                // The parts and this record are one batch again, exactly as it ran live (so even
                // floating-point sums, whose rounding follows batch boundaries, come out the same).
                let (errors, rows) = if group.is_some() && group == Some(parts.group) {
                    let mut pieces = parts.parts;
                    pieces.push((errors, rows));
                    let (e, r): (Vec<_>, Vec<_>) = pieces.into_iter().unzip();
                    (concat(e.into_iter().flatten().collect())?, concat(r.into_iter().flatten().collect())?)
                } else {
                    (errors, rows)
                };
                self.run_source_output(i, errors, rows, None)?;
                self.flow_step_end()
            }
            REC_BATCH_PART => {
                let (errors, rows) = read_batches(&mut r)?;
                let group = r.u64()?;
                r.finish()?;
                *pending = if parts.group == group { parts } else { PendingParts { group, parts: vec![] } };
                pending.parts.push((errors, rows));
                Ok(())
            }
            REC_IDLE => {
                let floor = r.i64()?;
                r.finish()?;
                let s = &mut self.sources[i];
                s.idle_floor = s.idle_floor.max(floor);
                let (main, wm) = (s.main, s.watermark());
                self.flow_advance(main, wm)?;
                self.flow_step_end()
            }
            REC_END => {
                r.finish()?;
                if self.sources[i].ended {
                    return Ok(());
                }
                self.end_source(i)?;
                self.flow_step_end()
            }
            _ => Err(r.err("an unknown record kind")),
        }
    }

    /// Checkpoints a state whose identity no checkpoint holds yet (a new state, or one begun
    /// before identities were kept), before any input is read: connectors may name themselves
    /// after the identity (an MQTT client id, whose session the broker keeps), so it must not
    /// change in a crash after they have.
    pub(super) fn checkpoint_a_new_identity(&mut self) -> Result<()> {
        if self.durable.as_ref().is_some_and(|d| !d.identity_checkpointed) {
            self.ensure_shards()?;
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Commits the WAL, writes a checkpoint, then lets sinks publish what it covers.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.durable.is_none() {
            return Ok(());
        }
        let t0 = Instant::now();
        // The shards catch up first: the checkpoint's state and the sinks' staged output must
        // both stand exactly at the WAL's end.
        self.flow_drain()?;
        let Some(d) = self.durable.as_mut() else { return Ok(()) };
        let lsn = d.wal.commit()?;
        let mut blobs = Vec::with_capacity(self.sources.len() + self.graph.len());
        let mut marks = Vec::with_capacity(self.sources.len());
        for s in &mut self.sources {
            if s.replayable {
                // Its position is saved here only: where it stands after the rows run so far.
                if let Some(r) = s.reader.as_ref() {
                    s.position = r.position();
                }
            }
            let mut w = StateWriter::default();
            w.i64(s.max_ts);
            w.i64(s.idle_floor);
            w.bool(s.ended);
            w.u64(s.stats.accepted);
            w.u64(s.stats.late);
            w.u64(s.stats.errors);
            w.bytes(&s.position);
            s.splits.snapshot(&mut w);
            blobs.push((format!("source/{}", s.name), w.buf));
            marks.push(SourceMark { name: s.name.clone(), position: s.position.clone(), watermark: s.watermark() });
        }
        for id in 0..self.graph.len() {
            let mut w = StateWriter::default();
            self.graph.snapshot_node(id, &mut w)?;
            blobs.push((format!("node/{id}/{}", self.graph.name(id)), w.buf));
        }
        if let Sharding::Running(shards) = &mut self.sharding {
            let mut w = StateWriter::default();
            w.u64(shards.count() as u64);
            blobs.push((SHARDS_BLOB.to_string(), w.buf));
            for (k, nodes) in shards.snapshot()?.into_iter().enumerate() {
                for (id, b) in nodes.into_iter().enumerate() {
                    blobs.push((shard_blob_name(k, id, &self.graph.name(id)), b));
                }
            }
        }
        // After the shards' snapshot: they have run every step sent and wait for the next, so
        // the views' parts hold the rows of exactly what this checkpoint covers.
        for v in &self.views {
            for part in 0..v.parts() {
                let mut w = StateWriter::default();
                v.snapshot(part, &mut w)?;
                blobs.push((view_blob_name(v.name(), part), w.buf));
            }
        }
        let d = self.durable.as_mut().ok_or_else(|| EngineError::Internal("durable state vanished".into()))?;
        blobs.push((IDENTITY_BLOB.to_string(), d.identity.to_vec()));
        let mut epoch = StateWriter::default();
        epoch.u64(u64::from(d.epoch));
        blobs.push((EPOCH_BLOB.to_string(), epoch.buf));
        let info = d.ckpts.write(lsn, &d.fingerprint, marks, &blobs)?;
        d.identity_checkpointed = true;
        // Only now, with the checkpoint durable, may sinks make its output visible, and
        // replayable sources acknowledge what it covers.
        self.graph.checkpoint_committed()?;
        for s in self.sources.iter_mut().filter(|s| s.replayable) {
            if let Some(r) = s.reader.as_mut() {
                r.checkpointed(&s.position);
            }
        }
        let d = self.durable.as_mut().ok_or_else(|| EngineError::Internal("durable state vanished".into()))?;
        d.wal.truncate_before(d.ckpts.wal_keep_from())?;
        d.last = Instant::now();
        d.wal_bytes_at_last = d.wal.stats.payload_bytes;
        d.ended_at_last = self.sources.iter().filter(|s| s.ended).count();
        d.stats.checkpoints += 1;
        d.stats.checkpoint_bytes += info.bytes_written;
        d.stats.checkpoint_time += t0.elapsed();
        d.stats.last_checkpoint_ms = Some(crate::time::now_ms());
        tracing::debug!(
            seq = info.seq,
            written = info.blobs_written,
            reused = info.blobs_reused,
            bytes = info.bytes_written,
            wal_lsn = lsn,
            "checkpoint"
        );
        Ok(())
    }

    /// Group commit and checkpoint triggers; called by the live loop after every step.
    pub(super) fn durable_tick(&mut self) -> Result<()> {
        let staged: usize = self.sinks.iter().map(|(_, id)| self.graph.node_state_bytes(*id)).sum();
        let Some(d) = self.durable.as_mut() else { return Ok(()) };
        d.wal.maybe_commit()?;
        let by_size =
            staged >= d.cfg.max_staged_bytes || d.wal.stats.payload_bytes - d.wal_bytes_at_last >= d.cfg.max_wal_bytes;
        if by_size {
            return self.checkpoint();
        }
        if d.last.elapsed() < d.cfg.checkpoint_interval {
            return Ok(());
        }
        if self.unchanged_since_checkpoint()? {
            // An idle gateway does not rewrite its flash every interval.
            let d = self.durable.as_mut().ok_or_else(|| EngineError::Internal("durable state vanished".into()))?;
            d.last = Instant::now();
            d.stats.checkpoints_skipped += 1;
            d.stats.last_checkpoint_ms = Some(crate::time::now_ms());
            return Ok(());
        }
        self.checkpoint()
    }

    /// Whether a checkpoint now would differ from the newest one only in what recovery
    /// recomputes: watermarks of processing time (`LATE()`, `ERRORS()`, sources without a time
    /// column) and state that a watermark dropped without output. Nothing was logged since it,
    /// no replayable source moved, no source's watermark moved or ended, and no sink holds
    /// output for the next commit (so recovering from the newest checkpoint gives the same
    /// results as from a new one).
    fn unchanged_since_checkpoint(&mut self) -> Result<bool> {
        let Some(d) = self.durable.as_ref() else { return Ok(false) };
        let Some(m) = d.ckpts.latest() else { return Ok(false) };
        if d.wal.next_lsn() != m.wal_lsn
            || m.sources.len() != self.sources.len()
            || self.sources.iter().filter(|s| s.ended).count() != d.ended_at_last
        {
            return Ok(false);
        }
        for (s, mark) in self.sources.iter().zip(&m.sources) {
            let position = match (s.replayable, s.reader.as_ref()) {
                (true, Some(r)) => r.position(),
                _ => s.position.clone(),
            };
            if s.watermark() != mark.watermark || position != mark.position {
                return Ok(false);
            }
        }
        // The shards hand over what their last steps produced before the sinks are asked.
        self.flow_drain()?;
        Ok(self.sinks.iter().all(|(_, id)| self.graph.node_state_bytes(*id) == 0))
    }

    /// How long an idle live loop may wait before the next group commit falls due.
    pub(super) fn commit_wait(&self) -> Option<Duration> {
        self.durable.as_ref().and_then(|d| d.wal.commit_wait())
    }

    /// The files of the newest checkpoint (immutable: a copy of them is a backup of it).
    pub fn last_checkpoint_files(&self) -> Option<crate::storage::checkpoint::CheckpointFiles> {
        self.durable.as_ref().and_then(|d| d.ckpts.latest_files())
    }

    /// The identity of the state the newest checkpoint belongs to: random, made when the state
    /// began (or first checkpointed by a version that keeps one), the same in every later
    /// checkpoint and in a restored copy. `None` while the newest checkpoint holds none.
    pub fn state_identity(&self) -> Option<[u8; 16]> {
        self.durable.as_ref().filter(|d| d.identity_checkpointed).map(|d| d.identity)
    }

    /// Records below this LSN are durable in the WAL (what MQTT acknowledgements wait for).
    pub fn durable_lsn(&self) -> Option<u64> {
        self.durable.as_ref().map(|d| d.wal.durable_lsn())
    }

    pub fn durable_stats(&self) -> Option<DurableStats> {
        self.durable.as_ref().map(|d| {
            let mut s = d.stats.clone();
            s.wal = d.wal.stats.clone();
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

    use super::{decode_batch, encode_batches, errors_schema, without_options, LoggedSchemas};
    use crate::ops::snapshot::{StateReader, StateWriter};

    fn readings(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("dev-{i}")))),
            Arc::new(Float64Array::from_iter((0..rows).map(|i| (i % 3 != 0).then_some(i as f64 / 4.0)))),
            Arc::new(TimestampMillisecondArray::from_iter_values((0..rows).map(|i| 1_700_000_000_000 + i as i64))),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn round_trip(errors: Option<&RecordBatch>, rows: Option<&RecordBatch>, known: &SchemaRef) -> (usize, Vec<u8>) {
        let mut w = StateWriter::default();
        let errors_schema = errors_schema();
        encode_batches(&mut w, errors, rows, &LoggedSchemas { errors: &errors_schema, rows: known }).unwrap();
        let mut r = StateReader::new(&w.buf, "a test record");
        assert_eq!(decode_batch(&mut r, &errors_schema).unwrap().as_ref(), errors);
        assert_eq!(decode_batch(&mut r, known).unwrap().as_ref(), rows);
        r.finish().unwrap();
        (w.buf.len(), w.buf)
    }

    #[test]
    fn logged_batches_of_the_known_schema_are_bodies_and_read_back_the_same() {
        for n in [0, 1, 5, 1000] {
            let b = readings(n);
            let (bytes, buf) = round_trip(None, Some(&b), &b.schema());
            assert_eq!(buf[1], super::BATCH_BODY);
            // What records held before: the whole IPC stream, schema included.
            let mut old = StateWriter::default();
            old.batch(&b).unwrap();
            assert!(bytes < old.buf.len(), "{n} rows: {bytes} bytes, as a stream {}", old.buf.len());
            if n <= 5 {
                assert!(bytes * 2 < old.buf.len(), "{n} rows: {bytes} bytes, as a stream {}", old.buf.len());
            }
        }
    }

    #[test]
    fn records_written_as_streams_read_as_before() {
        // A batch of another schema than the known one is logged as a whole stream, as every
        // batch was before bodies; such records must keep replaying.
        let b = readings(7);
        let other: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let (_, buf) = round_trip(None, Some(&b), &other);
        assert_eq!((buf[0], buf[1]), (super::BATCH_NONE, super::BATCH_STREAM));
        // The bytes an older eddyd wrote: a presence flag of 1, then the stream.
        let mut old = StateWriter::default();
        old.bool(false);
        old.bool(true);
        old.batch(&b).unwrap();
        assert_eq!(buf, old.buf);
        let mut r = StateReader::new(&old.buf, "an old record");
        assert!(decode_batch(&mut r, &errors_schema()).unwrap().is_none());
        assert_eq!(decode_batch(&mut r, &b.schema()).unwrap(), Some(b));
    }

    #[test]
    /// Records are read only after their CRC and tag checked; should damaged bytes reach the
    /// Arrow reader anyway, every byte flipped and every cut is an error or a batch, never a
    /// panic or an abort, in both encodings.
    fn a_damaged_batch_is_an_error_not_a_crash() {
        let b = readings(20);
        let (_, body) = round_trip(None, Some(&b), &b.schema());
        let mut stream = StateWriter::default();
        stream.bool(false);
        stream.bool(true);
        stream.batch(&b).unwrap();
        let read = |bytes: &[u8]| {
            let mut r = StateReader::new(bytes, "a damaged record");
            decode_batch(&mut r, &errors_schema()).and_then(|_| decode_batch(&mut r, &b.schema())).map(|_| ())
        };
        for mut record in [body, stream.buf] {
            for cut in 0..record.len() {
                assert!(read(&record[..cut]).is_err(), "cut at {cut}");
            }
            for i in 0..record.len() {
                for bit in [0x01, 0x5a, 0xff] {
                    record[i] ^= bit;
                    let _ = read(&record);
                    record[i] ^= bit;
                }
            }
        }
    }

    #[test]
    fn option_lists_are_left_out_of_the_fingerprint_text() {
        let sql = "CREATE SOURCE s (a INT) WITH ('connector' = 'mqtt', 'topic' = 'a/(b)');\n-- WITH (x)\nCREATE SINK k WITH ( 'x' = ')' ) AS SELECT a FROM s WHERE a IN (1, 2);";
        let out = without_options(sql);
        assert!(!out.contains("mqtt") && !out.contains("'x'"), "{out}");
        assert!(out.contains("CREATE SOURCE s (a INT)") && out.contains("IN (1, 2)"), "{out}");
        assert_eq!(without_options("SELECT with_x (1)"), "SELECT with_x (1)");
    }
}
