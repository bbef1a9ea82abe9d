//! Durable storage on local flash: the write-ahead log ([`wal`]), checkpoints of operator state
//! ([`checkpoint`]), encryption at rest ([`crypto`]) and the file operations they go through
//! ([`fs`], with a crash-modelling [`simfs`] for tests). Byte layouts: docs/wal.md,
//! docs/state-store.md, docs/checkpoint.md.
//!
//! Invariants: nothing is reported durable before its fsync returned Ok; an fsync or write error is
//! fatal for the file (the WAL is poisoned, never retried); damage is either a torn tail (cut) or a
//! named error, never wrong data.

pub mod checkpoint;
pub mod crypto;
pub mod fs;
pub mod header;
pub mod simfs;
pub mod wal;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Damage that is not a torn tail; names the file and offset.
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Key(String),
    #[error(
        "the write-ahead log stopped after an I/O error ({0}); nothing more is acknowledged; restart eddyd to recover"
    )]
    Poisoned(String),
    #[error("{0}")]
    Limit(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn crc(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
