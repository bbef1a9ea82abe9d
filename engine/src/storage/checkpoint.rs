//! Checkpoints: a consistent cut of a pipeline's state (operator snapshots, source positions,
//! watermarks, sinks' staged output) tied to a WAL LSN. Layout and crash argument:
//! docs/checkpoint.md (manifest) and docs/state-store.md (state files).
//!
//! Incremental: a blob whose content (SHA-256) is unchanged since the previous checkpoint is not
//! written again; the new manifest points at the old copy. Atomic: state file written and synced,
//! directory synced, manifest written to a temporary name, synced, renamed, directory synced.
//! State files are memory-mapped for reading; the manifest is an rkyv archive read in place.
//!
//! Owns `state-<seq>.dat` and `manifest-<seq>` in its directory. Never: deletes a file a retained
//! manifest references, or reports a checkpoint before its manifest's rename is durable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crypto::{self, Cipher};
use super::fs::Storage;
use super::header::{FileHeader, Owner, HEADER_LEN};
use super::{crc, io_err, u32_at, Result, StorageError};

pub const STATE_MAGIC: &[u8; 8] = b"EDDYSTA1";
pub const MANIFEST_MAGIC: &[u8; 8] = b"EDDYMAN1";
/// An empty blob that only a restored checkpoint holds ([`copy_rebased`]): recovery from it tells
/// the pipeline its state was taken elsewhere (another device, or an earlier time). The
/// pipeline's own next checkpoint no longer holds it.
pub const RESTORED_BLOB: &str = "restored-from-backup";
const BLOB_HEADER: usize = 16;
/// Manifests kept (the newest and the one recovery falls back to).
const KEEP: usize = 2;

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BlobRef {
    pub name: String,
    pub file_seq: u64,
    pub offset: u64,
    /// Sealed length (payload + tag).
    pub len: u32,
    pub index: u32,
    /// SHA-256 of the plaintext.
    pub digest: Vec<u8>,
}

/// A source's place in a checkpoint (also inside its blob; here for inspection).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SourceMark {
    pub name: String,
    pub position: Vec<u8>,
    pub watermark: i64,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Manifest {
    pub seq: u64,
    pub created_ms: i64,
    /// Replay the WAL from this LSN on top of this checkpoint.
    pub wal_lsn: u64,
    /// What the state belongs to (a digest of the pipeline's plan); a mismatch refuses recovery.
    pub fingerprint: Vec<u8>,
    pub sources: Vec<SourceMark>,
    pub blobs: Vec<BlobRef>,
}

/// A checkpoint read back.
pub struct Recovered {
    pub manifest: Manifest,
    pub blobs: HashMap<String, Vec<u8>>,
}

/// What writing a checkpoint did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteInfo {
    pub seq: u64,
    pub blobs_written: usize,
    pub blobs_reused: usize,
    /// Bytes written to files (state file + manifest).
    pub bytes_written: u64,
}

/// The files of one checkpoint on disk: its manifest and the state files its blobs live in. All
/// of them are immutable once the checkpoint exists (a copy taken of them is the checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFiles {
    pub seq: u64,
    pub created_ms: i64,
    pub manifest: PathBuf,
    pub state_files: Vec<PathBuf>,
}

/// What [`copy_rebased`] wrote.
#[derive(Debug, Clone)]
pub struct RebasedCopy {
    pub seq: u64,
    pub created_ms: i64,
    pub blobs: usize,
    pub bytes_written: u64,
    /// What the state belongs to (see `Pipeline::state_fingerprint`).
    pub fingerprint: Vec<u8>,
}

pub struct CheckpointStore {
    storage: Arc<dyn Storage>,
    cipher: Arc<Cipher>,
    dir: PathBuf,
    /// Retained manifests, oldest first.
    retained: Vec<Manifest>,
    /// Key id each state file of the newest manifest was written with: a blob is reused only if
    /// it is under the current key, so after a rotation the next checkpoint re-encrypts the rest
    /// and the old key is no longer needed once the WAL has moved past it.
    file_keys: HashMap<u64, u32>,
    next_seq: u64,
    owner: Owner,
}

fn manifest_name(seq: u64) -> String {
    format!("manifest-{seq:010}")
}

fn state_name(seq: u64) -> String {
    format!("state-{seq:010}.dat")
}

fn digest(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// Files are written in this version: the header names the owner and records bind it.
const VERSION: u32 = 2;

/// The header of a state file or manifest; one of another owner (version 2) is refused.
fn read_header(b: &[u8], magic: &[u8; 8], path: &Path, owner: Owner) -> Result<FileHeader> {
    let h = FileHeader::decode(b, magic, VERSION)
        .ok_or_else(|| StorageError::Corrupt(format!("{}: damaged or foreign header", path.display())))?;
    if h.version >= 2 && h.owner != owner {
        return Err(StorageError::Corrupt(format!(
            "{}: belongs to another pipeline (its files were moved or copied here)",
            path.display()
        )));
    }
    Ok(h)
}

fn header(magic: &[u8; 8], key: (u32, [u8; 8]), seq: u64, nonce_prefix: [u8; 8], owner: Owner) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    FileHeader { version: VERSION, key_id: key.0, seq, nonce_prefix, key_check: key.1, owner }.encode(magic, &mut h);
    h
}

/// A blob's or manifest's associated data: kind, place, key and (version 2) the expected owner —
/// never the header's, which can be rewritten. Returns the buffer and its used length.
fn aad(kind: &[u8; 8], seq: u64, offset: u64, key_id: u32, owner: Option<Owner>) -> ([u8; 36], usize) {
    let mut a = [0u8; 36];
    a[..8].copy_from_slice(kind);
    a[8..16].copy_from_slice(&seq.to_le_bytes());
    a[16..24].copy_from_slice(&offset.to_le_bytes());
    a[24..28].copy_from_slice(&key_id.to_le_bytes());
    match owner {
        Some(o) => {
            a[28..].copy_from_slice(&o.0);
            (a, 36)
        }
        None => (a, 28),
    }
}

/// One manifest as [`CheckpointStore::inspect`] found it.
#[derive(Debug, Clone)]
pub struct ManifestReport {
    pub seq: u64,
    /// The manifest and every blob it references read and verified: its WAL LSN, blob count and
    /// the key ids of its files; or what is wrong, naming file and offset.
    pub result: std::result::Result<(u64, usize, Vec<u32>), String>,
}

impl CheckpointStore {
    /// Reads and verifies every manifest in `dir` with all its blobs, newest first, and changes
    /// nothing (no garbage collection, no removal of temporaries): for `eddyd state check`.
    pub fn inspect(
        storage: Arc<dyn Storage>,
        cipher: Arc<Cipher>,
        dir: &Path,
        owner: Owner,
    ) -> Result<Vec<ManifestReport>> {
        let names = storage.list(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> =
            names.iter().filter_map(|n| n.strip_prefix("manifest-")?.parse::<u64>().ok()).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let store = CheckpointStore {
            storage,
            cipher,
            dir: dir.to_path_buf(),
            retained: vec![],
            file_keys: HashMap::new(),
            next_seq: 0,
            owner,
        };
        Ok(seqs
            .into_iter()
            .map(|seq| {
                let result = store.load(seq).map_err(|e| e.to_string()).map(|(r, keys)| {
                    let mut ids: Vec<u32> = keys.into_values().collect();
                    ids.sort_unstable();
                    ids.dedup();
                    (r.manifest.wal_lsn, r.blobs.len(), ids)
                });
                ManifestReport { seq, result }
            })
            .collect())
    }

    /// Opens the directory and reads the newest valid checkpoint, walking back past damaged ones.
    pub fn open(
        storage: Arc<dyn Storage>,
        cipher: Arc<Cipher>,
        dir: &Path,
    ) -> Result<(CheckpointStore, Option<Recovered>)> {
        Self::open_owned(storage, cipher, dir, Owner::default())
    }

    /// [`CheckpointStore::open`] for files of `owner` (written with it; others are refused).
    pub fn open_owned(
        storage: Arc<dyn Storage>,
        cipher: Arc<Cipher>,
        dir: &Path,
        owner: Owner,
    ) -> Result<(CheckpointStore, Option<Recovered>)> {
        storage.create_dir_all(dir).map_err(io_err(dir))?;
        let names = storage.list(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = vec![];
        let mut max_seq = 0;
        for n in &names {
            if n.ends_with(".tmp") {
                // A manifest that never got its final name: not a checkpoint.
                let p = dir.join(n);
                storage.remove(&p).map_err(io_err(&p))?;
                continue;
            }
            let seq =
                n.strip_prefix("manifest-").or_else(|| n.strip_prefix("state-").and_then(|s| s.strip_suffix(".dat")));
            if let Some(seq) = seq.and_then(|s| s.parse::<u64>().ok()) {
                max_seq = max_seq.max(seq);
                if n.starts_with("manifest-") {
                    seqs.push(seq);
                }
            }
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut store = CheckpointStore {
            storage,
            cipher,
            dir: dir.to_path_buf(),
            retained: vec![],
            file_keys: HashMap::new(),
            next_seq: max_seq + 1,
            owner,
        };
        let mut failures = vec![];
        for (i, &seq) in seqs.iter().enumerate() {
            match store.load(seq) {
                Ok((r, file_keys)) => {
                    if !failures.is_empty() {
                        tracing::warn!(seq, skipped = ?failures, "checkpoint: newer checkpoints are damaged; recovering from an older one");
                    }
                    // The next older readable manifest stays the fallback (and keeps its WAL).
                    if let Some(older) = seqs[i + 1..].iter().find_map(|&s| store.read_manifest(s).ok()) {
                        store.retained.push(older);
                    }
                    store.retained.push(r.manifest.clone());
                    store.file_keys = file_keys;
                    store.collect_garbage()?;
                    return Ok((store, Some(r)));
                }
                Err(StorageError::Key(m)) => return Err(StorageError::Key(m)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if !failures.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "no valid checkpoint in {}: {}",
                dir.display(),
                failures.join("; ")
            )));
        }
        Ok((store, None))
    }

    /// A manifest alone (its checksum and authentication checked, not its blobs).
    fn read_manifest(&self, seq: u64) -> Result<Manifest> {
        let aligned = self.manifest_bytes(seq)?;
        let path = self.dir.join(manifest_name(seq));
        let archived = rkyv::access::<ArchivedManifest, rkyv::rancor::Error>(&aligned)
            .map_err(|e| StorageError::Corrupt(format!("{}: not a manifest: {e}", path.display())))?;
        rkyv::deserialize::<Manifest, rkyv::rancor::Error>(archived)
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// The manifest's plaintext archive, checked and aligned for rkyv.
    fn manifest_bytes(&self, seq: u64) -> Result<rkyv::util::AlignedVec<16>> {
        let path = self.dir.join(manifest_name(seq));
        let bytes = self.storage.read(&path).map_err(io_err(&path))?;
        let b: &[u8] = (*bytes).as_ref();
        let h = read_header(b, MANIFEST_MAGIC, &path, self.owner)?;
        self.cipher.check_readable(h.key_id, &h.key_check, &path.display().to_string())?;
        if h.seq != seq || b.len() < HEADER_LEN + 8 {
            return Err(StorageError::Corrupt(format!("{}: header does not match its name", path.display())));
        }
        let len = u32_at(b, HEADER_LEN + 4) as usize;
        if b.len() != HEADER_LEN + 8 + len || crc(&[&b[HEADER_LEN + 4..]]) != u32_at(b, HEADER_LEN) {
            return Err(StorageError::Corrupt(format!("{}: checksum mismatch", path.display())));
        }
        let mut sealed = b[HEADER_LEN + 8..].to_vec();
        let (ad, ad_len) = aad(b"eddy-man", seq, HEADER_LEN as u64, h.key_id, (h.version >= 2).then_some(self.owner));
        let plain =
            self.cipher.open(h.key_id, crypto::nonce(h.nonce_prefix, 0), &ad[..ad_len], &mut sealed, &|| {
                path.display().to_string()
            })?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(plain.len());
        aligned.extend_from_slice(plain);
        Ok(aligned)
    }

    /// A checkpoint with every blob read and verified; also the key id of each state file.
    fn load(&self, seq: u64) -> Result<(Recovered, HashMap<u64, u32>)> {
        let path = self.dir.join(manifest_name(seq));
        let aligned = self.manifest_bytes(seq)?;
        let archived = rkyv::access::<ArchivedManifest, rkyv::rancor::Error>(&aligned)
            .map_err(|e| StorageError::Corrupt(format!("{}: not a manifest: {e}", path.display())))?;
        // Read the blobs straight from the archived (zero-copy) refs, file by file.
        let mut blobs = HashMap::new();
        let mut files: HashMap<u64, (crate::storage::fs::FileBytes, FileHeader)> = HashMap::new();
        for r in archived.blobs.iter() {
            let file_seq = r.file_seq.to_native();
            if let std::collections::hash_map::Entry::Vacant(slot) = files.entry(file_seq) {
                let p = self.dir.join(state_name(file_seq));
                let fb = self.storage.read(&p).map_err(io_err(&p))?;
                let fh = read_header((*fb).as_ref(), STATE_MAGIC, &p, self.owner)?;
                self.cipher.check_readable(fh.key_id, &fh.key_check, &p.display().to_string())?;
                if fh.seq != file_seq {
                    return Err(StorageError::Corrupt(format!("{}: header does not match its name", p.display())));
                }
                slot.insert((fb, fh));
            }
            let (fb, fh) = &files[&file_seq];
            let p = self.dir.join(state_name(file_seq));
            let data: &[u8] = (**fb).as_ref();
            let (off, len) = (r.offset.to_native(), r.len.to_native());
            let bad = |why: &str| {
                StorageError::Corrupt(format!("{} at offset {off}: {why} (blob '{}')", p.display(), r.name.as_str()))
            };
            // In u64, checked: a crafted manifest must not overflow (32-bit targets included).
            let end = off.checked_add(BLOB_HEADER as u64 + len as u64);
            if off < HEADER_LEN as u64 || end.is_none_or(|e| e > data.len() as u64) {
                return Err(bad("the blob lies beyond the file"));
            }
            // Both lie within `data`, so they fit in usize.
            let (off, len) = (off as usize, len as usize);
            if u32_at(data, off + 4) as usize != len
                || u32_at(data, off + 8) != r.index.to_native()
                || crc(&[&data[off + 4..off + BLOB_HEADER + len]]) != u32_at(data, off)
            {
                return Err(bad("checksum mismatch"));
            }
            let mut sealed = data[off + BLOB_HEADER..off + BLOB_HEADER + len].to_vec();
            let (ad, ad_len) =
                aad(b"eddy-sta", file_seq, off as u64, fh.key_id, (fh.version >= 2).then_some(self.owner));
            let nonce = crypto::nonce(fh.nonce_prefix, r.index.to_native());
            let plain_len = self
                .cipher
                .open(fh.key_id, nonce, &ad[..ad_len], &mut sealed, &|| format!("{} at offset {off}", p.display()))?
                .len();
            sealed.truncate(plain_len);
            if digest(&sealed) != r.digest.as_slice() {
                return Err(bad("content digest mismatch"));
            }
            blobs.insert(r.name.as_str().to_string(), sealed);
        }
        let manifest = rkyv::deserialize::<Manifest, rkyv::rancor::Error>(archived)
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
        let file_keys = files.iter().map(|(seq, (_, h))| (*seq, h.key_id)).collect();
        Ok((Recovered { manifest, blobs }, file_keys))
    }

    /// The newest checkpoint written or recovered.
    pub fn latest(&self) -> Option<&Manifest> {
        self.retained.last()
    }

    /// The files of the newest checkpoint.
    pub fn latest_files(&self) -> Option<CheckpointFiles> {
        let m = self.retained.last()?;
        let mut seqs: Vec<u64> = m.blobs.iter().map(|b| b.file_seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        Some(CheckpointFiles {
            seq: m.seq,
            created_ms: m.created_ms,
            manifest: self.dir.join(manifest_name(m.seq)),
            state_files: seqs.into_iter().map(|s| self.dir.join(state_name(s))).collect(),
        })
    }

    /// The WAL must keep records from this LSN on (recovery may fall back to the oldest retained).
    pub fn wal_keep_from(&self) -> u64 {
        self.retained.first().map(|m| m.wal_lsn).unwrap_or(0)
    }

    /// Writes a checkpoint atomically; only blobs that changed since the last one are written.
    pub fn write(
        &mut self,
        wal_lsn: u64,
        fingerprint: &[u8],
        sources: Vec<SourceMark>,
        blobs: &[(String, Vec<u8>)],
    ) -> Result<WriteInfo> {
        let seq = self.next_seq;
        let key = self.cipher.current();
        let prev: HashMap<&str, &BlobRef> =
            self.retained.last().map(|m| m.blobs.iter().map(|b| (b.name.as_str(), b)).collect()).unwrap_or_default();
        let nonce_prefix = crypto::nonce_prefix()?;
        let mut file = header(STATE_MAGIC, key, seq, nonce_prefix, self.owner);
        let mut refs = Vec::with_capacity(blobs.len());
        let mut info = WriteInfo { seq, ..Default::default() };
        for (name, plain) in blobs {
            let d = digest(plain);
            let under_current_key = |o: &&&BlobRef| self.file_keys.get(&o.file_seq) == Some(&key.0);
            if let Some(old) = prev.get(name.as_str()).filter(|o| o.digest == d).filter(under_current_key) {
                refs.push((*old).clone());
                info.blobs_reused += 1;
                continue;
            }
            let index = info.blobs_written as u32;
            let off = file.len();
            file.extend_from_slice(&[0u8; BLOB_HEADER]);
            file.extend_from_slice(plain);
            let (ad, ad_len) = aad(b"eddy-sta", seq, off as u64, key.0, Some(self.owner));
            self.cipher.seal(key.0, crypto::nonce(nonce_prefix, index), &ad[..ad_len], &mut file, off + BLOB_HEADER)?;
            let len = (file.len() - off - BLOB_HEADER) as u32;
            file[off + 4..off + 8].copy_from_slice(&len.to_le_bytes());
            file[off + 8..off + 12].copy_from_slice(&index.to_le_bytes());
            let c = crc(&[&file[off + 4..]]);
            file[off..off + 4].copy_from_slice(&c.to_le_bytes());
            refs.push(BlobRef { name: name.clone(), file_seq: seq, offset: off as u64, len, index, digest: d });
            info.blobs_written += 1;
        }
        if info.blobs_written > 0 {
            let p = self.dir.join(state_name(seq));
            let mut f = self.storage.create(&p).map_err(io_err(&p))?;
            f.write_sync(0, &file).map_err(io_err(&p))?;
            self.storage.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            info.bytes_written += file.len() as u64;
        }
        let manifest = Manifest {
            seq,
            created_ms: crate::time::now_ms(),
            wal_lsn,
            fingerprint: fingerprint.to_vec(),
            sources,
            blobs: refs,
        };
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&manifest)
            .map_err(|e| StorageError::Corrupt(format!("manifest encoding: {e}")))?;
        let mnonce = crypto::nonce_prefix()?;
        let mut m = header(MANIFEST_MAGIC, key, seq, mnonce, self.owner);
        m.extend_from_slice(&[0u8; 8]);
        m.extend_from_slice(&archived);
        let (ad, ad_len) = aad(b"eddy-man", seq, HEADER_LEN as u64, key.0, Some(self.owner));
        self.cipher.seal(key.0, crypto::nonce(mnonce, 0), &ad[..ad_len], &mut m, HEADER_LEN + 8)?;
        let len = (m.len() - HEADER_LEN - 8) as u32;
        m[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&len.to_le_bytes());
        let c = crc(&[&m[HEADER_LEN + 4..]]);
        m[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&c.to_le_bytes());
        let tmp = self.dir.join(format!("{}.tmp", manifest_name(seq)));
        let fin = self.dir.join(manifest_name(seq));
        let mut f = self.storage.create(&tmp).map_err(io_err(&tmp))?;
        f.write_sync(0, &m).map_err(io_err(&tmp))?;
        drop(f);
        self.storage.rename(&tmp, &fin).map_err(io_err(&fin))?;
        self.storage.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        info.bytes_written += m.len() as u64;
        self.next_seq += 1;
        self.file_keys.retain(|seq, _| manifest.blobs.iter().any(|b| b.file_seq == *seq));
        if info.blobs_written > 0 {
            self.file_keys.insert(seq, key.0);
        }
        self.retained.push(manifest);
        self.collect_garbage()?;
        Ok(info)
    }

    /// Makes the next checkpoint written carry `seq` (only forward: numbers are never reused).
    fn continue_at(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Key ids the retained checkpoints' files were written with (the newest's exactly; an older
    /// fallback's files that the newest does not share are not opened, so not counted).
    pub fn key_ids_in_use(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.file_keys.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Drops manifests older than the oldest retained one (those beyond `KEEP`, and those a
    /// restart passed over) and state files no retained manifest references. Manifests go first,
    /// so no remaining manifest older than the retained ones points at a deleted file. Damaged
    /// manifests newer than the recovered one are left for `eddyd state check` to show.
    fn collect_garbage(&mut self) -> Result<()> {
        while self.retained.len() > KEEP {
            self.retained.remove(0);
        }
        let oldest = self.retained.first().map(|m| m.seq).unwrap_or(0);
        let live: std::collections::HashSet<u64> =
            self.retained.iter().flat_map(|m| m.blobs.iter().map(|b| b.file_seq)).collect();
        let names = self.storage.list(&self.dir).map_err(io_err(&self.dir))?;
        let seq_of =
            |n: &str, prefix: &str, suffix: &str| n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<u64>().ok();
        let manifests = names.iter().filter(|n| seq_of(n, "manifest-", "").is_some_and(|seq| seq < oldest));
        let states = names
            .iter()
            .filter(|n| seq_of(n, "state-", ".dat").is_some_and(|seq| !live.contains(&seq) && seq < self.next_seq));
        for n in manifests.chain(states) {
            let p = self.dir.join(n);
            self.storage.remove(&p).map_err(io_err(&p))?;
        }
        Ok(())
    }
}

/// Copies the newest valid checkpoint in `from` (a checkpoint restored from elsewhere, without
/// its WAL) into the empty checkpoint directory `to` as a checkpoint that continues from LSN 0,
/// under the same sequence number, re-encrypted under the current key. Every blob is
/// authenticated and checked against its digest on the way, so a damaged or foreign copy is
/// refused before anything is written. Recovery from `to` then restores exactly that state and
/// replays nothing; replayable sources continue from the positions it holds.
pub fn copy_rebased(
    storage: Arc<dyn Storage>,
    cipher: Arc<Cipher>,
    from: &Path,
    to: &Path,
    owner: Owner,
) -> Result<RebasedCopy> {
    let (_, recovered) = CheckpointStore::open_owned(storage.clone(), cipher.clone(), from, owner)?;
    let r = recovered.ok_or_else(|| StorageError::Corrupt(format!("{}: no checkpoint to restore", from.display())))?;
    let (mut target, existing) = CheckpointStore::open_owned(storage, cipher, to, owner)?;
    if existing.is_some() || target.next_seq > 1 {
        return Err(StorageError::Corrupt(format!(
            "{}: holds checkpoints already; a restore only writes into an empty state directory",
            to.display()
        )));
    }
    target.continue_at(r.manifest.seq);
    let mut blobs: Vec<(String, Vec<u8>)> = r
        .manifest
        .blobs
        .iter()
        .filter(|b| b.name != RESTORED_BLOB)
        .map(|b| {
            let plain = r.blobs.get(&b.name).cloned();
            plain.map(|p| (b.name.clone(), p)).ok_or_else(|| StorageError::Corrupt(format!("blob {} missing", b.name)))
        })
        .collect::<Result<_>>()?;
    let copied = blobs.len();
    blobs.push((RESTORED_BLOB.to_string(), Vec::new()));
    let info = target.write(0, &r.manifest.fingerprint, r.manifest.sources.clone(), &blobs)?;
    debug_assert_eq!(info.seq, r.manifest.seq);
    Ok(RebasedCopy {
        seq: info.seq,
        created_ms: r.manifest.created_ms,
        blobs: copied,
        bytes_written: info.bytes_written,
        fingerprint: r.manifest.fingerprint,
    })
}
