//! The file operations storage needs, behind a trait so the same WAL and checkpoint code runs on
//! the real filesystem ([`RealFs`], with io_uring or pwrite + fdatasync) and on a simulated one that
//! models what a crash keeps ([`super::simfs::SimFs`]).
//!
//! Invariant: a file's data is durable only after [`StorageFile::sync`] returned Ok; a directory
//! entry (create, rename, remove) only after [`Storage::sync_dir`] on its parent returned Ok.

use std::io;
use std::path::Path;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
mod uring;

/// Where the `io-uring` crate has no bindings (32-bit ARM), there is no ring: pwrite only.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
mod uring {
    use std::io;

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn open(_file: std::fs::File) -> io::Result<Box<dyn super::StorageFile>> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring is not built for this architecture"))
    }
}

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
        let backend = if std::env::var_os("EDDY_NO_IO_URING").is_none() && uring::available() {
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
            IoBackend::IoUring => uring::open(file)?,
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
