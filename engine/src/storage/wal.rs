//! The write-ahead log: numbered records (LSNs) in segment files, framed with length, CRC32C and LSN,
//! encrypted one by one, made durable by group commit (one write + fdatasync for all records
//! appended since the last commit). Layout and crash argument: docs/wal.md.
//!
//! Owns: segment files `wal-<first lsn>.log` in its directory. Never: reopens a segment for
//! writing (every open starts a new one, so a nonce prefix is used once), reports a record durable
//! before its fsync returned, or goes on after a failed write or fsync (it is poisoned).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crypto::{self, Cipher};
use super::fs::{Storage, StorageFile};
use super::header::{FileHeader, Owner, HEADER_LEN};
use super::{crc, io_err, u32_at, u64_at, Result, StorageError};

pub const MAGIC: &[u8; 8] = b"EDDYWAL1";
/// Segments are written in this version: frames carry their commit group (docs/wal.md).
pub const VERSION: u32 = 2;
/// Frame header of a version 1 segment: CRC, length, LSN.
pub const FRAME_HEADER_V1: usize = 16;
/// Frame header of a version 2 segment: CRC, length, LSN, group (first LSN of its commit).
pub const FRAME_HEADER: usize = 24;
/// The format's bound on a record payload. Readers check frames against this fixed bound, never
/// against the configured `max_record_bytes`: lowering that setting must not turn records already
/// written into "torn tails". The configured limit may not exceed it.
pub const FORMAT_MAX_RECORD_BYTES: usize = 1 << 30;
/// Largest frame body a reader accepts (payload plus GCM tag).
const FORMAT_MAX_FRAME_BODY: usize = FORMAT_MAX_RECORD_BYTES + crypto::TAG_LEN;

/// Limits and group-commit policy.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// Commit once the oldest uncommitted record is this old...
    pub commit_delay: Duration,
    /// ...or once this many bytes wait, whichever comes first.
    pub commit_bytes: usize,
    /// Largest record payload; bigger appends are refused.
    pub max_record_bytes: usize,
    /// Whose log this is (bound into every version 2 segment; a segment of another owner is
    /// refused). The default, zeros, is "unnamed".
    pub owner: Owner,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            commit_delay: Duration::from_millis(5),
            commit_bytes: 1 << 20,
            max_record_bytes: 16 << 20,
            owner: Owner::default(),
        }
    }
}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct WalStats {
    pub records: u64,
    pub payload_bytes: u64,
    /// Bytes written to segment files (headers, frames, tags).
    pub file_bytes: u64,
    pub commits: u64,
    /// Commit (write + fdatasync) latency histogram: bucket i counts commits under 2^i µs.
    pub commit_micros: [u64; 32],
}

impl WalStats {
    /// The latency (µs, bucket upper bound) under which fraction `q` of commits finished.
    pub fn commit_quantile(&self, q: f64) -> u64 {
        let total: u64 = self.commit_micros.iter().sum();
        let mut seen = 0;
        for (i, c) in self.commit_micros.iter().enumerate() {
            seen += c;
            if total > 0 && seen as f64 >= q * total as f64 {
                return 1 << i;
            }
        }
        0
    }
}

struct Segment {
    first_lsn: u64,
    path: PathBuf,
}

/// The segment records are being appended to.
struct Active {
    first_lsn: u64,
    path: PathBuf,
    file: Option<Box<dyn StorageFile>>,
    /// Bytes of the file already written and synced.
    written: u64,
    /// First LSN of the commit being gathered (the group its frames name).
    group: Option<u64>,
    key_id: u32,
    nonce_prefix: [u8; 8],
}

pub struct Wal {
    storage: Arc<dyn Storage>,
    cipher: Arc<Cipher>,
    cfg: WalConfig,
    segments: Vec<Segment>,
    active: Option<Active>,
    /// Frames (and a new segment's header) not yet written.
    buf: Vec<u8>,
    oldest_pending: Option<Instant>,
    next_lsn: u64,
    durable_lsn: u64,
    poisoned: Option<String>,
    pub stats: WalStats,
}

fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// A record's associated data: its place, its key, and (version 2) its owner. Returns the
/// buffer and how much of it is used (36 bytes in version 1, 44 with the owner).
fn aad(first_lsn: u64, offset: u64, lsn: u64, key_id: u32, owner: Option<Owner>) -> ([u8; 44], usize) {
    let mut a = [0u8; 44];
    a[..8].copy_from_slice(b"eddy-wal");
    a[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    a[16..24].copy_from_slice(&offset.to_le_bytes());
    a[24..32].copy_from_slice(&lsn.to_le_bytes());
    a[32..36].copy_from_slice(&key_id.to_le_bytes());
    match owner {
        Some(o) => {
            a[36..].copy_from_slice(&o.0);
            (a, 44)
        }
        None => (a, 36),
    }
}

/// A segment's frame layout, by its header's version.
#[derive(Clone, Copy)]
struct Fmt {
    header: usize,
    /// Frames carry their commit group (version 2).
    grouped: bool,
}

impl Fmt {
    fn of(version: u32) -> Fmt {
        if version >= 2 {
            Fmt { header: FRAME_HEADER, grouped: true }
        } else {
            Fmt { header: FRAME_HEADER_V1, grouped: false }
        }
    }
}

/// A valid frame: its length and its commit group (version 1 frames: their own LSN).
#[derive(Clone, Copy)]
struct Frame {
    len: usize,
    group: u64,
}

/// The valid frame for `lsn` at `off`, or why there is none.
fn frame_at(b: &[u8], off: usize, lsn: u64, fmt: Fmt) -> std::result::Result<Frame, &'static str> {
    let h = fmt.header;
    if b.len() - off < h {
        return Err("a frame header cut short");
    }
    let len = u32_at(b, off + 4) as usize;
    if len > FORMAT_MAX_FRAME_BODY {
        return Err("a frame length beyond the format's bound");
    }
    if b.len() - off - h < len {
        return Err("a frame cut short");
    }
    if u64_at(b, off + 8) != lsn {
        return Err("an unexpected LSN");
    }
    if crc(&[&b[off + 4..off + h + len]]) != u32_at(b, off) {
        return Err("a CRC mismatch");
    }
    let group = if fmt.grouped { u64_at(b, off + 16) } else { lsn };
    if group > lsn {
        return Err("a commit group after its own LSN");
    }
    Ok(Frame { len: h + len, group })
}

/// Version 1: whether a valid frame for LSN+1 or LSN+2 follows `off` (then the damage at `off`
/// is not a torn tail).
fn valid_frame_after_v1(b: &[u8], off: usize, lsn: u64) -> bool {
    let fmt = Fmt::of(1);
    (1..=2u64).any(|k| {
        let needle = (lsn + k).to_le_bytes();
        memchr::memmem::find_iter(&b[off..], &needle).any(|h| {
            let start = off + h;
            start >= off + 8 && frame_at(b, start - 8, lsn + k, fmt).is_ok()
        })
    })
}

/// Version 2: a valid frame after the damage at `off` (LSN `lsn`) whose commit group starts
/// after `lsn` — proof that the commit holding `lsn` had returned (commits are written one after
/// the other, each only once the one before it was fsynced), so the damaged record was
/// acknowledged. Returns that frame's (LSN, group).
fn acknowledged_frame_after(b: &[u8], off: usize, lsn: u64, fmt: Fmt) -> Option<(u64, u64)> {
    // Any frame after `off` has an LSN in (lsn, lsn + frames that fit]: a cheap first filter.
    let most = lsn + ((b.len() - off) / fmt.header) as u64;
    let mut at = off + 1;
    while at + fmt.header <= b.len() {
        let cand = u64_at(b, at + 8);
        if cand > lsn && cand <= most {
            if let Ok(f) = frame_at(b, at, cand, fmt) {
                if f.group > lsn {
                    return Some((cand, f.group));
                }
                at += f.len;
                continue;
            }
        }
        at += 1;
    }
    None
}

/// Authenticates and decrypts the records of segment `b` (starting at `first_lsn`) below
/// `stop_lsn`, calling `f` for those from `from_lsn` on.
#[allow(clippy::too_many_arguments)] // one segment's reading context; both callers pass it whole
fn open_records(
    cipher: &Cipher,
    path: &Path,
    b: &[u8],
    first_lsn: u64,
    from_lsn: u64,
    stop_lsn: u64,
    owner: Owner,
    scratch: &mut Vec<u8>,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let h = FileHeader::decode(b, MAGIC, VERSION)
        .ok_or_else(|| StorageError::Corrupt(format!("{}: damaged header", path.display())))?;
    let fmt = Fmt::of(h.version);
    // The expected owner, never the header's: a header can be rewritten, the tag cannot.
    let bound = (h.version >= 2).then_some(owner);
    let (mut off, mut lsn) = (HEADER_LEN, first_lsn);
    while off < b.len() && lsn < stop_lsn {
        let n = frame_at(b, off, lsn, fmt)
            .map_err(|why| StorageError::Corrupt(format!("{} at offset {off}: {why}", path.display())))?
            .len;
        if lsn >= from_lsn {
            scratch.clear();
            scratch.extend_from_slice(&b[off + fmt.header..off + n]);
            let (ad, ad_len) = aad(first_lsn, off as u64, lsn, h.key_id, bound);
            let nonce = crypto::nonce(h.nonce_prefix, (lsn - first_lsn) as u32);
            let plain = cipher.open(h.key_id, nonce, &ad[..ad_len], scratch, &|| {
                format!("{} at offset {off} (LSN {lsn})", path.display())
            })?;
            let plain_len = plain.len();
            f(lsn, &scratch[..plain_len])?;
        }
        off += n;
        lsn += 1;
    }
    Ok(())
}

/// The segment files in `dir` by first LSN, in order.
fn segment_names(storage: &dyn Storage, dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut names: Vec<(u64, String)> = storage
        .list(dir)
        .map_err(io_err(dir))?
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix("wal-")?.strip_suffix(".log")?.parse::<u64>().ok()?, n)))
        .collect();
    names.sort();
    Ok(names)
}

/// LSNs are dense across segments: `path` must start where the one before it ended.
fn check_follows(path: &Path, first_lsn: u64, prev_end: u64) -> Result<()> {
    if first_lsn == prev_end {
        return Ok(());
    }
    Err(StorageError::Corrupt(format!(
        "{}: starts at LSN {first_lsn}, but the segment before it ends at LSN {prev_end} (records are missing)",
        path.display()
    )))
}

/// One segment as [`inspect`] found it.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub first_lsn: u64,
    /// LSN after its last intact record.
    pub end_lsn: u64,
    pub bytes: u64,
    pub key_id: u32,
    /// Where a torn tail starts (an interrupted last commit, cut at the next start).
    pub torn_at: Option<usize>,
}

/// Reads and authenticates every record of the log in `dir` and changes nothing (no cut, no
/// sync): what `eddyd state check` reports. Damage is an error naming file, offset and LSN, as
/// at open.
pub fn inspect(storage: &dyn Storage, cipher: &Cipher, dir: &Path, owner: Owner) -> Result<Vec<SegmentReport>> {
    let names = segment_names(storage, dir)?;
    let count = names.len();
    let mut out: Vec<SegmentReport> = Vec::new();
    let mut scratch = Vec::new();
    for (i, (first_lsn, name)) in names.into_iter().enumerate() {
        let path = dir.join(&name);
        if let Some(prev) = out.last() {
            check_follows(&path, first_lsn, prev.end_lsn)?;
        }
        let bytes = storage.read(&path).map_err(io_err(&path))?;
        let b: &[u8] = (*bytes).as_ref();
        let scan = Wal::scan(cipher, &path, b, first_lsn, i + 1 == count, owner)?;
        let key_id = FileHeader::decode(b, MAGIC, VERSION).map(|h| h.key_id).unwrap_or(0);
        if scan.end_lsn > first_lsn {
            open_records(
                cipher,
                &path,
                b,
                first_lsn,
                first_lsn,
                scan.end_lsn,
                owner,
                &mut scratch,
                &mut |_, _| Ok(()),
            )?;
        }
        out.push(SegmentReport {
            path,
            first_lsn,
            end_lsn: scan.end_lsn,
            bytes: b.len() as u64,
            key_id,
            torn_at: scan.torn_at,
        });
    }
    Ok(out)
}

/// What scanning a segment found.
struct Scan {
    /// LSN after the last valid record.
    end_lsn: u64,
    /// Where a torn tail starts, if any.
    torn_at: Option<usize>,
}

impl Wal {
    /// Opens the log in `cfg.dir`: checks every segment, cuts a torn tail off the last one, and
    /// fails on any other damage, naming file and offset.
    ///
    /// Whatever it finds is fsynced (segments and directory) before any record counts as durable:
    /// after a SIGKILL, records the dead process wrote but never synced are still in the page cache
    /// and read back fine, yet a power cut would lose them. Only once synced may a redelivery of
    /// their input be acknowledged as a duplicate.
    pub fn open(storage: Arc<dyn Storage>, cipher: Arc<Cipher>, cfg: WalConfig) -> Result<Wal> {
        if cfg.max_record_bytes > FORMAT_MAX_RECORD_BYTES {
            return Err(StorageError::Limit(format!(
                "wal.max_record_bytes {} is over the format's bound of {FORMAT_MAX_RECORD_BYTES}",
                cfg.max_record_bytes
            )));
        }
        storage.create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let names = segment_names(storage.as_ref(), &cfg.dir)?;
        let mut segments = Vec::new();
        let mut next_lsn = 0u64;
        let count = names.len();
        for (i, (first_lsn, name)) in names.into_iter().enumerate() {
            let path = cfg.dir.join(&name);
            let is_last = i + 1 == count;
            if i > 0 {
                check_follows(&path, first_lsn, next_lsn)?;
            }
            let scan = {
                let bytes = storage.read(&path).map_err(io_err(&path))?;
                Self::scan(&cipher, &path, (*bytes).as_ref(), first_lsn, is_last, cfg.owner)?
            };
            if let Some(at) = scan.torn_at {
                tracing::warn!(file = %path.display(), offset = at, "write-ahead log: cutting a torn tail (a crash interrupted the last write)");
                if scan.end_lsn == first_lsn {
                    // No record survived: drop the segment, so a new one can take its name.
                    storage.remove(&path).map_err(io_err(&path))?;
                    storage.sync_dir(&cfg.dir).map_err(io_err(&cfg.dir))?;
                    next_lsn = first_lsn;
                    continue;
                }
                let mut f = storage.open_write(&path).map_err(io_err(&path))?;
                f.set_len(at as u64).map_err(io_err(&path))?;
                f.sync().map_err(io_err(&path))?;
            } else {
                storage.open_write(&path).and_then(|mut f| f.sync()).map_err(io_err(&path))?;
            }
            next_lsn = scan.end_lsn;
            segments.push(Segment { first_lsn, path });
        }
        // Segment names (a create whose directory entry was never synced) become durable too.
        storage.sync_dir(&cfg.dir).map_err(io_err(&cfg.dir))?;
        Ok(Wal {
            storage,
            cipher,
            cfg,
            segments,
            active: None,
            buf: Vec::with_capacity(1 << 20),
            oldest_pending: None,
            next_lsn,
            durable_lsn: next_lsn,
            poisoned: None,
            stats: WalStats::default(),
        })
    }

    /// Checks a segment's frames. Damage in the last segment is a torn tail — cut there — when
    /// nothing shows that the damaged record was acknowledged: no valid frame after it belongs to
    /// a later commit (version 2), or no valid frame for one of the next two LSNs follows
    /// (version 1). Any other damage is an error naming file, offset and LSN.
    fn scan(cipher: &Cipher, path: &Path, b: &[u8], first_lsn: u64, is_last: bool, owner: Owner) -> Result<Scan> {
        let corrupt = |off: usize, why: &str| {
            StorageError::Corrupt(format!(
                "{} at offset {off}: {why}; the log is damaged before its end",
                path.display()
            ))
        };
        let Some(h) = FileHeader::decode(b, MAGIC, VERSION) else {
            // A segment whose first write was torn has no valid header and no valid frame.
            let frame_follows = [1, VERSION]
                .iter()
                .any(|&v| b.len() > HEADER_LEN && frame_at(b, HEADER_LEN, first_lsn, Fmt::of(v)).is_ok());
            if is_last && !frame_follows {
                return Ok(Scan { end_lsn: first_lsn, torn_at: Some(0) });
            }
            return Err(corrupt(0, "a damaged segment header"));
        };
        if h.seq != first_lsn {
            return Err(corrupt(0, &format!("the header says LSN {}, the name {first_lsn}", h.seq)));
        }
        if h.version >= 2 && h.owner != owner {
            return Err(StorageError::Corrupt(format!(
                "{}: belongs to another pipeline or sink (its files were moved or copied here)",
                path.display()
            )));
        }
        cipher.check_readable(h.key_id, &h.key_check, &path.display().to_string())?;
        let fmt = Fmt::of(h.version);
        let (mut off, mut lsn) = (HEADER_LEN, first_lsn);
        while off < b.len() {
            match frame_at(b, off, lsn, fmt) {
                Ok(f) => {
                    off += f.len;
                    lsn += 1;
                }
                Err(why) => {
                    if !is_last {
                        return Err(corrupt(off, &format!("{why} in the record for LSN {lsn}")));
                    }
                    if fmt.grouped {
                        if let Some((later, group)) = acknowledged_frame_after(b, off, lsn, fmt) {
                            return Err(corrupt(
                                off,
                                &format!("{why} in the record for LSN {lsn}, which was acknowledged (LSN {later} of a later commit from LSN {group} follows)"),
                            ));
                        }
                    } else if valid_frame_after_v1(b, off, lsn) {
                        return Err(corrupt(off, &format!("{why} in the record for LSN {lsn}")));
                    }
                    return Ok(Scan { end_lsn: lsn, torn_at: Some(off) });
                }
            }
        }
        Ok(Scan { end_lsn: lsn, torn_at: None })
    }

    /// The oldest LSN the log still holds (`next_lsn` when it holds none).
    pub fn first_lsn(&self) -> u64 {
        self.segments.first().map(|s| s.first_lsn).unwrap_or(self.next_lsn)
    }

    /// LSN the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Records below this LSN are durable.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn backend(&self) -> &'static str {
        self.storage.backend()
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(m) => Err(StorageError::Poisoned(m.clone())),
            None => Ok(()),
        }
    }

    /// Adds a record; returns its LSN. It is durable once [`Wal::commit`] has covered it.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        self.check_poison()?;
        if payload.len() > self.cfg.max_record_bytes {
            return Err(StorageError::Limit(format!(
                "a write-ahead log record of {} bytes is over the limit of {} (wal.max_record_bytes)",
                payload.len(),
                self.cfg.max_record_bytes
            )));
        }
        let key_id = self.cipher.current().0;
        let frame = FRAME_HEADER + payload.len() + Cipher::overhead(key_id);
        debug_assert!(payload.len() <= FORMAT_MAX_RECORD_BYTES, "max_record_bytes is checked at open");
        let roll = match &self.active {
            None => true,
            Some(a) => {
                let end = a.written + self.buf.len() as u64;
                (end + frame as u64 > self.cfg.segment_bytes && end > HEADER_LEN as u64)
                    || self.next_lsn - a.first_lsn >= u32::MAX as u64
                    || a.key_id != key_id
            }
        };
        if roll {
            self.commit()?;
            self.start_segment()?;
        }
        let lsn = self.next_lsn;
        let Some(a) = self.active.as_mut() else { return Err(StorageError::Corrupt("no active segment".into())) };
        let group = *a.group.get_or_insert(lsn);
        let a = &*a;
        let offset = a.written + self.buf.len() as u64;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        self.buf.extend_from_slice(payload);
        // The counter fits: segments roll before u32::MAX records (checked above).
        let counter = (lsn - a.first_lsn) as u32;
        let (ad, ad_len) = aad(a.first_lsn, offset, lsn, a.key_id, Some(self.cfg.owner));
        self.cipher.seal(
            a.key_id,
            crypto::nonce(a.nonce_prefix, counter),
            &ad[..ad_len],
            &mut self.buf,
            start + FRAME_HEADER,
        )?;
        let len = (self.buf.len() - start - FRAME_HEADER) as u32;
        self.buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
        self.buf[start + 16..start + 24].copy_from_slice(&group.to_le_bytes());
        let c = crc(&[&self.buf[start + 4..]]);
        self.buf[start..start + 4].copy_from_slice(&c.to_le_bytes());
        self.next_lsn += 1;
        self.stats.records += 1;
        self.stats.payload_bytes += payload.len() as u64;
        self.oldest_pending.get_or_insert_with(Instant::now);
        Ok(lsn)
    }

    fn start_segment(&mut self) -> Result<()> {
        let (key_id, key_check) = self.cipher.current();
        let nonce_prefix = crypto::nonce_prefix()?;
        let first_lsn = self.next_lsn;
        let path = self.cfg.dir.join(segment_name(first_lsn));
        let owner = self.cfg.owner;
        FileHeader { version: VERSION, key_id, seq: first_lsn, nonce_prefix, key_check, owner }
            .encode(MAGIC, &mut self.buf);
        self.active = Some(Active { first_lsn, path, file: None, written: 0, group: None, key_id, nonce_prefix });
        Ok(())
    }

    /// Whether the group-commit policy says to commit now.
    pub fn commit_due(&self) -> bool {
        self.buf.len() >= self.cfg.commit_bytes
            || self.oldest_pending.is_some_and(|t| t.elapsed() >= self.cfg.commit_delay)
    }

    /// How long until a group commit falls due (`None`: nothing pending). An idle worker waits
    /// no longer than this, so a commit is never late by its idle wait.
    pub fn commit_wait(&self) -> Option<Duration> {
        self.oldest_pending.map(|t| self.cfg.commit_delay.saturating_sub(t.elapsed()))
    }

    /// Commits if the group-commit policy says so; returns the durable LSN.
    pub fn maybe_commit(&mut self) -> Result<u64> {
        if self.commit_due() {
            self.commit()?;
        }
        Ok(self.durable_lsn)
    }

    /// Writes and fdatasyncs everything appended; returns the durable LSN (all records below it).
    /// Any error poisons the log.
    pub fn commit(&mut self) -> Result<u64> {
        self.check_poison()?;
        if self.buf.is_empty() {
            return Ok(self.durable_lsn);
        }
        let t0 = Instant::now();
        let r = self.write_out();
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
            tracing::error!(error = %e, "write-ahead log: write or fsync failed; the log is poisoned and the pipeline stops");
        }
        r?;
        let micros = t0.elapsed().as_micros().max(1) as u64;
        let bucket = (64 - micros.leading_zeros()).min(31) as usize;
        self.stats.commit_micros[bucket] += 1;
        self.stats.commits += 1;
        self.stats.file_bytes += self.buf.len() as u64;
        self.buf.clear();
        self.oldest_pending = None;
        self.durable_lsn = self.next_lsn;
        Ok(self.durable_lsn)
    }

    fn write_out(&mut self) -> Result<()> {
        let Some(a) = self.active.as_mut() else {
            return Err(StorageError::Corrupt("records without a segment".into()));
        };
        let new_file = a.file.is_none();
        if new_file {
            a.file = Some(self.storage.create(&a.path).map_err(io_err(&a.path))?);
        }
        let file = a.file.as_mut().ok_or_else(|| StorageError::Corrupt("segment not open".into()))?;
        file.write_sync(a.written, &self.buf).map_err(io_err(&a.path))?;
        if new_file {
            // The new segment's directory entry must be durable too before anything in it counts.
            self.storage.sync_dir(&self.cfg.dir).map_err(io_err(&self.cfg.dir))?;
            self.segments.push(Segment { first_lsn: a.first_lsn, path: a.path.clone() });
        }
        a.written += self.buf.len() as u64;
        a.group = None;
        Ok(())
    }

    /// Calls `f(lsn, payload)` for every durable record from `from_lsn` on, in order.
    pub fn replay(&self, from_lsn: u64, f: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let mut scratch = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            if self.segments.get(i + 1).is_some_and(|n| n.first_lsn <= from_lsn) {
                continue;
            }
            let bytes = self.storage.read(&seg.path).map_err(io_err(&seg.path))?;
            open_records(
                &self.cipher,
                &seg.path,
                (*bytes).as_ref(),
                seg.first_lsn,
                from_lsn,
                self.durable_lsn,
                self.cfg.owner,
                &mut scratch,
                f,
            )?;
        }
        Ok(())
    }

    /// Deletes segments holding only records below `lsn` (covered by a checkpoint).
    pub fn truncate_before(&mut self, lsn: u64) -> Result<()> {
        let active = self.active.as_ref().map(|a| a.first_lsn);
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn && Some(self.segments[0].first_lsn) != active
        {
            let seg = self.segments.remove(0);
            self.storage.remove(&seg.path).map_err(io_err(&seg.path))?;
        }
        Ok(())
    }

    /// Segment files currently making up the log.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }
}
