//! A simulated filesystem for crash and fault tests. It keeps, per file, the live bytes and the
//! bytes a crash would keep (what the last `sync` made durable), and per directory the live and the
//! durable entries — of files and of directories made by `create_dir_all`: a directory whose own
//! entry was never synced into its parent is lost by a crash with everything under it.
//! [`SimFs::crash_image`] builds the filesystem a power cut would leave, optionally with some
//! unsynced writes applied and the last of them torn at a sector boundary, or with only some of
//! its sectors persisted, in any order (flash does not write a request's sectors in order).
//! Faults (EIO on the n-th write or sync) and damage (a zeroed page) can be injected.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{FileBytes, Storage, StorageFile};

const SECTOR: usize = 512;

#[derive(Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync, in order: (offset, data). `set_len` is recorded as a truncation.
    pending: Vec<Pending>,
}

#[derive(Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

#[derive(Clone, Default)]
struct State {
    inodes: Vec<Inode>,
    /// path -> inode, as the running system sees it.
    live: BTreeMap<PathBuf, usize>,
    /// path -> inode, as a crash would leave it.
    durable: BTreeMap<PathBuf, usize>,
    /// Directories made by `create_dir_all`, as the running system sees them...
    dirs_live: BTreeSet<PathBuf>,
    /// ...and those whose entry in their parent is durable.
    dirs_durable: BTreeSet<PathBuf>,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
}

/// How much of what was not synced a crash image keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Only durable bytes and entries.
    DurableOnly,
    /// Durable, plus the first `n` pending writes of every file.
    Pending(usize),
    /// Like `Pending(n)`, with write `n` applied up to a sector boundary inside it.
    Torn(usize),
    /// Like `Pending(n)`, with a subset of write `n`'s sectors applied (chosen by the seed),
    /// not necessarily the first ones: a later sector may persist without an earlier one.
    Scattered(usize, u64),
}

type SyncHook = Box<dyn FnMut(&SimFs) + Send>;

#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// Called at every sync point, before the sync takes effect (crash images are taken there).
    hook: Arc<Mutex<Option<SyncHook>>>,
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure anyway; keep the state usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` at every fsync (file or directory), just before it makes anything durable.
    pub fn on_sync(&self, f: impl FnMut(&SimFs) + Send + 'static) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    fn sync_point(&self) {
        let mut h = self.hook.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = h.as_mut() {
            f(self);
        }
    }

    /// Fails the `n`-th write from now (0 = the next) with EIO.
    pub fn fail_write_after(&self, n: u64) {
        let mut s = self.lock();
        s.fail_write_at = Some(s.writes + n);
    }

    /// Fails the `n`-th sync (file or directory) from now with EIO.
    pub fn fail_sync_after(&self, n: u64) {
        let mut s = self.lock();
        s.fail_sync_at = Some(s.syncs + n);
    }

    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Largest number of pending writes any file has (the `n` worth trying in [`Crash`]).
    pub fn max_pending(&self) -> usize {
        let s = self.lock();
        s.live.values().map(|&i| s.inodes[i].pending.len()).max().unwrap_or(0)
    }

    /// The filesystem a SIGKILL now would leave: everything written stays readable (the page
    /// cache survives the process), and what was not synced is still not durable.
    pub fn kill_image(&self) -> SimFs {
        let s = self.lock().clone();
        SimFs {
            state: Arc::new(Mutex::new(State { fail_write_at: None, fail_sync_at: None, ..s })),
            hook: Arc::default(),
        }
    }

    /// The filesystem a crash now would leave.
    pub fn crash_image(&self, crash: Crash) -> SimFs {
        let s = self.lock();
        let mut out =
            State { dirs_live: s.dirs_durable.clone(), dirs_durable: s.dirs_durable.clone(), ..State::default() };
        // A directory made and never synced into its parent is gone, and so is all below it.
        let lost = |p: &Path| p.ancestors().skip(1).any(|d| s.dirs_live.contains(d) && !s.dirs_durable.contains(d));
        out.dirs_live.retain(|d| !lost(d));
        out.dirs_durable.retain(|d| !lost(d));
        for (path, &ino) in &s.durable {
            if lost(path) {
                continue;
            }
            let node = &s.inodes[ino];
            let mut data = node.durable.clone();
            let keep = match crash {
                Crash::DurableOnly => 0,
                Crash::Pending(n) | Crash::Torn(n) | Crash::Scattered(n, _) => n,
            };
            for p in node.pending.iter().take(keep) {
                apply(&mut data, p);
            }
            if let Some(Pending::Write(off, w)) = node.pending.get(keep) {
                let off = *off as usize;
                match crash {
                    Crash::Torn(_) => {
                        // Sectors are written whole or not at all; keep those before a boundary inside.
                        let end = (off + w.len()) / SECTOR * SECTOR;
                        if end > off {
                            apply(&mut data, &Pending::Write(off as u64, w[..end - off].to_vec()));
                        }
                    }
                    Crash::Scattered(_, seed) => {
                        // Each whole sector the write covers persists or not, independently.
                        let mut rng = seed | 1;
                        let mut at = off.div_ceil(SECTOR) * SECTOR;
                        while at + SECTOR <= off + w.len() {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            if rng % 2 == 0 {
                                apply(&mut data, &Pending::Write(at as u64, w[at - off..at - off + SECTOR].to_vec()));
                            }
                            at += SECTOR;
                        }
                    }
                    _ => {}
                }
            }
            out.inodes.push(Inode { live: data.clone(), durable: data, pending: vec![] });
            let i = out.inodes.len() - 1;
            out.live.insert(path.clone(), i);
            out.durable.insert(path.clone(), i);
        }
        SimFs { state: Arc::new(Mutex::new(out)), hook: Arc::default() }
    }

    /// Damage: `len` bytes at `offset` of `path` become zero, live and durable (a flash page
    /// that lost its charge, or a failed erase).
    pub fn zero(&self, path: &Path, offset: usize, len: usize) {
        let mut s = self.lock();
        let Some(&ino) = s.live.get(path) else { return };
        let node = &mut s.inodes[ino];
        for buf in [&mut node.live, &mut node.durable] {
            let end = (offset + len).min(buf.len());
            if offset < end {
                buf[offset..end].fill(0);
            }
        }
    }

    /// Live contents of `path`, for tests.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.live.get(path).map(|&i| s.inodes[i].live.clone())
    }

    /// Overwrites a file's bytes as they are and as a crash would keep them (corruption tests).
    pub fn put(&self, path: &Path, data: Vec<u8>) {
        let mut s = self.lock();
        s.inodes.push(Inode { live: data.clone(), durable: data, pending: vec![] });
        let i = s.inodes.len() - 1;
        s.live.insert(path.to_path_buf(), i);
        s.durable.insert(path.to_path_buf(), i);
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().live.keys().cloned().collect()
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected EIO on {what}"))
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", p.display()))
}

struct SimFile {
    fs: SimFs,
    ino: usize,
}

impl StorageFile for SimFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.writes += 1;
        if s.fail_write_at == Some(s.writes - 1) {
            return Err(eio("write"));
        }
        let p = Pending::Write(offset, data.to_vec());
        let node = &mut s.inodes[self.ino];
        apply(&mut node.live, &p);
        node.pending.push(p);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.fs.sync_point();
        let mut s = self.fs.lock();
        s.syncs += 1;
        if s.fail_sync_at == Some(s.syncs - 1) {
            // As on Linux, the failed sync may have lost the pending pages for good.
            return Err(eio("fsync"));
        }
        let node = &mut s.inodes[self.ino];
        node.durable = node.live.clone();
        node.pending.clear();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        let p = Pending::SetLen(len);
        let node = &mut s.inodes[self.ino];
        apply(&mut node.live, &p);
        node.pending.push(p);
        Ok(())
    }
}

impl Storage for SimFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        let ino = match s.live.get(path) {
            Some(&i) => {
                let p = Pending::SetLen(0);
                apply(&mut s.inodes[i].live, &p);
                s.inodes[i].pending.push(p);
                i
            }
            None => {
                s.inodes.push(Inode::default());
                let i = s.inodes.len() - 1;
                s.live.insert(path.to_path_buf(), i);
                i
            }
        };
        Ok(Box::new(SimFile { fs: self.clone(), ino }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let s = self.lock();
        let ino = *s.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile { fs: self.clone(), ino }))
    }

    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        let s = self.lock();
        let ino = *s.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(s.inodes[ino].live.clone()))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.live.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.live.remove(from).ok_or_else(|| not_found(from))?;
        s.live.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync_point();
        let mut s = self.lock();
        s.syncs += 1;
        if s.fail_sync_at == Some(s.syncs - 1) {
            return Err(eio("directory fsync"));
        }
        let State { live, durable, dirs_live, dirs_durable, .. } = &mut *s;
        durable.retain(|p, _| p.parent() != Some(dir));
        for (p, &i) in live.iter() {
            if p.parent() == Some(dir) {
                durable.insert(p.clone(), i);
            }
        }
        for d in dirs_live.iter() {
            if d.parent() == Some(dir) {
                dirs_durable.insert(d.clone());
            }
        }
        Ok(())
    }

    /// As the trait says: made durably, by a sync of each new directory's parent (a sync point,
    /// so crash images and injected faults apply between the mkdir and its sync).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut made: Vec<PathBuf> = dir
            .ancestors()
            .filter(|d| d.parent().is_some_and(|p| !p.as_os_str().is_empty()))
            .map(Path::to_path_buf)
            .collect();
        made.reverse();
        for d in made {
            if !self.lock().dirs_live.insert(d.clone()) {
                continue;
            }
            if let Some(parent) = d.parent() {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "simulated"
    }
}
