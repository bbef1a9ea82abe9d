//! The audit log: every mutating and every denied API call, appended durably to an encrypted,
//! hash-chained file under the state dir before the caller hears the outcome (docs/audit.md
//! has the format and the crash argument). Owns the file; never decides what is audited.
//!
//! A frame is `len u32 | crc32c(body) u32 | body`, the body `seq u64 | key id u32 | nonce [12] |
//! sealed JSON entry`, sealed with the state key (AAD: a magic and `seq`). Each entry holds the
//! SHA-256 of the previous entry's JSON, so a removed, reordered or altered entry breaks the
//! chain or fails authentication. A torn frame at the very end is a write the caller never saw
//! acknowledged: it is cut off at open. Anything else that fails is reported, never repaired.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ring::digest;
use serde::{Deserialize, Serialize};

use eddy_engine::storage::{Cipher, Storage, StorageFile};

const FILE: &str = "audit.log";
const PREVIOUS: &str = "audit.log.1";
const MAGIC: &[u8] = b"eddy-audit-v1";
const HEAD_BYTES: usize = 8;
const BODY_FIXED_BYTES: usize = 8 + 4 + 12;
/// No entry is this large (principals, peers and reasons are short); a larger length is damage.
const MAX_ENTRY_BYTES: usize = 64 << 10;

/// One audited call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub time_ms: i64,
    pub principal: String,
    pub peer: String,
    pub method: String,
    pub pipeline: String,
    /// `ok`, `denied: …` or `failed: …`.
    pub outcome: String,
    /// Hex SHA-256 of the previous entry's JSON ("" for the first entry ever).
    pub prev: String,
}

/// What an append needs; the log adds the sequence number, time and chain link.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub principal: String,
    pub peer: String,
    pub method: String,
    pub pipeline: String,
    pub outcome: String,
}

/// The entries of the log with what verification found.
#[derive(Debug, Default)]
pub struct Verified {
    pub entries: Vec<Entry>,
    /// Empty when the chain verifies end to end.
    pub problems: Vec<String>,
}

pub struct AuditLog {
    storage: Arc<dyn Storage>,
    cipher: Arc<Cipher>,
    dir: PathBuf,
    file: Box<dyn StorageFile>,
    end: u64,
    next_seq: u64,
    prev: String,
    max_bytes: u64,
    scratch: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aad(seq: u64) -> Vec<u8> {
    let mut a = MAGIC.to_vec();
    a.extend_from_slice(&seq.to_le_bytes());
    a
}

/// One frame as found in the file.
struct Frame {
    offset: u64,
    seq: u64,
    key_id: u32,
    nonce: [u8; 12],
    sealed: Vec<u8>,
}

/// Frames of one file; the offset where valid frames end, and what follows them (a torn tail
/// when this is the current file: an incomplete frame or one failing its CRC).
struct Scan {
    frames: Vec<Frame>,
    valid_end: u64,
    trailing: Option<Trailing>,
}

/// What follows the valid frames.
struct Trailing {
    what: String,
    /// Only the last frame is bad, as a write cut short by a crash leaves it; otherwise the
    /// damage is in the middle (more bytes follow a complete bad frame).
    torn: bool,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut trailing = None;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEAD_BYTES {
            trailing = Some(Trailing { what: format!("{} stray bytes at offset {at}", rest.len()), torn: true });
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let plausible = (BODY_FIXED_BYTES..=MAX_ENTRY_BYTES + BODY_FIXED_BYTES + 16).contains(&len);
        if !plausible || rest.len() < HEAD_BYTES + len {
            // A length beyond the end is a torn write; an absurd length with more than one
            // frame's worth of bytes after it is damage.
            let torn = plausible || rest.len() <= HEAD_BYTES + MAX_ENTRY_BYTES + BODY_FIXED_BYTES + 16;
            trailing = Some(Trailing { what: format!("an incomplete or malformed frame at offset {at}"), torn });
            break;
        }
        let body = &rest[HEAD_BYTES..HEAD_BYTES + len];
        if crc32c::crc32c(body) != crc {
            let torn = rest.len() == HEAD_BYTES + len;
            trailing = Some(Trailing { what: format!("a frame failing its checksum at offset {at}"), torn });
            break;
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
        let key_id = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default());
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&body[12..24]);
        frames.push(Frame { offset: at as u64, seq, key_id, nonce, sealed: body[BODY_FIXED_BYTES..].to_vec() });
        at += HEAD_BYTES + len;
    }
    Scan { frames, valid_end: at as u64, trailing }
}

/// Decrypts and checks one file's entries, continuing the chain from `prev`.
fn verify_file(
    cipher: &Cipher,
    name: &str,
    bytes: &[u8],
    prev: &mut Option<(u64, String)>,
    out: &mut Verified,
    allow_torn_tail: bool,
) {
    let s = scan(bytes);
    for Frame { offset, seq, key_id, nonce, mut sealed } in s.frames {
        let what = || format!("{name}: entry {seq} at offset {offset}");
        let plain = match cipher.open(key_id, nonce, &aad(seq), &mut sealed, &what) {
            Ok(p) => p.to_vec(),
            Err(e) => {
                out.problems.push(format!("{e}"));
                *prev = None;
                continue;
            }
        };
        let entry: Entry = match serde_json::from_slice(&plain) {
            Ok(e) => e,
            Err(e) => {
                out.problems.push(format!("{}: not an audit entry: {e}", what()));
                *prev = None;
                continue;
            }
        };
        if entry.seq != seq {
            out.problems.push(format!("{}: its sequence number says {}", what(), entry.seq));
        }
        match prev.as_ref() {
            Some((p_seq, _)) if seq != p_seq + 1 => {
                out.problems.push(format!("{}: follows entry {p_seq}: entries are missing or out of order", what()))
            }
            Some((_, p_hash)) if &entry.prev != p_hash => {
                out.problems.push(format!("{}: does not chain to the entry before it (altered or replaced)", what()))
            }
            _ => {}
        }
        *prev = Some((seq, hex(digest::digest(&digest::SHA256, &plain).as_ref())));
        out.entries.push(entry);
    }
    if let Some(t) = s.trailing {
        if !(allow_torn_tail && t.torn) {
            out.problems.push(format!("{name}: {}; nothing after it could be read", t.what));
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, cutting off a torn last frame. Damage before the
    /// end is left as it is (for `eddyctl audit` to report); new entries chain to the last
    /// readable one.
    pub fn open(storage: Arc<dyn Storage>, cipher: Arc<Cipher>, dir: &Path, max_bytes: u64) -> Result<AuditLog> {
        storage.create_dir_all(dir).with_context(|| format!("audit log directory {}", dir.display()))?;
        let path = dir.join(FILE);
        let exists = storage.list(dir).with_context(|| format!("listing {}", dir.display()))?.iter().any(|n| n == FILE);
        let mut log = AuditLog {
            file: if exists { storage.open_write(&path) } else { storage.create(&path) }
                .with_context(|| format!("opening {}", path.display()))?,
            storage,
            cipher,
            dir: dir.to_path_buf(),
            end: 0,
            next_seq: 1,
            prev: String::new(),
            max_bytes: max_bytes.max(1 << 16),
            scratch: Vec::new(),
        };
        if !exists {
            log.storage.sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        }
        let verified = log.read_all()?;
        if let Some(last) = verified.entries.last() {
            log.next_seq = last.seq + 1;
            let json = serde_json::to_vec(last).map_err(|e| anyhow!("re-encoding audit entry: {e}"))?;
            log.prev = hex(digest::digest(&digest::SHA256, &json).as_ref());
        }
        for p in &verified.problems {
            tracing::error!(problem = %p, "audit log damaged or altered");
        }
        let bytes = log.storage.read(&path).with_context(|| format!("reading {}", path.display()))?;
        let s = scan((*bytes).as_ref());
        log.end = s.valid_end;
        match s.trailing {
            Some(t) if t.torn => {
                tracing::warn!(tail = %t.what, "audit log: cutting off a torn last entry (written before a crash, never acknowledged)");
                log.file.set_len(s.valid_end).context("truncating the audit log")?;
                log.file.sync().context("syncing the audit log")?;
            }
            // Damage in the middle stays for verification to report; appends go after it.
            Some(_) => log.end = (*bytes).as_ref().len() as u64,
            None => {}
        }
        Ok(log)
    }

    /// Appends one entry durably; returns its sequence number. An error means the entry may
    /// not be durable: the caller must not report the call as audited.
    pub fn append(&mut self, ev: &Event) -> Result<u64> {
        if self.end >= self.max_bytes {
            self.rotate()?;
        }
        let entry = Entry {
            seq: self.next_seq,
            time_ms: eddy_engine::time::now_ms(),
            principal: ev.principal.clone(),
            peer: ev.peer.clone(),
            method: ev.method.clone(),
            pipeline: ev.pipeline.clone(),
            outcome: ev.outcome.clone(),
            prev: self.prev.clone(),
        };
        let json = serde_json::to_vec(&entry).map_err(|e| anyhow!("encoding audit entry: {e}"))?;
        if json.len() > MAX_ENTRY_BYTES {
            bail!("audit entry of {} bytes is over the {MAX_ENTRY_BYTES}-byte limit", json.len());
        }
        let (key_id, _) = self.cipher.current();
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&eddy_engine::storage::nonce_prefix()?);
        nonce[8..].copy_from_slice(&(entry.seq as u32).to_le_bytes());
        let f = &mut self.scratch;
        f.clear();
        f.extend_from_slice(&[0u8; HEAD_BYTES]);
        f.extend_from_slice(&entry.seq.to_le_bytes());
        f.extend_from_slice(&key_id.to_le_bytes());
        f.extend_from_slice(&nonce);
        let from = f.len();
        f.extend_from_slice(&json);
        self.cipher.seal(key_id, nonce, &aad(entry.seq), f, from)?;
        let body_len = (f.len() - HEAD_BYTES) as u32;
        let crc = crc32c::crc32c(&f[HEAD_BYTES..]);
        f[0..4].copy_from_slice(&body_len.to_le_bytes());
        f[4..8].copy_from_slice(&crc.to_le_bytes());
        // fsync failing is fail-stop for the caller: the page cache may hold what never lands.
        self.file.write_sync(self.end, f).context("writing the audit log")?;
        self.end += f.len() as u64;
        self.next_seq += 1;
        self.prev = hex(digest::digest(&digest::SHA256, &json).as_ref());
        Ok(entry.seq)
    }

    /// Starts a new file, keeping one previous; the chain runs on across them.
    fn rotate(&mut self) -> Result<()> {
        self.storage.rename(&self.dir.join(FILE), &self.dir.join(PREVIOUS)).context("rotating the audit log")?;
        self.file = self.storage.create(&self.dir.join(FILE)).context("creating the audit log")?;
        self.storage.sync_dir(&self.dir).context("syncing the audit directory")?;
        self.end = 0;
        Ok(())
    }

    /// Every entry still kept (previous file, then current) with what verification found.
    pub fn read_all(&self) -> Result<Verified> {
        read(&*self.storage, &self.cipher, &self.dir)
    }
}

/// Reads and verifies the log in `dir` (used by the API and by tests).
pub fn read(storage: &dyn Storage, cipher: &Cipher, dir: &Path) -> Result<Verified> {
    let names = storage.list(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut out = Verified::default();
    let mut prev: Option<(u64, String)> = None;
    for (name, torn_ok) in [(PREVIOUS, false), (FILE, true)] {
        if names.iter().any(|n| n == name) {
            let bytes =
                storage.read(&dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))?;
            verify_file(cipher, name, (*bytes).as_ref(), &mut prev, &mut out, torn_ok);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_engine::storage::RealFs;

    fn cipher() -> Arc<Cipher> {
        Arc::new(Cipher::from_keys(&[(1, [7u8; 32])]).unwrap())
    }

    fn ev(method: &str) -> Event {
        Event {
            principal: "uid:0".into(),
            peer: "unix".into(),
            method: method.into(),
            outcome: "ok".into(),
            ..Event::default()
        }
    }

    #[test]
    fn entries_chain_across_reopen_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Storage> = Arc::new(RealFs::new());
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 16).unwrap();
        for i in 0..300 {
            log.append(&ev(&format!("Deploy{i}"))).unwrap();
        }
        drop(log);
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 16).unwrap();
        assert_eq!(log.append(&ev("Pause")).unwrap(), 301);
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert!(fs.list(d.path()).unwrap().contains(&PREVIOUS.to_string()), "rotated");
        assert_eq!(v.entries.last().unwrap().method, "Pause");
        assert!(v.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        // Encrypted: no entry text is readable in the file.
        let raw = std::fs::read(d.path().join(FILE)).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"Pause"));
    }

    fn frame_offsets(bytes: &[u8]) -> Vec<(u64, u64)> {
        let s = scan(bytes);
        let mut ends: Vec<u64> = s.frames.iter().skip(1).map(|f| f.offset).collect();
        ends.push(s.valid_end);
        s.frames.iter().map(|f| f.offset).zip(ends).collect()
    }

    #[test]
    fn removal_alteration_and_reordering_are_detected() {
        let fs: Arc<dyn Storage> = Arc::new(RealFs::new());
        let fresh = || {
            let d = tempfile::tempdir().unwrap();
            let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 20).unwrap();
            for m in ["a", "b", "c", "d"] {
                log.append(&ev(m)).unwrap();
            }
            let bytes = std::fs::read(d.path().join(FILE)).unwrap();
            (d, bytes)
        };
        // Remove entry 2.
        let (d, bytes) = fresh();
        let f = frame_offsets(&bytes);
        let mut cut = bytes[..f[1].0 as usize].to_vec();
        cut.extend_from_slice(&bytes[f[1].1 as usize..]);
        std::fs::write(d.path().join(FILE), &cut).unwrap();
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("missing")), "{:?}", v.problems);
        // Flip a byte inside entry 3's sealed JSON.
        let (d, mut bytes) = fresh();
        let f = frame_offsets(&bytes);
        bytes[f[2].0 as usize + 40] ^= 1;
        // Keep the CRC right, as a careful forger would.
        let body = f[2].0 as usize + HEAD_BYTES..f[2].1 as usize;
        let crc = crc32c::crc32c(&bytes[body.clone()]);
        bytes[f[2].0 as usize + 4..f[2].0 as usize + 8].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(d.path().join(FILE), &bytes).unwrap();
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("authentication failed")), "{:?}", v.problems);
        // Swap entries 2 and 3.
        let (d, bytes) = fresh();
        let f = frame_offsets(&bytes);
        let mut sw = bytes[..f[1].0 as usize].to_vec();
        sw.extend_from_slice(&bytes[f[2].0 as usize..f[2].1 as usize]);
        sw.extend_from_slice(&bytes[f[1].0 as usize..f[1].1 as usize]);
        sw.extend_from_slice(&bytes[f[3].0 as usize..]);
        std::fs::write(d.path().join(FILE), &sw).unwrap();
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(!v.problems.is_empty());
    }

    #[test]
    fn damage_in_the_middle_is_reported_and_never_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Storage> = Arc::new(RealFs::new());
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 20).unwrap();
        for m in ["a", "b", "c"] {
            log.append(&ev(m)).unwrap();
        }
        drop(log);
        let mut bytes = std::fs::read(d.path().join(FILE)).unwrap();
        let f = frame_offsets(&bytes);
        bytes[f[1].0 as usize + 30] ^= 0xff; // entry 2's body: its CRC fails, entry 3 follows
        std::fs::write(d.path().join(FILE), &bytes).unwrap();
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 20).unwrap();
        log.append(&ev("d")).unwrap();
        let after = std::fs::read(d.path().join(FILE)).unwrap();
        assert_eq!(&after[..bytes.len()], &bytes[..], "the damaged file was changed");
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("checksum")), "{:?}", v.problems);
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Storage> = Arc::new(RealFs::new());
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 20).unwrap();
        log.append(&ev("a")).unwrap();
        log.append(&ev("b")).unwrap();
        drop(log);
        let bytes = std::fs::read(d.path().join(FILE)).unwrap();
        let f = frame_offsets(&bytes);
        std::fs::write(d.path().join(FILE), &bytes[..f[1].1 as usize - 5]).unwrap();
        let mut log = AuditLog::open(fs.clone(), cipher(), d.path(), 1 << 20).unwrap();
        assert_eq!(log.append(&ev("c")).unwrap(), 2, "the torn entry 2 was never acknowledged");
        let v = read(&*fs, &cipher(), d.path()).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.entries.iter().map(|e| e.method.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn a_failed_fsync_is_an_error() {
        use eddy_engine::storage::SimFs;
        let sim = SimFs::new();
        let fs: Arc<dyn Storage> = Arc::new(sim.clone());
        let mut log = AuditLog::open(fs, cipher(), Path::new("/audit"), 1 << 20).unwrap();
        log.append(&ev("a")).unwrap();
        sim.fail_sync_after(0);
        assert!(log.append(&ev("b")).is_err());
    }

    /// A power cut at every sync point, keeping any prefix of the pending writes, torn or not:
    /// every acknowledged entry survives, the log verifies, and appends continue.
    #[test]
    fn acknowledged_entries_survive_power_cuts() {
        use eddy_engine::storage::{Crash, SimFs};
        use std::sync::Mutex;
        let sim = SimFs::new();
        let fs: Arc<dyn Storage> = Arc::new(sim.clone());
        let acked = Arc::new(Mutex::new(0usize));
        let images: Arc<Mutex<Vec<(usize, SimFs)>>> = Arc::default();
        let (a, im) = (acked.clone(), images.clone());
        sim.on_sync(move |fs| {
            let n = *a.lock().unwrap();
            for k in 0..=fs.max_pending() {
                for c in [Crash::Pending(k), Crash::Torn(k), Crash::Scattered(k, k as u64)] {
                    im.lock().unwrap().push((n, fs.crash_image(c)));
                }
            }
        });
        let dir = Path::new("/state/audit");
        let mut log = AuditLog::open(fs, cipher(), dir, 1 << 10).unwrap();
        for i in 0..40 {
            log.append(&ev(&format!("m{i}"))).unwrap();
            *acked.lock().unwrap() = i + 1;
        }
        let images = std::mem::take(&mut *images.lock().unwrap());
        assert!(images.len() > 100);
        for (n, image) in images {
            let fs: Arc<dyn Storage> = Arc::new(image);
            let mut log = AuditLog::open(fs.clone(), cipher(), dir, 1 << 10).unwrap();
            log.append(&ev("after")).unwrap();
            let v = read(&*fs, &cipher(), dir).unwrap();
            assert!(v.problems.is_empty(), "after {n} acknowledged: {:?}", v.problems);
            let methods: Vec<&str> = v.entries.iter().map(|e| e.method.as_str()).collect();
            // Rotation keeps one previous file: what is kept is a run ending at the newest
            // acknowledged entry (or the one in flight, if its write landed).
            let kept: Vec<usize> = methods[..methods.len() - 1].iter().map(|m| m[1..].parse().unwrap()).collect();
            assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
            let last = kept.last().map_or(0, |l| l + 1);
            assert!(last >= n && last <= n + 1, "after {n} acknowledged, the log ends at {last}: {kept:?}");
            assert!(n < 3 || kept.len() >= 3, "{kept:?}");
        }
    }
}
