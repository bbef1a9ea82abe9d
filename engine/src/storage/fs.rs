//! The file operations storage needs, behind a trait so the same WAL and checkpoint code runs on
//! the real filesystem ([`RealFs`], with io_uring or pwrite + fdatasync) and on a simulated one that
//! models what a crash keeps ([`super::simfs::SimFs`]).
//!
//! Invariant: a file's data is durable only after [`StorageFile::sync`] returned Ok; a directory
//! entry (create, rename, remove) only after [`Storage::sync_dir`] on its parent returned Ok.

use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents private to the owner (0700, whatever the umask: a umask
/// only removes bits) and fsyncs the parent of each directory it creates, so the new entries
/// survive a power cut. Existing directories are left as they are.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_synced(dir, 0o700)
}

/// `create_dir_all` with `mode` (less the umask) for the directories it creates, each made durable
/// by an fsync of its parent.
pub fn create_dir_all_synced(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_synced(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => sync_parent(dir),
        // Another thread made it meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fsyncs the directory holding `path`, making its entry (a create, rename or remove) durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fsync_dir(parent)
}

/// Makes the entries of `dir` durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    let d = std::fs::File::open(dir)?;
    rustix::fs::fsync(&d).map_err(io::Error::from)
}

/// Opens `path` for writing, creating it owner-only (0600, whatever the umask) if missing.
pub fn open_private(path: &Path, truncate: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(truncate).mode(0o600).open(path)
}

/// A file opened for writing.
pub trait StorageFile: Send {
    /// Writes all of `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the written data durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// `write_at` then `sync`; io_uring submits both at once.
    fn write_sync(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(offset, data)?;
        self.sync()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// Read-only bytes of a whole file (memory-mapped on the real filesystem).
pub type FileBytes = Box<dyn AsRef<[u8]> + Send + Sync>;

pub trait Storage: Send + Sync {
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing without truncating it.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// The whole file.
    fn read(&self, path: &Path) -> io::Result<FileBytes>;
    /// Names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `dir` and its missing parents (owner-only), durably.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// What writes go through, for logs: "io_uring", "pwrite", "simulated".
    fn backend(&self) -> &'static str;
}

/// Which write path [`RealFs`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    IoUring,
    Pwrite,
}

/// The real filesystem. Writes go through io_uring when the kernel allows it (probed once at
/// start), plain `pwrite` + `fdatasync` otherwise.
pub struct RealFs {
    backend: IoBackend,
}

impl RealFs {
    /// Probes io_uring (a ring of 4 entries); falls back to pwrite when setup is refused
    /// (old kernel, seccomp, `kernel.io_uring_disabled`).
    pub fn new() -> Self {
        let backend = if std::env::var_os("EDDY_NO_IO_URING").is_none() && io_uring::IoUring::new(4).is_ok() {
            IoBackend::IoUring
        } else {
            IoBackend::Pwrite
        };
        RealFs { backend }
    }

    pub fn with_backend(backend: IoBackend) -> Self {
        RealFs { backend }
    }

    fn wrap(&self, file: std::fs::File) -> io::Result<Box<dyn StorageFile>> {
        Ok(match self.backend {
            IoBackend::Pwrite => Box::new(PwriteFile { file }),
            IoBackend::IoUring => Box::new(UringFile { ring: io_uring::IoUring::new(4)?, file }),
        })
    }
}

impl Default for RealFs {
    fn default() -> Self {
        Self::new()
    }
}

struct Mapped(memmap2::Mmap);
impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Storage for RealFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.wrap(open_private(path, true)?)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        self.wrap(f)
    }

    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        let f = std::fs::File::open(path)?;
        if f.metadata()?.len() == 0 {
            return Ok(Box::new(Vec::new()));
        }
        // SAFETY: files under the state directory are written only by this process (one eddyd per
        // state dir, enforced by its lock), and never while mapped for reading.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        Ok(Box::new(Mapped(map)))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fsync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        create_private_dir_all(dir)
    }

    fn backend(&self) -> &'static str {
        match self.backend {
            IoBackend::IoUring => "io_uring",
            IoBackend::Pwrite => "pwrite",
        }
    }
}

struct PwriteFile {
    file: std::fs::File,
}

impl StorageFile for PwriteFile {
    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match rustix::io::pwrite(&self.file, data, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing")),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file).map_err(io::Error::from)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

struct UringFile {
    ring: io_uring::IoUring,
    file: std::fs::File,
}

impl UringFile {
    /// Submits a write (when `data` is not empty) linked to an fdatasync (when `sync`), and waits.
    fn submit(&mut self, offset: u64, data: &[u8], sync: bool) -> io::Result<usize> {
        use io_uring::{opcode, squeue, types};
        use std::os::fd::AsRawFd;
        let fd = types::Fd(self.file.as_raw_fd());
        let mut n = 0;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let write = opcode::Write::new(fd, data.as_ptr(), len).offset(offset).build().user_data(1);
        let fsync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(2);
        // SAFETY: `data` outlives the submission: we wait for every completion before returning.
        unsafe {
            let mut sq = self.ring.submission();
            if !data.is_empty() {
                let w = if sync { write.flags(squeue::Flags::IO_LINK) } else { write };
                sq.push(&w).map_err(|_| io::Error::other("io_uring submission queue full"))?;
                n += 1;
            }
            if sync {
                sq.push(&fsync).map_err(|_| io::Error::other("io_uring submission queue full"))?;
                n += 1;
            }
        }
        // From here on the kernel may be reading `data`: return only once every entry pushed
        // has completed, whatever interrupts the waiting (`reap` retries EINTR and never gives up).
        self.wait_for(n);
        let mut written = 0usize;
        let mut err = None;
        let mut seen = 0;
        while seen < n {
            let Some(cqe) = self.ring.completion().next() else {
                self.wait_for(1);
                continue;
            };
            seen += 1;
            let res = cqe.result();
            match cqe.user_data() {
                1 if res >= 0 => written = res as usize,
                2 if res >= 0 => {}
                // A short write cancels the linked fsync; the caller writes the rest and syncs.
                2 if res == -libc_ecanceled() => {}
                _ => err = Some(io::Error::from_raw_os_error(-res)),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

impl UringFile {
    /// Submits what is queued and waits until `want` completions are ready. A signal (EINTR) or
    /// a full completion queue (EBUSY, EAGAIN) only interrupts the wait, so it is retried. Any
    /// other failure leaves I/O in flight on a buffer we are about to free, which no error return
    /// can make safe: the process aborts (fail-stop; a restart recovers from what is durable).
    fn wait_for(&mut self, want: usize) {
        if let Err(e) = retry_interrupted(|| self.ring.submit_and_wait(want)) {
            tracing::error!(error = %e, "io_uring: waiting for a write in flight failed; stopping the process");
            std::process::abort();
        }
    }
}

/// Calls `wait` until it returns anything but an interruption (EINTR, or EBUSY / EAGAIN from a
/// full completion queue, after a yield); returns that.
fn retry_interrupted(mut wait: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match wait() {
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == EINTR || c == EBUSY || c == EAGAIN) => {
                if e.raw_os_error() != Some(EINTR) {
                    std::thread::yield_now();
                }
            }
            r => return r,
        }
    }
}

const EINTR: i32 = rustix::io::Errno::INTR.raw_os_error();
const EBUSY: i32 = rustix::io::Errno::BUSY.raw_os_error();
const EAGAIN: i32 = rustix::io::Errno::AGAIN.raw_os_error();

fn libc_ecanceled() -> i32 {
    rustix::io::Errno::CANCELED.raw_os_error()
}

impl StorageFile for UringFile {
    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.submit(offset, data, false)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "io_uring write wrote nothing"));
            }
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.submit(0, &[], true).map(|_| ())
    }

    fn write_sync(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let n = self.submit(offset, data, true)?;
        if n == data.len() {
            return Ok(());
        }
        // Short write: the linked fsync was cancelled; finish plainly.
        self.write_at(offset + n as u64, &data[n..])?;
        self.sync()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal during the wait (EINTR) or a full completion queue must not end it: the caller
    /// would free a buffer the kernel may still be reading (it used to return the error).
    #[test]
    fn interrupted_waits_are_retried_until_they_complete() {
        let mut calls = 0;
        let r = retry_interrupted(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(io::Error::from_raw_os_error(EINTR)),
                3 => Err(io::Error::from_raw_os_error(EBUSY)),
                4 => Err(io::Error::from_raw_os_error(EAGAIN)),
                _ => Ok(2),
            }
        });
        assert_eq!(r.unwrap(), 2);
        assert_eq!(calls, 5);
        // Anything else is returned (the caller stops the process).
        let e = retry_interrupted(|| Err(io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::BADF.raw_os_error()));
    }
}
