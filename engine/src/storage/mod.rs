//! Durable storage on local flash: the write-ahead log ([`Wal`]), checkpoints of operator state
//! ([`CheckpointStore`]), encryption at rest ([`Cipher`]) and the file operations they go through
//! ([`Storage`]: [`RealFs`], and the crash-modelling [`SimFs`] for fault tests). Byte layouts:
//! docs/wal.md, docs/state-store.md, docs/checkpoint.md. Public for the daemon's state tools
//! (inspect, back up, restore), its outbox and the fault tests; the submodules are private.
//!
//! Invariants: nothing is reported durable before its fsync returned Ok; an fsync or write error is
//! fatal for the file (the WAL is poisoned, never retried); damage is either a torn tail (cut) or a
//! named error, never wrong data.

pub(crate) mod checkpoint;
pub(crate) mod crypto;
pub(crate) mod fs;
pub(crate) mod header;
pub(crate) mod simfs;
pub(crate) mod wal;

pub use crate::ops::snapshot::{StateReader, StateWriter};
pub use checkpoint::{
    copy_rebased, BlobRef, CheckpointFiles, CheckpointStore, Manifest, RebasedCopy, SourceMark, MANIFEST_MAGIC,
    RESTORED_BLOB,
};
pub use crypto::{nonce_prefix, Cipher, KEY_LEN};
pub use fs::{create_private_dir_all, sync_parent, RealFs, Storage, StorageFile};
pub use header::{FileHeader, Owner};
pub use simfs::{Crash, SimFs};
pub use wal::{inspect as inspect_wal, SegmentReport, Wal, WalConfig, FRAME_HEADER};

use std::path::{Path, PathBuf};

/// Messages carry their cause's text; `source()` is never linked, so a chain printed whole does not
/// repeat it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
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
    move |error| StorageError::Io { path: path.to_path_buf(), error }
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
