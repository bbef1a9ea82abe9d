//! The file operations storage needs, behind a trait so the same WAL and checkpoint code runs on
//! the real filesystem ([`RealFs`], with io_uring or pwrite + fdatasync) and on a simulated one that
//! models what a crash keeps ([`super::simfs::SimFs`]).
//!
//! Invariant: a file's data is durable only after [`StorageFile::sync`] returned Ok; a directory
//! entry (create, rename, remove) only after [`Storage::sync_dir`] on its parent returned Ok.

use std::io;
use std::path::Path;

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
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        self.wrap(f)
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
        let d = std::fs::File::open(dir)?;
        rustix::fs::fsync(&d).map_err(io::Error::from)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
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
        self.ring.submit_and_wait(n)?;
        let mut written = 0usize;
        let mut err = None;
        let mut seen = 0;
        while seen < n {
            let Some(cqe) = self.ring.completion().next() else {
                self.ring.submit_and_wait(1)?;
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
